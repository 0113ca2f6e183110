"""`jaxconv.keras`: Keras 3's transposed convolutions on jaxconv.

    from jaxconv.keras import Conv2DTranspose   # Keras's layer, jaxconv inside
    layer = Conv2DTranspose(16, 3, strides=2, padding="same")

    jaxconv.keras.use_jaxconv()      # stock layers too (the JAX backend's op)
    ...
    jaxconv.keras.use_jaxconv(False)          # Keras's own op again
    with jaxconv.keras.use_jaxconv(): ...     # or for a block

The layers are Keras's `Conv1DTranspose`, `Conv2DTranspose` and
`Conv3DTranspose` (constructor, config, weights, `.keras` saving: a model
saved with them loads where jaxconv is imported, on any backend), running
`jaxconv.keras.ops.conv_transpose` on the JAX backend and Keras's own op
on the others.  Keras has no transposed depthwise layer.  Needs the `keras`
extra.
"""
from __future__ import annotations

import keras

from jaxconv.keras import _internals
from jaxconv.keras.ops import conv_transpose

__all__ = ["Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose",
           "conv_transpose", "use_jaxconv"]

_KERAS_OP = []  # the JAX backend's own conv_transpose, once replaced


class _Switch:
  """What `use_jaxconv` returns: also a context manager restoring the op
  in place before it."""

  def __init__(self, before):
    self._before = before

  def __enter__(self):
    return self

  def __exit__(self, *_):
    _internals.swap(self._before)


def use_jaxconv(enable: bool = True) -> _Switch:
  """Route the JAX backend's `keras.ops.conv_transpose` (every stock
  transposed-conv layer, and the gradients JAX derives from it) through
  jaxconv; `use_jaxconv(False)` restores Keras's op.  JAX caches traces:
  switch before the functions (a model's train step) are first traced."""
  before = _internals.current()
  if not _KERAS_OP:
    _KERAS_OP.append(before)
  _internals.swap(conv_transpose if enable else _KERAS_OP[0])
  return _Switch(before)


def _layer(base):
  """`base` (a Keras transposed-conv layer) whose call, on the JAX backend,
  is BaseConvTranspose.call with jaxconv's op."""
  def call(self, inputs):
    if keras.backend.backend() != "jax":
      return base.call(self, inputs)
    outputs = conv_transpose(
        inputs, self.kernel, strides=list(self.strides), padding=self.padding,
        output_padding=self.output_padding, dilation_rate=self.dilation_rate,
        data_format=self.data_format)
    if self.use_bias:
      shape = ((1,) * (self.rank + 1) + (self.filters,)
               if self.data_format == "channels_last" else
               (1, self.filters) + (1,) * self.rank)
      outputs = keras.ops.add(outputs, keras.ops.reshape(self.bias, shape))
    return outputs if self.activation is None else self.activation(outputs)

  cls = type(base.__name__, (base,), {
      "call": call, "__module__": __name__,
      "__doc__": f"`keras.layers.{base.__name__}` computed by jaxconv on the "
                 "JAX backend (Keras's op on other backends)."})
  return keras.saving.register_keras_serializable("jaxconv")(cls)


Conv1DTranspose = _layer(keras.layers.Conv1DTranspose)
Conv2DTranspose = _layer(keras.layers.Conv2DTranspose)
Conv3DTranspose = _layer(keras.layers.Conv3DTranspose)
