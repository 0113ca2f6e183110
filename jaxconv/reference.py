"""Independent float64 NumPy definition of the op: a direct sum over taps.

Used by the tests and by `jaxconv export --check`; it shares nothing with
the implementation but the padding geometry.

dx[n, i, g*Ci + c] = sum over taps t, output positions o with
i = o * stride - pad_before + t * dilation, and out-channels m of group g:
dy[n, o, m] * w[t, c, m].  No convolution routine is used.
"""
from __future__ import annotations

import itertools

import numpy as np


def backprop_input(filt, dy, *, input_spatial, strides, dilations, pads_before,
                   groups=1, channels_last=True):
  """The op in float64 (int64 for integer inputs), channels in `dy`'s layout."""
  integer = np.issubdtype(np.asarray(filt).dtype, np.integer)
  acc = np.int64 if integer else np.float64
  w = np.asarray(filt).astype(acc)
  dy = np.asarray(dy).astype(acc)
  if not channels_last:
    dy = np.moveaxis(dy, 1, -1)
  n = w.ndim - 2
  ci, co = w.shape[-2:]
  cog = co // groups
  dx = np.zeros((dy.shape[0], *input_spatial, groups * ci), acc)
  out_spatial = dy.shape[1:-1]
  for tap in itertools.product(*(range(k) for k in w.shape[:n])):
    idx_in, idx_out = [], []
    for t, o_size, i_size, s, d, pb in zip(tap, out_spatial, input_spatial,
                                          strides, dilations, pads_before):
      o = np.arange(o_size)
      i = o * s - pb + t * d
      ok = (i >= 0) & (i < i_size)
      idx_in.append(i[ok])
      idx_out.append(o[ok])
    for g in range(groups):
      block = dy[(slice(None), *np.ix_(*idx_out), slice(g * cog, (g + 1) * cog))]
      contrib = block @ w[tap][:, g * cog:(g + 1) * cog].T
      dx[(slice(None), *np.ix_(*idx_in), slice(g * ci, (g + 1) * ci))] += contrib
  if integer:  # int32 wraps, like TF
    dx = ((dx + 2**31) % 2**32 - 2**31).astype(np.int32)
  if not channels_last:
    dx = np.moveaxis(dx, -1, 1)
  return dx


def for_spec(filt, dy, spec):
  """The reference for a `ConvSpec` (the padding comes from the geometry)."""
  return backprop_input(filt, dy, input_spatial=spec.input_spatial,
                        strides=spec.strides, dilations=spec.dilations,
                        pads_before=[p[0] for p in spec.padding],
                        groups=spec.groups, channels_last=spec.channels_last)
