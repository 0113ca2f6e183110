"""Sub-pixel (polyphase): a stride-s transposed conv as s^n stride-1 convs.

Along one spatial dim, output i = q*s + r (phase r) receives only the taps
T_r = {t : t*d = r + pb (mod s)}, from dy[q - e_t] with
e_t = (t*d - r - pb) / s.  So each phase is an ordinary stride-1 forward
convolution of dy with the taps T_r (reversed; rhs dilation d / gcd(d, s)),
exactly as many taps as contribute: no zero-inflated input and no wasted
taps.  The phases' outputs are interleaved back by interior padding and a
fused sum.  For one feature group (grouped convs have their own strategy).
"""
from __future__ import annotations

import itertools
import math

import jax.numpy as jnp
from jax import lax

from lowering.geometry import ConvSpec


def applies(spec: ConvSpec, filter_shape) -> bool:
  del filter_shape
  return spec.groups == 1


def _phase_1d(r, i, o, k, s, d, pb):
  """(taps, pad_lo, pad_hi, rhs_dilation, out_len) of phase r in one dim.

  taps are in the order the forward conv reads them (descending t); the
  pads apply to dy and may be negative (crop).  None if no tap lands here.
  """
  out_len = -(-(i - r) // s) if i > r else 0
  taps = [t for t in range(k) if (t * d - r - pb) % s == 0]
  if not taps or out_len == 0:
    return None
  g = math.gcd(d, s)
  e_last = (taps[-1] * d - r - pb) // s
  window = (len(taps) - 1) * (d // g) + 1
  lo = e_last
  hi = out_len - 1 + window - o - lo
  return taps[::-1], lo, hi, d // g, out_len


def _taps(filt, taps_per_dim):
  """filt restricted to descending, evenly spaced taps: slice + reverse."""
  n = len(taps_per_dim)
  start = [taps[-1] for taps in taps_per_dim]
  limit = [taps[0] + 1 for taps in taps_per_dim]
  step = [taps[0] - taps[1] if len(taps) > 1 else 1 for taps in taps_per_dim]
  sub = lax.slice(filt, start + [0, 0], limit + list(filt.shape[n:]),
                  step + [1, 1])
  return lax.rev(sub, tuple(range(n)))


def backprop_input(filt, dy, *, spec: ConvSpec, acc_dtype=None):
  n = spec.ndim
  out_dtype = dy.dtype
  if not spec.channels_last:
    dy = jnp.moveaxis(dy, 1, -1)
  out_spatial = dy.shape[1:n + 1]
  kernel, ci = filt.shape[:n], filt.shape[n]
  batch = dy.shape[0]
  acc = acc_dtype or out_dtype
  zero = jnp.zeros((), acc)
  total = jnp.zeros((batch, *spec.input_spatial, ci), acc)
  act = (0, n + 1, *range(1, n + 1))
  for phase in itertools.product(*(range(s) for s in spec.strides)):
    dims = [_phase_1d(r, i, o, k, s, d, pb) for r, i, o, k, s, d, (pb, _) in
            zip(phase, spec.input_spatial, out_spatial, kernel, spec.strides,
                spec.dilations, spec.padding)]
    if any(x is None for x in dims):
      continue
    sub = _taps(filt, [taps for taps, *_ in dims])
    x = dy
    pads = []
    for axis, (_, lo, hi, _, _) in enumerate(dims, start=1):
      # Never a negative pad in a convolution: crop dy instead.
      start, stop = max(-lo, 0), x.shape[axis] - max(-hi, 0)
      x = lax.slice_in_dim(x, start, max(stop, start), axis=axis)
      pads.append((max(lo, 0), max(hi, 0)))
    y = lax.conv_general_dilated(
        x, sub, (1,) * n, pads, rhs_dilation=[dil for *_, dil, _ in dims],
        dimension_numbers=lax.ConvDimensionNumbers(act, (n, n + 1, *range(n)),
                                                   act),
        preferred_element_type=acc)
    config = [(0, 0, 0)]
    for r, i, s, (*_, out_len) in zip(phase, spec.input_spatial, spec.strides,
                                      dims):
      config.append((r, i - r - ((out_len - 1) * s + 1), s - 1))
    total = total + lax.pad(y, zero, config + [(0, 0, 0)])
  total = total.astype(out_dtype)
  return total if spec.channels_last else jnp.moveaxis(total, -1, 1)
