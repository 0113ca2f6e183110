"""`jaxconv.compat.v1.nn`: TF1's `tf.compat.v1.nn` functions of the family.

Same signatures, positional arguments and defaults as TF; each is a raw op
of `jaxconv.raw_ops` or a `jaxconv.nn` function.  `name` is ignored;
`out_sharding` as in `jaxconv.raw_ops`.
"""
from __future__ import annotations

from jaxconv import attrs, nn, raw_ops
from jaxconv.nn import (atrous_conv2d_transpose, conv1d_transpose,
                        conv_transpose, depthwise_conv2d_backprop_filter,
                        depthwise_conv2d_backprop_input)

__all__ = [
    "conv2d_backprop_input", "conv2d_backprop_filter", "conv2d_transpose",
    "conv3d_transpose", "conv1d_transpose", "conv_transpose",
    "conv3d_backprop_filter", "conv3d_backprop_filter_v2",
    "depthwise_conv2d_native_backprop_input",
    "depthwise_conv2d_native_backprop_filter",
    "depthwise_conv2d_backprop_input", "depthwise_conv2d_backprop_filter",
    "atrous_conv2d_transpose",
]
# TF1 names for the same functions.
depthwise_conv2d_native_backprop_input = depthwise_conv2d_backprop_input
depthwise_conv2d_native_backprop_filter = depthwise_conv2d_backprop_filter


def conv2d_backprop_input(input_sizes, filter=None, out_backprop=None,  # noqa: A002
                          strides=None, padding=None, use_cudnn_on_gpu=True,
                          data_format="NHWC", dilations=(1, 1, 1, 1), name=None,
                          filters=None, out_sharding=None):
  """`tf.compat.v1.nn.conv2d_backprop_input`: `raw_ops.Conv2DBackpropInput`,
  except that `padding` is "SAME", "VALID" or a 4x2 list of (before, after)
  pairs in `data_format` order (which means EXPLICIT; the string "EXPLICIT"
  itself is rejected, as TF does), and `filters` is an alias of `filter`."""
  filt = attrs.alias("filter", filter, "filters", filters)
  _require(out_backprop=out_backprop, strides=strides, padding=padding)
  padding, explicit = attrs.convert_padding(padding)
  return raw_ops.Conv2DBackpropInput(
      input_sizes=input_sizes, filter=filt, out_backprop=out_backprop,
      strides=strides, padding=padding, use_cudnn_on_gpu=use_cudnn_on_gpu,
      explicit_paddings=explicit, data_format=data_format,
      dilations=dilations, name=name, out_sharding=out_sharding)


def conv2d_backprop_filter(input, filter_sizes, out_backprop, strides, padding,  # noqa: A002
                           use_cudnn_on_gpu=True, data_format="NHWC",
                           dilations=(1, 1, 1, 1), name=None,
                           out_sharding=None):
  """`tf.compat.v1.nn.conv2d_backprop_filter`: `raw_ops.Conv2DBackpropFilter`
  with padding a string or 4 (before, after) pairs."""
  padding, explicit = attrs.convert_padding(padding)
  return raw_ops.Conv2DBackpropFilter(
      input=input, filter_sizes=filter_sizes, out_backprop=out_backprop,
      strides=strides, padding=padding, use_cudnn_on_gpu=use_cudnn_on_gpu,
      explicit_paddings=explicit, data_format=data_format,
      dilations=dilations, name=name, out_sharding=out_sharding)


def conv2d_transpose(value=None, filter=None, output_shape=None, strides=None,  # noqa: A002
                     padding="SAME", data_format="NHWC", name=None, input=None,
                     filters=None, dilations=None, out_sharding=None):
  """`tf.compat.v1.nn.conv2d_transpose`: `jaxconv.nn.conv2d_transpose` with
  `value`/`input` and `filter`/`filters` aliases (strides None: all 1)."""
  return nn.conv2d_transpose(
      attrs.alias("value", value, "input", input),
      attrs.alias("filter", filter, "filters", filters), _shape(output_shape),
      strides, padding=padding, data_format=data_format, dilations=dilations,
      name=name, out_sharding=out_sharding)


def conv3d_transpose(value, filter=None, output_shape=None, strides=None,  # noqa: A002
                     padding="SAME", data_format="NDHWC", name=None, input=None,
                     filters=None, dilations=None, out_sharding=None):
  """`tf.compat.v1.nn.conv3d_transpose`: `jaxconv.nn.conv3d_transpose` with
  `value`/`input` and `filter`/`filters` aliases (`value` is required, as in
  TF: pass `value=None` to use `input`)."""
  return nn.conv3d_transpose(
      attrs.alias("value", value, "input", input),
      attrs.alias("filter", filter, "filters", filters), _shape(output_shape),
      strides, padding=padding, data_format=data_format, dilations=dilations,
      name=name, out_sharding=out_sharding)


def conv3d_backprop_filter(input, filter_sizes, out_backprop, strides, padding,  # noqa: A002
                           data_format="NDHWC", dilations=(1, 1, 1, 1, 1),
                           name=None, out_sharding=None):
  """`tf.compat.v1.nn.conv3d_backprop_filter` (= `..._v2`):
  `raw_ops.Conv3DBackpropFilterV2`, positional arguments allowed."""
  return raw_ops.Conv3DBackpropFilterV2(
      input=input, filter_sizes=filter_sizes, out_backprop=out_backprop,
      strides=strides, padding=padding, data_format=data_format,
      dilations=dilations, name=name, out_sharding=out_sharding)


conv3d_backprop_filter_v2 = conv3d_backprop_filter


def _require(**args):
  missing = [k for k, v in args.items() if v is None]
  if missing:
    raise ValueError(f"missing required argument(s): {', '.join(missing)}")


def _shape(output_shape):
  _require(output_shape=output_shape)
  return output_shape
