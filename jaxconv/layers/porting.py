"""Hyperparameters and weights of Keras and PyTorch transposed-conv layers,
in `ConvTransposeConfig`'s terms (shared by the nnx and linen builders)."""
from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Ported:
  """What a layer builder needs: constructor arguments and weights."""
  in_features: int
  out_features: int
  options: dict  # ConvTransposeConfig.make's keywords, plus use_bias
  kernel: np.ndarray  # Keras's layout [*K, out_features / groups, in_features]
  bias: np.ndarray | None


_KERAS = ("Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose")
_TORCH = ("ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d")


def from_keras(layer) -> Ported:
  """A built Keras 3 `Conv{1,2,3}DTranspose` layer."""
  import keras  # noqa: PLC0415  (optional dependency)
  if type(layer).__name__ not in _KERAS or not isinstance(layer, keras.Layer):
    raise TypeError(f"from_keras takes a Keras {', '.join(_KERAS)} layer, got "
                    f"{type(layer).__name__}")
  if not layer.built:
    raise ValueError(f"Keras layer {layer.name!r} is not built yet: call it "
                     "once (or build it) so that its weights exist")
  if layer.activation is not keras.activations.linear:
    raise ValueError(
        f"Keras layer {layer.name!r} has activation "
        f"{getattr(layer.activation, '__name__', layer.activation)}: the "
        "ported layer has none; rebuild the Keras layer with activation=None "
        "and apply the activation after it")
  kernel = keras.ops.convert_to_numpy(layer.kernel)
  bias = keras.ops.convert_to_numpy(layer.bias) if layer.use_bias else None
  options = dict(
      kernel_size=tuple(layer.kernel_size), strides=tuple(layer.strides),
      padding=layer.padding.upper(),
      output_padding=(None if layer.output_padding is None
                      else tuple(layer.output_padding)),
      kernel_dilation=tuple(layer.dilation_rate),
      channels_first=layer.data_format == "channels_first",
      use_bias=layer.use_bias)
  return Ported(kernel.shape[-1], layer.filters, options, kernel, bias)


def from_torch(module) -> Ported:
  """A PyTorch `torch.nn.ConvTranspose{1,2,3}d` (channels first)."""
  import torch  # noqa: PLC0415  (optional dependency)
  if not isinstance(module, tuple(getattr(torch.nn, n) for n in _TORCH)):
    raise TypeError(f"from_torch takes a torch.nn {', '.join(_TORCH)}, got "
                    f"{type(module).__name__}")
  if module.padding_mode != "zeros":
    raise ValueError(f"padding_mode {module.padding_mode!r} is not supported "
                     "(PyTorch's transposed convs take only 'zeros')")
  weight = module.weight.detach().cpu().numpy()  # [in, out / groups, *K]
  kernel = np.transpose(weight, (*range(2, weight.ndim), 1, 0))
  bias = None if module.bias is None else module.bias.detach().cpu().numpy()
  options = dict(
      kernel_size=tuple(module.kernel_size), strides=tuple(module.stride),
      padding=tuple((p, p) for p in module.padding),
      output_padding=tuple(module.output_padding),
      kernel_dilation=tuple(module.dilation), feature_group_count=module.groups,
      channels_first=True, use_bias=bias is not None)
  return Ported(module.in_channels, module.out_channels, options, kernel, bias)
