"""A filter gradient as one GEMM per leading filter tap, image by image.

TF's Conv2DBackpropFilter (lowering/partners.py) pairs each filter tap
with the input positions it sees.  Here the last spatial dim's taps come
from shifted (strided) copies of x, stacked on its channels, and the other
dims' taps from shifted copies of dy: one [KW*C, positions] x
[positions, C_out] product per leading tap (KH of them in 2-D) holds the
gradient of its KW taps; x's copies are shared by the leading taps of one
stride phase (all of them at stride 1).  The copies are KW-fold (x, made
channel-major inside the loop; NCHW x already is) and taps-fold (dy:
slices of one padded copy) per image, small enough to stay in cache, so a
scan runs image chunks through them: no im2col of the whole batch, and a
standard row-major GEMM.  One feature group; where the CPU rule uses it,
and the forms tried before this one: benchmarks/README.md, 'Why each CPU
rule'.
"""
from __future__ import annotations

import dataclasses
import itertools
import math

import jax.numpy as jnp
import numpy as np
from jax import lax

from ..geometry import ConvSpec
from ..index import is_static, pad_zeros, window

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


def applies(spec: ConvSpec, filter_shape) -> bool:
  del filter_shape
  return spec.groups == 1


@dataclasses.dataclass(frozen=True)
class _Plan:
  """What every image chunk shares: pads, the leading dims' stride phases
  (`combos`: one (phase, [(tap, offset)]) per leading dim) and the leading
  taps (`leads`, in the order of the products)."""
  spec: ConvSpec
  kernel: tuple[int, ...]
  x_pads: dict
  dy_pads: dict
  positions: tuple[int, ...]  # dy's spatial sizes
  spreads: tuple[int, ...]  # dy's pad per leading dim: the widest offsets
  combos: tuple
  leads: tuple


def _plan(spec: ConvSpec, kernel, dy_positions) -> _Plan:
  first = 1 if spec.channels_last else 2
  phases = [sorted(_phases(k, s, d).items()) for k, s, d in
            zip(kernel[:-1], spec.strides[:-1], spec.dilations[:-1])]
  spreads = tuple(max(_offsets(t)[1] - _offsets(t)[0] for _, t in p)
                  for p in phases)
  combos = tuple(itertools.product(*phases))
  leads = tuple(tuple(tap for tap, _ in picks) for combo in combos
                for picks in itertools.product(*[t for _, t in combo]))
  return _Plan(spec, tuple(kernel),
               dict(enumerate(spec.filter_grad_padding(kernel), first)),
               {1 + j: (m, m) for j, m in enumerate(spreads)},
               tuple(dy_positions), spreads, combos, leads)


def _offsets(taps) -> tuple[int, int]:
  return min(o for _, o in taps), max(o for _, o in taps)


def _columns(plan: _Plan, xb, combo, band):
  """x's KW shifted copies for one stride phase and band of rows, as
  [KW * C, n * rows * W] (xb channel-major: [n, C, *spatial])."""
  lead = {}
  for axis, ((phase, taps), (r0, r1), s) in enumerate(
      zip(combo, band, plan.spec.strides), 2):
    lo = _offsets(taps)[0]
    lead[axis] = (phase + s * (lo + r0), r1 - r0, s)
  s_w, d_w = plan.spec.strides[-1], plan.spec.dilations[-1]
  cols = jnp.stack([window(xb, {**lead, xb.ndim - 1: (
      kw * d_w, plan.positions[-1], s_w)}) for kw in range(plan.kernel[-1])])
  # [KW, n, C, rows..., W] -> [KW * C, n * rows * W]
  return jnp.swapaxes(cols, 1, 2).reshape(plan.kernel[-1] * xb.shape[1], -1)


def _shifted(plan: _Plan, dyb, combo, pick, band):
  """dy's rows for one leading tap `pick` and band: a slice of the padded
  dy, [n * rows * W, C_out]."""
  rows = {}
  for axis, (m, (_, o), (_, taps), (r0, r1)) in enumerate(
      zip(plan.spreads, pick, combo, band), 1):
    rows[axis] = (m - (o - _offsets(taps)[0]) + r0, r1 - r0, 1)
  return window(dyb, rows).reshape(-1, dyb.shape[-1])


def _products(plan: _Plan, acc, xb, dyb):
  """acc plus one [KW * C, C_out] product per leading tap for a chunk of
  images (padded here, in cache), added band by band."""
  xb, dyb = pad_zeros(xb, plan.x_pads), pad_zeros(dyb, plan.dy_pads)
  if plan.spec.channels_last:
    xb = jnp.moveaxis(xb, -1, 1)  # channel-major: [n, C, *spatial]
  acc, base = list(acc), 0  # acc[base + k]: pick k of the combo
  for combo in plan.combos:
    rows = [p + _offsets(t)[1] - _offsets(t)[0]
            for (_, t), p in zip(combo, plan.positions)]
    picks = list(itertools.product(*[t for _, t in combo]))
    for first_rows in _bands(rows[:1]):
      band = [*first_rows, *[(0, r) for r in rows[1:]]]
      cols = _columns(plan, xb, combo, band)
      for k, pick in enumerate(picks):
        acc[base + k] = acc[base + k] + cols @ _shifted(plan, dyb, combo,
                                                        pick, band)
    base += len(picks)
  return acc


def _over_images(plan: _Plan, x, dy, zeros):
  """The products summed over the batch: in chunks of images whose copies
  fit the cache budget, scanned."""
  batch = x.shape[0]
  padded = [size + lo + hi for size, (lo, hi) in
            zip(plan.spec.input_spatial, plan.x_pads.values())]
  image = x.shape[plan.spec.feature_axis] * math.prod(padded)
  chunk = _chunk(batch, image * plan.kernel[-1] * x.dtype.itemsize)
  if chunk == batch:
    return _products(plan, zeros, x, dy)
  if chunk == 1:  # scanned as they are: a unit dim made XLA copy both
    xs, dys, add_dim = x, dy, lambda a: a[None]
  else:
    xs, dys = (a.reshape(batch // chunk, chunk, *a.shape[1:])
               for a in (x, dy))
    add_dim = lambda a: a

  def step(acc, xdy):
    return _products(plan, acc, *map(add_dim, xdy)), None
  return lax.scan(step, zeros, (xs, dys))[0]


def backprop_filter(x, dy, *, spec: ConvSpec, kernel):
  """Filter-shaped `[*kernel, C, C_out]`, any rank."""
  if not spec.channels_last:  # x stays channel-major; dy channels-last
    dy = jnp.moveaxis(dy, 1, -1)
  plan = _plan(spec, kernel, dy.shape[1:-1])
  c, co = x.shape[spec.feature_axis], dy.shape[-1]
  # Shaped like x's values (inside shard_map: varying as x does, as a scan
  # carry must).
  zeros = [jnp.zeros_like(x, shape=(kernel[-1] * c, co))] * len(plan.leads)
  sums = _over_images(plan, x, dy, zeros)
  # Each product holds the KW taps of its leading tap.
  grads = {(*lead, kw): g for lead, r in zip(plan.leads, sums)
           for kw, g in enumerate(r.reshape(kernel[-1], c, co))}
  return jnp.stack([grads[tap] for tap in np.ndindex(*kernel)]).reshape(
      *kernel, c, co)


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
  if not is_static(batch):
    return batch
  return max(k for k in range(1, batch + 1) if batch % k == 0 and (
      k == 1 or k * bytes_per_image <= _CHUNK_BYTES))
