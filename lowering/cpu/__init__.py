"""CPU lowering: each call of a primitive takes a named strategy.

The strategies and the rules that choose among them are one table per
primitive (lowering/cpu/tables.py); one module per strategy beside it.
This module is the mechanics: the three entry points the front end
registers for the cpu platform (`lower` for the op, `forward` and
`backprop_filter` for its partners), and the blocks that override the
choice (`force_strategy`, `portable`, `xla_strategies`).  Every strategy
is portable StableHLO but the native one (lowering/cpu/onednn.py), a custom
call that is never exported.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import warnings

import numpy as np

from .. import canonical
from .._compat import lower_fun, placement
from ..geometry import ConvSpec
from ..index import export_platforms, images
from . import onednn
from .tables import PORTABLE, PRIMITIVES, TABLES, choose, filter_shape, run

__all__ = ["STRATEGIES", "CpuOnlyExportWarning", "Lowered", "applies",
           "backprop_filter", "choose", "chosen", "force_strategy", "forward",
           "lower", "portable", "xla_strategies"]

STRATEGIES = {primitive: tuple(TABLES[primitive]) for primitive in PRIMITIVES}


class CpuOnlyExportWarning(UserWarning):
  """An export for CPU alone took an automatically chosen CPU form."""


@dataclasses.dataclass
class Lowered:
  """The strategies lowered inside a `force_strategy` block, per primitive."""
  backprop_input: list[str] = dataclasses.field(default_factory=list)
  backprop_filter: list[str] = dataclasses.field(default_factory=list)
  forward: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class _Forcing:
  names: dict  # primitive: name (absent: the automatic choice)
  strict: bool
  lowered: Lowered


_forced: contextvars.ContextVar[_Forcing | None] = contextvars.ContextVar(
    "jaxconv_cpu_strategy", default=None)
_portable: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "jaxconv_portable", default=False)


@contextlib.contextmanager
def force_strategy(backprop_input: str | None = None, strict: bool = False,
                   *, backprop_filter: str | None = None,
                   forward: str | None = None):
  """Lower CPU calls traced inside this block with the named strategies:
  `backprop_input` for the op, `backprop_filter` and `forward` for its
  partner convolutions (names: `STRATEGIES[primitive]`).

  Where a strategy cannot lower a call (it does not apply to the
  configuration, which transformations such as vmap can change, or XLA
  CPU can abort on its dtype), the automatic choice stays, or with
  `strict=True` the lowering raises ValueError.  Yields a `Lowered` record
  of the strategy of every call lowered inside the block, so a test can
  prove which one ran.  Takes effect when a function is lowered: call it
  fresh (a new jax.jit, or after jax.clear_caches()) inside the block.
  """
  names = {}
  for primitive, name in zip(PRIMITIVES,
                             (backprop_input, backprop_filter, forward)):
    if name is None:
      continue
    if name not in TABLES[primitive]:
      raise ValueError(f"unknown CPU strategy {name!r} for {primitive}; "
                       f"choose from {STRATEGIES[primitive]}")
    names[primitive] = name
  lowered = Lowered()
  token = _forced.set(_Forcing(names, strict, lowered))
  try:
    yield lowered
  finally:
    _forced.reset(token)


@contextlib.contextmanager
def portable():
  """Lower CPU calls traced inside this block in the portable forms that
  GPU/TPU get (the canonical op, the standard partner convolutions), for
  every dtype: what `jaxconv export` writes for `cpu` unless asked for a
  CPU strategy.  (XLA CPU itself can abort on some float64 convolutions of
  that form; such an artifact is for other StableHLO consumers.)"""
  token = _portable.set(True)
  try:
    yield
  finally:
    _portable.reset(token)


def xla_strategies():
  """Lower CPU calls traced inside this block on XLA's strategies only: the
  native oneDNN one is off (process-wide: JAXCONV_ONEDNN=0)."""
  return onednn.turned_off()


def applies(name: str, spec: ConvSpec, filter_shape, dtype=np.float32, *,
            primitive: str = "backprop_input") -> bool:
  """Whether strategy `name` of `primitive` can lower this call."""
  return not TABLES[primitive][name].refusal(spec, filter_shape, dtype)


def chosen(spec: ConvSpec, filter_shape, dtype, batch: int, *,
           primitive: str = "backprop_input") -> str:
  """The strategy a call lowers with now: portable, the forced one where it
  can (see `force_strategy`), else the automatic choice."""
  if _portable.get():
    return PORTABLE[primitive]
  forcing = _forced.get() or _Forcing({}, False, Lowered())
  name = forcing.names.get(primitive)
  why = name and TABLES[primitive][name].refusal(spec, filter_shape, dtype)
  if why and forcing.strict:
    raise ValueError(
        f"force_strategy({primitive}={name!r}, strict=True): {why} ({spec}, "
        f"filter shape {tuple(filter_shape)}, {np.dtype(dtype)})")
  if name is None or why:
    name = choose(spec, filter_shape, dtype, batch, primitive=primitive)[0]
    if name != PORTABLE[primitive] and export_platforms() == ("cpu",):
      warnings.warn(CpuOnlyExportWarning(
          f"jaxconv: an export for platforms=('cpu',) alone bakes XLA CPU's "
          f"{name!r} form of {primitive} in: the artifact (a jax2tf "
          "SavedModel too) runs on CPU only.  For one that also runs on GPU "
          "and TPU (their portable form), pass platforms=('cpu', 'cuda', "
          "'tpu') to jax.export, native_serialization_platforms= to "
          "jax2tf.convert; lower inside jaxconv.portable() for the portable "
          "form on CPU as well."), stacklevel=2)
  getattr(forcing.lowered, primitive).append(name)
  return name



def lower(ctx, filt, dy, *, spec: ConvSpec):
  """The op's lowering rule on CPU (StableHLO, from the rule context)."""
  filt_aval, dy_aval = ctx.avals_in
  out_aval, = ctx.avals_out
  if canonical.is_empty(ctx):
    return canonical.zeros(ctx, filt, dy)
  # The strategies loop over stride phases: bound a stride that TF allows
  # up to 2**31 - 1 where it cannot matter.
  if not _portable.get():
    spec = spec.with_equivalent_strides(filt_aval.shape[:spec.ndim])
  with placement(ctx):
    name = chosen(spec, filt_aval.shape, out_aval.dtype,
                  images(dy_aval.shape[0]))
  if name == "canonical":
    return canonical.lower(ctx, filt, dy, spec=spec, accumulate_f32=True)
  return lower_fun(functools.partial(run, "backprop_input", name,
                                     spec=spec))(ctx, filt, dy)


def _lower_partner(primitive, a, b, *, spec: ConvSpec, **params):
  name = chosen(spec, filter_shape(primitive, a, b, spec, **params), a.dtype,
                images(a.shape[0]), primitive=primitive)
  return run(primitive, name, a, b, spec=spec, **params)


def forward(x, filt, *, spec: ConvSpec):
  """The forward partner on CPU (in jax ops)."""
  return _lower_partner("forward", x, filt, spec=spec)


def backprop_filter(x, dy, *, spec: ConvSpec, kernel):
  """The filter-gradient partner on CPU (in jax ops)."""
  return _lower_partner("backprop_filter", x, dy, spec=spec, kernel=kernel)
