"""CPU benchmark suite: jaxconv vs XLA's canonical form, TF and PyTorch.

Classes: the 2-D op's 15 layer classes, then the family: 3-D and 1-D
transposed convolutions, the depthwise op with a channel multiplier, and
filter gradients (Conv2DBackpropFilter, Conv3DBackpropFilterV2).

    python benchmarks/suite.py                  # all classes (several minutes)
    python benchmarks/suite.py --quick          # smoke run: 3 classes, few reps
    python benchmarks/suite.py --classes thin,stem --strategies

Per class (TF shapes: input [N,*spatial,C], filter [*K,C/groups,C_out]):
jaxconv (automatic strategy), XLA's canonical form (JAX's conv VJP), the
forward convolution of the same geometry, TF's Conv2DBackpropInput and
PyTorch's conv2d_input when installed (`pip install -e '.[bench]'`), and a
matmul of the same useful FLOPs (the machine's practical limit).  Medians
over interleaved repetitions in one process; useful GFLOP/s; ratio of
jaxconv to the best peer (TF, PyTorch, canonical); compile times; peak
memory from XLA's memory analysis.  --strategies also times every CPU
strategy that applies (how the rules of lowering/cpu/tables.py were chosen).  The
process re-executes itself once with glibc's malloc thresholds pinned and
warms up on the first class, so that every candidate runs at its steady
state (benchmarks/timing.py says why).
Writes a table (stdout), JSON and a PNG chart to --out (benchmarks/results).
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import pathlib
import sys

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Peers' OpenMP threads must not spin after their call and steal the cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax import lax  # noqa: E402

import jaxconv  # noqa: E402
from jaxconv import lowering  # noqa: E402
from benchmarks.timing import (compile_seconds, interleaved_medians,  # noqa: E402
                               progress, steady_allocator)
from jaxconv.lowering import cpu  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Case:
  name: str
  input: tuple  # channels-last: [N, *spatial, C]
  filter: tuple  # [*K, C / groups, C_out] (depthwise: C_out = C * M)
  stride: int = 1
  dilation: int = 1
  padding: str = "SAME"
  dtype: str = "float32"
  data_format: str = "NHWC"
  op: str = "input"  # the input gradient, or "filter": the filter gradient

  @property
  def ndim(self):
    return len(self.input) - 2

  @property
  def groups(self):
    return self.input[-1] // self.filter[-2]

  @property
  def depthwise(self):
    return self.filter[-2] == 1 and self.groups > 1


UNET = dict(input=(8, 64, 64, 64), filter=(3, 3, 64, 128), stride=2)
DENSE = dict(input=(8, 56, 56, 64), filter=(3, 3, 64, 64))
UNET3D = dict(input=(1, 32, 32, 32, 32), filter=(3, 3, 3, 32, 64), stride=2,
              data_format="NDHWC")
CASES = [
    Case("dense s1 56x56 64->64 k3 N8", **DENSE),
    Case("unet-up s2 64x64 64<-128 k3 N8", **UNET),
    Case("dcgan s2 32x32 128<-256 k5 N16", (16, 32, 32, 128), (5, 5, 128, 256), 2),
    Case("1x1 s2 56x56 256->512 N8 VALID", (8, 56, 56, 256), (1, 1, 256, 512), 2,
         padding="VALID"),
    Case("stem s2 128x128 3->64 k7 N4", (4, 128, 128, 3), (7, 7, 3, 64), 2),
    Case("thin s2 128x128 32->32 k4 N8", (8, 128, 128, 32), (4, 4, 32, 32), 2),
    Case("grouped g32 s1 28x28 256 k3 N8", (8, 28, 28, 256), (3, 3, 8, 256)),
    Case("depthwise s2 56x56 128 k3 N8", (8, 56, 56, 128), (3, 3, 1, 128), 2),
    Case("atrous d2 s1 64x64 128 k3 N4", (4, 64, 64, 128), (3, 3, 128, 128),
         dilation=2),
    Case("s2+d2 32x32 64 k3 N8", (8, 32, 32, 64), (3, 3, 64, 64), 2, 2),
    Case("unet-up NCHW", **UNET, data_format="NCHW"),
    Case("unet-up bf16", **UNET, dtype="bfloat16"),
    Case("unet-up f16", **UNET, dtype="float16"),
    Case("unet-up f64 N2", (2, 64, 64, 64), (3, 3, 64, 128), 2, dtype="float64"),
    Case("unet-up k2 s2 64x64 64<-128 N8", (8, 64, 64, 64), (2, 2, 64, 128), 2),
    # The rest of the family (issue 13).
    Case("3d unet-up s2 32^3 32<-64 k3 N1", **UNET3D),
    Case("3d dense s1 24^3 32 k3 N1", (1, 24, 24, 24, 32), (3, 3, 3, 32, 32),
         data_format="NDHWC"),
    Case("3d k2 s2 32^3 32<-64 N1", (1, 32, 32, 32, 32), (2, 2, 2, 32, 64), 2,
         data_format="NDHWC"),
    Case("1d k16 s8 8192 128<-256 N4", (4, 8192, 128), (16, 128, 256), 8,
         data_format="NWC"),
    Case("1d k4 s2 4096 64 N8", (8, 4096, 64), (4, 64, 64), 2,
         data_format="NWC"),
    Case("dw-native s2 56x56 128 x2 N8", (8, 56, 56, 128), (3, 3, 1, 256), 2),
    Case("filter-grad dense s1 56x56 64", **DENSE, op="filter"),
    Case("filter-grad unet-up s2 64x64", **UNET, op="filter"),
    Case("filter-grad 3d unet-up s2 32^3", **UNET3D, op="filter"),
]


def _key(case):
  return case.name.split()[0] if not case.name.startswith(
      ("unet-up ", "3d ", "1d ", "filter-grad ")) else case.name.replace(" ", "-")


def _tf_layout(values, fmt):
  """Channels-last values in `fmt`'s order."""
  return values if fmt[-1] == "C" else (values[0], values[-1], *values[1:-1])


def useful_flops(case, dy_shape):
  """2 x (out_backprop elements) x (taps x in-channels per group)."""
  return 2 * int(np.prod(dy_shape)) * int(np.prod(case.filter[:-1]))


def _attrs(case):
  n = case.ndim
  return dict(strides=list(_tf_layout((1, *[case.stride] * n, 1),
                                      case.data_format)),
              dilations=list(_tf_layout((1, *[case.dilation] * n, 1),
                                        case.data_format)),
              padding=case.padding)


def _dw_filter(case, w):
  """HWIO [*K, 1, C*M] -> TF's depthwise [*K, C, M]."""
  return w.reshape(*case.filter[:-2], case.input[-1], -1)


def build(case: Case, rng):
  """Operands and callables for every candidate of one class."""
  dtype = jnp.dtype(case.dtype)
  last = case.data_format[-1] == "C"
  n = case.ndim
  s, d = (case.stride,) * n, (case.dilation,) * n
  x = rng.standard_normal(case.input).astype(np.float32)
  w = rng.standard_normal(case.filter).astype(np.float32)
  dn = (case.data_format, "DHW"[3 - n:] + "IO", case.data_format)
  to_fmt = (lambda a: a) if last else (lambda a: np.moveaxis(a, -1, 1))
  xj = jnp.asarray(to_fmt(x), dtype)
  wj = jnp.asarray(w, dtype)

  def forward(x, w):
    return lax.conv_general_dilated(x, w, s, case.padding, rhs_dilation=d,
                                    dimension_numbers=dn,
                                    feature_group_count=case.groups)
  dyj = jax.jit(forward)(xj, wj)
  dy_last = np.asarray(dyj.astype(jnp.float32) if last else
                       jnp.moveaxis(dyj.astype(jnp.float32), 1, -1))
  sizes = list(_tf_layout(case.input, case.data_format))
  attrs = _attrs(case)

  if case.op == "filter":
    op = getattr(jaxconv.raw_ops, "Conv3DBackpropFilterV2" if n == 3 else
                 "Conv2DBackpropFilter")

    def ours(x, dy):
      return op(input=x, filter_sizes=list(case.filter), out_backprop=dy,
                data_format=case.data_format, **attrs)

    def canonical(x, dy):  # XLA's form: JAX's conv VJP w.r.t. the filter
      return jax.vjp(lambda w: forward(x, w), jnp.zeros(wj.shape, dtype))[1](
          dy)[0]
    args = (xj, dyj)
  else:
    if n == 1:
      def ours(w, dy):
        return jaxconv.nn.conv1d_transpose(
            dy, w, sizes, attrs["strides"], padding=case.padding,
            data_format=case.data_format, dilations=attrs["dilations"])
    elif case.depthwise and case.filter[-1] != case.input[-1]:
      def ours(w, dy):  # the depthwise op itself (a channel multiplier)
        return jaxconv.raw_ops.DepthwiseConv2dNativeBackpropInput(
            input_sizes=sizes, filter=_dw_filter(case, w), out_backprop=dy,
            data_format=case.data_format, **attrs)
    else:
      op = getattr(jaxconv.raw_ops, "Conv3DBackpropInputV2" if n == 3 else
                   "Conv2DBackpropInput")

      def ours(w, dy):
        return op(input_sizes=sizes, filter=w, out_backprop=dy,
                  data_format=case.data_format, **attrs)

    def canonical(w, dy):  # XLA's canonical form: JAX's conv VJP
      return jax.vjp(lambda x: forward(x, w), jnp.zeros(xj.shape, dtype))[1](
          dy)[0]
    args = (wj, dyj)

  cands, compile_s, memory = {}, {}, {}
  for name, fn, fargs in (("jaxconv", ours, args),
                          ("canonical", canonical, args),
                          ("forward_conv", forward, (xj, wj))):
    compiled, secs = compile_seconds(fn, *fargs)
    cands[name] = (lambda c=compiled, a=fargs: c(*a))
    compile_s[name] = secs
    mem = compiled.memory_analysis()
    memory[name] = None if mem is None else int(
        mem.temp_size_in_bytes + mem.output_size_in_bytes)
  strategies = {}
  return dict(cands=cands, compile_s=compile_s, memory=memory, ours=ours,
              args=args, x=x, w_np=w, dy_last=dy_last, strategies=strategies)


def _spec(b, primitive="conv_backprop_input"):
  eqns = jax.make_jaxpr(b["ours"])(*b["args"]).eqns
  return next(e.params["spec"] for e in eqns if e.primitive.name == primitive)


def add_strategies(case, b):
  """Every CPU strategy that applies, forced, for the record."""
  if case.op == "filter":
    return
  spec = _spec(b)
  for name in cpu.STRATEGIES["backprop_input"]:
    if not cpu.applies(name, spec, case.filter):
      continue
    with lowering.force_strategy(name):  # a fresh function: a fresh lowering
      compiled, _ = compile_seconds(lambda *a: b["ours"](*a), *b["args"])
    b["cands"][f"strategy:{name}"] = (lambda c=compiled: c(*b["args"]))


def add_peers(case, b, rng):
  n, fmt = case.ndim, case.data_format
  attrs = _attrs(case)
  try:
    import tensorflow as tf
    tf_dtype = getattr(tf, case.dtype)
    w = tf.constant(b["w_np"], tf_dtype)
    moved = (lambda a: a) if fmt[-1] == "C" else (
        lambda a: np.moveaxis(a, -1, 1))
    dy = tf.constant(moved(b["dy_last"]), tf_dtype)
    x = tf.constant(moved(b["x"]), tf_dtype)
    sizes = tf.constant(_tf_layout(case.input, fmt), tf.int32)
    if case.op == "filter":
      op = (tf.raw_ops.Conv3DBackpropFilterV2 if n == 3 else
            tf.raw_ops.Conv2DBackpropFilter)
      fsizes = tf.constant(case.filter, tf.int32)
      def run():
        return op(input=x, filter_sizes=fsizes, out_backprop=dy,
                  data_format=fmt, **attrs)
    elif n == 1:
      def run():
        return tf.nn.conv1d_transpose(dy, w, list(_tf_layout(case.input, fmt)),
                                      attrs["strides"], padding=case.padding,
                                      data_format=fmt,
                                      dilations=attrs["dilations"])
    elif case.depthwise:
      wd = tf.constant(_dw_filter(case, b["w_np"]), tf_dtype)
      def run():
        return tf.raw_ops.DepthwiseConv2dNativeBackpropInput(
            input_sizes=sizes, filter=wd, out_backprop=dy, data_format=fmt,
            **attrs)
    else:
      op = (tf.raw_ops.Conv3DBackpropInputV2 if n == 3 else
            tf.raw_ops.Conv2DBackpropInput)
      def run():
        return op(input_sizes=sizes, filter=w, out_backprop=dy,
                  data_format=fmt, **attrs)
    run()  # eager TF on CPU returns when the result is computed
    b["cands"]["tensorflow"] = run
  except Exception as e:  # noqa: BLE001 - a peer that cannot run is reported
    progress(f"  tensorflow: n/a ({type(e).__name__}: {str(e)[:80]})")
  try:
    import torch
    tdt = getattr(torch, case.dtype)
    first = lambda a: np.ascontiguousarray(np.moveaxis(a, -1, 1))
    tw = torch.tensor(np.ascontiguousarray(
        np.moveaxis(b["w_np"], (-1, -2), (0, 1)))).to(tdt)  # O I *K
    tdy = torch.tensor(first(b["dy_last"])).to(tdt)
    tx = torch.tensor(first(b["x"])).to(tdt)
    ek = (case.filter[0] - 1) * case.dilation + 1
    pad = 0 if case.padding == "VALID" else (ek - 1) // 2
    kw = dict(stride=case.stride, padding=pad, dilation=case.dilation,
              groups=case.groups)
    if case.op == "filter":
      grad = getattr(torch.nn.grad, f"conv{n}d_weight")
      args = (tx, tw.shape, tdy)
    else:
      grad = getattr(torch.nn.grad, f"conv{n}d_input")
      args = ((case.input[0], case.input[-1], *case.input[1:-1]), tw, tdy)
    def run_torch():
      with torch.no_grad():
        return grad(*args, **kw)
    run_torch()
    b["cands"]["pytorch"] = run_torch
  except Exception as e:  # noqa: BLE001
    progress(f"  pytorch: n/a ({type(e).__name__}: {str(e)[:80]})")


def add_matmul(b, flops, dtype):
  side = max(1, int(round((flops / 2) ** (1 / 3))))
  a = jnp.ones((side, side), dtype)
  mm = jax.jit(lambda a: a @ a)
  b["cands"]["matmul"] = lambda: mm(a)
  b["matmul_flops"] = 2 * side ** 3


def run_case(case, reps, with_strategies, rng):
  b = build(case, rng)
  if with_strategies:
    add_strategies(case, b)
  add_peers(case, b, rng)
  flops = useful_flops(case, b["dy_last"].shape)
  add_matmul(b, flops, jnp.float64 if case.dtype == "float64" else jnp.float32)
  times = interleaved_medians(b["cands"], reps)
  peers = [times[k] for k in ("tensorflow", "pytorch", "canonical") if k in times]
  best_peer = min(peers)
  primitive = "backprop_filter" if case.op == "filter" else "backprop_input"
  strategy, reason = cpu.choose(_spec(b, "conv_" + primitive), case.filter,
                                case.dtype, case.input[0], primitive=primitive)
  return {
      "class": case.name, "strategy": strategy, "reason": reason,
      "ms": {k: v * 1e3 for k, v in times.items()},
      "gflops": {k: (b["matmul_flops"] if k == "matmul" else flops) / v / 1e9
                 for k, v in times.items()},
      "ratio_to_best_peer": times["jaxconv"] / best_peer,
      "speedup_vs_canonical": times["canonical"] / times["jaxconv"],
      "compile_s": b["compile_s"],
      "compile_ratio": b["compile_s"]["jaxconv"] / b["compile_s"]["canonical"],
      "peak_bytes": b["memory"],
  }


def _mb(r, name):
  peak = r["peak_bytes"].get(name)
  return "n/a" if peak is None else f"{peak / 2**20:.1f}"


def print_row(r):
  ms = r["ms"]
  cell = lambda k: f"{ms[k]:8.2f}" if k in ms else "     n/a"
  print(f"{r['class']:34s} {r['strategy']:12s} {cell('jaxconv')} "
        f"{cell('canonical')} {cell('tensorflow')} {cell('pytorch')} "
        f"{cell('forward_conv')} {cell('matmul')} "
        f"{r['ratio_to_best_peer']:6.2f}x {r['speedup_vs_canonical']:7.2f}x "
        f"{r['compile_ratio']:5.2f}x {_mb(r, 'jaxconv'):>7s} "
        f"{_mb(r, 'canonical'):>7s}", flush=True)
  extra = {k: v for k, v in ms.items() if k.startswith("strategy:")}
  if extra:
    print("    " + "  ".join(f"{k[9:]} {v:.2f} ms" for k, v in extra.items()))


def chart(results, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  names = [r["class"] for r in results]
  ratios = [r["ratio_to_best_peer"] for r in results]
  fig, ax = plt.subplots(figsize=(10, 0.45 * len(names) + 1.5))
  colors = ["tab:green" if v <= 1.0 else "tab:orange" if v <= 1.25 else
            "tab:red" for v in ratios]
  ax.barh(names, ratios, color=colors)
  ax.axvline(1.0, color="k", lw=1)
  ax.axvline(1.25, color="k", lw=1, ls="--")
  ax.invert_yaxis()
  ax.set_xlabel("jaxconv time / best of (TF, PyTorch, XLA canonical)  "
                "(< 1 is faster)")
  ax.set_title("jaxconv's transposed-convolution family on CPU")
  for i, v in enumerate(ratios):
    ax.text(v, i, f" {v:.2f}x", va="center")
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def class_arguments(parser) -> None:
  """--quick, --reps, --classes, --out: how a benchmark over the suite's
  classes picks them (see `selected_cases`)."""
  parser.add_argument("--quick", action="store_true",
                      help="smoke run: 3 classes, 3 repetitions")
  parser.add_argument("--reps", type=int, default=15)
  parser.add_argument("--classes", help="comma-separated class keys "
                      f"({', '.join(_key(c) for c in CASES)})")
  parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))


def selected_cases(parser, args, quick) -> tuple[list, int]:
  """(classes, repetitions) the `class_arguments` flags ask for; `quick`:
  the --quick classes."""
  cases = CASES
  if args.classes:
    keys = args.classes.split(",")
    unknown = sorted(set(keys) - {_key(c) for c in CASES})
    if unknown:
      parser.error(f"unknown class keys {unknown}; choose from "
                   f"{', '.join(_key(c) for c in CASES)}")
    cases = [c for c in CASES if _key(c) in keys]
  elif args.quick:
    cases = list(quick)
  return cases, 3 if args.quick else args.reps


def main(argv=None):
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  class_arguments(parser)
  parser.add_argument("--strategies", action="store_true",
                      help="also time every applicable CPU strategy")
  args = parser.parse_args(argv)
  steady_allocator()
  jax.config.update("jax_enable_x64", True)
  cases, reps = selected_cases(parser, args, (CASES[1], CASES[7], CASES[13]))
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  print(f"{'class':34s} {'strategy':12s} {'jaxconv':>8s} {'canon.':>8s} "
        f"{'TF':>8s} {'torch':>8s} {'fwd':>8s} {'matmul':>8s} {'/best':>7s} "
        f"{'vs can.':>8s} {'compile':>6s} {'MB':>7s} {'can. MB':>7s}   "
        "(ms; MB: peak temp + output memory, XLA's memory analysis)")
  results = []
  rng = np.random.default_rng(0)
  progress(f"warming up on {cases[0].name} (untimed) ...")
  run_case(cases[0], 3, False, np.random.default_rng(0))
  for i, case in enumerate(cases):
    progress(f"[{i + 1}/{len(cases)}] {case.name} ...")
    r = run_case(case, reps, args.strategies, rng)
    results.append(r)
    print_row(r)
  (out / "suite.json").write_text(json.dumps(results, indent=2))
  if importlib.util.find_spec("matplotlib") is None:
    progress(f"wrote {out / 'suite.json'}; no chart: matplotlib is missing "
             "(pip install -e '.[bench]')")
    return
  chart(results, out / "suite.png")
  progress(f"wrote {out / 'suite.json'} and {out / 'suite.png'}")


if __name__ == "__main__":
  main()
