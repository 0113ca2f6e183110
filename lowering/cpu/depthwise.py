"""Depthwise (groups == input depth): fused sums of shifted products.

    dx[n, i, c] = sum_t sum_m  dy[n, o, c*M + m] * w[t, 0, c*M + m],
                  i = o*s - pb + t*d        (M: the channel multiplier)

For each output phase (lowering/phases.py), the taps of that phase add
dy * w_t shifted by their block offsets: an elementwise product (the
multiplier unrolled as strided channel slices) that XLA fuses into one
memory-bound loop at block resolution; one depth-to-space interleaves the
phases.  No convolution, no dot.  The partner convolutions (the gradients)
work on strided windows of the padded x: the forward one as the same kind
of fused sum, the filter gradient as one reduction per tap.
"""
from __future__ import annotations

import itertools

import jax.numpy as jnp

from .. import phases
from ..geometry import ConvSpec
from ..index import pad_zeros, window


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
  kernel, out_spatial = filt.shape[:n], dy.shape[1:n + 1]
  w = filt.astype(acc_dtype).reshape(*kernel, -1)  # [*K, C * M]
  plans = phases.plans_for(spec, kernel)
  per_phase = []
  for _, taps in phases.taps_by_phase(plans, kernel, spec.strides):
    total = jnp.zeros((dy.shape[0], *[p.blocks for p in plans], spec.groups),
                      acc_dtype)
    for tap in taps:
      w_tap = w[tap]
      part = sum(dy[..., m::mult] * w_tap[m::mult] for m in range(mult))
      total = total + pad_zeros(part, dict(enumerate(
          phases.block_pads(plans, tap, out_spatial), 1)))
    per_phase.append(total)
  out = phases.interleave(per_phase, plans, spec.strides, spec.input_spatial)
  out = out.astype(out_dtype)
  return out if spec.channels_last else jnp.moveaxis(out, -1, 1)


def _windows(x, spec: ConvSpec, kernel, out_spatial):
  """(tap, x at o*s - pb + t*d for every output position o), x channels-last."""
  x = pad_zeros(x, dict(enumerate(spec.padding, 1)))
  for tap in itertools.product(*(range(k) for k in kernel)):
    yield tap, window(x, {axis: (t * d, o, s) for axis, t, d, o, s in zip(
        range(1, x.ndim - 1), tap, spec.dilations, out_spatial,
        spec.strides)})


def _channels_last_in(x, spec: ConvSpec, mult: int, acc):
  """x in acc, channels-last, each channel repeated `mult` times (C*M)."""
  if not spec.channels_last:
    x = jnp.moveaxis(x, 1, -1)
  return jnp.repeat(x.astype(acc), mult, axis=-1)


def forward(x, filt, *, spec: ConvSpec, acc_dtype=None):
  """TF's depthwise Conv2D: y[n, o, c*M + m] = sum_t x[n, o*s - pb + t*d, c]
  * w[t, 0, c*M + m], accumulated in `acc_dtype`."""
  n, out_dtype = spec.ndim, x.dtype
  acc = acc_dtype or out_dtype
  kernel, co = filt.shape[:n], filt.shape[n + 1]
  out_spatial = spec.out_backprop_spatial(kernel)
  x = _channels_last_in(x, spec, co // spec.groups, acc)
  w = filt.astype(acc).reshape(*kernel, co)
  total = sum(window * w[tap]
              for tap, window in _windows(x, spec, kernel, out_spatial))
  total = total.astype(out_dtype)
  return total if spec.channels_last else jnp.moveaxis(total, -1, 1)


def backprop_filter(x, dy, *, spec: ConvSpec, kernel, acc_dtype=None):
  """Its filter gradient: dw[t, 0, c*M + m] = sum over n, o of
  x[n, o*s - pb + t*d, c] * dy[n, o, c*M + m], one reduction per tap."""
  n, out_dtype = spec.ndim, x.dtype
  acc = acc_dtype or out_dtype
  co = dy.shape[spec.feature_axis]
  if not spec.channels_last:
    dy = jnp.moveaxis(dy, 1, -1)
  out_spatial, dy = dy.shape[1:n + 1], dy.astype(acc)
  x = _channels_last_in(x, spec, co // spec.groups, acc)
  taps = [jnp.sum(window * dy, axis=tuple(range(n + 1)))
          for _, window in _windows(x, spec, kernel, out_spatial)]
  return jnp.stack(taps).reshape(*kernel, 1, co).astype(out_dtype)
