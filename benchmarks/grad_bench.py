"""Gradients through the op vs the standard convolutions of the same geometry.

    python benchmarks/grad_bench.py [--quick] [--json out.json]

For each layer (2-D, 3-D and 1-D, through `jaxconv.nn.conv_transpose`):
d/d(out_backprop) through the op (a forward conv inside)
vs `lax.conv_general_dilated` itself; d/d(filter) through the op vs JAX's
filter gradient of that forward conv; and a vmapped batch of B filters vs
one call (the vmapped batch should cost about B single calls' FLOPs in ONE
grouped call).  Target: within 1.25x of the standard convolutions (CPU);
for grouped layers the standard ones are XLA CPU's grouped convolutions,
which the op's gradients avoid (lowering/cpu/grouped.py), so expect ratios far
below 1 there (and a slow run: XLA's grouped filter gradient takes seconds).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import jaxconv  # noqa: E402
from benchmarks.timing import (interleaved_medians, progress,  # noqa: E402
                               steady_allocator)

# name: (input channels-last, filter [*K, C/groups, C_out], stride)
LAYERS = {
    "unet-up s2 64x64 64<-128 k3 N8": ((8, 64, 64, 64), (3, 3, 64, 128), 2),
    "dcgan s2 32x32 128<-256 k5 N16": ((16, 32, 32, 128), (5, 5, 128, 256), 2),
    "dense s1 56x56 64->64 k3 N8": ((8, 56, 56, 64), (3, 3, 64, 64), 1),
    "grouped g32 s1 28x28 256 k3 N8": ((8, 28, 28, 256), (3, 3, 8, 256), 1),
    "depthwise s2 56x56 128 k3 N8": ((8, 56, 56, 128), (3, 3, 1, 128), 2),
    "3d unet-up s2 32^3 32<-64 k3 N1": ((1, 32, 32, 32, 32), (3, 3, 3, 32, 64),
                                        2),
    "3d dense s1 24^3 32 k3 N1": ((1, 24, 24, 24, 32), (3, 3, 3, 32, 32), 1),
    "1d k16 s8 8192 128<-256 N4": ((4, 8192, 128), (16, 128, 256), 8),
    "1d k4 s2 4096 64 N8": ((8, 4096, 64), (4, 64, 64), 2),
}


def bench_layer(x_shape, w_shape, stride, reps, vmap_b):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal(x_shape), jnp.float32)
  w = jnp.asarray(rng.standard_normal(w_shape), jnp.float32)
  n = len(x_shape) - 2
  s = (stride,) * n
  fmt = {1: "NWC", 2: "NHWC", 3: "NDHWC"}[n]
  dn = (fmt, "DHW"[3 - n:] + "IO", fmt)
  fwd = lambda x, w: lax.conv_general_dilated(
      x, w, s, "SAME", dimension_numbers=dn,
      feature_group_count=x_shape[-1] // w_shape[-2])
  dy = fwd(x, w)
  op = lambda w, dy: jaxconv.nn.conv_transpose(dy, w, list(x_shape), stride)
  ct = x  # cotangent of the op's result (input-shaped)
  grad_dy = jax.jit(lambda w, dy, ct: jax.vjp(lambda d: op(w, d), dy)[1](ct)[0])
  grad_w = jax.jit(lambda w, dy, ct: jax.vjp(lambda v: op(v, dy), w)[1](ct)[0])
  std_fwd = jax.jit(fwd)
  std_wgrad = jax.jit(lambda x, w, dy: jax.vjp(lambda v: fwd(x, v), w)[1](dy)[0])
  single = jax.jit(op)
  ws = jnp.stack([w] * vmap_b)
  batched = jax.jit(jax.vmap(op, in_axes=(0, None)))
  t = interleaved_medians({
      "op_grad_dy": lambda: grad_dy(w, dy, ct),
      "forward_conv": lambda: std_fwd(ct, w),
      "op_grad_w": lambda: grad_w(w, dy, ct),
      "filter_grad_conv": lambda: std_wgrad(ct, w, dy),
      "op_single": lambda: single(w, dy),
      f"op_vmap_{vmap_b}_filters": lambda: batched(ws, dy),
  }, reps)
  return t, {
      "grad_dy / forward_conv": t["op_grad_dy"] / t["forward_conv"],
      "grad_w / filter_grad_conv": t["op_grad_w"] / t["filter_grad_conv"],
      f"vmap {vmap_b} filters / ({vmap_b} x single)":
          t[f"op_vmap_{vmap_b}_filters"] / (vmap_b * t["op_single"]),
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--quick", action="store_true", help="few reps, one layer")
  parser.add_argument("--reps", type=int, default=15)
  parser.add_argument("--vmap", type=int, default=4, help="B for the vmap row")
  parser.add_argument("--json", help="write results here")
  parser.add_argument("--layers", help="comma-separated substrings of layer "
                      f"names ({'; '.join(LAYERS)})")
  args = parser.parse_args()
  steady_allocator()
  layers = dict(list(LAYERS.items())[:1]) if args.quick else LAYERS
  if args.layers:
    keys = args.layers.split(",")
    layers = {k: v for k, v in LAYERS.items() if any(p in k for p in keys)}
  reps = 3 if args.quick else args.reps
  results = {}
  for i, (name, (xs, ws, s)) in enumerate(layers.items()):
    progress(f"[{i + 1}/{len(layers)}] {name} ...")
    times, ratios = bench_layer(xs, ws, s, reps, args.vmap)
    results[name] = {"ms": {k: v * 1e3 for k, v in times.items()},
                     "ratios": ratios}
    for k, v in times.items():
      print(f"  {k:28s} {v * 1e3:9.2f} ms")
    for k, v in ratios.items():
      print(f"  {k:28s} {v:9.2f}x")
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
  main()
