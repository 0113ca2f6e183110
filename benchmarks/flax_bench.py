"""One training step of a small Flax U-Net decoder: jaxconv's layers vs Flax's.

    python benchmarks/flax_bench.py [--reps 7] [--batch 4] [--json out.json]

The decoder is 4 up layers (k3, stride 2, "SAME": each doubles the size,
ReLU between), 8x8x256 -> 128x128x16, channels last, float32, built once
with `jaxconv.flax.nnx.ConvTranspose` and once with `flax.nnx.ConvTranspose`
(same shapes and FLOPs).  A step is the loss (MSE to a fixed target), its
gradient w.r.t. every parameter and an SGD update, jitted.  Reported: the
compile time of the step and its median time (interleaved repetitions in
one process, CPU).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from benchmarks.timing import (compile_seconds, interleaved_medians,  # noqa: E402
                               progress, steady_allocator)
from jaxconv.flax import nnx as jaxconv_nnx  # noqa: E402

CHANNELS = (256, 128, 64, 32, 16)
LAYERS = {"jaxconv.flax.nnx.ConvTranspose": jaxconv_nnx.ConvTranspose,
          "flax.nnx.ConvTranspose": nnx.ConvTranspose}


class Decoder(nnx.Module):
  def __init__(self, layer_cls, rngs):
    self.ups = nnx.List([layer_cls(a, b, (3, 3), (2, 2), padding="SAME",
                                   rngs=rngs)
                         for a, b in zip(CHANNELS, CHANNELS[1:])])

  def __call__(self, x):
    for i, up in enumerate(self.ups):
      x = up(x)
      if i + 1 < len(self.ups):
        x = jax.nn.relu(x)
    return x


def make_step(layer_cls, x, target):
  graphdef, params = nnx.split(Decoder(layer_cls, nnx.Rngs(0)))

  def step(params, x, target):
    def loss(params):
      return jnp.mean((nnx.merge(graphdef, params)(x) - target) ** 2)
    value, grads = jax.value_and_grad(loss)(params)
    return value, jax.tree.map(lambda p, g: p - 1e-3 * g, params, grads)

  compiled, seconds = compile_seconds(step, params, x, target)
  return (lambda: compiled(params, x, target)), seconds


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--reps", type=int, default=7,
                      help="interleaved timed steps per candidate (default 7)")
  parser.add_argument("--batch", type=int, default=4, help="batch size (default 4)")
  parser.add_argument("--json", type=pathlib.Path, help="also write results here")
  args = parser.parse_args(argv)
  steady_allocator()
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((args.batch, 8, 8, CHANNELS[0])),
                  jnp.float32)
  target = jnp.asarray(rng.standard_normal((args.batch, 128, 128, CHANNELS[-1])),
                       jnp.float32)
  calls, compile_s = {}, {}
  for name, cls in LAYERS.items():
    progress(f"compiling the training step with {name} ...")
    calls[name], compile_s[name] = make_step(cls, x, target)
  progress(f"timing {args.reps} interleaved steps each ...")
  step_s = interleaved_medians(calls, args.reps, budget_s=120)
  ours, theirs = LAYERS
  print(f"Flax U-Net decoder training step, batch {args.batch}, "
        f"8x8x256 -> 128x128x16 (4 up layers k3 s2), CPU")
  print(f"{'layer':34} {'compile s':>10} {'step ms':>9}")
  for name in LAYERS:
    print(f"{name:34} {compile_s[name]:10.2f} {step_s[name] * 1e3:9.1f}")
  print(f"step time ratio (jaxconv / flax): {step_s[ours] / step_s[theirs]:.2f}")
  if args.json:
    args.json.write_text(json.dumps(
        {"batch": args.batch, "compile_s": compile_s, "step_s": step_s},
        indent=1))
  return 0


if __name__ == "__main__":
  sys.exit(main())
