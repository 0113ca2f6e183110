"""jaxconv.equinox.ConvTranspose vs Equinox's own eqx.nn.ConvTranspose.

The same layer (PyTorch's convention: k3 s2 padding 1 output_padding 1,
channels first) in both, N8 32x32x128 -> 64x64x64 by default: the
forward pass and the weight gradient of a mean-square loss, each under
eqx.filter_jit, interleaved in one process; the results are compared.

    python benchmarks/equinox_bench.py [--reps N] [--size 32] [--channels 128,64]

Writes a table and `results/equinox_bench.json`.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import equinox as eqx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import jaxconv.equinox  # noqa: E402
from benchmarks.timing import (interleaved_medians, progress,  # noqa: E402
                               steady_allocator)


def _loss(layer, x):
  return jnp.mean(jax.vmap(layer)(x) ** 2)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--reps", type=int, default=9)
  parser.add_argument("--size", type=int, default=32, help="input H = W")
  parser.add_argument("--channels", default="128,64", help="in,out")
  parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
  args = parser.parse_args(argv)
  steady_allocator()
  c_in, c_out = map(int, args.channels.split(","))
  key = jax.random.PRNGKey(0)
  options = dict(stride=2, padding=1, output_padding=1, key=key)
  ours = jaxconv.equinox.ConvTranspose(2, c_in, c_out, 3, **options)
  theirs = eqx.nn.ConvTranspose(2, c_in, c_out, 3, **options)
  # The same weights: TF's [kh, kw, out, in] -> Equinox's flipped
  # [out, in, kh, kw] (equinox issues 574, 779).
  theirs = eqx.tree_at(
      lambda m: (m.weight, m.bias), theirs,
      (jnp.transpose(ours.weight, (2, 3, 0, 1))[:, :, ::-1, ::-1],
       ours.bias.reshape(theirs.bias.shape)))
  layers = {"jaxconv": ours, "equinox": theirs}
  x = jax.random.normal(key, (8, c_in, args.size, args.size))
  calls, results = {}, {}
  for name, layer in layers.items():
    progress(f"compiling {name} ...")
    forward = eqx.filter_jit(lambda m, x: jax.vmap(m)(x))
    grad = eqx.filter_jit(eqx.filter_grad(_loss))
    results[name] = (np.asarray(forward(layer, x)),
                     np.asarray(grad(layer, x).weight))
    calls[f"{name} forward"] = lambda f=forward, m=layer: f(m, x)
    calls[f"{name} weight gradient"] = lambda g=grad, m=layer: g(m, x).weight
  ours_y, ours_dw = results["jaxconv"]
  theirs_y, theirs_dw = results["equinox"]
  theirs_dw = np.transpose(theirs_dw[:, :, ::-1, ::-1], (2, 3, 0, 1))
  diffs = [float(np.max(np.abs(a - b)) / max(1.0, np.max(np.abs(b))))
           for a, b in ((ours_y, theirs_y), (ours_dw, theirs_dw))]
  progress(f"timing ({args.reps} interleaved repetitions) ...")
  ms = {k: v * 1e3 for k, v in interleaved_medians(calls, args.reps,
                                                   budget_s=120).items()}
  print(f"N8 {args.size}x{args.size}x{c_in} -> {2 * args.size}x"
        f"{2 * args.size}x{c_out}, k3 s2 (ms, medians)")
  for part, diff in zip(("forward", "weight gradient"), diffs):
    ours, theirs = ms[f"jaxconv {part}"], ms[f"equinox {part}"]
    print(f"  {part:16s} jaxconv {ours:8.2f}  eqx.nn {theirs:8.2f}  "
          f"eqx / jaxconv {theirs / ours:6.1f}x  max diff {diff:.1e}")
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  (out / "equinox_bench.json").write_text(json.dumps(
      {"ms": ms, "max_rel_diff": dict(zip(("forward", "weight_gradient"),
                                          diffs)),
       "equinox": eqx.__version__, "jax": jax.__version__}, indent=1))
  progress(f"wrote {out / 'equinox_bench.json'}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
