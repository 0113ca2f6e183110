"""Weak scaling of the op on simulated CPU devices (informative: they share
the machine's cores).  Per-device batch fixed; devices 1, 2, 4, 8.

    python benchmarks/sharding_bench.py [--quick]
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

import jaxconv  # noqa: E402
from benchmarks.timing import interleaved_medians, progress  # noqa: E402


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--per-device-batch", type=int, default=2)
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  w = jnp.asarray(rng.standard_normal((3, 3, 64, 128)), jnp.float32)
  rows = []
  for n in (1, 2, 4, 8):
    batch = args.per_device_batch * n
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:n]), ("data",))
    dy = jax.device_put(
        jnp.asarray(rng.standard_normal((batch, 32, 32, 128)), jnp.float32),
        NamedSharding(mesh, P("data")))
    ws = jax.device_put(w, NamedSharding(mesh, P()))
    f = jax.jit(lambda w, dy, batch=batch: jaxconv.conv2d_backprop_input(
        [batch, 64, 64, 64], w, dy, [1, 2, 2, 1], "SAME"))
    progress(f"{n} device(s), batch {batch} ...")
    t = interleaved_medians({"step": lambda: f(ws, dy)}, 3 if args.quick else 10)
    rows.append((n, batch, t["step"]))
  base = rows[0][2]
  print(f"{'devices':>8} {'batch':>6} {'ms':>9} {'efficiency':>11}")
  for n, batch, t in rows:
    print(f"{n:8d} {batch:6d} {t * 1e3:9.2f} {base / t:10.2f}x")


if __name__ == "__main__":
  main()
