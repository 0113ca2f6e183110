"""`jaxconv.flax.nnx.ConvTranspose`: a `flax.nnx.Module` with TF's/PyTorch's
transposed-conv semantics (see `jaxconv.layers.functional`)."""
from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
from flax import nnx

from jaxconv.layers import ConvTransposeConfig, porting

# Fan-in from in_features (the kernel's last axis), as flax.nnx.ConvTranspose.
default_kernel_init = nnx.initializers.lecun_normal(in_axis=-1, out_axis=-2)


class ConvTranspose(nnx.Module):
  """Transposed convolution, rank 1-3 from `kernel_size`.

  padding: "SAME"/"VALID" (TF/Keras) or (before, after) pairs, the forward
  conv's pads (PyTorch's `padding=p` is (p, p)); output size from
  `output_padding` (Keras/PyTorch meaning) or `output_shape` (spatial sizes,
  also per call).  Kernel `[*K, out_features / groups, in_features]`
  (Keras's layout); inputs channels last unless `channels_first`.
  """

  def __init__(self, in_features: int, out_features: int,
               kernel_size: int | Sequence[int],
               strides: int | Sequence[int] = 1, *, padding="SAME",
               output_padding=None, output_shape=None, kernel_dilation=1,
               feature_group_count: int = 1, channels_first: bool = False,
               use_bias: bool = True, dtype=None, param_dtype=jnp.float32,
               kernel_init=default_kernel_init,
               bias_init=nnx.initializers.zeros_init(), rngs: nnx.Rngs):
    self.config = ConvTransposeConfig.make(
        kernel_size, strides, padding, output_padding, kernel_dilation,
        feature_group_count, channels_first)
    self.in_features, self.out_features = in_features, out_features
    self.output_shape = None if output_shape is None else tuple(output_shape)
    self.dtype = dtype
    shape = self.config.kernel_shape(in_features, out_features)
    self.kernel = nnx.Param(kernel_init(rngs.params(), shape, param_dtype))
    self.bias = nnx.Param(bias_init(rngs.params(), (out_features,),
                                    param_dtype)) if use_bias else None

  def __call__(self, x, output_shape=None):
    """`x`: `[N, *S, in_features]` (`[N, in_features, *S]` channels first)."""
    kernel = self.kernel[...]
    bias = None if self.bias is None else self.bias[...]
    dtype = self.dtype or jnp.result_type(
        x, kernel, *(() if bias is None else (bias,)))
    return self.config(
        jnp.asarray(x, dtype), kernel.astype(dtype),
        None if bias is None else bias.astype(dtype),
        self.output_shape if output_shape is None else output_shape)


def _build(ported: porting.Ported, **kwargs) -> ConvTranspose:
  options = dict(ported.options)
  layer = ConvTranspose(ported.in_features, ported.out_features,
                        options.pop("kernel_size"), options.pop("strides"),
                        **options, **kwargs, rngs=nnx.Rngs(0))
  layer.kernel.set_value(jnp.asarray(ported.kernel, layer.kernel.dtype))
  if ported.bias is not None:
    layer.bias.set_value(jnp.asarray(ported.bias, layer.bias.dtype))
  return layer


def from_keras(layer, **kwargs) -> ConvTranspose:
  """The same layer (hyperparameters and weights) as a built Keras
  `Conv{1,2,3}DTranspose`; kwargs (dtype, param_dtype) go to the layer."""
  return _build(porting.from_keras(layer), **kwargs)


def from_torch(module, **kwargs) -> ConvTranspose:
  """The same layer as a PyTorch `ConvTranspose{1,2,3}d` (channels first)."""
  return _build(porting.from_torch(module), **kwargs)
