"""The family at TF's attribute level, any rank: three entry points.

Every public function (`jaxconv.raw_ops`, `jaxconv.nn`,
`jaxconv.compat.v1.nn`, the tf2jax converters) is a thin signature layer
over one of these, given its op's row of the op table (`jaxconv.ops`):

    backprop_input(op, ...)   -> the conv_backprop_input primitive
    backprop_filter(op, ...)  -> the conv_backprop_filter primitive
    forward(op, ...)          -> the conv_forward primitive (TF's Conv2D/
                                 Conv3D, for converted gradient graphs)

Each validates TF's attributes in one place (`jaxconv.attrs`) and binds a
primitive (`jaxconv.primitives`), so jit, vmap, grad of any order, export
and sharding work for every op through the same rules.  Depthwise ops
are grouped ones (groups = in_depth) with the filter `[*K, C, M]` seen as
`[*K, 1, C*M]`.
"""
from __future__ import annotations

import numpy as np

from jaxconv import attrs
from jaxconv.ops import Op
from jaxconv.primitives import (check_out_backprop, conv_backprop_filter,
                                conv_backprop_input, conv_forward)


def backprop_input(op: Op, input_sizes, filter, out_backprop, *,  # noqa: A002
                   strides, padding, explicit_paddings=(), data_format,
                   dilations, out_sharding=None):
  """The input gradient of an N-d conv (TF's Conv*BackpropInput ops).

  input_sizes: the result's shape (with `op.spatial_sizes` also spatial
  only).  out_sharding: the result's sharding under explicit sharding,
  where the rules (jaxconv/sharding.py) ask for it, as
  `lax.conv_general_dilated`.
  """
  filt = attrs.as_operand(filter, "filter", op.dtypes)
  dy = attrs.as_operand(out_backprop, "out_backprop", op.dtypes)
  attrs.check_operands(op.ndim, filt, dy)
  if op.depthwise:
    sizes = attrs.parse_sizes(input_sizes, "input_sizes", op.ndim)
    axis = _feature_axis(data_format, op.ndim)
    _check_depthwise(sizes[axis], filt.shape, dy.shape[axis], "input_sizes")
    filt = _as_grouped(filt, op.ndim)
  spec = attrs.make_spec(op, input_sizes, filt.shape, dy.shape[0], strides,
                         padding, explicit_paddings, data_format, dilations)
  return conv_backprop_input(filt, dy, spec, out_sharding)


def backprop_filter(op: Op, input, filter_sizes, out_backprop, *,  # noqa: A002
                    strides, padding, explicit_paddings=(), data_format,
                    dilations, out_sharding=None):
  """The filter gradient of an N-d conv (TF's Conv*BackpropFilter ops):
  shaped `filter_sizes` (`[*K, in_depth / groups, out_depth]`, depthwise
  `[*K, in_depth, multiplier]`).  A batch-sharded (contracted) input needs
  `out_sharding` under explicit sharding."""
  x = attrs.as_operand(input, "input", op.dtypes)
  dy = attrs.as_operand(out_backprop, "out_backprop", op.dtypes)
  attrs.check_operands(op.ndim, x, dy, names=("input", "out_backprop"))
  sizes = attrs.parse_sizes(filter_sizes, "filter_sizes", op.ndim)
  shape = sizes
  if op.depthwise:
    axis = _feature_axis(data_format, op.ndim)
    _check_depthwise(x.shape[axis], sizes, dy.shape[axis], "input")
    shape = [*sizes[:op.ndim], 1, sizes[op.ndim] * sizes[op.ndim + 1]]
  spec = attrs.make_spec(op, list(x.shape), shape, dy.shape[0], strides,
                         padding, explicit_paddings, data_format, dilations,
                         sizes_name="input.shape")
  check_out_backprop(shape, dy.shape, spec)
  out = conv_backprop_filter(x, dy, spec, shape[:op.ndim], out_sharding)
  return out.reshape(sizes) if op.depthwise else out


def forward(op: Op, input, filter, *, strides, padding,  # noqa: A002
            explicit_paddings=(), data_format, dilations, out_sharding=None):
  """TF's N-d forward conv (Conv2D, Conv3D, DepthwiseConv2dNative): `input`
  `[N, *S, C]`, filter `[*K, C / groups, out_depth]` (depthwise
  `[*K, C, multiplier]`)."""
  x = attrs.as_operand(input, "input", op.dtypes)
  filt = attrs.as_operand(filter, "filter", op.dtypes)
  attrs.check_operands(op.ndim, x, filt, names=("input", "filter"))
  if op.depthwise:
    in_depth = x.shape[_feature_axis(data_format, op.ndim)]
    _check_depthwise(in_depth, filt.shape, in_depth * filt.shape[-1], "input")
    filt = _as_grouped(filt, op.ndim)
  spec = attrs.make_spec(op, list(x.shape), filt.shape, x.shape[0], strides,
                         padding, explicit_paddings, data_format, dilations,
                         sizes_name="input.shape")
  out_spatial = spec.out_backprop_spatial(filt.shape[:op.ndim])
  check_out_backprop(filt.shape, spec.activation_shape(
      x.shape[0], filt.shape[-1], out_spatial), spec)  # negative sizes
  return conv_forward(x, filt, spec, out_sharding)


def _feature_axis(data_format, ndim: int) -> int:
  return -1 if attrs.parse_data_format(data_format, ndim) else 1


def _as_grouped(filt, ndim: int):
  """A depthwise filter `[*K, C, M]` as the grouped `[*K, 1, C*M]`."""
  return filt.reshape(*filt.shape[:ndim], 1,
                      filt.shape[ndim] * filt.shape[ndim + 1])


def _check_depthwise(in_depth, filter_shape, dy_depth, sizes_name) -> None:
  """TF's depthwise checks: the filter's in_depth and multiplier."""
  *_, filt_in, multiplier = filter_shape
  if filt_in != in_depth:
    raise ValueError(
        "input and filter must have the same in_depth: "
        f"{sizes_name} depth {in_depth}, filter in_depth {filt_in} (filter "
        f"shape {tuple(filter_shape)})")
  if filt_in < 1:
    raise ValueError(f"filter in_depth must be positive, got filter shape "
                     f"{tuple(filter_shape)}")
  if int(np.int64(filt_in) * multiplier) != dy_depth:
    raise ValueError(
        f"depth_multiplier * in_depth not equal to out_depth: "
        f"{multiplier} * {filt_in} != {dy_depth} (out_backprop depth)")


