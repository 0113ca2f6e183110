"""Sub-pixel as ONE convolution: all s^n phases as output channels.

With the polyphase plan of lowering/phases.py, one forward convolution of
dy with a kernel that holds every tap t at window position
off_t - min(off) and output channel (r_t, c) computes every phase of every
block; depth-to-space and a crop finish.  Taps absent from a phase are
zeros in its kernel: the waste is window^n / taps per phase.
"""
from __future__ import annotations

import numpy as np
import jax.numpy as jnp
from jax import lax

from .. import phases
from . import eigen_conv
from ..geometry import ConvSpec


def applies(spec: ConvSpec, filter_shape) -> bool:
  del filter_shape
  return spec.groups == 1


def waste(spec: ConvSpec, kernel) -> float:
  """Multiplies per useful multiply in the combined kernel (1 = exact)."""
  cost = 1.0
  for plan, k, s in zip(phases.plans_for(spec, kernel), kernel, spec.strides):
    cost *= plan.window * s / k
  return cost


def _selection(plan: phases.Plan, s: int):
  """[window, s, k] 0/1: tap t sits at (off_t - min(off), r_t)."""
  select = np.zeros((plan.window, s, len(plan.phase)))
  for t, (r, off) in enumerate(zip(plan.phase, plan.offset)):
    select[off - min(plan.offset), r, t] = 1
  return select


def backprop_input(filt, dy, *, spec: ConvSpec, acc_dtype=None):
  n = spec.ndim
  out_dtype = dy.dtype
  kernel, ci = filt.shape[:n], filt.shape[n]
  spatial_axes = spec.spatial_axes
  out_spatial = [dy.shape[a] for a in spatial_axes]
  plans = phases.plans_for(spec, kernel)
  # Combined kernel [*L, Co, Ci, *s] from the filter [*K, Ci, Co]; Ci is
  # the major part of the merged output channels, so a sharding of the
  # filter's in-depth propagates to the result's channels.
  win, phase, tap = "pqr"[:n], "uvw"[:n], "ijk"[:n]
  subscripts = ",".join(f"{l}{r}{t}" for l, r, t in zip(win, phase, tap))
  comb = jnp.einsum(f"{subscripts},{tap}cm->{win}mc{phase}",
                    *[jnp.asarray(_selection(p, s), filt.dtype)
                      for p, s in zip(plans, spec.strides)], filt)
  comb = comb.reshape(*comb.shape[:n + 1], -1)
  x, pads = dy, []
  for axis, plan, o in zip(spatial_axes, plans, out_spatial):
    lo = -min(plan.offset)
    hi = plan.blocks - 1 + min(plan.offset) + plan.window - o
    x, pad = phases.crop_negative_pads(x, axis, lo, hi)
    pads.append(pad)
  act = (0, spec.feature_axis, *spatial_axes)
  y = eigen_conv.conv(
      x, comb, (1,) * n, pads, rhs_dilation=(1,) * n,
      dimension_numbers=lax.ConvDimensionNumbers(act, (n + 1, n, *range(n)),
                                                 act),
      preferred_element_type=acc_dtype).astype(out_dtype)
  if not spec.channels_last:
    y = jnp.moveaxis(y, 1, -1)
  y = y.reshape(*y.shape[:-1], ci, *spec.strides)  # [N, *B, Ci, *s]
  y = jnp.moveaxis(y, tuple(range(n + 2, 2 * n + 2)), tuple(range(n)))
  out = phases.depth_to_space(y, plans, spec.input_spatial)
  return out if spec.channels_last else jnp.moveaxis(out, -1, 1)
