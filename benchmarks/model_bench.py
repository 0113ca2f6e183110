"""Whole-model CPU benchmark: training steps and forward passes of
transposed-conv models in jaxconv, TF, PyTorch and `lax.conv_transpose`.

    python benchmarks/model_bench.py                 # every model
    python benchmarks/model_bench.py --models dcgan --reps 5
    python benchmarks/model_bench.py --no-native     # jaxconv on XLA's strategies
    python benchmarks/model_bench.py --busy 2        # with 2 other threads busy
    python benchmarks/model_bench.py --glibc-default # without keep_freed_memory

Models (k3/k5 stride-2 SAME transposed convolutions, ReLU between, no bias):
  decoder  8x8x256 -> 128x128x16 in four layers, then a stride-1 16 -> 3
           layer at 128x128 (the thin late layers every decoder ends with), N8
  dcgan    the DCGAN generator's convolutions, 4x4x512 -> 64x64x3, k5, N8
  decoder3d  4^3x64 -> 32^3x8 in three layers, N2
A training step is the loss (mean square of the output) and the gradients
of every filter; a forward pass the output alone.  Every candidate computes
the same function of the same weights (checked against jaxconv before
timing); medians over interleaved repetitions in one process.  The table
gives ms per step, the ratio to TF's, jaxconv's compile time beside lax's
(and the time its native back end spent at first calls timing each
configuration's layouts, with their count), jaxconv's achieved GFLOP/s and
the machine's float32 matmul rate.  The
process runs with `jaxconv.cpu_memory.keep_freed_memory()` (every
candidate alike) unless --glibc-default.  Writes
benchmarks/results/model_bench.json.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import time

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
from benchmarks.timing import (interleaved_medians, progress,  # noqa: E402
                               steady_allocator)
from jaxconv.lowering.cpu import onednn  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Model:
  name: str
  batch: int
  start: tuple  # the first activation's spatial sizes and channels
  layers: tuple  # (kernel, stride, out channels) per layer


MODELS = {
    "decoder": Model("decoder", 8, (8, 8, 256),
                     ((3, 2, 128), (3, 2, 64), (3, 2, 32), (3, 2, 16),
                      (3, 1, 3))),
    "dcgan": Model("dcgan", 8, (4, 4, 512),
                   ((5, 2, 256), (5, 2, 128), (5, 2, 64), (5, 2, 3))),
    "decoder3d": Model("decoder3d", 2, (4, 4, 4, 64),
                       ((3, 2, 32), (3, 2, 16), (3, 2, 8))),
}


def shapes(model):
  """[(input shape, filter shape [*K, C_out, C_in], output shape)] per layer
  (channels last; TF's transposed-conv filter layout)."""
  *spatial, c = model.start
  out = []
  for k, s, co in model.layers:
    n = len(spatial)
    x = (model.batch, *spatial, c)
    spatial = [d * s for d in spatial]
    out.append((x, (k,) * n + (co, c), (model.batch, *spatial, co)))
    c = co
  return out


def flops(model):
  """Useful multiply-adds x 2 of the forward pass: every input value times
  every tap and output channel."""
  return sum(2 * np.prod(x) * np.prod(w[:-2]) * w[-2]
             for x, w, _ in shapes(model))


def init(model, rng):
  layers = shapes(model)
  ws = [(rng.standard_normal(w) / np.sqrt(np.prod(w[:-2]) * w[-1])).astype(
      np.float32) for _, w, _ in layers]
  x = rng.standard_normal(layers[0][0]).astype(np.float32)
  return x, ws


# -- jaxconv and lax ----------------------------------------------------------

def _jaxconv_layer(h, w, y_shape, stride):
  n = h.ndim - 2
  op = jaxconv.nn.conv2d_transpose if n == 2 else jaxconv.nn.conv3d_transpose
  return op(h, w, y_shape, (1, stride, stride, 1) if n == 2 else
            (1, stride, stride, stride, 1), padding="SAME")


def _lax_layer(h, w, y_shape, stride):
  del y_shape  # lax's SAME gives size * stride, as TF's here
  n = h.ndim - 2
  # transpose_kernel swaps the kernel's I and O: TF's [*K, C_out, C_in] reads
  # as the forward conv's HWIO.
  dims = ("NHWC", "HWIO", "NHWC") if n == 2 else ("NDHWC", "DHWIO", "NDHWC")
  return lax.conv_transpose(h, w, (stride,) * n, "SAME",
                            dimension_numbers=dims, transpose_kernel=True)


def jax_forward(model, layer):
  strides = [s for _, s, _ in model.layers]
  outs = [y for _, _, y in shapes(model)]

  def forward(x, ws):
    h = x
    for i, (w, s, y) in enumerate(zip(ws, strides, outs)):
      h = layer(h, w, y, s)
      if i + 1 < len(ws):
        h = jax.nn.relu(h)
    return h
  return forward


def jax_step(forward):
  def step(x, ws):
    return jax.value_and_grad(lambda ws: jnp.mean(forward(x, ws) ** 2))(ws)
  return step


# -- peers ---------------------------------------------------------------------

def tf_candidates(model, x, ws):
  import tensorflow as tf
  strides = [s for _, s, _ in model.layers]
  outs = [y for _, _, y in shapes(model)]
  n = x.ndim - 2
  op = tf.nn.conv2d_transpose if n == 2 else tf.nn.conv3d_transpose
  tx = tf.constant(x)
  tws = [tf.Variable(w) for w in ws]

  def forward_fn(x):
    h = x
    for i, (w, s, y) in enumerate(zip(tws, strides, outs)):
      h = op(h, w, y, s, padding="SAME")
      if i + 1 < len(tws):
        h = tf.nn.relu(h)
    return h

  forward = tf.function(forward_fn)

  @tf.function
  def step(x):
    with tf.GradientTape() as tape:
      loss = tf.reduce_mean(forward_fn(x) ** 2)
    return loss, tape.gradient(loss, tws)

  return (lambda: forward(tx).numpy(),
          lambda: [g.numpy() for g in step(tx)[1]])


def torch_candidates(model, x, ws):
  import torch
  n = x.ndim - 2
  op = torch.nn.functional.conv_transpose2d if n == 2 else (
      torch.nn.functional.conv_transpose3d)
  first = lambda a: np.ascontiguousarray(np.moveaxis(a, -1, 1))
  tx = torch.tensor(first(x))
  # TF's [*K, C_out, C_in] is PyTorch's [C_in, C_out, *K] transposed.
  tws = [torch.tensor(np.ascontiguousarray(np.moveaxis(w, (-1, -2), (0, 1))),
                      requires_grad=True) for w in ws]

  def forward_fn():
    h = tx
    for i, (w, (k, s, _)) in enumerate(zip(tws, model.layers)):
      # TF's SAME pads the forward conv (need // 2, need - need // 2), need
      # = k - s: PyTorch's symmetric padding of the smaller side, then the
      # one surplus position at the end cropped.
      size = [d * s for d in h.shape[2:]]
      h = op(h, w, stride=s, padding=max(k - s, 0) // 2)
      h = h[(..., *(slice(0, d) for d in size))]
      if i + 1 < len(tws):
        h = torch.relu(h)
    return h

  def forward():
    with torch.no_grad():
      return forward_fn()

  def step():
    for w in tws:
      w.grad = None
    loss = (forward_fn() ** 2).mean()
    loss.backward()
    return [w.grad for w in tws]
  return forward, step, lambda t: np.moveaxis(t.detach().numpy(), 1, -1)


def matmul_gflops():
  a = jnp.ones((2048, 2048), jnp.float32)
  mm = jax.jit(lambda a: a @ a)
  t = interleaved_medians({"mm": lambda: mm(a)}, 10)["mm"]
  return 2 * 2048 ** 3 / t / 1e9


def _compile(fn, *args):
  t = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  return compiled, time.perf_counter() - t


def run_model(model, reps, rng):
  x, ws_np = init(model, rng)
  x_j, ws = jnp.asarray(x), [jnp.asarray(w) for w in ws_np]
  ours_fwd = jax_forward(model, _jaxconv_layer)
  lax_fwd = jax_forward(model, _lax_layer)
  row = {"model": model.name, "gflop": 3 * flops(model) / 1e9}
  tuned_before = onednn.layout_tuning()
  cands = {"forward": {}, "step": {}}
  compiled = {}
  for label, fwd in (("jaxconv", ours_fwd), ("lax", lax_fwd)):
    f, tf_ = _compile(fwd, x_j, ws)
    s, ts = _compile(jax_step(fwd), x_j, ws)
    compiled[label] = (f, s)
    row[f"compile_{label}_s"] = ts
    cands["forward"][label] = lambda f=f: f(x_j, ws)
    cands["step"][label] = lambda s=s: s(x_j, ws)
  want_y = np.asarray(compiled["jaxconv"][0](x_j, ws))
  want_g = [np.asarray(g) for g in compiled["jaxconv"][1](x_j, ws)[1]]
  # The native layouts are timed at each configuration's first call.
  row["layouts_tuned"], row["tuning_s"] = (
      a - b for a, b in zip(onednn.layout_tuning(), tuned_before))
  for label in ("lax",):
    got = np.asarray(compiled[label][0](x_j, ws))
    row[f"max_diff_{label}"] = float(np.abs(got - want_y).max())
  try:
    tf_fwd, tf_step = tf_candidates(model, x, ws_np)
    row["max_diff_tensorflow"] = float(np.abs(tf_fwd() - want_y).max())
    row["max_grad_diff_tensorflow"] = max(
        float(np.abs(a - b).max()) for a, b in zip(tf_step(), want_g))
    cands["forward"]["tensorflow"], cands["step"]["tensorflow"] = (
        tf_fwd, tf_step)
  except ImportError as e:
    progress(f"  tensorflow: n/a ({e})")
  try:
    t_fwd, t_step, to_last = torch_candidates(model, x, ws_np)
    row["max_diff_pytorch"] = float(np.abs(to_last(t_fwd()) - want_y).max())
    cands["forward"]["pytorch"], cands["step"]["pytorch"] = t_fwd, t_step
  except ImportError as e:
    progress(f"  pytorch: n/a ({e})")
  for what, calls in cands.items():
    progress(f"  {model.name}: timing {what} ({', '.join(calls)})")
    for k, v in interleaved_medians(calls, reps, budget_s=60).items():
      row[f"{what}_{k}_ms"] = v * 1e3
  return row


def print_table(rows, mm):
  peers = ("jaxconv", "tensorflow", "pytorch", "lax")
  print(f"\nfloat32 matmul (2048^3): {mm:.0f} GFLOP/s")
  head = f"{'model':<10} {'what':<8}" + "".join(f"{p:>11}" for p in peers)
  print(head + f"{'vs TF':>8}{'GFLOP/s':>9}{'compile ours/lax s':>20}"
        f"{'layout tuning s':>17}")
  for r in rows:
    for what in ("step", "forward"):
      ms = [r.get(f"{what}_{p}_ms") for p in peers]
      cells = "".join(f"{m:>11.1f}" if m else f"{'n/a':>11}" for m in ms)
      ratio = (ms[0] / ms[1]) if ms[1] else float("nan")
      gf = r["gflop"] / (3 if what == "forward" else 1) / (ms[0] / 1e3)
      comp = (f"{r['compile_jaxconv_s']:.2f} / {r['compile_lax_s']:.2f}"
              if what == "step" else "")
      tuning = (f"{r['tuning_s']:.3f} ({r['layouts_tuned']})"
                if what == "step" else "")
      print(f"{r['model']:<10} {what:<8}{cells}{ratio:>8.2f}{gf:>9.1f}"
            f"{comp:>20}{tuning:>17}")
  print("max |difference| from jaxconv (forward; TF's gradients):")
  for r in rows:
    print(f"  {r['model']:<10} " + ", ".join(
        f"{k.removeprefix('max_')}: {v:.1e}" for k, v in r.items()
        if k.startswith("max_")))


def main(argv=None):
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--models", default=",".join(MODELS),
                      help=f"comma-separated, from {', '.join(MODELS)}")
  parser.add_argument("--reps", type=int, default=9)
  parser.add_argument("--no-native", action="store_true",
                      help="run jaxconv with its oneDNN back end off "
                           "(JAXCONV_ONEDNN=0): XLA's strategies")
  parser.add_argument("--busy", type=int, default=0, metavar="N",
                      help="keep N other processes spinning while timing "
                           "(oversubscription: oneDNN's OpenMP threads and "
                           "XLA's share the cores with them)")
  parser.add_argument("--glibc-default", action="store_true",
                      help="leave glibc's allocator as it starts (large "
                           "temporaries faulted in afresh every step) instead "
                           "of jaxconv.cpu_memory.keep_freed_memory()")
  parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
  args = parser.parse_args(argv)
  if args.no_native:
    os.environ["JAXCONV_ONEDNN"] = "0"
  steady_allocator()
  if not args.glibc_default:
    from jaxconv import cpu_memory
    cpu_memory.keep_freed_memory()  # before JAX's first computation
  names = args.models.split(",")
  unknown = sorted(set(names) - set(MODELS))
  if unknown:
    parser.error(f"unknown models {unknown}; choose from {', '.join(MODELS)}")
  rng = np.random.default_rng(0)
  spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
              for _ in range(args.busy)]
  try:
    mm = matmul_gflops()
    rows = []
    for name in names:
      progress(f"{name}: compiling")
      rows.append(run_model(MODELS[name], args.reps, rng))
  finally:
    for p in spinners:
      p.kill()
      p.wait()
  print_table(rows, mm)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  suffix = ("_xla" if args.no_native else "") + (
      f"_busy{args.busy}" if args.busy else "") + (
      "_glibc" if args.glibc_default else "")
  (out / f"model_bench{suffix}.json").write_text(json.dumps(
      {"matmul_gflops": mm, "native": not args.no_native,
       "keep_freed_memory": not args.glibc_default, "rows": rows},
      indent=1))


if __name__ == "__main__":
  main()
