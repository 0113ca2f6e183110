"""The op's partner convolutions in their standard forms.

`forward` is TF's Conv2D of x (shaped like the op's result) and
`backprop_filter` TF's Conv2DBackpropFilter for that forward conv; they
are the op's transposes (jaxconv/rules.py).  These `lax` forms are what
XLA's fast paths expect on every platform for one feature group; on CPU,
lowering/cpu/ lowers feature groups by dense block-diagonal sub-problems
(lowering/cpu/grouped.py) and keeps one-group ones off YNNPACK where that
measured faster (lowering/cpu/eigen_conv.py).
"""
from __future__ import annotations

from jax import lax

from . import phases
from .geometry import ConvSpec


def forward(x, filt, *, spec: ConvSpec, conv=lax.conv_general_dilated):
  """conv: the convolution to emit (lax's signature; CPU passes its own)."""
  n = spec.ndim
  act = (0, spec.feature_axis, *spec.spatial_axes)
  return conv(
      x, filt, window_strides=spec.strides, padding=spec.padding,
      rhs_dilation=spec.dilations,
      dimension_numbers=lax.ConvDimensionNumbers(act, (n + 1, n, *range(n)),
                                                 act),
      feature_group_count=spec.groups)


def backprop_filter(x, dy, *, spec: ConvSpec, kernel):
  n = spec.ndim
  pads = []
  for axis, (lo, hi) in zip(spec.spatial_axes,
                            spec.filter_grad_padding(kernel)):
    x, pad = phases.crop_negative_pads(x, axis, lo, hi)
    pads.append(pad)
  act = (spec.feature_axis, 0, *spec.spatial_axes)  # batch <-> feature swapped
  return lax.conv_general_dilated(
      x, dy, window_strides=spec.dilations, padding=pads,
      rhs_dilation=spec.strides,
      dimension_numbers=lax.ConvDimensionNumbers(act, act,
                                                 (n, n + 1, *range(n))),
      batch_group_count=spec.groups)
