"""GEMM + col2im: the op as one matrix product and fused shifted sums.

    P[g, n, o, t, c] = sum_m dy[n, o, g, m] * w[t, c, g, m]       (dot_general)
    dx[n, i, g, c]   = sum_t P[g, n, o, t, c] at i = o*s - pb + t*d  (col2im)

The col2im runs per output phase at block resolution (lowering/phases.py):
each tap's slice of P is edge-padded (negative edges crop) to its block
offset and summed with the other taps of its phase (XLA fuses the sum into
one loop), then one depth-to-space interleaves the phases; where each phase
is one tap at its own blocks (kernel == stride), that depth-to-space is the
whole col2im.  (A full-resolution col2im, interior-padding every tap, is
slower: benchmarks/README.md.)  Channels-first operands keep the spatial
dims minor throughout (P is [g, t, c, n, o]): no layout transposes.  No
convolution, so none of XLA CPU's slow or fragile convolution paths: the
FLOPs go to a dot, accumulated in `acc_dtype` and rounded once.
"""
from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from .. import phases
from ..geometry import ConvSpec
from ..index import pad_zeros


def columns(filt, dy, spec: ConvSpec, acc_dtype):
  """P accumulated in acc_dtype: [G, N, *O, *K, Ci] from channels-last dy,
  [G, *K, Ci, N, *O] from channels-first dy."""
  n, groups, c_axis = spec.ndim, spec.groups, spec.feature_axis
  kernel, ci, co = filt.shape[:n], filt.shape[n], filt.shape[n + 1]
  dy = dy.reshape(*dy.shape[:c_axis], groups, co // groups,
                  *dy.shape[c_axis + 1:])
  w = filt.reshape(*kernel, ci, groups, co // groups)
  if spec.channels_last:
    dims = (((n + 2,), (n + 2,)), ((n + 1,), (n + 1,)))
    return lax.dot_general(dy, w, dims, preferred_element_type=acc_dtype)
  dims = (((n + 2,), (2,)), ((n + 1,), (1,)))
  return lax.dot_general(w, dy, dims, preferred_element_type=acc_dtype)


def backprop_input(filt, dy, *, spec: ConvSpec, acc_dtype=None):
  """The op for `spec`: GEMM + per-phase col2im + one depth-to-space."""
  n, last = spec.ndim, spec.channels_last
  cols = columns(filt, dy, spec, acc_dtype or dy.dtype)
  kernel = filt.shape[:n]
  out_spatial = cols.shape[2:n + 2] if last else cols.shape[n + 3:]
  plans = phases.plans_for(spec, kernel)
  by_phase = list(phases.taps_by_phase(plans, kernel, spec.strides))
  if all(taps == [phase] and phases.block_pads(plans, phase, out_spatial)
         == [(0, 0, 0)] * n for phase, taps in by_phase):
    return _phases_are_taps(cols, plans, spec).astype(dy.dtype)
  blocks = [p.blocks for p in plans]
  groups, batch, ci = cols.shape[0], dy.shape[0], filt.shape[n]
  per_phase = []
  for _, taps in by_phase:
    # One phase's sum, [G, N, *B, Ci] (channels-last) or [G, Ci, N, *B].
    total = jnp.zeros((groups, batch, *blocks, ci) if last else
                      (groups, ci, batch, *blocks), cols.dtype)
    for tap in taps:
      pads = phases.block_pads(plans, tap, out_spatial)
      if last:
        part, first = cols[(slice(None),) * (n + 2) + tap], 2
      else:
        part, first = cols[(slice(None),) + tap], 3
      total = total + pad_zeros(part, dict(enumerate(pads, first)))
    if last:
      total = jnp.moveaxis(total, 0, -2)  # [N, *B, G, Ci]
      per_phase.append(total.reshape(*total.shape[:-2], -1))
    else:
      per_phase.append(total.reshape(-1, *total.shape[2:]))  # [G*Ci, N, *B]
  out = phases.interleave(per_phase, plans, spec.strides, spec.input_spatial,
                          channels_last=last)
  return out.astype(dy.dtype)


def _phases_are_taps(cols, plans, spec: ConvSpec):
  """The col2im when tap t alone makes phase t at its own blocks (kernel ==
  stride, the U-Net up-convolution): a depth-to-space of P, no sums."""
  n = spec.ndim
  if spec.channels_last:  # [G, N, *O, *K, Ci] -> [*K, N, *O, G*Ci]
    y = jnp.moveaxis(cols, tuple(range(n + 2, 2 * n + 2)), tuple(range(n)))
    y = jnp.moveaxis(y, n, -2)
    return phases.depth_to_space(y.reshape(*y.shape[:-2], -1), plans,
                                 spec.input_spatial)
  # [G, *K, Ci, N, *O] -> [*K, G*Ci, N, *O]
  y = jnp.moveaxis(cols, 0, n)
  y = y.reshape(*y.shape[:n], -1, *y.shape[n + 2:])
  return phases.depth_to_space(y, plans, spec.input_spatial,
                               channels_last=False)
