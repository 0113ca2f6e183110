"""The canonical StableHLO form of the op, the one XLA's fast paths recognise.

    reverse(filter, spatial)  ->  convolution(dy, ., window_strides=1,
        lhs_dilation=strides, rhs_dilation=dilations, padding>=0,
        feature_group_count=groups, kernel dims [*spatial, o, i])

Grouped filters are first rearranged (reshape/transpose) so that the reverse
still feeds the convolution directly.  Negative padding (explicit pads larger
than the dilated kernel) is never handed to the convolution: it is clamped to
zero and the surplus is cropped afterwards with a negative-edge `pad`.
"""
from __future__ import annotations

import numpy as np
import jax.numpy as jnp
from jax.interpreters import mlir

from ._compat import finish, hlo, ir_type, lower_fun
from .geometry import ConvSpec
from .index import any_empty


def lower(ctx, filt, dy, *, spec: ConvSpec, accumulate_f32: bool = False):
  """Lowering rule: emit the canonical form for `spec`.

  accumulate_f32: give the convolution a float32 result for float16/bfloat16
  operands and round once at the end (explicit float32 accumulation).
  """
  filt_aval, _ = ctx.avals_in
  out_aval, = ctx.avals_out
  if is_empty(ctx):
    return zeros(ctx, filt, dy)

  n = spec.ndim
  kernel = filt_aval.shape[:n]
  rhs = _grouped_filter(ctx, filt, filt_aval, spec.groups)
  rhs = hlo.reverse(rhs, mlir.dense_int_array(list(range(n))))

  pads = spec.lhs_dilated_padding(kernel)
  conv_pads = [(max(lo, 0), max(hi, 0)) for lo, hi in pads]
  crop = [(min(lo, 0), min(hi, 0)) for lo, hi in pads]

  acc_dtype = out_aval.dtype
  if accumulate_f32 and out_aval.dtype in (jnp.float16, jnp.bfloat16):
    acc_dtype = np.dtype(np.float32)
  spatial = [size - lo - hi for size, (lo, hi) in zip(spec.input_spatial, crop)]
  conv_aval = out_aval.update(
      shape=spec.activation_shape(out_aval.shape[0],
                                  out_aval.shape[spec.feature_axis], spatial),
      dtype=acc_dtype)

  out = hlo.convolution(
      ir_type(ctx, conv_aval), dy, rhs,
      dimension_numbers=_dimension_numbers(spec),
      feature_group_count=mlir.i64_attr(spec.groups),
      batch_group_count=mlir.i64_attr(1),
      padding=mlir.dense_int_elements(conv_pads),  # window strides: 1
      lhs_dilation=mlir.dense_int_array(list(spec.strides)),
      rhs_dilation=mlir.dense_int_array(list(spec.dilations)))

  if any(lo or hi for lo, hi in crop):
    lo, hi = [0] * (n + 2), [0] * (n + 2)
    for axis, (c_lo, c_hi) in zip(spec.spatial_axes, crop):
      lo[axis], hi[axis] = c_lo, c_hi
    out = hlo.pad(out, mlir.ir_constant(np.zeros((), acc_dtype)),
                  mlir.dense_int_array(lo), mlir.dense_int_array(hi),
                  mlir.dense_int_array([0] * (n + 2)))
  if acc_dtype != out_aval.dtype:
    out = hlo.convert(ir_type(ctx, out_aval), out)
  return [finish(ctx, out, out_aval)]


def _dimension_numbers(spec: ConvSpec):
  """dy and result in the spec's layout; the filter's in/out dims swapped."""
  n = spec.ndim
  spatial = list(spec.spatial_axes)
  return hlo.ConvDimensionNumbers.get(
      input_batch_dimension=0,
      input_feature_dimension=spec.feature_axis,
      input_spatial_dimensions=spatial,
      kernel_input_feature_dimension=n + 1,
      kernel_output_feature_dimension=n,
      kernel_spatial_dimensions=list(range(n)),
      output_batch_dimension=0,
      output_feature_dimension=spec.feature_axis,
      output_spatial_dimensions=spatial)


def _grouped_filter(ctx, filt, aval, groups: int):
  """[*K, Ci, Co] -> [*K, G*Ci, Co/G] with group-major output features."""
  if groups == 1:
    return filt
  *kernel, ci, co = aval.shape
  n = len(kernel)
  split = aval.update(shape=(*kernel, ci, groups, co // groups))
  merged = aval.update(shape=(*kernel, groups * ci, co // groups))
  x = hlo.reshape(ir_type(ctx, split), filt)
  x = hlo.transpose(x, mlir.dense_int_array([*range(n), n + 1, n, n + 2]))
  return hlo.reshape(ir_type(ctx, merged), x)


def is_empty(ctx) -> bool:
  """Whether an operand or the result has a (static) zero-size dimension."""
  return any_empty(*(a.shape for a in (*ctx.avals_in, *ctx.avals_out)))


def zeros(ctx, filt, dy):
  """Result of an op with nothing to sum (an empty operand or result)."""
  out_aval, = ctx.avals_out

  def zeros(filt, dy):
    shape = tuple(dy.shape[0] if i == 0 else d
                  for i, d in enumerate(out_aval.shape))
    return jnp.zeros(shape, out_aval.dtype)

  return lower_fun(zeros)(ctx, filt, dy)
