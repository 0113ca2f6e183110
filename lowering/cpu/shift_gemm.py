"""A filter gradient as one GEMM per stride phase, image by image.

TF's Conv2DBackpropFilter (lowering/partners.py) pairs each filter tap
with the input positions it sees.  Here the last spatial dim's taps come
from shifted (strided) copies of x, stacked on its channels, and the other
dims' taps from shifted copies of dy, stacked on dy's channels: one
[KW*C, positions] x [positions, taps*C_out] product then holds the
gradient of every tap whose leading offsets share a stride phase (one
product at stride 1).  The copies are KW-fold (x) and taps-fold (dy) per
image, small enough to stay in cache, so a scan runs image chunks through
them: no im2col of the whole batch (9x the input: 58 MB for dense s1 56x56
64 N8 on a machine that copies ~7.5 GB/s) and a standard row-major GEMM
(x channel-major), where a K-major one ran at half speed.  Measured on the
project's 2-core machine (ms, this vs XLA's form vs issue 5's 1-D Eigen
one; the rule is in lowering/cpu/__init__.py): dense s1 56x56 64 N8
9.9-11.8 vs 14.6-15.8 vs 19.6-21.4; 56x56 128 N8 28-29 vs 33-37 vs
42-47; 28x28 256 N8 21-27 vs 30 vs 20-33.  One feature group.
"""
from __future__ import annotations

import itertools
import math

import jax.numpy as jnp
import numpy as np
from jax import lax

from lowering.geometry import ConvSpec

_CHUNK_BYTES = 4 << 20  # x's shifted copies per scan step: about L3 / 8


def _phases(taps: int, stride: int, dilation: int):
  """{phase: [(tap, offset)]}: tap t reads rows phase + stride * (q + offset)
  of the padded input for dy's row q."""
  groups: dict[int, list[tuple[int, int]]] = {}
  for t in range(taps):
    groups.setdefault(t * dilation % stride, []).append(
        (t, t * dilation // stride))
  return groups


def backprop_filter(x, dy, *, spec: ConvSpec, kernel):
  """Filter-shaped `[*kernel, C, C_out]`, any rank."""
  if not spec.channels_last:
    x, dy = jnp.moveaxis(x, 1, -1), jnp.moveaxis(dy, 1, -1)
  x = lax.pad(x, np.zeros((), x.dtype),
              [(0, 0, 0), *[(lo, hi, 0) for lo, hi in
                            spec.filter_grad_padding(kernel)], (0, 0, 0)])
  x = jnp.moveaxis(x, -1, 1)  # channel-major: [N, C, *spatial]
  batch, c, co = x.shape[0], x.shape[1], dy.shape[-1]
  positions = dy.shape[1:-1]
  *lead_s, s_w = spec.strides
  *lead_d, d_w = spec.dilations
  combos = list(itertools.product(*[
      sorted(_phases(k, s, d).items()) for k, s, d in
      zip(kernel[:-1], lead_s, lead_d)]))

  def products(xb, dyb):
    """One product per phase combination for a chunk of images."""
    out = []
    for combo in combos:
      # x: the rows of this phase, then KW shifted copies of the last dim.
      start, limit, step, pads = [0, 0], [xb.shape[0], c], [1, 1], []
      for (phase, taps), p, s in zip(combo, positions, lead_s):
        lo = min(o for _, o in taps)
        rows = p + max(o for _, o in taps) - lo
        start.append(phase + s * lo)
        limit.append(phase + s * (lo + rows - 1) + 1)
        step.append(s)
        pads.append([(o - lo, rows - p - (o - lo)) for _, o in taps])
      cols = jnp.stack([
          lax.slice(xb, [*start, kw * d_w],
                    [*limit, kw * d_w + (positions[-1] - 1) * s_w + 1],
                    [*step, s_w]) for kw in range(kernel[-1])])
      # dy: one copy per leading tap, shifted by its offset.
      shifted = jnp.concatenate([
          lax.pad(dyb, np.zeros((), dyb.dtype),
                  [(0, 0, 0), *[(lo, hi, 0) for lo, hi in pad], (0, 0, 0),
                   (0, 0, 0)]) for pad in itertools.product(*pads)], -1)
      # cols [KW, N, C, rows..., W] -> [KW * C, N * rows * W]
      cols = jnp.swapaxes(cols, 1, 2).reshape(kernel[-1] * c, -1)
      out.append(cols @ shifted.reshape(-1, shifted.shape[-1]))
    return out

  chunk = _chunk(batch, x[0].size * kernel[-1] * x.dtype.itemsize)
  if chunk == batch:
    sums = products(x, dy)
  else:
    def step(acc, xdy):
      return [a + b for a, b in zip(acc, products(*xdy))], None
    zeros = [jnp.zeros((kernel[-1] * c,
                        math.prod(len(t) for _, t in combo) * co), x.dtype)
             for combo in combos]
    sums, _ = lax.scan(step, zeros, (
        x.reshape(batch // chunk, chunk, *x.shape[1:]),
        dy.reshape(batch // chunk, chunk, *dy.shape[1:])))
  # Scatter the products' blocks to their taps.
  grads = {}
  for combo, r in zip(combos, sums):
    lead_taps = [[t for t, _ in taps] for _, taps in combo]
    r = r.reshape(kernel[-1], c, *map(len, lead_taps), co)
    for idx in itertools.product(*[range(len(t)) for t in lead_taps]):
      tap = tuple(t[i] for t, i in zip(lead_taps, idx))
      for kw in range(kernel[-1]):
        grads[(*tap, kw)] = r[(kw, slice(None), *idx)]
  out = jnp.stack([grads[tap] for tap in np.ndindex(*kernel)])
  return out.reshape(*kernel, c, co)


def _chunk(batch, bytes_per_image: int):
  """The most images (a divisor of the batch) whose copies fit the cache
  budget, at least one; a symbolic batch in one piece."""
  if not isinstance(batch, (int, np.integer)):
    return batch
  return max(k for k in range(1, batch + 1) if batch % k == 0 and (
      k == 1 or k * bytes_per_image <= _CHUNK_BYTES))
