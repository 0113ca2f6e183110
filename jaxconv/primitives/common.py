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
from jaxconv.lowering.index import any_empty

SUPPORTED_DTYPES = ops.WITH_INT32


def typed(shape, dtype, out_sharding) -> jax.core.ShapedArray:
  """The result aval, with its sharding where sharding is in types."""
  if out_sharding is None:
    return jax.core.ShapedArray(shape, dtype)
  return jax.core.ShapedArray(shape, dtype, sharding=out_sharding)


@functools.cache
def device_memory_bytes() -> int:
  """Memory of the default device (physical RAM for a CPU)."""
  stats = jax.devices()[0].memory_stats() or {}
  if "bytes_limit" in stats:
    return int(stats["bytes_limit"])
  return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_allocatable(shape, dtype) -> None:
  """An impossible result is a ValueError here, not an OOM kill later."""
  if any(map(jax.export.is_symbolic_dim, shape)):
    return
  nbytes = math.prod(shape) * np.dtype(dtype).itemsize
  if nbytes > device_memory_bytes():
    raise ValueError(
        f"the result of shape {tuple(shape)} ({dtype}) needs {nbytes:,} bytes, "
        f"more than the device has ({device_memory_bytes():,} bytes); check "
        "input_sizes and strides")


def def_eager_impl(prim: Primitive) -> None:
  """Eager calls compile `prim` once per (params, shapes, dtypes)."""
  @functools.partial(jax.jit, static_argnames="params")
  def bind(*args, params):
    return prim.bind(*args, **dict(params))

  def impl(*args, **params):
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
