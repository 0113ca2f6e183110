"""The geometry of a transposed convolution: one place for every size and pad.

`ConvSpec` is the normalised, hashable description of the op that the
primitive carries as its only parameter.  Everything that needs an output
size or a padding (the shape rule, the lowerings, the transposes, the tests)
asks this module instead of re-deriving it.

Conventions: N spatial dims (1-3); activations are ``[batch, *spatial, C]``
(channels_last) or ``[batch, C, *spatial]``; filters are TF's
``[*spatial, C_in / groups, C_out]``.  ``padding`` is the *forward*
convolution's (before, after) pair per spatial dim, already resolved from
SAME/VALID/EXPLICIT.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

Pair = tuple[int, int]


def effective_size(k: int, dilation: int) -> int:
  """Extent of a k-tap window with the given dilation: (k - 1) * d + 1."""
  return (k - 1) * dilation + 1


def _div_trunc(a: int, b: int) -> int:
  """Integer division truncating toward zero, as TF's C++ does."""
  q = abs(a) // abs(b)
  return q if (a >= 0) == (b >= 0) else -q


def forward_padding(mode: str, size: int, k: int, stride: int, dilation: int,
                    explicit: Pair = (0, 0)) -> Pair:
  """TF's (before, after) padding of the forward conv for one spatial dim."""
  if mode == "VALID":
    return (0, 0)
  if mode == "EXPLICIT":
    return tuple(explicit)
  if mode == "SAME":
    out = _div_trunc(size + stride - 1, stride)
    need = max(0, (out - 1) * stride + effective_size(k, dilation) - size)
    return (need // 2, need - need // 2)
  raise ValueError(f"padding: unknown mode {mode!r}")


def forward_output_size(size: int, k: int, stride: int, dilation: int,
                        pad: Pair) -> int:
  """TF's output size of the forward conv (may be negative: caller checks)."""
  ek = effective_size(k, dilation)
  return _div_trunc(size + pad[0] + pad[1] - ek + stride, stride)


def transposed_output_size(size: int, k: int, stride: int, dilation: int,
                           padding, output_padding: int | None = None) -> int:
  """Keras's and PyTorch's output size of a transposed conv (one dim).

  padding: "SAME" or "VALID" (Keras's rule, `output_padding` None or an int)
  or the forward conv's (before, after) pads (PyTorch's rule).
  """
  ek = effective_size(k, dilation)
  if padding == "VALID":
    extra = max(ek, stride) - ek if output_padding is None else output_padding
    return (size - 1) * stride + ek + extra
  if padding == "SAME":
    if output_padding is None:
      return size * stride
    return (size - 1) * stride + ek % 2 + output_padding
  before, after = padding
  return (size - 1) * stride + ek - before - after + (output_padding or 0)


def fitting_padding(out_size: int, size: int, k: int, stride: int,
                    dilation: int, before: int) -> tuple[int, int]:
  """(after pad, computed size) for a transposed conv whose forward pad
  before is `before` to give `out_size` from `size` positions.

  The after pad (>= 0) is the one with which TF's size check holds; where
  even 0 is too much, the op computes the first `computed` positions and
  the rest get no taps (zeros: the caller pads them).
  """
  ek = effective_size(k, dilation)
  after = max(0, (size - 1) * stride + ek - out_size - before)
  # Short only where after is 0: past it the bound exceeds out_size.
  return after, min(out_size, size * stride - 1 + ek - before)


def equivalent_stride(size: int, k: int, stride: int, dilation: int,
                      pad: Pair) -> int:
  """The smallest stride with the same windows as `stride`.

  Where the forward conv has at most one window (output size 0 or 1), any
  stride past the padded input's slack gives the same op; TF accepts
  strides up to 2**31 - 1, and the sub-pixel strategies loop over phases.
  Elsewhere (and where the output size is negative: an error) unchanged.
  """
  slack = size + pad[0] + pad[1] - effective_size(k, dilation)
  return min(stride, abs(slack) + 1)


@dataclasses.dataclass(frozen=True)
class ConvSpec:
  """Static description of a backprop-input op over len(strides) spatial dims.

  input_spatial: spatial sizes of the result (TF's ``input_sizes``).
  strides, dilations: per spatial dim of the forward convolution.
  padding: the forward convolution's (before, after) pads per spatial dim.
  groups: feature groups (in_depth / filter in-depth).
  channels_last: NHWC-like layout if True, NCHW-like otherwise.
  """
  input_spatial: tuple[int, ...]
  strides: tuple[int, ...]
  dilations: tuple[int, ...]
  padding: tuple[Pair, ...]
  groups: int = 1
  channels_last: bool = True

  def __post_init__(self):
    n = len(self.strides)
    if not (1 <= n <= 3 and len(self.input_spatial) == len(self.dilations)
            == len(self.padding) == n):
      raise ValueError(f"ConvSpec: inconsistent spatial ranks in {self}")

  @property
  def ndim(self) -> int:
    return len(self.strides)

  # Activation layout (out_backprop and result share it).
  @property
  def feature_axis(self) -> int:
    return self.ndim + 1 if self.channels_last else 1

  @property
  def spatial_axes(self) -> tuple[int, ...]:
    first = 1 if self.channels_last else 2
    return tuple(range(first, first + self.ndim))

  def activation_shape(self, batch, channels, spatial) -> tuple:
    """Assemble an activation shape in this spec's layout."""
    if self.channels_last:
      return (batch, *spatial, channels)
    return (batch, channels, *spatial)

  def filter_shape(self, kernel: Sequence[int], in_depth: int,
                   out_depth: int) -> tuple:
    """The filter `[*kernel, in_depth / groups, out_depth]`."""
    return (*kernel, in_depth // self.groups, out_depth)

  def out_backprop_spatial(self, kernel: Sequence[int]) -> tuple[int, ...]:
    """Spatial sizes the forward conv produces, i.e. out_backprop must have."""
    return tuple(
        forward_output_size(i, k, s, d, p) for i, k, s, d, p in zip(
            self.input_spatial, kernel, self.strides, self.dilations,
            self.padding))

  def with_equivalent_strides(self, kernel: Sequence[int]) -> "ConvSpec":
    """The same op with each stride made `equivalent_stride` (bounded by
    the padded input)."""
    return dataclasses.replace(self, strides=tuple(
        equivalent_stride(i, k, s, d, p) for i, k, s, d, p in zip(
            self.input_spatial, kernel, self.strides, self.dilations,
            self.padding)))

  def lhs_dilated_padding(self, kernel: Sequence[int]) -> tuple[Pair, ...]:
    """Padding of the stride-1, lhs-dilated conv that computes the op.

    May be negative where an explicit pad exceeds ek - 1 (meaning: crop).
    """
    pads = []
    for i, k, s, d, (pb, _), o in zip(self.input_spatial, kernel, self.strides,
                                      self.dilations, self.padding,
                                      self.out_backprop_spatial(kernel)):
      before = effective_size(k, d) - 1 - pb
      pads.append((before, i + pb - (o - 1) * s - 1))
    return tuple(pads)

  def filter_grad_padding(self, kernel: Sequence[int]) -> tuple[Pair, ...]:
    """Padding of the filter-gradient conv (input window, dy as the kernel).

    The forward padding with the after-pad trimmed so that exactly `kernel`
    taps come out; negative means the input is cropped.
    """
    pads = []
    for i, k, s, d, (pb, pa), o in zip(self.input_spatial, kernel, self.strides,
                                       self.dilations, self.padding,
                                       self.out_backprop_spatial(kernel)):
      slack = i + pb + pa - (o - 1) * s - effective_size(k, d)
      pads.append((pb, pa - slack))
    return tuple(pads)
