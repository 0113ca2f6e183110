"""`jaxconv.equinox.ConvTranspose`: an `equinox.Module` with TF's and
PyTorch's transposed-conv sizes, computed by jaxconv's primitive.

    layer = jaxconv.equinox.ConvTranspose(2, 64, 32, 3, stride=2,
                                          padding="SAME", key=key)
    y = layer(x)                        # x [C_in, *S], channels first
    y = layer(x, output_shape=(9, 9))   # TF's output_shape, per call
    layer = jaxconv.equinox.from_torch(torch_module)   # weights carried
    layer = jaxconv.equinox.from_keras(keras_layer)

As Equinox's layers: one example per call (`eqx.filter_vmap` for a batch),
channels first.  `padding` is PyTorch's (an int or (before, after) pairs,
with `output_padding`) or TF's "SAME"/"VALID" (Keras's `output_padding`).
The weight is the core's layout, Keras's `[*K, out / groups, in]`
(`jaxconv.layers.functional`); no flip or transpose per call.  Needs the
`equinox` extra.
"""
from __future__ import annotations

import math
from typing import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp

from jaxconv.layers import ConvTransposeConfig, porting

__all__ = ["ConvTranspose", "from_keras", "from_torch"]


class ConvTranspose(eqx.Module):
  """Transposed convolution of one channels-first example `[C_in, *S]`."""
  weight: jax.Array  # [*K, out_channels / groups, in_channels]
  bias: jax.Array | None
  in_channels: int = eqx.field(static=True)
  out_channels: int = eqx.field(static=True)
  config: ConvTransposeConfig = eqx.field(static=True)
  output_shape: tuple | None = eqx.field(static=True)

  def __init__(self, num_spatial_dims: int, in_channels: int,
               out_channels: int, kernel_size: int | Sequence[int],
               stride: int | Sequence[int] = 1, padding="VALID",
               output_padding=None, dilation: int | Sequence[int] = 1,
               groups: int = 1, use_bias: bool = True, dtype=None, *,
               output_shape=None, key: jax.Array):
    if isinstance(kernel_size, int):
      kernel_size = (kernel_size,) * num_spatial_dims
    if len(kernel_size) != num_spatial_dims:
      raise ValueError(f"kernel_size {kernel_size!r} must have "
                       f"num_spatial_dims={num_spatial_dims} entries")
    self.config = ConvTransposeConfig.make(
        kernel_size, stride, padding, output_padding, dilation, groups,
        channels_first=True)
    self.in_channels, self.out_channels = in_channels, out_channels
    self.output_shape = None if output_shape is None else tuple(output_shape)
    shape = self.config.kernel_shape(in_channels, out_channels)
    dtype = dtype or jnp.float32
    # PyTorch's init: fan-in (out_channels / groups) * prod(kernel_size).
    limit = 1 / math.sqrt(shape[-2] * math.prod(kernel_size))
    wkey, bkey = jax.random.split(key)
    self.weight = jax.random.uniform(wkey, shape, dtype, -limit, limit)
    self.bias = jax.random.uniform(bkey, (out_channels,), dtype, -limit,
                                   limit) if use_bias else None

  def __call__(self, x, output_shape=None, *, key=None):
    """`x` `[in_channels, *S]` -> `[out_channels, *S']`; `output_shape`
    (spatial sizes) overrides the layer's.  `key` is unused (Equinox's
    layer signature)."""
    del key
    x = jnp.asarray(x)
    if x.ndim != self.config.ndim + 1:
      raise ValueError(
          f"input must be [in_channels, *spatial] ({self.config.ndim + 1}-"
          f"dimensional; eqx.filter_vmap for a batch), got shape {x.shape}")
    if x.shape[0] != self.in_channels:
      raise ValueError(f"input has {x.shape[0]} channels, the layer "
                       f"in_channels={self.in_channels}")
    shape = self.output_shape if output_shape is None else output_shape
    return self.config(x[None], self.weight, self.bias, shape)[0]


def _build(ported: porting.Ported, dtype=None) -> ConvTranspose:
  options = dict(ported.options)
  options.pop("channels_first")  # Equinox's layers are channels first
  layer = ConvTranspose(
      len(options["kernel_size"]), ported.in_features, ported.out_features,
      options.pop("kernel_size"), options.pop("strides"),
      options.pop("padding"), options.pop("output_padding"),
      options.pop("kernel_dilation"), options.pop("feature_group_count", 1),
      options.pop("use_bias"), dtype, key=jax.random.PRNGKey(0))
  dtype = layer.weight.dtype
  layer = eqx.tree_at(lambda m: m.weight, layer,
                      jnp.asarray(ported.kernel, dtype))
  if ported.bias is not None:
    layer = eqx.tree_at(lambda m: m.bias, layer,
                        jnp.asarray(ported.bias, dtype))
  return layer


def from_keras(layer, dtype=None) -> ConvTranspose:
  """The same layer (hyperparameters, weights) as a built Keras
  `Conv{1,2,3}DTranspose`, taking channels-first examples."""
  return _build(porting.from_keras(layer), dtype)


def from_torch(module, dtype=None) -> ConvTranspose:
  """The same layer as a PyTorch `ConvTranspose{1,2,3}d`."""
  return _build(porting.from_torch(module), dtype)
