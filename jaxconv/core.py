"""The family at TF's attribute level, any rank: two entry points.

Every public function (`jaxconv.raw_ops`, `jaxconv.nn`,
`jaxconv.compat.v1.nn`, the tf2jax converters) is a thin signature layer
over one of these:

    backprop_input(...)   -> the conv_backprop_input primitive
    backprop_filter(...)  -> the conv_backprop_filter primitive (the op's
                             partner, jaxconv/partners.py)
    forward(...)          -> the conv_forward primitive (TF's Conv2D/Conv3D,
                             for converted gradient graphs)

Both validate TF's attributes in one place (`jaxconv.attrs`) and bind a
primitive, so jit, vmap, grad of any order, export and sharding work for
every op through the same rules.  Depthwise ops are grouped ones
(groups = in_depth) with the filter `[*K, C, M]` seen as `[*K, 1, C*M]`.
"""
from __future__ import annotations

import numpy as np

from jaxconv import attrs
from jaxconv.partners import conv_backprop_filter, conv_forward
from jaxconv.primitive import (SUPPORTED_DTYPES, check_out_backprop,
                               conv_backprop_input)

FLOATS = tuple(d for d in SUPPORTED_DTYPES if d.kind == "f" or d.name ==
               "bfloat16")
WITH_INT32 = SUPPORTED_DTYPES  # Conv2DBackpropInput alone also takes int32


def backprop_input(ndim: int, input_sizes, filter, out_backprop, *,  # noqa: A002
                   strides, padding, explicit_paddings=(), data_format,
                   dilations, dtypes=FLOATS, spatial_sizes=False,
                   paddings=attrs.PADDINGS, depthwise=False,
                   out_sharding=None):
  """The input gradient of an N-d conv (TF's Conv*BackpropInput ops).

  spatial_sizes: `input_sizes` may also be spatial only (2-D op's form).
  depthwise: `filter` is `[*K, in_depth, multiplier]`.
  out_sharding: the result's sharding under explicit sharding, where the
  rules (jaxconv/sharding.py) ask for it, as `lax.conv_general_dilated`.
  """
  filt = attrs.as_operand(filter, "filter", dtypes)
  dy = attrs.as_operand(out_backprop, "out_backprop", dtypes)
  attrs.check_operands(ndim, filt, dy)
  if depthwise:
    sizes = attrs.parse_sizes(input_sizes, "input_sizes", ndim)
    channels_last = attrs.parse_data_format(data_format, ndim)
    _check_depthwise(sizes[-1 if channels_last else 1], filt.shape,
                     dy.shape[-1 if channels_last else 1], "input_sizes")
    filt = filt.reshape(*filt.shape[:ndim], 1,
                        filt.shape[ndim] * filt.shape[ndim + 1])
  spec = attrs.make_spec(ndim, input_sizes, filt.shape, dy.shape[0], strides,
                         padding, explicit_paddings, data_format, dilations,
                         paddings=paddings, spatial_sizes=spatial_sizes)
  return conv_backprop_input(filt, dy, spec, out_sharding)


def backprop_filter(ndim: int, input, filter_sizes, out_backprop, *,  # noqa: A002
                    strides, padding, explicit_paddings=(), data_format,
                    dilations, paddings=attrs.PADDINGS, depthwise=False,
                    out_sharding=None):
  """The filter gradient of an N-d conv (TF's Conv*BackpropFilter ops):
  shaped `filter_sizes` (`[*K, in_depth / groups, out_depth]`, depthwise
  `[*K, in_depth, multiplier]`).  A batch-sharded (contracted) input needs
  `out_sharding` under explicit sharding."""
  x = attrs.as_operand(input, "input", FLOATS)
  dy = attrs.as_operand(out_backprop, "out_backprop", FLOATS)
  attrs.check_operands(ndim, x, dy, names=("input", "out_backprop"))
  sizes = attrs.parse_sizes(filter_sizes, "filter_sizes", ndim)
  shape = sizes
  if depthwise:
    channels_last = attrs.parse_data_format(data_format, ndim)
    _check_depthwise(x.shape[-1 if channels_last else 1], sizes,
                     dy.shape[-1 if channels_last else 1], "input")
    shape = [*sizes[:ndim], 1, sizes[ndim] * sizes[ndim + 1]]
  spec = attrs.make_spec(ndim, list(x.shape), shape, dy.shape[0], strides,
                         padding, explicit_paddings, data_format, dilations,
                         paddings=paddings, sizes_name="input.shape")
  check_out_backprop(shape, dy.shape, spec)
  out = conv_backprop_filter(x, dy, spec, shape[:ndim], out_sharding)
  return out.reshape(sizes) if depthwise else out


def forward(ndim: int, input, filter, *, strides, padding,  # noqa: A002
            explicit_paddings=(), data_format, dilations,
            paddings=attrs.PADDINGS, depthwise=False, out_sharding=None):
  """TF's N-d forward conv (Conv2D, Conv3D, DepthwiseConv2dNative): `input`
  `[N, *S, C]`, filter `[*K, C / groups, out_depth]` (depthwise
  `[*K, C, multiplier]`)."""
  x = attrs.as_operand(input, "input", FLOATS)
  filt = attrs.as_operand(filter, "filter", FLOATS)
  attrs.check_operands(ndim, x, filt, names=("input", "filter"))
  if depthwise:
    in_depth = x.shape[-1 if attrs.parse_data_format(data_format, ndim) else 1]
    _check_depthwise(in_depth, filt.shape, in_depth * filt.shape[-1], "input")
    filt = filt.reshape(*filt.shape[:ndim], 1,
                        filt.shape[ndim] * filt.shape[ndim + 1])
  spec = attrs.make_spec(ndim, list(x.shape), filt.shape, x.shape[0], strides,
                         padding, explicit_paddings, data_format, dilations,
                         paddings=paddings, sizes_name="input.shape")
  out_spatial = spec.out_backprop_spatial(filt.shape[:ndim])
  check_out_backprop(filt.shape, spec.activation_shape(
      x.shape[0], filt.shape[-1], out_spatial), spec)  # negative sizes
  return conv_forward(x, filt, spec, out_sharding)


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
