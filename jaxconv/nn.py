"""`jaxconv.nn`: TF2's `tf.nn` functions of the family, same signatures.

strides/dilations as TF takes them (an int, 1, N or N + 2 entries);
`output_shape` static (with batch, or spatial only where TF allows it);
padding a string, or (before, after) pairs where TF allows them.  Each is
a raw op of `jaxconv.raw_ops` (via jaxconv/core.py); 1-D runs natively
(TF inserts a unit height dim, which changes nothing here).  `name` is
ignored; `out_sharding` as in `jaxconv.raw_ops`.
"""
from __future__ import annotations

from jaxconv import attrs, core, ops, raw_ops

__all__ = ["conv1d_transpose", "conv2d_transpose", "conv3d_transpose",
           "conv_transpose", "atrous_conv2d_transpose",
           "depthwise_conv2d_backprop_input", "depthwise_conv2d_backprop_filter"]


def conv1d_transpose(input, filters, output_shape, strides, padding="SAME",  # noqa: A002
                     data_format="NWC", dilations=None, name=None,
                     out_sharding=None):
  """`tf.nn.conv1d_transpose`: input `[N, W, C_in]` (NWC) or `[N, C_in, W]`
  (NCW), filters `[kw, C_out, C_in]`, output_shape 3 entries."""
  del name
  if data_format not in (None, "NWC", "NCW"):
    raise ValueError("`data_format` must be 'NWC' or 'NCW'. Received: "
                     f"data_format={data_format}")
  data_format = data_format or "NWC"
  channel_index = 2 if data_format == "NWC" else 1
  # TF runs the 2-D op with a unit height inserted after the batch (NWC) or
  # the channels (NCW), strides/dilations [a, b, c] as [1, a, b, c]: NHWC
  # reads a as the unit height, NCHW b.  Any value >= 1 there changes nothing.
  unit = 0 if channel_index == 2 else 1
  window = {}
  for key, value in (("strides", strides), ("dilations", dilations)):
    seq = attrs.int_list(attrs.get_sequence(value, 1, channel_index, key), key)
    if seq[unit] < 1:
      raise ValueError(f"{key} must be >= 1 in every entry, got {seq}")
    del seq[unit]
    window[key] = [1, *seq]
  return core.backprop_input(
      ops.CONV1D_TRANSPOSE, output_shape, filters, input, padding=padding,
      data_format=data_format, **window, out_sharding=out_sharding)


def conv2d_transpose(input, filters, output_shape, strides, padding="SAME",  # noqa: A002
                     data_format="NHWC", dilations=None, name=None,
                     out_sharding=None):
  """`tf.nn.conv2d_transpose`: `Conv2DBackpropInput` with out_backprop =
  `input`; output_shape 4 entries or `[H, W]`; padding a string or 4 pairs."""
  del name
  data_format = "NHWC" if data_format is None else data_format
  channel_index = _channel_index(data_format, 2)
  padding, explicit = attrs.convert_padding(padding)
  return raw_ops.Conv2DBackpropInput(
      input_sizes=output_shape, filter=filters, out_backprop=input,
      strides=attrs.get_sequence(strides, 2, channel_index, "strides"),
      padding=padding, explicit_paddings=explicit, data_format=data_format,
      dilations=attrs.get_sequence(dilations, 2, channel_index, "dilations"),
      out_sharding=out_sharding)


def conv3d_transpose(input, filters, output_shape, strides, padding="SAME",  # noqa: A002
                     data_format="NDHWC", dilations=None, name=None,
                     out_sharding=None):
  """`tf.nn.conv3d_transpose`: `Conv3DBackpropInputV2` with out_backprop =
  `input`; output_shape 5 entries; padding "SAME" or "VALID"."""
  del name
  data_format = "NDHWC" if data_format is None else data_format
  channel_index = _channel_index(data_format, 3)
  return raw_ops.Conv3DBackpropInputV2(
      input_sizes=output_shape, filter=filters, out_backprop=input,
      strides=attrs.get_sequence(strides, 3, channel_index, "strides"),
      padding=padding, data_format=data_format,
      dilations=attrs.get_sequence(dilations, 3, channel_index, "dilations"),
      out_sharding=out_sharding)


def _channel_index(data_format, n):
  """Where TF's wrappers put the channels of strides/dilations (a bad
  data_format is the raw op's error)."""
  return 1 if isinstance(data_format, str) and data_format.startswith(
      "NC") else n + 1


def conv_transpose(input, filters, output_shape, strides, padding="SAME",  # noqa: A002
                   data_format=None, dilations=None, name=None,
                   out_sharding=None):
  """`tf.nn.conv_transpose`: 1-, 2- or 3-D by the length of output_shape."""
  if not hasattr(output_shape, "__len__"):
    raise ValueError("`output_shape` must be a tensor or sized collection. "
                     f"Received: output_shape={output_shape}")
  n = len(output_shape) - 2
  if not 1 <= n <= 3:
    raise ValueError("`output_shape` must be of length 3, 4 or 5. Received: "
                     f"output_shape={output_shape} of length {n + 2}.")
  op = (conv1d_transpose, conv2d_transpose, conv3d_transpose)[n - 1]
  return op(input, filters, output_shape, strides, padding=padding,
            data_format=data_format, dilations=dilations, name=name,
            out_sharding=out_sharding)


def atrous_conv2d_transpose(value, filters, output_shape, rate, padding,
                            name=None, out_sharding=None):
  """`tf.nn.atrous_conv2d_transpose`: NHWC, stride 1, dilation `rate`
  (TF computes it with space_to_batch; the values are the same)."""
  del name
  if isinstance(rate, bool) or not isinstance(rate, int):
    raise TypeError(f"rate must be an int, got {rate!r}")
  if rate < 1:
    raise ValueError(f"`rate` cannot be less than one. Received: rate={rate}")
  if attrs.as_string(padding, "padding") not in ops.STRING_PADDINGS:
    raise ValueError("`padding` must be either 'VALID' or 'SAME'. Received: "
                     f"padding={padding}")
  if len(attrs.parse_sizes(output_shape, "output_shape", 2)) != 4:
    raise ValueError("`output_shape` must have shape (4,)")
  return raw_ops.Conv2DBackpropInput(
      input_sizes=output_shape, filter=filters, out_backprop=value,
      strides=[1, 1, 1, 1], padding=padding, dilations=[1, rate, rate, 1],
      out_sharding=out_sharding)


def depthwise_conv2d_backprop_input(input_sizes, filter, out_backprop, strides,  # noqa: A002
                                    padding, data_format="NHWC",
                                    dilations=(1, 1, 1, 1), name=None,
                                    out_sharding=None):
  """`tf.nn.depthwise_conv2d_backprop_input`: the raw op, with padding a
  string or 4 (before, after) pairs."""
  del name
  padding, explicit = attrs.convert_padding(padding)
  return raw_ops.DepthwiseConv2dNativeBackpropInput(
      input_sizes=input_sizes, filter=filter, out_backprop=out_backprop,
      strides=strides, padding=padding, explicit_paddings=explicit,
      data_format=data_format, dilations=dilations, out_sharding=out_sharding)


def depthwise_conv2d_backprop_filter(input, filter_sizes, out_backprop,  # noqa: A002
                                     strides, padding, data_format="NHWC",
                                     dilations=(1, 1, 1, 1), name=None,
                                     out_sharding=None):
  """`tf.nn.depthwise_conv2d_backprop_filter`: the raw op, with padding a
  string or 4 (before, after) pairs."""
  del name
  padding, explicit = attrs.convert_padding(padding)
  return raw_ops.DepthwiseConv2dNativeBackpropFilter(
      input=input, filter_sizes=filter_sizes, out_backprop=out_backprop,
      strides=strides, padding=padding, explicit_paddings=explicit,
      data_format=data_format, dilations=dilations, out_sharding=out_sharding)
