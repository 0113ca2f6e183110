"""Sharded execution checks on 8 simulated CPU devices (run in its own process).

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m tests.sharding_main

tests/test_sharding.py runs this in a child process (the flag must be set
before JAX starts) and reads the JSON summary it prints last: for each
CPU strategy and sharding pattern, whether values match one device and the
collectives in the compiled step.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

import jaxconv  # noqa: E402
from jaxconv import lowering  # noqa: E402

COLLECTIVES = ("all-reduce", "all-gather", "all-to-all", "reduce-scatter",
               "collective-permute")
# strategy family: (input_sizes NHWC, filter); stride 2, SAME.
LAYERS = {
    "dense": ([16, 16, 16, 8], (3, 3, 8, 16)),
    "grouped": ([16, 16, 16, 8], (3, 3, 2, 16)),      # 4 groups
    "depthwise": ([16, 16, 16, 16], (3, 3, 1, 16)),   # 16 groups
}


def layer_of(strategy):
  return strategy if strategy in LAYERS else "dense"


def collectives(compiled_text: str) -> dict[str, int]:
  counts = {}
  for name in COLLECTIVES:
    # The result type may be a tuple (XLA combines collectives): match the
    # op name between a space and its operand list.
    n = len(re.findall(rf" {name}(-start)?\(", compiled_text))
    if n:
      counts[name] = n
  return counts


def run_pattern(mesh, w, dy, w_spec, dy_spec, fn, *more):
  """fn(w, dy, *more) with the given shardings (`more`: (array, spec) pairs)."""
  args = [jax.device_put(a, NamedSharding(mesh, spec)) for a, spec in
          ((w, w_spec), (dy, dy_spec), *more)]
  f = jax.jit(fn)
  out = f(*args)
  text = f.lower(*args).compile().as_text()
  return out, collectives(text)


def run_recorded(strategy, *args):
  """run_pattern(*args) with `strategy` forced; also the strategies that
  lowered, per primitive."""
  with lowering.force_strategy(strategy) as lowered:
    out, counts = run_pattern(*args)
  return out, counts, dataclasses.asdict(lowered)


def check(dtype, strategy) -> dict:
  sizes, filter_shape = LAYERS[layer_of(strategy)]
  dense = layer_of(strategy) == "dense"

  def op(w, dy):
    return jaxconv.conv2d_backprop_input(sizes, w, dy, [1, 2, 2, 1], "SAME")

  rng = np.random.default_rng(0)
  # NumPy operands: device_put of a host array onto a sharding transfers
  # its shards; that of a jax.Array compiles a slicing program each time.
  w = np.asarray(rng.standard_normal(filter_shape), dtype)
  dy = np.asarray(rng.standard_normal((16, 8, 8, 16)), dtype)
  want = jax.jit(op)(w, dy)
  tol = 1e-5 if dtype == jnp.float32 else 1e-12
  devices = np.array(jax.devices())
  data = jax.sharding.Mesh(devices, ("data",))
  grid = jax.sharding.Mesh(devices.reshape(4, 2), ("data", "model"))
  results = {}

  def record(name, out, counts, expect_spec=None):
    np.testing.assert_allclose(np.asarray(out), np.asarray(want), rtol=tol,
                               atol=tol, err_msg=name)
    entry = {"collectives": counts}
    if expect_spec is not None:
      got = out.sharding.spec
      assert tuple(got)[:len(expect_spec)] == tuple(expect_spec), (name, got)
      entry["out_spec"] = str(got)
    results[name] = entry

  out, c = run_pattern(data, w, dy, P(), P("data"), op)
  assert not set(c) & {"all-gather", "all-to-all", "collective-permute"}, c
  record("data_parallel", out, c, P("data"))

  if dense:  # channel patterns need a filter in-depth the mesh divides
    out, c = run_pattern(data, w, dy, P(None, None, "data", None), P(), op)
    record("filter_in_channels", out, c, P(None, None, None, "data"))

    out, c = run_pattern(data, w, dy, P(None, None, None, "data"),
                         P(None, None, None, "data"), op)
    record("filter_out_channels_with_dy_channels", out, c)

    out, c = run_pattern(grid, w, dy, P(None, None, None, "model"),
                         P("data", None, None, "model"), op)
    record("2d_data_and_channels", out, c, P("data"))

  # shard_map: each shard calls the op on its local batch (2-entry sizes
  # where the filter gives the depth, else the local batch in 4 entries).
  def local(w, dy):
    local_sizes = sizes[1:3] if dense else [dy.shape[0], *sizes[1:]]
    return jaxconv.conv2d_backprop_input(local_sizes, w, dy, [1, 2, 2, 1],
                                         "SAME")
  mapped = jax.shard_map(local, mesh=data, in_specs=(P(), P("data")),
                         out_specs=P("data"))
  out, c, lowered = run_recorded(strategy, data, w, dy, P(), P("data"), mapped)
  record("shard_map", out, c, P("data"))
  results["shard_map"]["lowered"] = lowered

  # Data-parallel training step (the incoming gradient is batch-sharded
  # too): the filter gradient is one all-reduce.
  ct = np.asarray(rng.standard_normal(want.shape), dtype)
  def grads(w, dy, ct):
    return jax.grad(lambda w, dy: jnp.vdot(op(w, dy), ct), argnums=(0, 1))(w, dy)
  want_g = jax.jit(grads)(w, dy, ct)  # one compile, not one per primitive
  (gw, gdy), c, lowered = run_recorded(strategy, data, w, dy, P(), P("data"),
                                       grads, (ct, P("data")))
  for a, b in ((gw, want_g[0]), (gdy, want_g[1])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol * 10,
                               atol=tol * 10)
  # Grouped layers too: XLA's SPMD partitioner all-gathers the batch of a
  # grouped convolution (feature_group_count > 1), but on CPU the partner
  # convolutions of a grouped op are dense sub-problems (lowering/cpu/grouped.py).
  assert c == {"all-reduce": 1}, c
  assert tuple(gdy.sharding.spec)[:1] == ("data",), gdy.sharding.spec
  results["data_parallel_grads"] = {"collectives": c,
                                    "d_out_backprop_spec": str(gdy.sharding.spec),
                                    "lowered": lowered}
  return results


def main() -> int:
  assert jax.device_count() == 8, jax.devices()
  jax.config.update("jax_enable_x64", True)
  summary = {}
  for dtype in (jnp.float32, jnp.float64):
    for strategy in lowering.cpu.STRATEGIES["backprop_input"]:  # every CPU lowering
      jax.clear_caches()
      with lowering.force_strategy(strategy):
        key = f"{jnp.dtype(dtype).name}/{strategy}"
        print(f"checking {key} ...", file=sys.stderr, flush=True)
        summary[key] = check(dtype, strategy)
  print(json.dumps(summary))
  return 0


if __name__ == "__main__":
  sys.exit(main())
