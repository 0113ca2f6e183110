"""CPU lowering: pick a strategy per configuration, at lowering time.

Each rule below records the measurement or fact behind it
(benchmarks/suite.py reproduces the measurements).  Every strategy is
exact against the float64 reference (tests/test_strategies.py).
"""
from __future__ import annotations

import contextlib
import contextvars
import functools

import numpy as np
from jax.interpreters import mlir

from lowering import canonical, gemm_col2im
from lowering.geometry import ConvSpec

STRATEGIES = ("canonical", "gemm_col2im")
_forced: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "jaxconv_cpu_strategy", default=None)


@contextlib.contextmanager
def force_strategy(name: str | None):
  """Lower every CPU call traced inside this block with strategy `name`.

  Takes effect when a function is lowered: call it fresh (a new jax.jit, or
  after jax.clear_caches()) inside the block.
  """
  if name is not None and name not in STRATEGIES:
    raise ValueError(f"unknown CPU strategy {name!r}; choose from {STRATEGIES}")
  token = _forced.set(name)
  try:
    yield
  finally:
    _forced.reset(token)


def choose(spec: ConvSpec, kernel, dtype) -> tuple[str, str]:
  """(strategy, reason) for a configuration on CPU."""
  del spec, kernel
  dtype = np.dtype(dtype)
  if dtype in (np.float64, np.int32):
    return "gemm_col2im", (
        "XLA CPU has no fast convolution for float64/int32 (loop emitter, "
        "8-10x slower than GEMM + col2im), and its algebraic simplifier "
        "aborts on some float64 lhs-dilated convolutions")
  if dtype.itemsize == 2:
    return "gemm_col2im", (
        "half precision: a float32-accumulating dot + col2im, rounded once, "
        "measured 1.5-2.2x faster than the canonical convolution")
  return "canonical", "float32: XLA's canonical form is the measured default"


def lower(ctx, filt, dy, *, spec: ConvSpec):
  filt_aval, _ = ctx.avals_in
  out_aval, = ctx.avals_out
  if canonical.is_empty(ctx):
    return canonical.zeros(ctx, filt, dy)
  name = _forced.get() or choose(spec, filt_aval.shape[:spec.ndim],
                                 out_aval.dtype)[0]
  if name == "canonical":
    return canonical.lower(ctx, filt, dy, spec=spec, accumulate_f32=True)
  acc = np.float32 if np.dtype(out_aval.dtype).itemsize == 2 else None
  fn = functools.partial(gemm_col2im.backprop_input, spec=spec, acc_dtype=acc)
  return mlir.lower_fun(fn, multiple_results=False)(ctx, filt, dy)
