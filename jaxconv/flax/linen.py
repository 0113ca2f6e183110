"""`jaxconv.flax.linen.ConvTranspose`: a `flax.linen.Module` with TF's/
PyTorch's transposed-conv semantics (see `jaxconv.layers.functional`)."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from jaxconv.layers import ConvTransposeConfig, porting
from jaxconv.flax.nnx import default_kernel_init


class ConvTranspose(nn.Module):
  """Transposed convolution, rank 1-3 from `kernel_size`; parameters
  `kernel` `[*K, features / groups, in_features]` (Keras's layout) and
  `bias`.  Arguments as `jaxconv.flax.nnx.ConvTranspose`."""
  features: int
  kernel_size: int | Sequence[int]
  strides: int | Sequence[int] = 1
  padding: Any = "SAME"
  output_padding: Any = None
  output_shape: Sequence[int] | None = None
  kernel_dilation: int | Sequence[int] = 1
  feature_group_count: int = 1
  channels_first: bool = False
  use_bias: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32
  kernel_init: Callable = default_kernel_init
  bias_init: Callable = nn.initializers.zeros_init()

  @property
  def config(self) -> ConvTransposeConfig:
    return ConvTransposeConfig.make(
        self.kernel_size, self.strides, self.padding, self.output_padding,
        self.kernel_dilation, self.feature_group_count, self.channels_first)

  @nn.compact
  def __call__(self, x, output_shape=None):
    """`x`: `[N, *S, in_features]` (`[N, in_features, *S]` channels first)."""
    config = self.config
    in_features = x.shape[1 if self.channels_first else -1]
    kernel = self.param("kernel", self.kernel_init,
                        config.kernel_shape(in_features, self.features),
                        self.param_dtype)
    bias = self.param("bias", self.bias_init, (self.features,),
                      self.param_dtype) if self.use_bias else None
    dtype = self.dtype or jnp.result_type(
        x, kernel, *(() if bias is None else (bias,)))
    return config(jnp.asarray(x, dtype), kernel.astype(dtype),
                  None if bias is None else bias.astype(dtype),
                  self.output_shape if output_shape is None else output_shape)


def _build(ported: porting.Ported, **kwargs):
  options = dict(ported.options)
  module = ConvTranspose(ported.out_features, options.pop("kernel_size"),
                         options.pop("strides"), **options, **kwargs)
  dtype = np.dtype(module.param_dtype)
  params = {"kernel": jnp.asarray(ported.kernel, dtype)}
  if ported.bias is not None:
    params["bias"] = jnp.asarray(ported.bias, dtype)
  return module, {"params": params}


def from_keras(layer, **kwargs):
  """(module, variables) equal to a built Keras `Conv{1,2,3}DTranspose`."""
  return _build(porting.from_keras(layer), **kwargs)


def from_torch(module, **kwargs):
  """(module, variables) equal to a PyTorch `ConvTranspose{1,2,3}d`."""
  return _build(porting.from_torch(module), **kwargs)
