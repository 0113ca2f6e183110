"""The one functional core under every layer library's transposed conv
(`jaxconv.flax`, `jaxconv.keras`, `jaxconv.equinox`): `ConvTransposeConfig`
(Keras's and PyTorch's hyperparameters -> the `conv_backprop_input`
primitive) and `porting` (Keras and PyTorch layers' hyperparameters and
weights in its terms).  Needs no optional extra."""
from jaxconv.layers.functional import ConvTransposeConfig

__all__ = ["ConvTransposeConfig"]
