"""`conv_transpose` with the JAX backend's signature (`keras.ops`), computed
by jaxconv's `conv_backprop_input` primitive through the layers' functional
core (`jaxconv.layers.functional`): Keras's sizes (TF's), jaxconv's speed and
gradients."""
from __future__ import annotations

from jaxconv.layers import ConvTransposeConfig


def conv_transpose(inputs, kernel, strides=1, padding="valid",
                   output_padding=None, data_format=None, dilation_rate=1):
  """Keras's `conv_transpose`: kernel `[*K, out_channels, in_channels]`,
  padding "valid"/"same", `output_padding` as Keras's layers take it."""
  import keras  # noqa: PLC0415
  data_format = keras.config.image_data_format() if data_format is None else (
      data_format)
  if data_format not in ("channels_last", "channels_first"):
    raise ValueError(f"data_format must be 'channels_last' or "
                     f"'channels_first', got {data_format!r}")
  if not isinstance(padding, str):
    raise ValueError(f"padding must be 'valid' or 'same', got {padding!r}")
  n = len(kernel.shape) - 2
  config = ConvTransposeConfig.make(
      tuple(kernel.shape[:n]), strides, padding.upper(), output_padding,
      dilation_rate, channels_first=data_format == "channels_first")
  return config(inputs, kernel)
