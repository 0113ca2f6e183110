"""`jaxconv` command line: export the op's StableHLO for a TF configuration.

    jaxconv export                       # the built-in U-Net decoder layer
    jaxconv export --input-sizes 1,7,7,8 --filter-sizes 3,3,8,16 \\
        --strides 1,2,2,1 --padding SAME --check
    jaxconv export --batch N --platforms cpu,cuda,rocm,tpu --grad \\
        --format serialized -o layer.bin
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

EXAMPLES = """examples:
  jaxconv export
      print the StableHLO of the default layer (U-Net decoder: input
      8x64x64x64, filter 3x3x64x128, strides 1,2,2,1, SAME, float32)
  jaxconv export --input-sizes 1,7,7,8 --filter-sizes 3,3,8,16 --strides 1,2,2,1 --check
      a 7x7 output (which lax.conv_transpose cannot produce), checked
      against the float64 NumPy reference
  jaxconv export --padding EXPLICIT --explicit-paddings 0,0,4,1,1,1,0,0
  jaxconv export --batch N --platforms cpu,cuda,rocm,tpu --grad --format serialized -o up.bin
      a symbolic batch, four platforms, the op with its VJP, as a
      serialized artifact (load it with jax.export.deserialize)
"""


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
  from jaxconv.export import LayerConfig
  d = LayerConfig()
  join = lambda v: ",".join(map(str, v))
  parser = _Parser(
      prog="jaxconv", description="TensorFlow's Conv2DBackpropInput as a JAX "
      "primitive: export its portable StableHLO.",
      formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES)
  sub = parser.add_subparsers(dest="command")
  ex = sub.add_parser(
      "export", help="print or save the StableHLO of one configuration",
      description="Export Conv2DBackpropInput for one configuration. Flags "
      "are named after TF's attributes and take TF's values (lists in "
      "data_format order).", epilog=EXAMPLES,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  ex.add_argument("--input-sizes", type=_ints, default=list(d.input_sizes),
                  metavar="N,H,W,C", help="TF's input_sizes: 4 entries in "
                  "data_format order, or 2 (H,W; batch 1, depth from the "
                  f"filter) (default: {join(d.input_sizes)})")
  ex.add_argument("--filter-sizes", type=_ints, default=list(d.filter_sizes),
                  metavar="KH,KW,CI,CO", help="filter shape [KH, KW, "
                  f"in_depth/groups, out_depth] (default: {join(d.filter_sizes)})")
  ex.add_argument("--strides", type=_ints, default=list(d.strides),
                  help=f"4 strides in data_format order (default: {join(d.strides)})")
  ex.add_argument("--padding", default=d.padding,
                  help="SAME, VALID or EXPLICIT (default: SAME)")
  ex.add_argument("--explicit-paddings", type=_ints, default=[],
                  metavar="P,...", help="8 pads (before, after per dim, "
                  "data_format order) with --padding EXPLICIT")
  ex.add_argument("--data-format", default=d.data_format,
                  help="NHWC or NCHW (default: NHWC)")
  ex.add_argument("--dilations", type=_ints, default=list(d.dilations),
                  help="4 dilations in data_format order (default: 1,1,1,1)")
  ex.add_argument("--dtype", default=d.dtype, help="float16, bfloat16, "
                  "float32, float64 or int32 (default: float32)")
  ex.add_argument("--batch", metavar="NAME", help="make the batch dimension "
                  "symbolic with this name (e.g. N)")
  ex.add_argument("--platforms", default=None, metavar="P,...",
                  help="comma-separated subset of cpu,cuda,rocm,tpu "
                  "(default: this machine's platform)")
  ex.add_argument("--grad", action="store_true", help="export f(filter, "
                  "out_backprop, ct) -> (result, d_filter, d_out_backprop)")
  ex.add_argument("--format", choices=("text", "serialized"), default="text",
                  help="StableHLO text, or jax.export's serialized bytes "
                  "(default: text)")
  ex.add_argument("-o", "--output", metavar="FILE",
                  help="write here instead of stdout (required for serialized)")
  ex.add_argument("--check", action="store_true", help="also run the op on "
                  "random data and report the max error against the float64 "
                  "NumPy reference (on stderr)")
  return parser


def _check(config, log) -> float:
  import jax
  import jax.numpy as jnp
  from jaxconv import reference
  jax.config.update("jax_enable_x64", True)
  rng = np.random.default_rng(0)
  dtype = jnp.dtype(config.dtype)
  cast = (lambda a: np.rint(a * 4).astype(dtype)) if dtype == jnp.int32 else (
      lambda a: a.astype(dtype))
  w = cast(rng.standard_normal(config.filter_sizes))
  dy = cast(rng.standard_normal(config.out_backprop_shape()))
  log("check: running the op ...")
  t = time.perf_counter()
  out = np.asarray(jax.block_until_ready(config.op()(w, dy)))
  log(f"check: ran in {time.perf_counter() - t:.2f} s; running the reference ...")
  ref = reference.raw_backprop_input(
      config.input_sizes, w, dy, strides=config.strides,
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
  log = lambda msg: print(msg, file=sys.stderr)
  from jaxconv.export import LayerConfig, export_layer
  platforms = args.platforms.split(",") if args.platforms else None
  unknown = set(platforms or ()) - {"cpu", "cuda", "rocm", "tpu"}
  if unknown:
    parser.exit(2, f"jaxconv: error: --platforms: unknown platform(s) "
                f"{sorted(unknown)}; choose from cpu,cuda,rocm,tpu\n")
  if args.format == "serialized" and not args.output:
    parser.exit(2, "jaxconv: error: --format serialized needs -o/--output FILE\n")
  config = LayerConfig(args.input_sizes, args.filter_sizes, args.strides,
                       args.padding, args.explicit_paddings, args.data_format,
                       args.dilations, args.dtype)
  try:
    if args.dtype not in ("float16", "bfloat16", "float32", "float64", "int32"):
      raise TypeError(f"--dtype must be one of float16, bfloat16, float32, "
                      f"float64, int32; got {args.dtype!r}")
    import jax
    if args.dtype == "float64":
      jax.config.update("jax_enable_x64", True)
    if args.grad and args.dtype == "int32":
      raise TypeError("--grad: int32 has no gradient (as in TensorFlow)")
    if len(args.filter_sizes) != 4:
      raise ValueError(f"--filter-sizes must have 4 entries, got "
                       f"{args.filter_sizes}")
    log(f"exporting {config} ...")
    if "cpu" in (platforms or [jax.default_backend()]):
      name, reason = config.cpu_strategy(symbolic_batch=bool(args.batch))
      log(f"cpu lowering strategy: {name} ({reason})")
    exported = export_layer(config, batch=args.batch, platforms=platforms,
                            grad=args.grad)
  except (ValueError, TypeError) as e:
    parser.exit(2, f"jaxconv: error: {_flag_hint(str(e))}\n")
  except Exception as e:  # noqa: BLE001 - one line, never a traceback
    parser.exit(2, f"jaxconv: error: {type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''}\n")
  if args.format == "text":
    text = exported.mlir_module()
    if args.output:
      with open(args.output, "w") as f:
        f.write(text)
    else:
      sys.stdout.write(text)
  else:
    with open(args.output, "wb") as f:
      f.write(exported.serialize(vjp_order=1 if args.grad else 0))
  if args.output:
    log(f"wrote {args.output}")
  if args.check:
    _check(config, log)
  return 0


def _flag_hint(message: str) -> str:
  """Name the flag that carries the TF argument a message is about."""
  first = message.split()[0].rstrip(":") if message else ""
  for name in ("input_sizes", "strides", "dilations", "explicit_paddings",
               "padding", "data_format", "filter"):
    if first.startswith(name):
      return f"--{name.replace('_', '-')}: {message}"
  return message
