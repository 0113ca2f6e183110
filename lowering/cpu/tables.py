"""The CPU strategies of each primitive, and the rules that choose one.

One table per primitive (`TABLES[primitive]`: name -> `Strategy`) and one
rule per table (`choose`), returning (name, reason).  A reason is one line
of why; the measurements behind it are the row of the same name in
benchmarks/README.md ("Why each CPU rule").  Every strategy is exact
against the float64 reference wherever it applies (tests/test_strategies.py).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable

import numpy as np

from .. import partners
from ..geometry import ConvSpec
from ..index import images
from . import (depth_taps, depthwise, eigen_conv, gemm_col2im, grouped,
               onednn, shift_gemm, subpixel, subpixel_fused, tap_dots)

PRIMITIVES = ("backprop_input", "backprop_filter", "forward")
# XLA CPU's algebraic simplifier aborts on some float64 lhs-dilated
# convolutions (found by tests/fuzz.py); it has no fast convolution for
# float64/int32 at all.
NO_CPU_CONVOLUTION = (np.dtype(np.float64), np.dtype(np.int32))
# From this many bytes of kernel rows on, Eigen's filter gradient is the
# slower (a symbolic batch counts as one image).
MIN_KERNEL_ROW_BYTES = 8 << 20
# From this many bytes of GEMM columns on, the sub-pixel convolutions win.
MIN_SUBPIXEL_COLUMN_BYTES = 32 << 20
_WHY = "benchmarks/README.md, 'Why each CPU rule'"


def _always(spec, filter_shape):
  del spec, filter_shape
  return True


@dataclasses.dataclass(frozen=True)
class Strategy:
  """One CPU form of a primitive.

  lower: f(a, b, *, spec, **params) in jax ops (None: the canonical
    StableHLO emitter, lowering/canonical.py).
  applies: applies(spec, filter_shape): the configurations it can lower.
  accumulates: it takes `acc_dtype` (float32 for half precision).
  unsafe_dtypes: dtypes it must not lower (XLA CPU can abort on them).
  unavailable: unavailable(dtype): why it cannot lower here and now ("" where
    it can: the native strategy's extension, dtypes and call site).
  """
  lower: Callable | None
  applies: Callable = _always
  accumulates: bool = False
  unsafe_dtypes: tuple = ()
  unavailable: Callable | None = None

  def refusal(self, spec: ConvSpec, filter_shape, dtype) -> str:
    """Why it cannot lower this call ("" where it can)."""
    if not self.applies(spec, filter_shape):
      return "it does not apply to this configuration"
    if self.unavailable is not None and (why := self.unavailable(dtype)):
      return why
    if np.dtype(dtype) in self.unsafe_dtypes:
      return "XLA CPU can abort the process on float64/int32 convolutions"
    return ""


def _per_tap_filter_gradient(x, dy, *, spec: ConvSpec, kernel):
  """A depth tap's 2-D filter gradient (depth_taps): the automatic choice."""
  return automatic("backprop_filter", x, dy, spec=spec, kernel=kernel)


BACKPROP_INPUT = {
    "canonical": Strategy(None, unsafe_dtypes=NO_CPU_CONVOLUTION),
    "gemm_col2im": Strategy(gemm_col2im.backprop_input, accumulates=True),
    "subpixel": Strategy(subpixel.backprop_input, subpixel.applies, True),
    "subpixel_fused": Strategy(subpixel_fused.backprop_input,
                               subpixel_fused.applies, True),
    "grouped": Strategy(grouped.backprop_input, grouped.applies, True),
    "depthwise": Strategy(depthwise.backprop_input, depthwise.applies, True),
    "onednn": Strategy(onednn.backprop_input, unavailable=onednn.refusal),
}
BACKPROP_FILTER = {
    "standard": Strategy(partners.backprop_filter),
    "eigen_rows": Strategy(eigen_conv.backprop_filter,
                           eigen_conv.rows_apply),
    "shift_gemm": Strategy(shift_gemm.backprop_filter, shift_gemm.applies),
    "tap_dots": Strategy(tap_dots.backprop_filter, tap_dots.applies, True),
    "depth_taps": Strategy(functools.partial(
        depth_taps.backprop_filter, per_tap=_per_tap_filter_gradient),
                           depth_taps.applies),
    "grouped": Strategy(grouped.backprop_filter, grouped.applies),
    "depthwise": Strategy(depthwise.backprop_filter, depthwise.applies, True),
    "onednn": Strategy(onednn.backprop_filter, unavailable=onednn.refusal),
}
FORWARD = {
    "standard": Strategy(partners.forward),
    "eigen": Strategy(functools.partial(partners.forward,
                                        conv=eigen_conv.conv)),
    "grouped": Strategy(grouped.forward, grouped.applies),
    "depthwise": Strategy(depthwise.forward, depthwise.applies, True),
    "onednn": Strategy(onednn.forward, unavailable=onednn.refusal),
}
TABLES = {"backprop_input": BACKPROP_INPUT,
          "backprop_filter": BACKPROP_FILTER, "forward": FORWARD}
# The form every platform gets (GPU/TPU, and exports): `portable()`.
PORTABLE = {"backprop_input": "canonical", "backprop_filter": "standard",
            "forward": "standard"}


def _why(label: str, text: str) -> str:
  """A rule's reason: its label (the row in benchmarks/README.md) and why."""
  return f"{label}: {text} ({_WHY})"


def _choose_backprop_input(spec, filter_shape, dtype, batch):
  n = spec.ndim
  kernel, ci, co = filter_shape[:n], filter_shape[n], filter_shape[n + 1]
  if dtype in NO_CPU_CONVOLUTION:
    return "gemm_col2im", _why(
        "float64/int32", "XLA CPU has no fast convolution for them, and its "
        "algebraic simplifier aborts on some float64 lhs-dilated ones")
  if dtype.itemsize == 2:
    return "gemm_col2im", _why(
        "half precision", "float32-accumulating dot + col2im, rounded once")
  if depthwise.applies(spec, filter_shape):
    return "depthwise", _why(
        "depthwise", "XLA CPU runs grouped convolutions on a generic path; "
        "fused shifted products instead")
  if spec.groups > 1:
    return "grouped", _why("grouped", "dense block-diagonal sub-problems")
  if all(s == 1 for s in spec.strides):
    if any(d > 1 for d in spec.dilations):
      return "canonical", _why(
          "stride 1, dilated", "XLA's YNNPACK convolution; Eigen measured a "
          "wash at twice the memory")
    return "subpixel", _why(
        "stride 1", "one forward convolution on XLA's Eigen kernel, not "
        "YNNPACK (lowering/cpu/eigen_conv.py)")
  if any(d > 1 for d in spec.dilations) and math.prod(kernel) > 1:
    return "subpixel", _why(
        "stride and dilation", "stride-1 convolutions per phase, on Eigen")
  if tuple(kernel) == tuple(spec.strides) and math.prod(kernel) <= 4:
    return "gemm_col2im", _why(
        "kernel == stride (k2 s2, the U-Net up-convolution)", "one tap per "
        "phase, so a dot and a depth-to-space")
  if subpixel_fused.waste(spec, kernel) == 1:
    return "subpixel_fused", _why(
        "kernel a multiple of the stride", "one exact phase-packed "
        "convolution")
  if ci <= 16 or math.prod(kernel) == 1:
    return "gemm_col2im", _why(
        "few result channels or a 1x1 kernel", "one dot + per-phase col2im")
  if n == 3:
    return "subpixel", _why(
        "3-D, stride > 1", "stride-1 convolutions per phase, each as 2-D "
        "ones per depth tap")
  if math.prod(kernel) * co >= 4096:
    return "subpixel", _why(
        "large kernel x channels", "stride-1 convolutions per phase")
  columns = batch * math.prod(spec.out_backprop_spatial(kernel)) * (
      math.prod(kernel) * ci * 4)  # gemm_col2im's dot result, float32 bytes
  if columns >= MIN_SUBPIXEL_COLUMN_BYTES:
    return "subpixel", _why(
        "GEMM columns of 32 MiB or more", "stride-1 convolutions per phase")
  return "gemm_col2im", _why("stride > 1", "dot + per-phase col2im")


def _choose_backprop_filter(spec, filter_shape, dtype, batch):
  n = spec.ndim
  kernel, ci, co = filter_shape[:n], filter_shape[n], filter_shape[n + 1]
  strided = any(s > 1 for s in spec.strides)
  if depthwise.applies(spec, filter_shape) and strided:
    return "depthwise", _why(
        "strided depthwise", "one reduction per tap over strided windows")
  if tap_dots.applies(spec, filter_shape):  # strided, one group, 2-D/3-D
    if dtype == np.float32 and n == 2 and max(kernel) > 4:
      return "standard", _why(
          "strided 2-D, a kernel dim over 4", "XLA's own form is ahead")
    if dtype == np.float32 and shift_gemm.taps_overlap(spec, kernel):
      return "shift_gemm", _why(
          "strided, overlapping taps", "one GEMM per leading tap, image by "
          "image")
    return "tap_dots", _why("strided, taps apart or half precision",
                            "one dot per filter tap")
  if n == 3:
    return "depth_taps", _why(
        "3-D", "XLA CPU's 3-D convolutions are slow: one 2-D filter "
        "gradient per depth tap")
  if spec.groups > 1:
    return "grouped", _why(
        "grouped", "dense block-diagonal sub-problems, no batch groups")
  rows = kernel[0] * batch * math.prod(spec.input_spatial) * ci * dtype.itemsize
  if (n == 2 and dtype == np.float32 and max(kernel) <= 3
      and all(d == 1 for d in spec.dilations) and min(ci, co) >= 16
      and math.prod(spec.input_spatial) >= 28 * 28
      and rows >= MIN_KERNEL_ROW_BYTES):
    return "shift_gemm", _why(
        "stride 1, 8 MiB of kernel rows or more", "one GEMM per leading "
        "tap, image by image (Eigen's rows outgrow the cache)")
  if n == 2 and dtype == np.float32 and kernel[0] <= 3 and ci * co >= 4096:
    return "eigen_rows", _why(
        "up to 3 kernel rows, channels in x out >= 4096", "one 1-D "
        "convolution on Eigen rather than YNNPACK's 2-D one")
  return "standard", _why("the rest", "XLA's own filter-gradient convolution")


# A forward conv's output channels up to which XLA's own (YNNPACK) form beat
# Eigen's (benchmarks/README.md, "Why each CPU rule": forward).
FEW_OUTPUT_CHANNELS = 16


def _choose_forward(spec, filter_shape, dtype, batch):
  del dtype, batch
  if depthwise.applies(spec, filter_shape):
    return "depthwise", _why("depthwise", "fused shifted products")
  if spec.groups > 1:
    return "grouped", _why("grouped", "dense block-diagonal sub-problems")
  if filter_shape[-1] <= FEW_OUTPUT_CHANNELS:
    return "standard", _why(
        f"<= {FEW_OUTPUT_CHANNELS} output channels", "XLA's own convolution "
        "(as tf2jax converts Conv2D), ahead of Eigen's there")
  return "eigen", _why(
      "one group", "the standard convolution, kept off YNNPACK where that "
      "is faster (lowering/cpu/eigen_conv.py)")


_RULES = {"backprop_input": _choose_backprop_input,
          "backprop_filter": _choose_backprop_filter,
          "forward": _choose_forward}


def _xla_ahead_of_onednn(primitive, spec, filter_shape) -> bool:
  """Where an XLA form measured faster than oneDNN's kernel (the rows under
  'oneDNN' in benchmarks/README.md)."""
  n = spec.ndim
  kernel, ci = filter_shape[:n], filter_shape[n]
  # oneDNN's AVX-512 kernels beat the grouped form's block-diagonal GEMMs
  # and gemm_col2im's kernel == stride layers; its AVX2 ones do not.
  wide = onednn.avx512() and primitive == "backprop_input"
  if spec.groups > 1 and not (wide and ci > 1):
    return True  # depthwise: the shifted-product form everywhere
  if n == 2 and not spec.channels_last:
    return True  # NCHW: oneDNN's reorders
  if primitive != "backprop_input":
    # Inside training steps oneDNN's filter gradient and forward came out
    # ahead (alone, shift_gemm's large filter gradients are faster).
    return False
  strided = any(s > 1 for s in spec.strides)
  return (math.prod(kernel) == 1 or (strided and ci <= 4)
          or (n == 2 and tuple(kernel) == tuple(spec.strides) and not wide)
          or (strided and any(d > 1 for d in spec.dilations)))


def choose(spec: ConvSpec, filter_shape, dtype, batch: int = 1, *,
           primitive: str = "backprop_input",
           native: bool = True) -> tuple[str, str]:
  """(strategy, reason) for a call of `primitive` on CPU.

  filter_shape: the primitive's filter `[*K, C_in / groups, C_out]`;
  batch: images per call (a symbolic batch counts as one); native: whether
  the oneDNN strategy may be chosen where it can lower (False: the rules
  among XLA's forms, which also serve where it cannot).
  """
  dtype, filter_shape = np.dtype(dtype), tuple(filter_shape)
  if (native and not onednn.refusal(dtype)
      and not _xla_ahead_of_onednn(primitive, spec, filter_shape)):
    return "onednn", _why("oneDNN", "TF's own CPU kernels (backward data, "
                          "backward weights, forward)")
  return _RULES[primitive](spec, filter_shape, dtype, batch)


def _accumulation(dtype):
  """Half precision accumulates in float32 and rounds once; others as is."""
  return np.float32 if np.dtype(dtype).itemsize == 2 else None


def run(primitive: str, name: str, a, b, *, spec: ConvSpec, **params):
  """a, b through strategy `name` of `primitive` (in jax ops)."""
  strategy = TABLES[primitive][name]
  if strategy.accumulates:
    params["acc_dtype"] = _accumulation(a.dtype)
  return strategy.lower(a, b, spec=spec, **params)


def filter_shape(primitive: str, a, b, spec: ConvSpec, kernel=None) -> tuple:
  """The filter `[*K, C_in / groups, C_out]` of a call of `primitive`."""
  if primitive == "backprop_filter":
    return spec.filter_shape(kernel, a.shape[spec.feature_axis],
                             b.shape[spec.feature_axis])
  return tuple(a.shape if primitive == "backprop_input" else b.shape)


def automatic(primitive: str, a, b, *, spec: ConvSpec, **params):
  """a, b through the strategy `choose` picks (no forcing, not recorded)."""
  batch = images((b if primitive == "backprop_input" else a).shape[0])
  name, _ = choose(spec, filter_shape(primitive, a, b, spec, **params),
                   a.dtype, batch, primitive=primitive)
  return run(primitive, name, a, b, spec=spec, **params)
