"""Depthwise (groups == input depth): fused sums of shifted products, per phase.

    dx[n, i, c] = sum_t sum_m  dy[n, o, c*M + m] * w[t, 0, c*M + m],
                  i = o*s - pb + t*d        (M: the channel multiplier)

For each output phase (lowering/phases.py), the taps of that phase add
dy * w_t shifted by their block offsets: an elementwise product (the
multiplier unrolled as strided channel slices) that XLA fuses into one
memory-bound loop at block resolution; one depth-to-space interleaves the
phases.  No convolution, no dot.
"""
from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from lowering import phases
from lowering.geometry import ConvSpec


def applies(spec: ConvSpec, filter_shape) -> bool:
  return filter_shape[spec.ndim] == 1 and spec.groups > 1


def backprop_input(filt, dy, *, spec: ConvSpec, acc_dtype=None):
  n = spec.ndim
  out_dtype = dy.dtype
  acc_dtype = acc_dtype or out_dtype
  if not spec.channels_last:
    dy = jnp.moveaxis(dy, 1, -1)
  mult = dy.shape[-1] // spec.groups
  dy = dy.astype(acc_dtype)
  w = filt.astype(acc_dtype)
  kernel, out_spatial = filt.shape[:n], dy.shape[1:n + 1]
  plans = phases.plans_for(spec, kernel)
  zero = jnp.zeros((), acc_dtype)
  per_phase = []
  for _, taps in phases.taps_by_phase(plans, kernel, spec.strides):
    total = jnp.zeros((dy.shape[0], *[p.blocks for p in plans], spec.groups),
                      acc_dtype)
    for tap in taps:
      w_tap = w[tap + (0,)]  # [C * M]
      part = sum(dy[..., m::mult] * w_tap[m::mult] for m in range(mult))
      config = [(0, 0, 0)] + phases.block_pads(plans, tap, out_spatial)
      total = total + lax.pad(part, zero, config + [(0, 0, 0)])
    per_phase.append(total)
  out = phases.interleave(per_phase, plans, spec.strides, spec.input_spatial)
  out = out.astype(out_dtype)
  return out if spec.channels_last else jnp.moveaxis(out, -1, 1)
