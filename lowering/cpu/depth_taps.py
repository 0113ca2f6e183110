"""A 3-D filter gradient as one 2-D filter gradient per depth tap.

XLA CPU's 3-D convolutions are slow (neither YNNPACK nor Eigen's 2-D path
takes them).  Tap t of the depth dim contracts depth slices t*d, t*d + s,
... of the padded x with dy; those slices are folded into the contracted
batch, so each tap is one 2-D filter gradient (`per_tap`: the 2-D rule).
"""
from __future__ import annotations

import jax.numpy as jnp

from ..geometry import ConvSpec
from ..index import pad_zeros, window


def applies(spec: ConvSpec, filter_shape) -> bool:
  del filter_shape
  return spec.ndim == 3


def backprop_filter(x, dy, *, spec: ConvSpec, kernel, per_tap):
  """Filter-shaped `[*kernel, C / groups, C_out]`; per_tap(x, dy, *, spec,
  kernel) computes a 2-D filter gradient (channels-last)."""
  if not spec.channels_last:
    x, dy = jnp.moveaxis(x, 1, -1), jnp.moveaxis(dy, 1, -1)
  (lo, hi), s, d = (spec.filter_grad_padding(kernel)[0], spec.strides[0],
                    spec.dilations[0])
  x = pad_zeros(x, {1: (lo, hi)})
  flat = ConvSpec(spec.input_spatial[1:], spec.strides[1:],
                  spec.dilations[1:], spec.padding[1:], spec.groups)
  depth = dy.shape[1]
  dy = dy.reshape(-1, *dy.shape[2:])
  return jnp.stack([per_tap(
      window(x, {1: (t * d, depth, s)}).reshape(-1, *x.shape[2:]),
      dy, spec=flat, kernel=kernel[1:]) for t in range(kernel[0])])

