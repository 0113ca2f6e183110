"""TensorFlow-compatible entry points: the raw op and the compat.v1 wrapper.

A call flows: arguments -> `attrs` (validation, one `ConvSpec`) ->
`primitive.conv_backprop_input` (shape rule, transforms in `rules`) ->
`lowering` (StableHLO).
"""
from __future__ import annotations

from jaxconv import attrs
from jaxconv.primitive import conv_backprop_input


def Conv2DBackpropInput(*, input_sizes, filter, out_backprop, strides,  # noqa: N802
                        padding, use_cudnn_on_gpu=True, explicit_paddings=(),
                        data_format="NHWC", dilations=(1, 1, 1, 1), name=None):
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
  if not isinstance(use_cudnn_on_gpu, bool):
    raise TypeError(f"use_cudnn_on_gpu must be a bool, got {use_cudnn_on_gpu!r}")
  filt = attrs.as_operand(filter, "filter")
  dy = attrs.as_operand(out_backprop, "out_backprop")
  attrs.check_operands(2, filt, dy)
  spec = attrs.make_spec(2, input_sizes, filt.shape, dy.shape[0], strides,
                         padding, explicit_paddings, data_format, dilations)
  return conv_backprop_input(filt, dy, spec)


def conv2d_backprop_input(input_sizes, filter=None, out_backprop=None,  # noqa: A002
                          strides=None, padding=None, use_cudnn_on_gpu=True,
                          data_format="NHWC", dilations=(1, 1, 1, 1), name=None,
                          filters=None):
  """TF's `tf.compat.v1.nn.conv2d_backprop_input`.

  Same as `Conv2DBackpropInput`, except: `padding` is "SAME", "VALID" or a
  4x2 list of (before, after) pairs in `data_format` order (which means
  EXPLICIT; the string "EXPLICIT" itself is rejected, as TF does), and
  `filters` is an alias of `filter` (give exactly one).
  """
  if (filter is None) == (filters is None):
    raise ValueError("give exactly one of filter and filters (an alias), got "
                     f"{'both' if filters is not None else 'neither'}")
  if out_backprop is None or strides is None or padding is None:
    missing = [k for k, v in (("out_backprop", out_backprop),
                              ("strides", strides), ("padding", padding))
               if v is None]
    raise ValueError(f"missing required argument(s): {', '.join(missing)}")
  explicit_paddings = []
  if isinstance(padding, str):
    if padding == "EXPLICIT":
      raise ValueError('padding="EXPLICIT" is not accepted here: give the '
                       'explicit pads as a list of (before, after) pairs')
  else:
    explicit_paddings = _flatten_pairs(padding)
    padding = "EXPLICIT"
  return Conv2DBackpropInput(
      input_sizes=input_sizes, filter=filters if filter is None else filter,
      out_backprop=out_backprop, strides=strides, padding=padding,
      use_cudnn_on_gpu=use_cudnn_on_gpu, explicit_paddings=explicit_paddings,
      data_format=data_format, dilations=dilations, name=name)


def _flatten_pairs(padding) -> list:
  """[[b0, a0], [b1, a1], ...] -> [b0, a0, b1, a1, ...] (checked: pairs)."""
  try:
    pairs = [list(p) for p in padding]
  except TypeError:
    raise TypeError("padding must be 'SAME', 'VALID' or a list of (before, "
                    f"after) pairs, got {padding!r}") from None
  if any(len(p) != 2 for p in pairs):
    raise ValueError("padding must be a list of (before, after) pairs in "
                     f"data_format order, got {padding!r}")
  return [v for p in pairs for v in p]
