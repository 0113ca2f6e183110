"""What the three primitives share: result types, the eager impl, empty
operands, batching under explicit sharding, the platform lowerings."""
from __future__ import annotations

import functools
import math
import os

import jax
import jax.export
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Primitive
from jax.interpreters import mlir

from jaxconv import ops, sharding
from jaxconv.lowering import lower_fun
from jaxconv.lowering._compat import varying_axes
from jaxconv.lowering.index import any_empty

SUPPORTED_DTYPES = ops.WITH_INT32


def vary_alike(*operands):
  """The operands cast to vary over the same manual axes (inside shard_map,
  as JAX's own primitives do before binding): a replicated filter beside a
  per-device out_backprop becomes varying, so the result is typed varying
  and the filter's gradient is summed over the devices (pcast's transpose)."""
  axes = [varying_axes(jax.typeof(a)) for a in operands]
  union = frozenset().union(*axes)
  return [jax.lax.pcast(a, tuple(sorted(union - own)), to="varying")
          if union - own else a for a, own in zip(operands, axes)]


def typed(like, shape, dtype, out_sharding):
  """The result aval: an operand's (`like`: varying over the manual axes
  the operands vary over) with the result's shape and dtype, and its
  sharding where sharding is in types."""
  typed_as = {} if out_sharding is None else {"sharding": out_sharding}
  return like.update(shape=tuple(shape), dtype=np.dtype(dtype),
                     weak_type=False, **typed_as)


# The largest buffer XLA can describe (its sizes are int64 bytes).
MAX_BYTES = 2**63 - 1


def check_representable(shape, dtype) -> None:
  """Abstract evaluation: a result no buffer can describe is a ValueError.
  Whether it fits the devices that will hold it is not known here (a trace,
  eval_shape or export may be for other machines): `check_fits`, at dispatch."""
  if any(map(jax.export.is_symbolic_dim, shape)):
    return
  nbytes = math.prod(shape) * np.dtype(dtype).itemsize
  if nbytes > MAX_BYTES:
    raise ValueError(
        f"the result of shape {tuple(shape)} ({dtype}) needs {nbytes:,} bytes, "
        f"more than any device has (XLA's limit is {MAX_BYTES:,}); check "
        "input_sizes and strides")


@functools.cache
def _device_bytes(device) -> tuple[int, bool]:
  """(memory of `device`, whether it is the host's RAM, shared by the
  host's CPU devices)."""
  stats = device.memory_stats() or {}
  if "bytes_limit" in stats:
    return int(stats["bytes_limit"]), False
  return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), True


def _placement(operands):
  """The devices of this process the operands (so the result) live on."""
  devices = set()
  for a in operands:
    if isinstance(a, jax.Array):
      devices |= {d for d in a.sharding.device_set
                  if d.process_index == jax.process_index()}
  return devices or {jax.local_devices()[0]}


def check_fits(shape, dtype, operands, shard_shape) -> None:
  """An eager call's result too large for the devices of this process that
  will hold it is a ValueError, not an OOM kill: each holds a shard shaped
  `shard_shape` (the result's shape under the operands' shardings); the
  CPU devices of one host share its RAM."""
  per_shard = math.prod(shard_shape) * np.dtype(dtype).itemsize
  devices = sorted(_placement(operands), key=lambda d: d.id)
  on_host_ram = sum(_device_bytes(d)[1] for d in devices)
  for device in devices:
    capacity, host_ram = _device_bytes(device)
    shards = on_host_ram if host_ram else 1
    if per_shard * shards > capacity:
      needs = (f"{shards} shards of {per_shard:,} bytes on this host"
               if shards > 1 else f"{per_shard:,} bytes")
      raise ValueError(
          f"the result of shape {tuple(shape)} ({dtype}) needs {needs}, more "
          f"than the device has ({capacity:,} bytes on {device}); check "
          "input_sizes and strides")


def def_eager_impl(prim: Primitive, check=None) -> None:
  """Eager calls compile `prim` once per (params, shapes, dtypes), after
  `check(*args, **params)` where given."""
  @functools.partial(jax.jit, static_argnames="params")
  def bind(*args, params):
    return prim.bind(*args, **dict(params))

  def impl(*args, **params):
    if check is not None:
      check(*args, **params)
    return bind(*args, params=tuple(sorted(params.items())))
  prim.def_impl(impl)


def guarded(fn, shape_rule):
  """fn(a, b, **params) in jax ops, with zeros for empty operands or
  results (no zero-size convolutions); out_sharding is the result aval's
  business, not fn's."""
  def impl(a, b, *, out_sharding=None, **params):
    del out_sharding
    out_shape = shape_rule(a, b, **params)
    if any_empty(a.shape, b.shape, out_shape):
      return jnp.zeros(out_shape, a.dtype)
    return fn(a, b, **params)
  return impl


def register_partner_lowerings(prim: Primitive, rules, shape_rule) -> None:
  """Lower a partner, written in jax ops per platform ({platform: fn})."""
  for platform, fn in rules.items():
    mlir.register_lowering(prim, lower_fun(guarded(fn, shape_rule)),
                           platform=platform)


def batch_via_lax(impl, args, dims, **params):
  """A partner's batching: JAX's own convolution batching of its form."""
  return jax.vmap(functools.partial(impl, **params), in_axes=dims)(*args), 0


def typed_batching(batch_rule, result_sharding):
  """batch_rule, under explicit sharding run with Auto axes and typed by
  the unbatched sharding rule with the vmapped dim in front."""
  def rule(args, dims, *, out_sharding=None, **params):
    avals = [jax.typeof(a) for a in args]
    if out_sharding is None and not any(map(sharding.of, avals)):
      return batch_rule(args, dims, **params)
    typed_result = sharding.batched(result_sharding, avals, dims,
                                    out_sharding=out_sharding, **params)

    def run(*args):
      out, dim = batch_rule(args, dims, **params)
      return jnp.moveaxis(out, dim, 0)
    return jax.sharding.auto_axes(run, out_sharding=typed_result)(*args), 0
  return rule
