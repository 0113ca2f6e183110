"""`jaxconv` command line: export a raw op for a TF configuration, as
StableHLO (text or jax.export's bytes), an ONNX model or a TFLite model.

    jaxconv export                       # the built-in U-Net decoder layer
    jaxconv export --op Conv3DBackpropFilterV2 --cpu-strategy auto
    jaxconv export --input-sizes 1,7,7,8 --filter-sizes 3,3,8,16 \\
        --strides 1,2,2,1 --padding SAME --check
    jaxconv export --batch N --platforms cpu,cuda,rocm,tpu --grad \\
        --format serialized -o layer.bin
    jaxconv export --batch N --format onnx -o layer.onnx
    jaxconv export --format tflite --filter-values w.npy -o layer.tflite
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings

import numpy as np

from jaxconv.ops import OPS
from jaxconv.lowering import CpuOnlyExportWarning
from jaxconv.lowering.cpu import STRATEGIES

# The native strategy is a custom call: jax.jit runs it, no export holds it.
_EXPORTABLE = {primitive: tuple(n for n in names if n != "onednn")
               for primitive, names in STRATEGIES.items()}
# Every exportable CPU strategy name, of the op (input gradients) and of the
# filter gradient (the filter-gradient ops): --cpu-strategy checks it per op.
_CPU_NAMES = tuple(dict.fromkeys(
    (*_EXPORTABLE["backprop_input"], *_EXPORTABLE["backprop_filter"])))

FORMATS = ("text", "serialized", "onnx", "tflite")

EXAMPLES = """examples:
  jaxconv export
      print the StableHLO of the default layer (U-Net decoder: input
      8x64x64x64, filter 3x3x64x128, strides 1,2,2,1, SAME, float32) in
      the portable form: stablehlo.convolution with lhs_dilation = strides
  jaxconv export --input-sizes 1,7,7,8 --filter-sizes 3,3,8,16 --strides 1,2,2,1 --check
      a 7x7 output (which lax.conv_transpose cannot produce), checked
      against the float64 NumPy reference
  jaxconv export --op Conv3DBackpropInputV2     (a 3-D U-Net up layer)
  jaxconv export --op Conv2DBackpropFilter --padding EXPLICIT --explicit-paddings 0,0,1,1,1,1,0,0
  jaxconv export --cpu-strategy auto
      bake XLA CPU's tuned form (the strategy jax.jit picks) into the cpu
      module instead of the portable form
  jaxconv export --batch N --platforms cpu,cuda,rocm,tpu --grad --format serialized -o up.bin
      a symbolic batch, four platforms, the op with its VJP, as a
      serialized artifact (load it with jax.export.deserialize)
  jaxconv export --grad --format serialized --vjp-order 2 -o up2.bin
      an artifact whose VJP can itself be differentiated once more
  jaxconv export --batch N --format onnx -o up.onnx
      an ONNX model (one ConvTranspose) for ONNX Runtime
  jaxconv export --input-sizes 1,7,7,8 --filter-sizes 3,3,8,16 --format tflite -o up.tflite
      a TFLite model; stderr says which CPU form TFLite computes right
  jaxconv export --input-sizes 1,7,7,8 --filter-sizes 3,3,8,16 --filter-values w.npy --format tflite -o up.tflite
      the same with the filter w.npy a constant (the model takes out_backprop)

ops: """ + ", ".join(OPS) + """
cpu strategies (--cpu-strategy): input gradients """ + ", ".join(
    _EXPORTABLE["backprop_input"]) + "; filter gradients " + ", ".join(
        _EXPORTABLE["backprop_filter"]) + """
(under jax.jit the CPU also has the native oneDNN strategy, a custom call
that no export holds; stderr names the one jax.jit picks here)
"""

# Default layers per kind of op: the U-Net up layer (2-D), its 3-D
# version, a MobileNet depthwise layer.
DEFAULTS = {
    2: dict(input_sizes=[8, 64, 64, 64], filter_sizes=[3, 3, 64, 128],
            strides=[1, 2, 2, 1], data_format="NHWC", dilations=[1, 1, 1, 1]),
    3: dict(input_sizes=[1, 32, 32, 32, 32], filter_sizes=[3, 3, 3, 32, 64],
            strides=[1, 2, 2, 2, 1], data_format="NDHWC",
            dilations=[1, 1, 1, 1, 1]),
    "depthwise": dict(input_sizes=[8, 56, 56, 128], filter_sizes=[3, 3, 128, 1],
                      strides=[1, 2, 2, 1], data_format="NHWC",
                      dilations=[1, 1, 1, 1]),
}


def _ints(text: str) -> list[int]:
  try:
    return [int(v) for v in text.split(",") if v.strip()]
  except ValueError:
    raise argparse.ArgumentTypeError(
        f"expected comma-separated integers, got {text!r}") from None


class _Parser(argparse.ArgumentParser):
  """argparse, but a bad flag is one line on stderr (no usage dump)."""

  def error(self, message):
    self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
  parser = _Parser(
      prog="jaxconv", description="TensorFlow's transposed-convolution family "
      "as JAX primitives: export a raw op's portable StableHLO.",
      formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES)
  sub = parser.add_subparsers(dest="command")
  ex = sub.add_parser(
      "export", help="print or save the StableHLO of one configuration",
      description="Export one raw op of the family for one configuration. "
      "Flags are named after TF's attributes and take TF's values (lists in "
      "data_format order; 5 entries for the 3-D ops). Defaults depend on "
      "--op: the U-Net decoder layer (2-D), its 3-D version, a MobileNet "
      "depthwise layer.", epilog=EXAMPLES,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  ex.add_argument("--op", default="Conv2DBackpropInput", choices=OPS,
                  metavar="NAME", help="the raw op (default: "
                  "Conv2DBackpropInput; see 'ops' below)")
  ex.add_argument("--input-sizes", type=_ints, metavar="N,H,W,C",
                  help="the conv input's shape (TF's input_sizes, or the shape "
                  "of the op's input tensor), data_format order; "
                  "Conv2DBackpropInput also takes 2 spatial entries")
  ex.add_argument("--filter-sizes", type=_ints, metavar="KH,KW,CI,CO",
                  help="the filter's shape: [*K, in_depth/groups, out_depth] "
                  "(depthwise: [KH, KW, in_depth, multiplier])")
  ex.add_argument("--strides", type=_ints, help="strides, 4 (2-D) or 5 (3-D) "
                  "entries in data_format order")
  ex.add_argument("--padding", default="SAME",
                  help="SAME, VALID, or EXPLICIT where the op has it "
                  "(default: SAME)")
  ex.add_argument("--explicit-paddings", type=_ints, default=[],
                  metavar="P,...", help="8 pads (before, after per dim, "
                  "data_format order) with --padding EXPLICIT")
  ex.add_argument("--data-format", help="NHWC or NCHW (3-D: NDHWC or NCDHW)")
  ex.add_argument("--dilations", type=_ints,
                  help="dilations, data_format order (default: all 1)")
  ex.add_argument("--dtype", default="float32", help="float16, bfloat16, "
                  "float32, float64, or int32 for the ops that take it "
                  "(Conv2DBackpropInput, Conv2DBackpropInputV2; default: "
                  "float32)")
  ex.add_argument("--batch", metavar="NAME", help="make the batch dimension "
                  "symbolic with this name (e.g. N)")
  ex.add_argument("--platforms", default=None, metavar="P,...",
                  help="comma-separated subset of cpu,cuda,rocm,tpu "
                  "(default: this machine's platform)")
  ex.add_argument("--cpu-strategy", choices=("auto", *_CPU_NAMES),
                  metavar="NAME", help="bake a CPU strategy into the cpu "
                  "module: 'auto' (the ones jax.jit picks) or one of the "
                  "op's primitive, forced where it applies (see 'cpu "
                  "strategies' below; default: the portable form on every "
                  "platform)")
  ex.add_argument("--grad", action="store_true", help="export f(*operands, "
                  "ct) -> (result, *d_operands): the op and its VJP")
  ex.add_argument("--format", choices=FORMATS, default="text",
                  help="StableHLO text; jax.export's serialized bytes; an "
                  "ONNX model (jax2onnx with jaxconv.onnx: the 'onnx' "
                  "extra); a TFLite flatbuffer (float32, the op alone: "
                  "the first CPU form that TFLite computes right, checked "
                  "in its interpreter and named on stderr). Default: text")
  ex.add_argument("--vjp-order", type=int, metavar="N", help="serialized: "
                  "how many orders of VJPs the artifact carries (default: "
                  "1 with --grad, else 0)")
  ex.add_argument("--filter-values", metavar="FILE.npy", help="bake this "
                  "filter (a .npy array of --filter-sizes' shape) into the "
                  "artifact as a constant: it then takes the other operands "
                  "only (ops with a filter operand)")
  ex.add_argument("-o", "--output", metavar="FILE",
                  help="write here instead of stdout (required for all but "
                  "text)")
  ex.add_argument("--check", action="store_true", help="also run the op on "
                  "random data and report the max error against the float64 "
                  "NumPy reference (on stderr)")
  return parser


def _config(args):
  """The LayerConfig the flags describe (op-dependent defaults)."""
  from jaxconv.export import LayerConfig
  info = OPS[args.op]
  defaults = DEFAULTS["depthwise" if info.depthwise else info.ndim]
  given = {name: getattr(args, name) for name in defaults
           if getattr(args, name) is not None}
  values = {**defaults, **given}
  return LayerConfig(values["input_sizes"], values["filter_sizes"],
                     values["strides"], args.padding, args.explicit_paddings,
                     values["data_format"], values["dilations"], args.dtype,
                     args.op)


def _check(config, log) -> float:
  import jax
  import jax.numpy as jnp
  from jaxconv import reference
  rng = np.random.default_rng(0)
  dtype = jnp.dtype(config.dtype)
  cast = (lambda a: np.rint(a * 4).astype(dtype)) if dtype == jnp.int32 else (
      lambda a: a.astype(dtype))
  shapes = config.operand_shapes()
  operands = {n: cast(rng.standard_normal(shapes[n]))
              for n in config.operand_names()}
  log("check: running the op ...")
  t = time.perf_counter()
  out = np.asarray(jax.block_until_ready(config.op_fn()(*operands.values())))
  log(f"check: ran in {time.perf_counter() - t:.2f} s; running the reference ...")
  geometry = reference.tf_geometry(config.data_format, config.strides,
                                   config.padding, config.explicit_paddings,
                                   config.dilations)
  spec, hwio = config.spec(), list(config.hwio_filter_sizes)
  if config.filter_gradient:
    ref = reference.backprop_filter(
        operands["input"], operands["out_backprop"], kernel=hwio[:-2],
        groups=spec.groups, **geometry).reshape(out.shape)
  else:
    ref = reference.raw_backprop_input(
        config.input_sizes, np.reshape(operands["filter"], hwio),
        operands["out_backprop"], strides=config.strides,
        padding=config.padding, explicit_paddings=config.explicit_paddings,
        data_format=config.data_format, dilations=config.dilations)
  err = float(np.max(np.abs(out.astype(np.float64) - ref), initial=0.0))
  scale = float(np.max(np.abs(ref), initial=0.0))
  log(f"check: max abs error {err:.3g} (result max {scale:.3g}, dtype "
      f"{config.dtype}, shape {out.shape})")
  return err


def main(argv=None) -> int:
  parser = build_parser()
  args = parser.parse_args(argv)
  if args.command is None:
    args = parser.parse_args(["export", *(argv or sys.argv[1:])])
  platforms = args.platforms.split(",") if args.platforms else None
  unknown = set(platforms or ()) - {"cpu", "cuda", "rocm", "tpu"}
  if unknown:
    parser.exit(2, f"jaxconv: error: --platforms: unknown platform(s) "
                f"{sorted(unknown)}; choose from cpu,cuda,rocm,tpu\n")
  for problem in _format_problems(args):
    parser.exit(2, f"jaxconv: error: {problem}\n")
  import jax
  with jax.enable_x64(args.dtype == "float64"):  # JAX's default mode else
    return _export(args, parser, platforms)


def _format_problems(args):
  """What the flags ask of --format that it cannot give."""
  if args.format != "text" and not args.output:
    yield f"--format {args.format} needs -o/--output FILE"
  if args.vjp_order is not None and (args.format != "serialized"
                                     or args.vjp_order < 0):
    yield (f"--vjp-order {args.vjp_order}: a number >= 0, with --format "
           "serialized only")
  if args.format in ("onnx", "tflite"):
    for flag, value in (("--platforms", args.platforms),
                        ("--cpu-strategy", args.cpu_strategy)):
      if value is not None:
        yield f"{flag} is for StableHLO exports, not --format {args.format}"
  if args.format == "tflite":
    for flag, value in (("--grad", args.grad), ("--batch", args.batch)):
      if value:
        yield f"{flag}: --format tflite exports the op alone, static shapes"


def _export(args, parser, platforms) -> int:
  from jaxconv import deploy
  try:
    config = _validated(args)
    filt = _filter_values(args.filter_values)
    _log(f"exporting {config}" + (f" with the filter of {args.filter_values}"
                                  if filt is not None else "") + " ...")
    if args.format == "onnx":
      exported = deploy.onnx(config, batch=args.batch, grad=args.grad,
                             filter_values=filt)
      _log("exported form: ONNX (jax2onnx with jaxconv.onnx: the op a "
           + ("Conv" if config.filter_gradient else "ConvTranspose")
           + " node)")
    elif args.format == "tflite":
      exported, form, err = deploy.tflite(config, log=_log,
                                          filter_values=filt)
      _log(f"exported form: TFLite from the XLA CPU strategy {form} of "
           f"{config.primitive}: checked in TFLite's interpreter, max error "
           f"{err:.2g} of the result's scale")
    else:
      _log(f"exported form: {_form(args, config)}")
      exported = _stablehlo(args, config, platforms, filt)
  except (ValueError, TypeError) as e:
    parser.exit(2, f"jaxconv: error: {_flag_hint(str(e))}\n")
  except Exception as e:  # noqa: BLE001 - one line, never a traceback
    parser.exit(2, f"jaxconv: error: {type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''}\n")
  _write(args, exported)
  if args.check:
    _check(config, _log)
  return 0


def _stablehlo(args, config, platforms, filt):
  """export_layer's artifact; its CpuOnlyExportWarning becomes a note."""
  from jaxconv.export import export_layer
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always", CpuOnlyExportWarning)
    exported = export_layer(config, batch=args.batch, platforms=platforms,
                            grad=args.grad, cpu_strategy=args.cpu_strategy,
                            filter_values=filt)
  for w in caught:
    if not issubclass(w.category, CpuOnlyExportWarning):
      warnings.showwarning(w.message, w.category, w.filename, w.lineno)
  if any(issubclass(w.category, CpuOnlyExportWarning) for w in caught):
    _log("note: an artifact for cpu alone (XLA CPU's tuned form): "
         "--platforms cpu,cuda,tpu for one that also runs on GPU/TPU")
  return exported


def _filter_values(path):
  """The --filter-values array (None without the flag)."""
  if path is None:
    return None
  try:
    return np.load(path, allow_pickle=False)
  except (OSError, ValueError) as e:
    raise ValueError(f"--filter-values: cannot read {path!r} as a .npy "
                     f"array ({e})") from e


def _log(message: str) -> None:
  print(message, file=sys.stderr)


def _validated(args):
  """The LayerConfig of the flags, checked against the op's row of the op
  table (ValueError/TypeError naming the flag)."""
  config = _config(args)
  dtypes = [str(d) for d in config.info.dtypes]
  if args.dtype not in dtypes:
    raise TypeError(f"--dtype must be one of {', '.join(dtypes)} for "
                    f"{config.op}; got {args.dtype!r}")
  if args.grad and args.dtype == "int32":
    raise TypeError("--grad: int32 has no gradient (as in TensorFlow)")
  if len(config.filter_sizes) != config.ndim + 2:
    raise ValueError(f"--filter-sizes must have {config.ndim + 2} entries "
                     f"for {config.op}, got {list(config.filter_sizes)}")
  names = _EXPORTABLE[config.primitive]
  if args.cpu_strategy not in (None, "auto", *names):
    raise ValueError(f"--cpu-strategy: {args.cpu_strategy!r} is not a CPU "
                     f"strategy of {config.op} ({config.primitive}); choose "
                     f"auto or one of {', '.join(names)}")
  config.spec()  # validate before exporting
  return config


def _form(args, config) -> str:
  """What the export holds, for stderr."""
  jit, why = config.cpu_strategy(symbolic_batch=bool(args.batch))
  under_jit = (f"; under jax.jit this CPU runs {config.primitive} with {jit} "
               f"({why})")
  if args.cpu_strategy is None:
    return "portable on every platform (stablehlo.convolution " + (
        "taking out_backprop as its window)" if config.filter_gradient
        else "with lhs_dilation = strides and the reversed kernel)") + under_jit
  name, reason = config.cpu_strategy(symbolic_batch=bool(args.batch),
                                     for_export=True)
  if args.cpu_strategy != "auto":
    name, reason = args.cpu_strategy, "forced (where it applies)"
  others = "; other platforms portable" if args.platforms else ""
  return (f"cpu lowering strategy ({config.primitive}): {name} ({reason})"
          + others + (under_jit if jit != name else ""))


def _write(args, exported) -> None:
  if args.format == "text":
    text = exported.mlir_module()
    if args.output:
      with open(args.output, "w") as f:
        f.write(text)
    else:
      sys.stdout.write(text)
  else:
    if args.format == "serialized":
      order = args.vjp_order if args.vjp_order is not None else int(args.grad)
      exported = exported.serialize(vjp_order=order)
    elif args.format == "onnx":
      exported = exported.SerializeToString()
    with open(args.output, "wb") as f:
      f.write(exported)
  if args.output:
    _log(f"wrote {args.output}")


def _flag_hint(message: str) -> str:
  """Name the flag that carries the TF argument a message is about."""
  first = message.split()[0].rstrip(":") if message else ""
  for name, flag in (("input_sizes", "--input-sizes"),
                     ("filter_sizes", "--filter-sizes"),
                     ("strides", "--strides"), ("dilations", "--dilations"),
                     ("explicit_paddings", "--explicit-paddings"),
                     ("padding", "--padding"), ("data_format", "--data-format"),
                     ("filter_values", "--filter-values"),
                     ("filter", "--filter-sizes"), ("input", "--input-sizes")):
    if first.startswith(name):
      return f"{flag}: {message}"
  return message
