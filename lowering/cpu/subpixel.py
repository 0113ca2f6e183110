"""Sub-pixel (polyphase): a stride-s transposed conv as s^n stride-1 convs.

With the polyphase plan of lowering/phases.py, each output phase receives
only its own taps, evenly spaced, from dy shifted by their block offsets:
an ordinary stride-1 forward convolution of dy with those taps (reversed;
rhs dilation d / gcd(d, s)) at block resolution.  Exactly the taps that
contribute, no zero-inflated input; one depth-to-space interleaves the
phases.  For one feature group (grouped convs have their own strategy).
"""
from __future__ import annotations

import math

import jax.numpy as jnp
from jax import lax

from .. import phases
from . import eigen_conv
from ..geometry import ConvSpec


def applies(spec: ConvSpec, filter_shape) -> bool:
  del filter_shape
  return spec.groups == 1


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
  kernel, ci = filt.shape[:n], filt.shape[n]
  out_spatial = [dy.shape[a] for a in spec.spatial_axes]
  plans = phases.plans_for(spec, kernel)
  act = (0, spec.feature_axis, *spec.spatial_axes)
  per_phase = []
  for _, taps in phases.taps_by_phase(plans, kernel, spec.strides):
    if not taps:
      per_phase.append(jnp.zeros((dy.shape[0], *[p.blocks for p in plans], ci),
                                 out_dtype))
      continue
    # Per dim: this phase's taps, descending (= ascending block offset).
    dim_taps = [sorted({tap[j] for tap in taps}, reverse=True)
                for j in range(n)]
    x, pads, dilation = dy, [], []
    for axis, plan, t_desc, o, s, d in zip(spec.spatial_axes, plans, dim_taps,
                                           out_spatial, spec.strides,
                                           spec.dilations):
      step = d // math.gcd(d, s)
      lo = -plan.offset[t_desc[0]]
      hi = plan.blocks + (len(t_desc) - 1) * step - o - lo
      x, pad = phases.crop_negative_pads(x, axis, lo, hi)
      pads.append(pad)
      dilation.append(step)
    y = eigen_conv.conv(
        x, _taps(filt, dim_taps), (1,) * n, pads, rhs_dilation=dilation,
        dimension_numbers=lax.ConvDimensionNumbers(act, (n, n + 1, *range(n)),
                                                   act),
        preferred_element_type=acc_dtype).astype(out_dtype)
    per_phase.append(y if spec.channels_last else jnp.moveaxis(y, 1, -1))
  out = phases.interleave(per_phase, plans, spec.strides, spec.input_spatial)
  return out if spec.channels_last else jnp.moveaxis(out, -1, 1)
