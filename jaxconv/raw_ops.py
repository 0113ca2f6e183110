"""`jaxconv.raw_ops`: TF's raw ops of the family, by their TF names.

Keyword-only, with TF's argument names and defaults, as `tf.raw_ops`.
Sizes (`input_sizes`, `filter_sizes`) must be static; the V2 (2-D) and v1
(3-D) variants take the shape of their `input`/`filter` tensor instead,
which may be traced.  Each op is its forward conv's input or filter
gradient (jaxconv/core.py); `name` is ignored (JAX has no op names).
Each also takes `out_sharding`, the result's sharding under JAX's
explicit sharding mode where the rules ask for it (`jaxconv.sharding`).

Differences from TF: no kernel refuses a valid configuration (NCHW,
dilations and groups run everywhere; the 2-D V2 and 3-D v1 ops, which TF
cannot run, compute what their counterparts do on their tensor's shape),
and inputs that abort TF's process raise ValueError/TypeError.
"""
from __future__ import annotations

from jaxconv import attrs, core
from jaxconv.ops import OPS

__all__ = [
    "Conv2DBackpropInput", "Conv2DBackpropInputV2", "Conv3DBackpropInput",
    "Conv3DBackpropInputV2", "DepthwiseConv2dNativeBackpropInput",
    "Conv2DBackpropFilter", "Conv2DBackpropFilterV2", "Conv3DBackpropFilter",
    "Conv3DBackpropFilterV2", "DepthwiseConv2dNativeBackpropFilter",
]


def _check_cudnn(use_cudnn_on_gpu):
  if not isinstance(use_cudnn_on_gpu, bool):
    raise TypeError(f"use_cudnn_on_gpu must be a bool, got {use_cudnn_on_gpu!r}")


def _shape_of(tensor, name):
  """The static shape of a tensor argument of a V2/v1 op."""
  return list(attrs.as_array(tensor, name).shape)


def Conv2DBackpropInput(*, input_sizes, filter, out_backprop, strides,  # noqa: N802
                        padding, use_cudnn_on_gpu=True, explicit_paddings=(),
                        data_format="NHWC", dilations=(1, 1, 1, 1), name=None,
                        out_sharding=None):
  """TF's `tf.raw_ops.Conv2DBackpropInput`: the gradient of conv2d w.r.t. its input.

  Args:
    input_sizes: static int vector, the shape of the conv's input: 4 entries
      in `data_format` order, or 2 spatial entries (batch is taken from
      `out_backprop`, depth from `filter.shape[2]`).
    filter: `[filter_height, filter_width, in_channels / groups, out_channels]`,
      one of float16, bfloat16, float32, float64, int32.
    out_backprop: gradients w.r.t. the conv's output, `[batch, out_height,
      out_width, out_channels]` (NHWC) or `[batch, out_channels, out_height,
      out_width]` (NCHW); same dtype as `filter`.
    strides: 4 ints in `data_format` order; batch and depth entries must be 1.
    padding: "SAME", "VALID" or "EXPLICIT".
    use_cudnn_on_gpu: accepted for compatibility; has no effect.
    explicit_paddings: with "EXPLICIT", 8 non-negative ints, (before, after)
      per dimension in `data_format` order (batch and depth pairs zero);
      empty otherwise.
    data_format: "NHWC" (default) or "NCHW".
    dilations: 4 ints in `data_format` order; batch and depth entries must be 1.
    name: ignored (JAX has no op names).

  Returns:
    The gradient w.r.t. the conv's input, shaped `input_sizes` (batch from
    `out_backprop`), with the dtype of `filter`.  Half precision accumulates
    in float32 and rounds once; int32 is exact and wraps.

  Raises:
    ValueError: bad attribute values or inconsistent shapes.
    TypeError: bad dtypes or argument kinds, or a traced `input_sizes`.
  """
  del name
  _check_cudnn(use_cudnn_on_gpu)
  return core.backprop_input(
      OPS["Conv2DBackpropInput"], input_sizes, filter, out_backprop,
      strides=strides, padding=padding, explicit_paddings=explicit_paddings,
      data_format=data_format, dilations=dilations, out_sharding=out_sharding)


def Conv2DBackpropInputV2(*, input, filter, out_backprop, strides, padding,  # noqa: N802,A002
                          use_cudnn_on_gpu=True, explicit_paddings=(),
                          data_format="NHWC", dilations=(1, 1, 1, 1),
                          name=None, out_sharding=None):
  """TF's `Conv2DBackpropInputV2`: `Conv2DBackpropInput` with the shape of
  `input` as `input_sizes` (its values are not used; its dtypes, int32
  included, as its op definition lists).  TF has no kernel for it
  anywhere; this computes what its counterpart does."""
  del name
  _check_cudnn(use_cudnn_on_gpu)
  _same_dtype(input, "input", filter, "filter")
  return core.backprop_input(
      OPS["Conv2DBackpropInputV2"], _shape_of(input, "input"), filter,
      out_backprop, strides=strides, padding=padding,
      explicit_paddings=explicit_paddings, data_format=data_format,
      dilations=dilations, out_sharding=out_sharding)


def Conv3DBackpropInputV2(*, input_sizes, filter, out_backprop, strides,  # noqa: N802
                          padding, data_format="NDHWC",
                          dilations=(1, 1, 1, 1, 1), name=None,
                          out_sharding=None):
  """TF's `Conv3DBackpropInputV2`: the input gradient of conv3d.

  input_sizes: static int32/int64 vector of 5 entries in `data_format`
  ("NDHWC" or "NCDHW") order; filter `[kd, kh, kw, in / groups, out]`;
  strides and dilations 5 entries; padding "SAME" or "VALID"; float dtypes.
  """
  del name
  return core.backprop_input(
      OPS["Conv3DBackpropInputV2"], input_sizes, filter, out_backprop,
      strides=strides, padding=padding, data_format=data_format,
      dilations=dilations, out_sharding=out_sharding)


def Conv3DBackpropInput(*, input, filter, out_backprop, strides, padding,  # noqa: N802,A002
                        dilations=(1, 1, 1, 1, 1), name=None,
                        out_sharding=None):
  """TF's v1 `Conv3DBackpropInput` (NDHWC only; the shape of `input` is the
  result's).  TF removed it from graphs; this mirrors its V2 on that shape."""
  del name
  _same_dtype(input, "input", filter, "filter")
  return core.backprop_input(
      OPS["Conv3DBackpropInput"], _shape_of(input, "input"), filter,
      out_backprop, strides=strides, padding=padding, data_format="NDHWC",
      dilations=dilations, out_sharding=out_sharding)


def DepthwiseConv2dNativeBackpropInput(*, input_sizes, filter, out_backprop,  # noqa: N802
                                       strides, padding, explicit_paddings=(),
                                       data_format="NHWC",
                                       dilations=(1, 1, 1, 1), name=None,
                                       out_sharding=None):
  """TF's `DepthwiseConv2dNativeBackpropInput`: the input gradient of a
  depthwise conv.  filter `[kh, kw, in_depth, multiplier]`; out_backprop has
  in_depth * multiplier channels (channel c*M + m reads input channel c);
  input_sizes 4 entries.  Dilations are honoured (as TF's XLA path does;
  its CPU kernel ignores them)."""
  del name
  return core.backprop_input(
      OPS["DepthwiseConv2dNativeBackpropInput"], input_sizes, filter,
      out_backprop, strides=strides, padding=padding,
      explicit_paddings=explicit_paddings, data_format=data_format,
      dilations=dilations, out_sharding=out_sharding)


def Conv2DBackpropFilter(*, input, filter_sizes, out_backprop, strides,  # noqa: N802,A002
                         padding, use_cudnn_on_gpu=True, explicit_paddings=(),
                         data_format="NHWC", dilations=(1, 1, 1, 1),
                         name=None, out_sharding=None):
  """TF's `tf.raw_ops.Conv2DBackpropFilter`: the gradient of conv2d w.r.t.
  its filter, shaped `filter_sizes` (static, `[kh, kw, in / groups, out]`;
  groups = input depth / filter_sizes[2]).  Float dtypes; the other
  arguments as `Conv2DBackpropInput`."""
  del name
  _check_cudnn(use_cudnn_on_gpu)
  return core.backprop_filter(
      OPS["Conv2DBackpropFilter"], input, filter_sizes, out_backprop,
      strides=strides, padding=padding, explicit_paddings=explicit_paddings,
      data_format=data_format, dilations=dilations, out_sharding=out_sharding)


def Conv2DBackpropFilterV2(*, input, filter, out_backprop, strides, padding,  # noqa: N802,A002
                           use_cudnn_on_gpu=True, explicit_paddings=(),
                           data_format="NHWC", dilations=(1, 1, 1, 1),
                           name=None, out_sharding=None):
  """TF's `Conv2DBackpropFilterV2`: `Conv2DBackpropFilter` with the shape of
  `filter` as `filter_sizes` (which must share the input's dtype).  TF has
  no kernel for it anywhere; this computes what its counterpart does."""
  del name
  _check_cudnn(use_cudnn_on_gpu)
  _same_dtype(filter, "filter", input, "input")
  return core.backprop_filter(
      OPS["Conv2DBackpropFilterV2"], input, _shape_of(filter, "filter"),
      out_backprop, strides=strides, padding=padding,
      explicit_paddings=explicit_paddings, data_format=data_format,
      dilations=dilations, out_sharding=out_sharding)


def Conv3DBackpropFilterV2(*, input, filter_sizes, out_backprop, strides,  # noqa: N802,A002
                           padding, data_format="NDHWC",
                           dilations=(1, 1, 1, 1, 1), name=None,
                           out_sharding=None):
  """TF's `Conv3DBackpropFilterV2`: the filter gradient of conv3d, shaped
  `filter_sizes` (static, 5 entries); padding "SAME" or "VALID"."""
  del name
  return core.backprop_filter(
      OPS["Conv3DBackpropFilterV2"], input, filter_sizes, out_backprop,
      strides=strides, padding=padding, data_format=data_format,
      dilations=dilations, out_sharding=out_sharding)


def Conv3DBackpropFilter(*, input, filter, out_backprop, strides, padding,  # noqa: N802,A002
                         dilations=(1, 1, 1, 1, 1), name=None,
                         out_sharding=None):
  """TF's v1 `Conv3DBackpropFilter` (NDHWC only; the shape of `filter` is
  the result's).  TF removed it from graphs; this mirrors its V2."""
  del name
  _same_dtype(filter, "filter", input, "input")
  return core.backprop_filter(
      OPS["Conv3DBackpropFilter"], input, _shape_of(filter, "filter"),
      out_backprop, strides=strides, padding=padding, data_format="NDHWC",
      dilations=dilations, out_sharding=out_sharding)


def DepthwiseConv2dNativeBackpropFilter(*, input, filter_sizes, out_backprop,  # noqa: N802,A002
                                        strides, padding, explicit_paddings=(),
                                        data_format="NHWC",
                                        dilations=(1, 1, 1, 1), name=None,
                                        out_sharding=None):
  """TF's `DepthwiseConv2dNativeBackpropFilter`: the filter gradient of a
  depthwise conv, shaped `filter_sizes` = `[kh, kw, in_depth, multiplier]`."""
  del name
  return core.backprop_filter(
      OPS["DepthwiseConv2dNativeBackpropFilter"], input, filter_sizes,
      out_backprop, strides=strides, padding=padding,
      explicit_paddings=explicit_paddings, data_format=data_format,
      dilations=dilations, out_sharding=out_sharding)


def _same_dtype(tensor, name, other, other_name):
  """TF's type check of a V2/v1 op's shape-only tensor (all its tensors
  share the dtype T)."""
  a, b = getattr(tensor, "dtype", None), getattr(other, "dtype", None)
  if a is not None and b is not None and a != b:
    raise TypeError(f"Input '{name}' has type {a} that does not match type "
                    f"{b} of argument '{other_name}'")
