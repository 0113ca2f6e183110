"""Index arithmetic the lowerings share: one place each.

    window(x, {axis: (start, count, stride)})  the positions a tap sees
    pad_zeros(x, {axis: (lo, hi[, interior])})  zero padding (negative: crop)
    is_static(d), images(batch), any_empty(*shapes)
    batch_split(n)  a block whose images(batch) counts one device's images
    custom_calls(why)  a block where custom calls are refused (why), or not ("")
    exporting(platforms)  a block lowered for a jax.export to `platforms`
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Mapping, Sequence

import numpy as np
from jax import lax


def is_static(d) -> bool:
  """Whether a dimension is a known integer (not a symbolic one)."""
  return isinstance(d, (int, np.integer))


_split: contextvars.ContextVar[int] = contextvars.ContextVar(
    "jaxconv_batch_split", default=1)


@contextlib.contextmanager
def batch_split(n: int):
  """Inside: the batch is split `n` ways over devices (set by the lowering
  rules from what they know of the sharding: lowering/_compat.py)."""
  token = _split.set(max(1, int(n)))
  try:
    yield
  finally:
    _split.reset(token)


_custom_calls: contextvars.ContextVar[str] = contextvars.ContextVar(
    "jaxconv_custom_calls", default="")


@contextlib.contextmanager
def custom_calls(refusal: str):
  """Inside: why a custom call must not be emitted here ("" where it may),
  set by the lowering rules from their context (lowering/_compat.py)."""
  token = _custom_calls.set(refusal)
  try:
    yield
  finally:
    _custom_calls.reset(token)


def custom_call_refusal() -> str:
  """Why this lowering must stay free of custom calls ("" where it need not)."""
  return _custom_calls.get()


_export: contextvars.ContextVar[tuple[str, ...] | None] = (
    contextvars.ContextVar("jaxconv_export_platforms", default=None))


@contextlib.contextmanager
def exporting(platforms: tuple[str, ...] | None):
  """Inside: the platforms of the export being lowered (None: not an
  export), set by the lowering rules (lowering/_compat.py)."""
  token = _export.set(platforms)
  try:
    yield
  finally:
    _export.reset(token)


def export_platforms() -> tuple[str, ...] | None:
  """The platforms of the export this lowering is for (None: a jit)."""
  return _export.get()


def images(batch) -> int:
  """Images per call on one device, for the CPU rules: the batch over its
  split (see `batch_split`); a symbolic batch counts as one."""
  return -(-int(batch) // _split.get()) if is_static(batch) else 1


def any_empty(*shapes) -> bool:
  """Whether some shape has a (static) zero-size dimension."""
  return any(is_static(d) and d == 0 for shape in shapes for d in shape)


def _per_axis(x, entries, fill):
  if isinstance(entries, Mapping):
    return [entries.get(a, fill) for a in range(x.ndim)]
  return list(entries)


def window(x, taps: Mapping[int, tuple[int, int, int]]):
  """x at positions start, start + stride, ... (`count` of them) along each
  given axis: what one filter tap sees of a padded input."""
  start, limit, step = [0] * x.ndim, list(x.shape), [1] * x.ndim
  for axis, (first, count, stride) in taps.items():
    start[axis], step[axis] = first, stride
    limit[axis] = first + (count - 1) * stride + 1 if count > 0 else first
  return lax.slice(x, start, limit, step)


def pad_zeros(x, pads: Mapping[int, tuple] | Sequence[tuple]):
  """x zero-padded by (lo, hi) or (lo, hi, interior) per axis, given as a
  mapping of the padded axes or one entry per axis; negative edges crop."""
  config = [tuple(p) + (0,) * (3 - len(p))
            for p in _per_axis(x, pads, (0, 0, 0))]
  return lax.pad(x, np.zeros((), x.dtype), config)
