"""A filter gradient as one GEMM per leading filter tap, image by image.

TF's Conv2DBackpropFilter (lowering/partners.py) pairs each filter tap
with the input positions it sees.  Here the last spatial dim's taps come
from shifted (strided) copies of x, stacked on its channels, and the other
dims' taps from shifted copies of dy: one [KW*C, positions] x
[positions, C_out] product per leading tap (KH of them in 2-D) holds the
gradient of its KW taps; x's copies are shared by the leading taps of one
stride phase (all of them at stride 1).  The copies are KW-fold (x, made
channel-major inside the loop) and taps-fold (dy: slices of one padded
copy) per image, small enough to stay in cache, so a scan runs image
chunks through them: no im2col of the whole batch (9x the input: 58 MB
for dense s1 56x56 64 N8 on a machine that copies ~7.5 GB/s) and a
standard row-major GEMM, where a K-major one ran at half speed.  Dense s1
56x56 64 N8 on the project's 2-core machine, ms: 6.2 (XLA's form 13-14,
Eigen's 17.7-18.4); 6.9 in one row band per image (_bands), 7.4 padded
before the loop, 8.4-8.5 with x transposed before the loop, dy's shifted
copies concatenated for one product and the images scanned with a unit
chunk dim (XLA copied x and dy whole for that dim's layout).  NCHW x is
channel-major already and stays so (only dy is transposed, once): dense
8.3-8.7 ms, 10.8-11.3 with both moved to channels-last first; U-Net up s2
4.9-5.1 vs 6.8-8.4.  Where the CPU rule uses it: lowering/cpu/
__init__.py.  One feature group.
"""
from __future__ import annotations

import itertools
import math

import jax.numpy as jnp
import numpy as np
from jax import lax

from lowering.geometry import ConvSpec

_CHUNK_BYTES = 4 << 20  # x's shifted copies per scan step: about L3 / 8
_BANDS = 2  # products per leading tap and image chunk (_bands)


def _phases(taps: int, stride: int, dilation: int):
  """{phase: [(tap, offset)]}: tap t reads rows phase + stride * (q + offset)
  of the padded input for dy's row q."""
  groups: dict[int, list[tuple[int, int]]] = {}
  for t in range(taps):
    groups.setdefault(t * dilation % stride, []).append(
        (t, t * dilation // stride))
  return groups


def taps_overlap(spec: ConvSpec, kernel) -> bool:
  """Whether two taps of some dim share a stride phase (read overlapping
  rows of x): where this form beats one dot per tap when strided."""
  return any(len(taps) > 1 for k, s, d in
             zip(kernel, spec.strides, spec.dilations)
             for taps in _phases(k, s, d).values())


def backprop_filter(x, dy, *, spec: ConvSpec, kernel):
  """Filter-shaped `[*kernel, C, C_out]`, any rank."""
  # x is made channel-major per image chunk inside the loop (NCHW already
  # is), dy channels-last.
  last = spec.channels_last
  if not last:
    dy = jnp.moveaxis(dy, 1, -1)
  sizes = [(lo, hi, 0) for lo, hi in spec.filter_grad_padding(kernel)]
  x_pads = [(0, 0, 0), *sizes, (0, 0, 0)] if last else [(0, 0, 0)] * 2 + sizes
  batch, c, co = x.shape[0], x.shape[spec.feature_axis], dy.shape[-1]
  positions = dy.shape[1:-1]
  *lead_s, s_w = spec.strides
  *lead_d, d_w = spec.dilations
  phases = [sorted(_phases(k, s, d).items()) for k, s, d in
            zip(kernel[:-1], lead_s, lead_d)]
  # dy is padded by the widest spread of offsets along each leading dim;
  # each leading tap's shifted copy is then a slice of it.
  spreads = [max(max(o for _, o in t) - min(o for _, o in t) for _, t in p)
             for p in phases]
  dy_pads = [(0, 0, 0), *[(m, m, 0) for m in spreads], (0, 0, 0), (0, 0, 0)]
  combos = list(itertools.product(*phases))
  leads = [tuple(tap for tap, _ in picks) for combo in combos
           for picks in itertools.product(*[t for _, t in combo])]

  def products(acc, xb, dyb):
    """acc plus one [KW * C, C_out] product per leading tap for a chunk of
    images (padded here, in cache), added band by band."""
    xb = lax.pad(xb, np.zeros((), xb.dtype), x_pads)
    dyb = lax.pad(dyb, np.zeros((), dyb.dtype), dy_pads)
    if last:
      xb = jnp.moveaxis(xb, -1, 1)  # channel-major: [n, C, *spatial]
    n, acc, base = xb.shape[0], list(acc), 0  # acc[base + k]: pick k
    for combo in combos:
      # x: the rows of this phase, then KW shifted copies of the last dim.
      start, step, rows = [], [], []
      for (phase, t), p, s in zip(combo, positions, lead_s):
        lo = min(o for _, o in t)
        rows.append(p + max(o for _, o in t) - lo)
        start.append(phase + s * lo)
        step.append(s)
      picks = list(itertools.product(*[t for _, t in combo]))
      for first_rows in _bands(rows[:1]):
        # this band of the first leading dim's rows, all of the others
        band = [*first_rows, *[(0, r) for r in rows[1:]]]
        cols = jnp.stack([lax.slice(
            xb, [0, 0, *[b + s * r0 for b, s, (r0, _) in
                         zip(start, step, band)], kw * d_w],
            [n, c, *[b + s * (r1 - 1) + 1 for b, s, (_, r1) in
                     zip(start, step, band)],
             kw * d_w + (positions[-1] - 1) * s_w + 1],
            [1, 1, *step, s_w]) for kw in range(kernel[-1])])
        # cols [KW, n, C, rows..., W] -> [KW * C, n * rows * W]
        cols = jnp.swapaxes(cols, 1, 2).reshape(kernel[-1] * c, -1)
        # dy, shifted by each leading tap's offset: a slice, one product
        # each.
        for k, pick in enumerate(picks):
          first = [m - (o - min(q for _, q in t)) for m, (_, o), (_, t) in
                   zip(spreads, pick, combo)]
          shifted = lax.slice(
              dyb, [0, *[f + r0 for f, (r0, _) in zip(first, band)], 0, 0],
              [n, *[f + r1 for f, (_, r1) in zip(first, band)],
               *dyb.shape[-2:]])
          acc[base + k] = acc[base + k] + cols @ shifted.reshape(-1, co)
      base += len(picks)
    return acc

  image = c * math.prod(size + lo + hi for size, (lo, hi, _) in
                       zip(x.shape[1:-1] if last else x.shape[2:], sizes))
  chunk = _chunk(batch, image * kernel[-1] * x.dtype.itemsize)
  zeros = [jnp.zeros((kernel[-1] * c, co), x.dtype)] * len(leads)
  if chunk == batch:
    sums = products(zeros, x, dy)
  else:
    if chunk == 1:  # scanned as they are: a unit dim made XLA copy both
      xs, dys, add_dim = x, dy, lambda a: a[None]
    else:
      xs, dys = (a.reshape(batch // chunk, chunk, *a.shape[1:])
                 for a in (x, dy))
      add_dim = lambda a: a

    def step(acc, xdy):
      return products(acc, *map(add_dim, xdy)), None
    sums, _ = lax.scan(step, zeros, (xs, dys))
  # Each product holds the KW taps of its leading tap.
  grads = {}
  for lead, r in zip(leads, sums):
    for kw, g in enumerate(r.reshape(kernel[-1], c, co)):
      grads[(*lead, kw)] = g
  out = jnp.stack([grads[tap] for tap in np.ndindex(*kernel)])
  return out.reshape(*kernel, c, co)


def _bands(rows):
  """[(first, limit)] of the _BANDS bands of rows[0] (one pass when there
  is no leading dim): twice the products, half the size each, keep both
  cores busy where an odd count of products left one idle."""
  if not rows:
    return [[]]
  edges = [rows[0] * b // _BANDS for b in range(_BANDS + 1)]
  return [[(lo, hi)] for lo, hi in zip(edges, edges[1:]) if hi > lo]


def _chunk(batch, bytes_per_image: int):
  """The most images (a divisor of the batch) whose copies fit the cache
  budget, at least one; a symbolic batch in one piece."""
  if not isinstance(batch, (int, np.integer)):
    return batch
  return max(k for k in range(1, batch + 1) if batch % k == 0 and (
      k == 1 or k * bytes_per_image <= _CHUNK_BYTES))
