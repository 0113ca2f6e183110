"""Polyphase bookkeeping shared by the sub-pixel strategies.

Along one spatial dim, outputs are grouped in blocks of s starting at
-shift: output i = b*s + r - shift is phase r of block b.  Tap t feeds phase
r_t = (t*d + shift - pb) mod s of block b from dy[b + off_t], with
off_t = -floor((t*d + shift - pb) / s).  `shift` is chosen to minimise the
span of the offsets (the "aligned phase" trick: k4 s2 needs a 2-wide window,
not 3).  After computing every phase per block, `depth_to_space` interleaves
them and crops the shift.
"""
from __future__ import annotations

import dataclasses
import itertools

import jax.numpy as jnp
from jax import lax


@dataclasses.dataclass(frozen=True)
class Plan:
  phase: tuple[int, ...]   # r_t per tap t
  offset: tuple[int, ...]  # off_t per tap t
  shift: int
  blocks: int              # blocks covering [0, in)

  @property
  def window(self) -> int:
    return max(self.offset) - min(self.offset) + 1


def plan_1d(size: int, k: int, s: int, d: int, pb: int) -> Plan:
  def offsets(shift):
    return tuple(-((t * d + shift - pb) // s) for t in range(k))
  shift = min(range(s), key=lambda sh: (max(offsets(sh)) - min(offsets(sh)), sh))
  return Plan(phase=tuple((t * d + shift - pb) % s for t in range(k)),
              offset=offsets(shift), shift=shift, blocks=-(-(size + shift) // s))


def depth_to_space(y, plans, input_spatial, channels_last=True):
  """Interleave the phases, then crop: [*s, N, *B, C] -> [N, *I, C], or
  with channels_last=False [*s, C, N, *B] -> [N, C, *I]."""
  n = len(plans)
  if channels_last:
    batch_axis, c_axis, first_block = n, 2 * n + 1, n + 1
  else:
    c_axis, batch_axis, first_block = n, n + 1, n + 2
  pairs = [a for j in range(n) for a in (first_block + j, j)]  # B_j, s_j
  full = [y.shape[first_block + j] * y.shape[j] for j in range(n)]
  if channels_last:
    y = jnp.transpose(y, [batch_axis, *pairs, c_axis])
    y = y.reshape(y.shape[0], *full, y.shape[-1])
  else:
    y = jnp.transpose(y, [batch_axis, c_axis, *pairs])
    y = y.reshape(*y.shape[:2], *full)
  for axis, (plan, size) in enumerate(zip(plans, input_spatial),
                                      start=1 if channels_last else 2):
    y = lax.slice_in_dim(y, plan.shift, plan.shift + size, axis=axis)
  return y


def plans_for(spec, kernel) -> list[Plan]:
  """One plan per spatial dim of `spec` (a ConvSpec) for these kernel sizes."""
  return [plan_1d(i, k, s, d, pb) for i, k, s, d, (pb, _) in zip(
      spec.input_spatial, kernel, spec.strides, spec.dilations, spec.padding)]


def taps_by_phase(plans, kernel, strides):
  """(phase, taps feeding it) for every phase, in row-major phase order."""
  for phase in itertools.product(*(range(s) for s in strides)):
    yield phase, [tap for tap in itertools.product(*(range(k) for k in kernel))
                  if all(p.phase[t] == r for p, t, r in zip(plans, tap, phase))]


def block_pads(plans, tap, out_spatial):
  """lax.pad config (spatial dims) moving tap's [*O] slice to block offsets."""
  return [(-p.offset[t], p.blocks - o + p.offset[t], 0)
          for p, t, o in zip(plans, tap, out_spatial)]


def crop_negative_pads(x, axis: int, lo: int, hi: int):
  """(x cropped where lo/hi are negative, (lo, hi) clipped at 0): the
  padding a convolution gets, never negative."""
  start, stop = max(-lo, 0), x.shape[axis] - max(-hi, 0)
  x = lax.slice_in_dim(x, start, max(stop, start), axis=axis)
  return x, (max(lo, 0), max(hi, 0))


def interleave(per_phase, plans, strides, input_spatial, channels_last=True):
  """Per-phase [N, *B, C] (or [C, N, *B]) results in taps_by_phase order ->
  [N, *I, C] (or [N, C, *I])."""
  stacked = jnp.stack(per_phase).reshape(*strides, *per_phase[0].shape)
  return depth_to_space(stacked, plans, input_spatial, channels_last)
