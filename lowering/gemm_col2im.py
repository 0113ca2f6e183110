"""GEMM + col2im: the op as one matrix product and fused shifted sums.

    P[g, n, o, t, c] = sum_m dy[n, o, g, m] * w[t, c, g, m]       (dot_general)
    dx[n, i, g, c]   = sum_t P[g, n, o, t, c] at i = o*s - pb + t*d  (col2im)

The col2im runs per output phase at block resolution (lowering/phases.py):
each tap's slice of P is edge-padded (negative edges crop) to its block
offset and summed with the other taps of its phase (XLA fuses the sum into
one loop), then one depth-to-space interleaves the phases.  (A
full-resolution col2im, interior-padding every tap, was measured 1.1-2.3x
slower on the suite's stride-2 classes.)  No convolution, so none of XLA
CPU's slow or fragile convolution paths: the FLOPs go to a dot, accumulated
in `acc_dtype` and rounded once.
"""
from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from lowering import phases
from lowering.geometry import ConvSpec


def columns(filt, dy, spec: ConvSpec, acc_dtype):
  """P = [G, N, *O, *K, Ci] from channels-last dy, accumulated in acc_dtype."""
  n, groups = spec.ndim, spec.groups
  if not spec.channels_last:
    dy = jnp.moveaxis(dy, 1, -1)
  batch, out_spatial, co = dy.shape[0], dy.shape[1:n + 1], dy.shape[-1]
  kernel, ci = filt.shape[:n], filt.shape[n]
  dy = dy.reshape(batch, *out_spatial, groups, co // groups)
  w = filt.reshape(*kernel, ci, groups, co // groups)
  return lax.dot_general(dy, w, (((n + 2,), (n + 2,)), ((n + 1,), (n + 1,))),
                         preferred_element_type=acc_dtype)


def backprop_input(filt, dy, *, spec: ConvSpec, acc_dtype=None):
  """The op for `spec`: GEMM + per-phase col2im + one depth-to-space."""
  n = spec.ndim
  cols = columns(filt, dy, spec, acc_dtype or dy.dtype)
  out_spatial = cols.shape[2:n + 2]
  kernel = filt.shape[:n]
  plans = phases.plans_for(spec, kernel)
  zero = jnp.zeros((), cols.dtype)
  per_phase = []
  for _, taps in phases.taps_by_phase(plans, kernel, spec.strides):
    total = jnp.zeros((*cols.shape[:2], *[p.blocks for p in plans],
                       cols.shape[-1]), cols.dtype)
    for tap in taps:
      part = cols[(slice(None),) * (n + 2) + tap]  # [G, N, *O, Ci]
      config = [(0, 0, 0)] * 2 + phases.block_pads(plans, tap, out_spatial)
      total = total + lax.pad(part, zero, config + [(0, 0, 0)])
    total = jnp.moveaxis(total, 0, -2)  # [N, *B, G, Ci]
    per_phase.append(total.reshape(*total.shape[:-2], -1))
  out = phases.interleave(per_phase, plans, spec.strides, spec.input_spatial)
  out = out.astype(dy.dtype)
  return out if spec.channels_last else jnp.moveaxis(out, -1, 1)
