"""The `conv_backprop_input` primitive: shape rule, eager impl, registration.

The primitive takes (filter, out_backprop) and two parameters: a
`lowering.ConvSpec` and `out_sharding` (None, or the result's sharding
under explicit sharding: `jaxconv.sharding`).  The JVP, transposes and
batching live in `jaxconv.rules`; the StableHLO lowerings in the
`lowering` package.
"""
from __future__ import annotations

import functools
import math
import os

import jax
import jax.export
import numpy as np
from jax.extend.core import Primitive
from jax.interpreters import mlir

from jaxconv import lowering
from jaxconv import sharding
from jaxconv.lowering.geometry import ConvSpec, effective_size

conv_backprop_input_p = Primitive("conv_backprop_input")

SUPPORTED_DTYPES = tuple(
    np.dtype(d) for d in ("float16", "bfloat16", "float32", "float64", "int32"))


def conv_backprop_input(filt, out_backprop, spec: ConvSpec, out_sharding=None):
  """Bind the primitive (inputs already validated by the API layer)."""
  return conv_backprop_input_p.bind(
      filt, out_backprop, spec=spec,
      out_sharding=sharding.as_named(out_sharding))


def _shape_rule(filt, dy, spec: ConvSpec):
  """Result shape, with TF's shape checks (raises ValueError)."""
  n = spec.ndim
  if filt.ndim != n + 2:
    raise ValueError(f"filter must be {n + 2}-dimensional, got shape {filt.shape}")
  check_out_backprop(filt.shape, dy.shape, spec)
  return spec.activation_shape(dy.shape[0], filt.shape[n] * spec.groups,
                               spec.input_spatial)


def check_out_backprop(filter_shape, dy_shape, spec: ConvSpec) -> None:
  """TF's checks of out_backprop against the filter shape and the spec
  (shared by the op and its public filter gradient; raises ValueError)."""
  n = spec.ndim
  if len(dy_shape) != n + 2:
    raise ValueError(
        f"out_backprop must be {n + 2}-dimensional, got shape {dy_shape}")
  if any(map(jax.export.is_symbolic_dim, (*filter_shape, *dy_shape[1:]))):
    raise ValueError(
        "only the batch dimension of out_backprop may be symbolic, got filter "
        f"shape {filter_shape} and out_backprop shape {dy_shape}")
  kernel, filt_out = filter_shape[:n], filter_shape[n + 1]
  dy_depth = dy_shape[spec.feature_axis]
  if filt_out != dy_depth:
    raise ValueError(
        "filter and out_backprop must have the same out_depth: filter "
        f"out_depth {filt_out}, out_backprop depth {dy_depth} (filter shape "
        f"{filter_shape}, out_backprop shape {dy_shape})")
  if spec.groups < 1 or filt_out % spec.groups:
    raise ValueError(
        f"filter out_depth {filt_out} must be divisible by the group count "
        f"{spec.groups}")
  for dim, (k, s, d) in enumerate(zip(kernel, spec.strides, spec.dilations)):
    # TF fails inside its kernel on a 0-tap filter; we say so up front.
    if k < 1 or s < 1 or d < 1:
      raise ValueError(
          f"filter spatial sizes, strides and dilations must be >= 1, got "
          f"filter {k}, stride {s}, dilation {d} in spatial dim {dim} (filter "
          f"shape {filter_shape})")
  computed = spec.out_backprop_spatial(kernel)
  actual = tuple(dy_shape[a] for a in spec.spatial_axes)
  for dim, (i, k, s, d, o, got) in enumerate(zip(
      spec.input_spatial, kernel, spec.strides, spec.dilations, computed,
      actual)):
    if o < 0:
      raise ValueError(
          f"Computed output size would be negative: {o} [input_size: {i}, "
          f"effective_filter_size: {effective_size(k, d)}, stride: {s}] "
          f"(spatial dim {dim} of the input, filter, strides, dilations "
          "and padding)")
    if got != o:
      raise ValueError(
          "Size of out_backprop doesn't match computed: actual = "
          f"{got}, computed = {o} spatial_dim: {spec.spatial_axes[dim]} "
          f"input: {i} filter: {k} output: {got} stride: {s} dilation: {d}")


@functools.cache
def device_memory_bytes() -> int:
  """Memory of the default device (physical RAM for a CPU)."""
  stats = jax.devices()[0].memory_stats() or {}
  if "bytes_limit" in stats:
    return int(stats["bytes_limit"])
  return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _check_allocatable(shape, dtype) -> None:
  """An impossible result is a ValueError here, not an OOM kill later."""
  if any(map(jax.export.is_symbolic_dim, shape)):
    return
  nbytes = math.prod(shape) * np.dtype(dtype).itemsize
  if nbytes > device_memory_bytes():
    raise ValueError(
        f"the result of shape {tuple(shape)} ({dtype}) needs {nbytes:,} bytes, "
        f"more than the device has ({device_memory_bytes():,} bytes); check "
        "input_sizes and strides")


def typed(shape, dtype, out_sharding) -> jax.core.ShapedArray:
  """The result aval, with its sharding where sharding is in types."""
  if out_sharding is None:
    return jax.core.ShapedArray(shape, dtype)
  return jax.core.ShapedArray(shape, dtype, sharding=out_sharding)


def _abstract_eval(filt, dy, *, spec: ConvSpec, out_sharding=None):
  if filt.dtype != dy.dtype:
    raise TypeError("filter and out_backprop must have the same dtype, got "
                    f"{filt.dtype} and {dy.dtype}")
  if filt.dtype not in SUPPORTED_DTYPES:
    raise TypeError(f"filter dtype {filt.dtype} is not supported; expected one "
                    f"of {', '.join(map(str, SUPPORTED_DTYPES))}")
  shape = _shape_rule(filt, dy, spec)
  _check_allocatable(shape, filt.dtype)
  return typed(shape, filt.dtype,
               sharding.backprop_input(filt, dy, spec, out_sharding))


def def_eager_impl(prim: Primitive) -> None:
  """Eager calls compile `prim` once per (params, shapes, dtypes)."""
  @functools.partial(jax.jit, static_argnames="params")
  def bind(*args, params):
    return prim.bind(*args, **dict(params))
  prim.def_impl(lambda *args, **params: bind(
      *args, params=tuple(sorted(params.items()))))


conv_backprop_input_p.def_abstract_eval(_abstract_eval)
def_eager_impl(conv_backprop_input_p)
for _platform, _rule in lowering.platform_rules().items():
  # The result aval carries out_sharding; the back end reads it there.
  mlir.register_lowering(
      conv_backprop_input_p,
      lambda ctx, *args, out_sharding=None, _rule=_rule, **params: _rule(
          ctx, *args, **params), platform=_platform)
