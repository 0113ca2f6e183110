"""Flax layers with TF's (Keras's) and PyTorch's transposed-conv semantics.

    jaxconv.flax.nnx.ConvTranspose      # a flax.nnx.Module
    jaxconv.flax.linen.ConvTranspose    # a flax.linen.Module
    jaxconv.flax.nnx.from_keras(layer) / from_torch(module)
    jaxconv.flax.linen.from_keras(layer) / from_torch(module)
                                        # -> (module, variables)

Both modules hold only parameters; the computation is one functional core
(`jaxconv.layers.ConvTransposeConfig`) that binds the family's primitive.
Needs the `flax` extra (`pip install 'jaxconv[flax]'`).
"""
from jaxconv.flax import linen, nnx
from jaxconv.layers import ConvTransposeConfig

__all__ = ["ConvTransposeConfig", "linen", "nnx"]
