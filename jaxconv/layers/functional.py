"""The functional core under every layer (Flax nnx and linen, Keras, Equinox).

A transposed convolution with Keras's and PyTorch's hyperparameters,
computed by the `conv_backprop_input` primitive (so jit, vmap, grad of any
order, export and sharding work as for every op of the family):

    x [N, *S, C_in] --(kernel [*K, C_out / groups, C_in])--> [N, *S', C_out]

The kernel layout is Keras's `Conv*DTranspose` one (TF's backprop-input
filter).  `padding` is "SAME"/"VALID" (Keras: TF's pads for the output size)
or one (before, after) pair per spatial dim, the forward conv's pads
(PyTorch's `padding=p` is (p, p)).  The output size is `output_shape` where
given, else Keras's/PyTorch's rule with `output_padding`
(`lowering.geometry.transposed_output_size`).
"""
from __future__ import annotations

import dataclasses
import operator
from typing import Sequence

import jax.numpy as jnp

from jaxconv.attrs import as_array
from jaxconv.primitives import conv_backprop_input
from jaxconv.lowering.geometry import (ConvSpec, fitting_padding, forward_output_size,
                               forward_padding, transposed_output_size)


def _ints(value, name: str, n: int, minimum: int) -> tuple[int, ...]:
  """An int or n ints, each >= minimum."""
  values = (value,) * n if _is_int(value) else tuple(value)
  if len(values) != n or not all(map(_is_int, values)):
    raise ValueError(f"{name} must be an int or {n} ints, got {value!r}")
  values = tuple(map(operator.index, values))
  if min(values) < minimum:
    raise ValueError(f"{name} must be >= {minimum} in every entry, got "
                     f"{value!r}")
  return values


def _is_int(value) -> bool:
  try:
    operator.index(value)
  except TypeError:
    return False
  return not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class ConvTransposeConfig:
  """Validated hyperparameters of a transposed conv (rank from kernel_size)."""
  kernel_size: tuple[int, ...]
  strides: tuple[int, ...]
  padding: str | tuple[tuple[int, int], ...]
  output_padding: tuple[int, ...] | None
  dilation: tuple[int, ...]
  groups: int
  channels_first: bool

  @classmethod
  def make(cls, kernel_size, strides=1, padding="SAME", output_padding=None,
           dilation=1, groups=1, channels_first=False) -> "ConvTransposeConfig":
    kernel_size = (kernel_size,) if _is_int(kernel_size) else kernel_size
    n = len(tuple(kernel_size))
    if not 1 <= n <= 3:
      raise ValueError(f"kernel_size must have 1 to 3 entries, got "
                       f"{kernel_size!r}")
    kernel = _ints(kernel_size, "kernel_size", n, 1)
    strides = _ints(strides, "strides", n, 1)
    dilation = _ints(dilation, "kernel_dilation", n, 1)
    if isinstance(padding, str):
      if padding.upper() not in ("SAME", "VALID"):
        raise ValueError(f"padding must be 'SAME', 'VALID' or {n} (before, "
                         f"after) pairs, got {padding!r}")
      padding = padding.upper()
      limits = strides  # Keras: output_padding < stride
    else:
      pairs = ((padding, padding),) * n if _is_int(padding) else tuple(padding)
      if len(pairs) != n:
        raise ValueError(f"padding must be 'SAME', 'VALID' or {n} (before, "
                         f"after) pairs, got {padding!r}")
      padding = tuple(_ints(p, "padding", 2, 0) for p in pairs)
      # PyTorch: output_padding < stride or < dilation.
      limits = tuple(map(max, strides, dilation))
    if output_padding is not None:
      output_padding = _ints(output_padding, "output_padding", n, 0)
      if any(p >= lim for p, lim in zip(output_padding, limits)):
        what = ("strides" if isinstance(padding, str)
                else "strides or dilations")
        raise ValueError(f"output_padding {output_padding} must be smaller "
                         f"than the {what} {limits} in every entry")
    if not _is_int(groups) or groups < 1:
      raise ValueError(f"feature_group_count must be a positive int, got "
                       f"{groups!r}")
    return cls(kernel, strides, padding, output_padding, dilation,
               operator.index(groups), bool(channels_first))

  @property
  def ndim(self) -> int:
    return len(self.kernel_size)

  def kernel_shape(self, in_features: int, out_features: int) -> tuple:
    """Keras's layout `[*K, out_features / groups, in_features]`."""
    for name, value in (("in_features", in_features),
                        ("out_features", out_features)):
      if value % self.groups:
        raise ValueError(f"{name} {value} must be divisible by "
                         f"feature_group_count {self.groups}")
    return (*self.kernel_size, out_features // self.groups, in_features)

  def output_spatial(self, spatial: Sequence[int]) -> tuple[int, ...]:
    """Keras's/PyTorch's output sizes for input spatial sizes `spatial`."""
    pads = self.padding if isinstance(self.padding, tuple) else (
        (self.padding,) * self.ndim)
    output_padding = self.output_padding or (None,) * self.ndim
    return tuple(map(transposed_output_size, spatial, self.kernel_size,
                     self.strides, self.dilation, pads, output_padding))

  def __call__(self, x, kernel, bias=None, output_shape=None):
    """Apply to `x` ([N, *S, C_in], channels first if configured)."""
    n = self.ndim
    x, kernel = as_array(x, "input"), as_array(kernel, "kernel")
    bias = None if bias is None else as_array(bias, "bias")
    if x.ndim != n + 2:
      raise ValueError(f"input must be {n + 2}-dimensional for a {n}-D "
                       f"transposed conv, got shape {x.shape}")
    if tuple(kernel.shape[:n]) != self.kernel_size or kernel.ndim != n + 2:
      raise ValueError(f"kernel must have shape [*{self.kernel_size}, "
                       "out_features / groups, in_features], got "
                       f"{kernel.shape}")
    spatial = x.shape[2:] if self.channels_first else x.shape[1:-1]
    out = self._output_sizes(spatial, output_shape)
    windows = tuple(zip(out, spatial, self.kernel_size, self.strides,
                        self.dilation))
    if isinstance(self.padding, str):
      padding = tuple(forward_padding(self.padding, o, k, s, d)
                      for o, _, k, s, d in windows)
      computed = out
    else:
      fits = [fitting_padding(*w, before) for w, (before, _) in zip(
          windows, self.padding)]
      padding = tuple((b, a) for (b, _), (a, _) in zip(self.padding, fits))
      computed = tuple(c for _, c in fits)
    spec = ConvSpec(computed, self.strides, self.dilation, padding,
                    self.groups, not self.channels_first)
    y = conv_backprop_input(kernel, x, spec)
    missing = [(0, o - c) for o, c in zip(out, computed)]
    if any(hi for _, hi in missing):  # positions no tap reaches
      y = jnp.pad(y, [(0, 0), (0, 0), *missing] if self.channels_first
                  else [(0, 0), *missing, (0, 0)])
    if bias is not None:
      y = y + (bias.reshape(-1, *(1,) * n) if self.channels_first else bias)
    return y

  def _output_sizes(self, spatial, output_shape) -> tuple[int, ...]:
    """The output spatial sizes, checked as Keras (TF) and PyTorch do."""
    if output_shape is None:
      out = self.output_spatial(spatial)
    else:
      out = _ints(output_shape, "output_shape", self.ndim, 0)
    if min(out) < 1:
      raise ValueError(
          f"the output spatial sizes {out} (from input spatial sizes "
          f"{tuple(spatial)} and {self}) must be positive")
    if output_shape is None:
      return out
    if isinstance(self.padding, str):  # TF's check, as Keras runs it
      reachable = [forward_output_size(o, k, s, d, forward_padding(
          self.padding, o, k, s, d)) == i for o, i, k, s, d in zip(
              out, spatial, self.kernel_size, self.strides, self.dilation)]
      rule = f"TF's {self.padding} size rule"
    else:  # PyTorch's output_size range
      low = dataclasses.replace(self, output_padding=None).output_spatial(
          spatial)
      reachable = [lo <= o < lo + max(s, d) for o, lo, s, d in zip(
          out, low, self.strides, self.dilation)]
      rule = (f"each entry in [low, low + max(stride, dilation)), low = "
              f"{low}")
    if not all(reachable):
      raise ValueError(f"output_shape {out} is not reachable from input "
                       f"spatial sizes {tuple(spatial)} ({rule})")
    return out
