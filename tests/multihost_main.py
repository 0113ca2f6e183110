"""One process of a multi-controller run (tests/test_many_hosts.py starts
them through benchmarks.multihost.launch); with --coordinator omitted, the
single-process run of the same program on as many local devices.

Prints one JSON line: per pattern, the losses of 3 SGD steps of the
decoder, the final parameters and first gradients (as this process sees
the global values), the compiled step's collectives, and which rows of the
batch-sharded arrays this process holds.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import traceback

import numpy as np

from benchmarks import multihost
from benchmarks.multihost import global_array
import jaxconv
from jaxconv import lowering

BATCH_PER_DEVICE = 2
CHANNEL_PARALLEL_BATCH = 4  # the same on every mesh of 4 devices
def gathered(tree):
  """Every leaf as a NumPy array of its global value, on every process."""
  import jax
  from jax.experimental import multihost_utils
  return jax.tree.map(lambda a: np.asarray(
      multihost_utils.process_allgather(a, tiled=True)), tree)


def own_rows(array) -> list:
  """The batch rows of `array` held on this process's devices."""
  import jax
  rows = set()
  for shard in array.addressable_shards:
    assert shard.device.process_index == jax.process_index()
    sl = shard.index[0]
    rows |= set(range(*sl.indices(array.shape[0])))
  return sorted(rows)


def train(step, params, z, y, steps=3):
  """3 SGD steps: (params, losses, the first step's gradients)."""
  losses, first = [], None
  for _ in range(steps):
    params, value, grads = step(params, z, y)
    losses.append(float(value))
    first = grads if first is None else first
  return params, losses, first


def report(params, losses, grads, compiled, **extra) -> dict:
  return {"losses": losses, "params": _lists(gathered(params)),
          "grads": _lists(gathered(grads)),
          "collectives": multihost.collectives(compiled), **extra}


def _lists(tree):
  import jax
  return jax.tree.map(lambda a: a.tolist(), tree)


def data_parallel_auto(mesh):
  import jax
  from jax.sharding import PartitionSpec as P
  z0, y0 = multihost.batch(BATCH_PER_DEVICE * mesh.size)
  z, y = global_array(mesh, P("data"), z0), global_array(mesh, P("data"), y0)
  params = jax.tree.map(lambda v: global_array(mesh, P(), v),
                        multihost.init_params())
  step = jax.jit(multihost.sgd_step)
  with lowering.force_strategy() as lowered:  # records the automatic choices
    compiled = step.lower(params, z, y).compile()
  out = jax.jit(multihost.decoder)(params, z)
  params, losses, grads = train(step, params, z, y)
  return report(params, losses, grads, compiled, rows_z=own_rows(z),
                rows_out=own_rows(out), out_spec=str(out.sharding.spec),
                strategies=dataclasses.asdict(lowered))


def data_parallel_explicit(mesh):
  import jax
  from jax.sharding import AxisType, PartitionSpec as P
  mesh = jax.make_mesh(mesh.devices.shape, mesh.axis_names,
                       axis_types=(AxisType.Explicit,),
                       devices=mesh.devices.flatten())
  z0, y0 = multihost.batch(BATCH_PER_DEVICE * mesh.size)
  with jax.set_mesh(mesh):
    z, y = global_array(mesh, P("data"), z0), global_array(mesh, P("data"), y0)
    params = jax.tree.map(lambda v: global_array(mesh, P(), v),
                          multihost.init_params())
    step = jax.jit(multihost.sgd_step)
    compiled = step.lower(params, z, y).compile()
    out = jax.jit(multihost.decoder)(params, z)
    params, losses, grads = train(step, params, z, y)
    return report(params, losses, grads, compiled, rows_out=own_rows(out),
                  out_type=str(jax.typeof(out)))


def local_sgd_step(**layers):
  """The SGD step inside shard_map: each device's share of the global mean
  loss; the gradients of parameters replicated over "data" come out summed
  over it (JAX's transpose of their implicit broadcast), the loss is summed
  here.  `layers` as `multihost.decoder`."""
  import jax

  def step(params, z, y):
    share = lambda p: (multihost.loss(p, z, y, **layers)
                       / jax.lax.axis_size("data"))
    value, grads = jax.value_and_grad(share)(params)
    value = jax.lax.psum(value, "data")
    return jax.tree.map(lambda p, g: p - 0.1 * g, params, grads), value, grads
  return step


def data_parallel_shard_map(mesh):
  import jax
  from jax.sharding import PartitionSpec as P
  step = jax.jit(jax.shard_map(local_sgd_step(), mesh=mesh,
                               in_specs=(P(), P("data"), P("data")),
                               out_specs=(P(), P(), P())))
  z0, y0 = multihost.batch(BATCH_PER_DEVICE * mesh.size)
  z = global_array(mesh, P("data"), z0)
  y = global_array(mesh, P("data"), y0)
  params = jax.tree.map(lambda v: global_array(mesh, P(), v),
                        multihost.init_params())
  compiled = step.lower(params, z, y).compile()
  params, losses, grads = train(step, params, z, y)
  return report(params, losses, grads, compiled)


CHANNEL_SPECS = {"up1": {"w": (None, None, "model", None), "b": ("model",)},
                 "up2": {"w": (None, None, None, "model"), "b": ()},
                 "head": {"w": (), "b": ()}}


def _channel_parallel(mesh2d, step):
  """The first layer's output channels and the second's contracted ones
  split over "model", the batch over "data"; `step` jitted or mapped."""
  import jax
  from jax.sharding import PartitionSpec as P
  z0, y0 = multihost.batch(CHANNEL_PARALLEL_BATCH)
  z = global_array(mesh2d, P("data"), z0)
  y = global_array(mesh2d, P("data"), y0)
  specs = jax.tree.map(lambda s: P(*s), CHANNEL_SPECS,
                       is_leaf=lambda s: isinstance(s, tuple))
  params = jax.tree.map(lambda v, s: global_array(mesh2d, s, v),
                        multihost.init_params(), specs)
  compiled = step(specs).lower(params, z, y).compile()
  params, losses, grads = train(compiled, params, z, y)
  held = [sorted({tuple(s.index[2].indices(16)) for s in
                  params["up1"]["w"].addressable_shards})]
  return report(params, losses, grads, compiled, up1_channels_held=held)


def channel_parallel_auto(mesh2d):
  """2-D mesh ("data", "model"), "model" across processes; Auto axes."""
  import jax
  return _channel_parallel(mesh2d, lambda specs: jax.jit(multihost.sgd_step))


def channel_parallel_explicit(mesh2d):
  """The same with Explicit axes: the layer whose contracted channels are
  split says how its result is sharded (out_sharding: batch over "data")."""
  import functools
  import jax
  from jax.sharding import AxisType, PartitionSpec as P
  explicit = jax.make_mesh(mesh2d.devices.shape, mesh2d.axis_names,
                           axis_types=(AxisType.Explicit,) * 2,
                           devices=mesh2d.devices.flatten())
  with jax.set_mesh(explicit):
    return _channel_parallel(explicit, lambda specs: jax.jit(functools.partial(
        multihost.sgd_step, out_shardings={"up2": P("data")})))


def channel_parallel_shard_map(mesh2d):
  """The same by hand inside shard_map: each device's channel slices, the
  second layer's partial results summed over "model"."""
  import jax
  from jax.sharding import PartitionSpec as P
  local_step = local_sgd_step(
      reduce={"up2": lambda v: jax.lax.psum(v, "model")})

  def step(specs):
    return jax.jit(jax.shard_map(local_step, mesh=mesh2d,
                                 in_specs=(specs, P("data"), P("data")),
                                 out_specs=(specs, P(), specs)))
  return _channel_parallel(mesh2d, step)


def vmap_and_export(mesh):
  """An ensemble of two decoders (vmap over parameters), data parallel, and
  the exported (serialized, deserialized) step run on the same mesh."""
  import jax
  from jax import export
  from jax.sharding import NamedSharding, PartitionSpec as P
  z0, y0 = multihost.batch(BATCH_PER_DEVICE * mesh.size)
  z, y = global_array(mesh, P("data"), z0), global_array(mesh, P("data"), y0)
  base = multihost.init_params()
  stacked = jax.tree.map(lambda a: np.stack([a, 2 * a]), base)
  ensemble = jax.tree.map(lambda v: global_array(mesh, P(), v), stacked)
  out = jax.jit(jax.vmap(multihost.decoder, in_axes=(0, None)))(ensemble, z)
  params = jax.tree.map(lambda v: global_array(mesh, P(), v), base)
  rep, dat = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  step = jax.jit(multihost.sgd_step,
                 in_shardings=(jax.tree.map(lambda _: rep, params), dat, dat))
  blob = export.export(step)(params, z, y).serialize()
  restored = export.deserialize(blob)
  new_params, value, _ = restored.call(params, z, y)
  return {"ensemble_out_sum": [float(v) for v in
                               gathered(out).sum(axis=(1, 2, 3, 4))],
          "exported_loss": float(value),
          "exported_params": _lists(gathered(new_params))}


def eager_memory_check(mesh):
  """Eager calls check each shard against the devices that hold it: with
  devices of 1 MiB (pretended), a 4 MiB result split over 4 devices runs,
  the same result on each device is a ValueError (on every process)."""
  from jax.sharding import PartitionSpec as P
  from jaxconv.primitives import common
  size = 1 << 20
  original = common._device_bytes
  common._device_bytes = lambda device: (size, False)
  try:
    w = global_array(mesh, P(), np.ones((1, 1, 64, 1), np.float32))
    rows = 4 * size // (mesh.size * 16 * 64 * 4)  # a 4 MiB result
    out = {}
    for name, spec in (("sharded", P("data")), ("replicated", P())):
      dy = global_array(mesh, spec, np.ones((mesh.size, rows, 16, 1),
                                            np.float32))
      try:
        x = jaxconv.conv2d_backprop_input([mesh.size, rows, 16, 64], w, dy,
                                          [1, 1, 1, 1], "VALID")
        out[name] = {"bytes": x.nbytes, "shard_bytes": max(
            s.data.nbytes for s in x.addressable_shards)}
      except ValueError as e:
        out[name] = {"error": str(e)}
    return out
  finally:
    common._device_bytes = original


def strategy_per_device(mesh):
  """The CPU strategies of a training step's convolutions, chosen for one
  device's shard: a batch of 16 split 4 ways lowers as a batch of 4 does
  (Auto mode, Explicit mode, shard_map); a replicated batch as 16.  On
  XLA's strategies, and with the native one on ("native")."""
  import jax
  import jax.numpy as jnp

  def grads(w, dy):
    """A stride-2 op (its rule weighs the batch's GEMM columns) and a
    stride-1 one (its filter gradient's rule weighs the kernel rows)."""
    def loss(w, dy):
      up = jaxconv.conv2d_backprop_input([dy.shape[0], 64, 64, 64], w, dy,
                                         [1, 2, 2, 1], "SAME")
      same = jaxconv.conv2d_backprop_input([dy.shape[0], 32, 32, 64], w, dy,
                                           [1, 1, 1, 1], "SAME")
      return jnp.sum(up ** 2) + jnp.sum(same ** 2)
    return jax.grad(loss, (0, 1))(w, dy)

  def lowered_with(fn, *args):
    jax.clear_caches()  # lowered afresh: the blocks below take effect
    with lowering.force_strategy() as record:
      jax.jit(fn).lower(*args)
    return dataclasses.asdict(record)

  with lowering.xla_strategies():
    out = _per_device_choices(mesh, grads, lowered_with)
  # With the native strategy on: a shard_map's shard is what its kernel
  # sees; XLA partitions the Auto and Explicit modules (no custom call).
  out["native"] = _per_device_choices(mesh, grads, lowered_with)
  return out


def _per_device_choices(mesh, grads, lowered_with):
  import jax
  from jax.sharding import AxisType, PartitionSpec as P

  w = np.ones((3, 3, 64, 64), np.float32)
  out = {}
  for n in (4, 16):
    out[f"unsharded {n}"] = lowered_with(grads, w, np.ones((n, 32, 32, 64),
                                                           np.float32))
  dy = np.ones((16, 32, 32, 64), np.float32)
  out["auto 16 over 4"] = lowered_with(
      grads, global_array(mesh, P(), w), global_array(mesh, P("data"), dy))
  out["shard_map 16 over 4"] = lowered_with(jax.shard_map(
      grads, mesh=mesh, in_specs=(P(), P("data")), out_specs=(P(), P("data"))),
      global_array(mesh, P(), w), global_array(mesh, P("data"), dy))
  explicit = jax.make_mesh(mesh.devices.shape, mesh.axis_names,
                           axis_types=(AxisType.Explicit,),
                           devices=mesh.devices.flatten())
  with jax.set_mesh(explicit):
    out["explicit 16 over 4"] = lowered_with(
        grads, global_array(explicit, P(), w),
        global_array(explicit, P("data"), dy))
    out["explicit 16 replicated"] = lowered_with(
        grads, global_array(explicit, P(), w), global_array(explicit, P(), dy))
  return out


def every_function(mesh):
  """Every function of the family (one drawn float32 call each, the same on
  every process) and its gradient, jitted over every device."""
  import jax
  import jax.numpy as jnp
  from jax.sharding import PartitionSpec as P
  from tests import family
  out = {}
  for i, name in enumerate(sorted(family.OPS)):
    rng = np.random.default_rng(700 + i)
    while True:
      case = family.OPS[name][1](rng)
      if case.arrays and all(a.size for a in case.arrays.values()):
        break
    case.cfg["dtype"] = "float32"
    case.arrays = {k: v.astype(np.float32) for k, v in case.arrays.items()}
    f, tensors = family.as_function(case)
    tensors = [global_array(mesh, P(), t) for t in tensors]
    grad = jax.grad(lambda *t: jnp.sum(jnp.sin(f(*t))),
                    argnums=tuple(range(len(tensors))))
    value, grads = jax.jit(lambda *t: (f(*t), grad(*t)))(*tensors)  # 1 compile
    out[name] = _lists(gathered({"value": value, "grads": list(grads)}))
  return out


def process_spanning_grid():
  """The devices as a 2 x (n / 2) grid whose second ("model") axis spans
  the processes: grid[:, j] holds consecutive processes' devices (every
  layout of the same device count gets the same global mesh)."""
  import jax
  devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
  return np.array(devices).reshape(2, -1, order="F")


def _data_mesh():
  import jax
  return jax.sharding.Mesh(np.array(jax.devices()), ("data",))


def _channel_mesh():
  import jax
  return jax.sharding.Mesh(process_spanning_grid(), ("data", "model"))


PATTERNS = {"data_parallel_auto": (data_parallel_auto, _data_mesh),
            "data_parallel_explicit": (data_parallel_explicit, _data_mesh),
            "data_parallel_shard_map": (data_parallel_shard_map, _data_mesh),
            "vmap_and_export": (vmap_and_export, _data_mesh),
            "channel_parallel_auto": (channel_parallel_auto, _channel_mesh),
            "channel_parallel_explicit": (channel_parallel_explicit,
                                          _channel_mesh),
            "channel_parallel_shard_map": (channel_parallel_shard_map,
                                           _channel_mesh),
            "eager_memory_check": (eager_memory_check, _data_mesh),
            "strategy_per_device": (strategy_per_device, _data_mesh),
            "every_function": (every_function, _data_mesh)}


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--process-id", type=int, default=0)
  parser.add_argument("--coordinator")
  parser.add_argument("--num-processes", type=int, default=1)
  parser.add_argument("--patterns", default=",".join(PATTERNS))
  args = parser.parse_args()
  if args.coordinator:
    multihost.initialize(args.coordinator, args.num_processes,
                         args.process_id)
  import jax
  summary = {"process": jax.process_index(),
             "processes": jax.process_count(),
             "devices": jax.device_count()}
  for name in args.patterns.split(","):
    run, mesh = PATTERNS[name]
    summary[name] = run(mesh())
  print(json.dumps(summary))


if __name__ == "__main__":
  try:
    main()
  except BaseException:  # noqa: B902 -- exit now, not in a shutdown barrier
    traceback.print_exc()
    sys.stderr.flush()
    os._exit(1)
