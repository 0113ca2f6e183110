"""CPU lowering: pick a strategy per configuration, at lowering time.

Each rule in `choose` records the measurement or fact behind it
(`python benchmarks/suite.py --strategies` reproduces the measurements).
Every strategy is exact against the float64 reference
(tests/test_strategies.py).
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import math

import jax.numpy as jnp
import numpy as np
from jax import lax

from lowering import canonical, partners
from lowering.cpu import (depthwise, eigen_conv, gemm_col2im, grouped,
                         shift_gemm, subpixel, subpixel_fused, tap_dots)
from lowering._compat import lower_fun
from lowering.geometry import ConvSpec


def _always(spec, filter_shape):
  del spec, filter_shape
  return True


# name: (backprop_input(filt, dy, *, spec, acc_dtype) or None for the
# canonical StableHLO emitter, applies(spec, filter_shape)).
_STRATEGIES = {
    "canonical": (None, _always),
    "gemm_col2im": (gemm_col2im.backprop_input, _always),
    "subpixel": (subpixel.backprop_input, subpixel.applies),
    "subpixel_fused": (subpixel_fused.backprop_input, subpixel_fused.applies),
    "grouped": (grouped.backprop_input, grouped.applies),
    "depthwise": (depthwise.backprop_input, depthwise.applies),
}
STRATEGIES = tuple(_STRATEGIES)
# XLA CPU's algebraic simplifier aborts on some float64 lhs-dilated
# convolutions (found by tests/fuzz.py); no CPU convolution there for these.
_NO_CPU_CONVOLUTION = (np.dtype(np.float64), np.dtype(np.int32))
# From this many bytes of kernel rows on, Eigen's filter gradient is the
# slower (backprop_filter); a symbolic batch counts as one image.
_MIN_KERNEL_ROW_BYTES = 8 << 20
_forced: contextvars.ContextVar[tuple | None] = contextvars.ContextVar(
    "jaxconv_cpu_strategy", default=None)


@contextlib.contextmanager
def force_strategy(name: str | None, strict: bool = False):
  """Lower CPU calls traced inside this block with strategy `name`.

  Where `name` cannot lower a call (it does not apply to the configuration,
  which transformations such as vmap can change, or it is `canonical` for
  float64/int32, which XLA CPU can abort on), the automatic choice stays,
  or with `strict=True` the lowering raises ValueError.  Yields a list that
  gets the strategy of every call lowered inside the block, so a test can
  prove which one ran.  Takes effect when a function is lowered: call it
  fresh (a new jax.jit, or after jax.clear_caches()) inside the block.
  """
  if name is not None and name not in STRATEGIES:
    raise ValueError(f"unknown CPU strategy {name!r}; choose from {STRATEGIES}")
  lowered: list[str] = []
  token = _forced.set((name, strict, lowered))
  try:
    yield lowered
  finally:
    _forced.reset(token)


_portable: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "jaxconv_portable", default=False)


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


def applies(name: str, spec: ConvSpec, filter_shape) -> bool:
  return _STRATEGIES[name][1](spec, filter_shape)


def choose(spec: ConvSpec, filter_shape, dtype,
           batch: int = 1) -> tuple[str, str]:
  """(strategy, reason) for a configuration on CPU; `batch`: images per
  call (a symbolic batch counts as 1).

  Figures: `python benchmarks/suite.py --strategies` on the project's
  2-core CPU machine, jax 0.10.2 (ms per call; see benchmarks/README.md).
  The rules below hold in both layouts: the same strategy wins each class
  in NCHW (unet-up NCHW: gemm_col2im 10.3 ms vs 15.0 canonical; thin:
  subpixel_fused 17.5 vs 73.6; dcgan: subpixel 52.3 vs 83.1; dense s1:
  subpixel 14.7-15.2 vs 25.7-30.0 canonical).  Every convolution the
  strategies other than `canonical` emit goes through
  lowering/cpu/eigen_conv.py.
  """
  n = spec.ndim
  dtype = np.dtype(dtype)
  kernel, ci, co = filter_shape[:n], filter_shape[n], filter_shape[n + 1]
  if dtype in _NO_CPU_CONVOLUTION:
    return "gemm_col2im", (
        "float64/int32: XLA CPU has no fast convolution for them (loop "
        "emitter; unet-up f64: 5.7 ms vs 120 ms canonical) and its algebraic "
        "simplifier aborts on some float64 lhs-dilated convolutions")
  if dtype.itemsize == 2:
    return "gemm_col2im", (
        "half precision: float32-accumulating dot + col2im, rounded once "
        "(unet-up bf16: 4.7 ms vs 14.2 canonical; f16: 10.1 vs 15.4)")
  if depthwise.applies(spec, filter_shape):
    return "depthwise", (
        "depthwise: XLA CPU runs grouped convolutions on a generic path "
        "(depthwise s2 56x56 128: ~1.5 ms vs 274 ms canonical)")
  if spec.groups > 1:
    return "grouped", (
        "grouped: dense block-diagonal sub-problems (g32 28x28 256: 10.4 ms "
        "vs 70.8 ms canonical)")
  if all(s == 1 for s in spec.strides):
    if any(d > 1 for d in spec.dilations):
      return "canonical", (
          "stride 1, dilated: XLA's YNNPACK convolution; on Eigen it "
          "measured a wash (atrous d2 64x64 128: 0.89-1.12x) at twice the "
          "memory")
    return "subpixel", (
        "stride 1: one forward convolution on XLA's Eigen kernel, not "
        "YNNPACK (lowering/cpu/eigen_conv.py; dense s1 56x56 64: 9.8-14.7 ms "
        "vs 14.2-24.9 canonical, NCHW 14.7-15.2 vs 25.7-30.0)")
  if any(d > 1 for d in spec.dilations) and math.prod(kernel) > 1:
    return "subpixel", (
        "stride and dilation: stride-1 convolutions per phase, on Eigen "
        "(ms and compile ms, subpixel vs GEMM: s2 d2 k3 32x32 64<-64 "
        "1.50/79 vs 1.46/101, NCHW 1.96/128 vs 2.17/102; 64x64 64<-128 "
        "8.9/90 vs 9.2/141; s2 d3 64x64 128 10.7/128 vs 11.8/120; k5 "
        "VALID 32<-32 1.05/71 vs 1.23/202; 56x56 16<-64 1.51/76 vs "
        "1.66/92; canonical 3.6-32 ms)")
  if tuple(kernel) == tuple(spec.strides) and math.prod(kernel) <= 4:
    return "gemm_col2im", (
        "kernel == stride (k2 s2, the U-Net up-convolution): one tap per "
        "phase, so a dot and a depth-to-space (64<-128 64x64: 3.1 ms vs 4.2 "
        "canonical, 6.8 phase-packed; 256<-512 16x16: 2.8 vs 4.2, 5.2)")
  if subpixel_fused.waste(spec, kernel) == 1:
    return "subpixel_fused", (
        "kernel a multiple of the stride: one exact phase-packed convolution "
        "(thin k4 s2: 15.9 ms vs 66.7 ms canonical, 25.5 ms separate phases)")
  if ci <= 16 or math.prod(kernel) == 1:
    return "gemm_col2im", (
        "few result channels or a 1x1 kernel: one dot + per-phase col2im "
        "(stem 3->64 k7: 3.5 ms vs 7.6 canonical; 1x1 s2: 13.3 vs 15.6)")
  if n == 3:
    return "subpixel", (
        "3-D, stride > 1: stride-1 convolutions per phase, each as 2-D ones "
        "per depth tap (lowering/cpu/eigen_conv.py; 3-D unet-up s2 32^3 "
        "32<-64: 1.96 ms vs 3.11 GEMM, TF 2.04)")
  if math.prod(kernel) * co >= 4096:
    return "subpixel", (
        "large kernel x channels: stride-1 convolutions per phase (dcgan k5 "
        "128<-256: 51.8 ms vs 82.6 canonical, 72.3 GEMM)")
  columns = batch * math.prod(spec.out_backprop_spatial(kernel)) * (
      math.prod(kernel) * ci * 4)  # gemm_col2im's dot result, float32 bytes
  if columns >= 32 << 20:
    return "subpixel", (
        "GEMM columns of 32 MiB or more: stride-1 convolutions per phase "
        "(ms, subpixel vs GEMM: 64x64 64<-128 N16 23-28 vs 37-39; k5 "
        "64<-128 22-25 vs 45-47, NCHW 21-24 vs 34-40; 128x128 32<-64 12-13 "
        "vs 19-20, NCHW a tie; 128x128 64<-64 42-43 vs 53-55)")
  return "gemm_col2im", (
      "stride > 1: dot + per-phase col2im (unet-up k3 64<-128, 19 MiB of "
      "columns: 7.8-8.8 ms vs 10.7-12.7 canonical, 8.5-8.8 sub-pixel; "
      "56x56 24<-48: 1.7 vs 2.6 sub-pixel)")


def chosen(spec: ConvSpec, filter_shape, dtype, batch: int) -> str:
  """The strategy a call lowers with now: the forced one where it can (see
  `force_strategy`), else the automatic choice."""
  name, strict, lowered = _forced.get() or (None, False, [])
  why = None
  if name is not None and not applies(name, spec, filter_shape):
    why = "it does not apply to this configuration"
  elif name == "canonical" and np.dtype(dtype) in _NO_CPU_CONVOLUTION:
    why = "XLA CPU can abort the process on float64/int32 convolutions"
  if why and strict:
    raise ValueError(
        f"force_strategy({name!r}, strict=True): {why} ({spec}, filter "
        f"shape {tuple(filter_shape)}, {np.dtype(dtype)})")
  if name is None or why:
    name = choose(spec, filter_shape, dtype, batch)[0]
  lowered.append(name)
  return name


def _accumulation(dtype):
  """Half precision accumulates in float32 and rounds once; others as is."""
  return np.float32 if np.dtype(dtype).itemsize == 2 else None


def lower(ctx, filt, dy, *, spec: ConvSpec):
  filt_aval, dy_aval = ctx.avals_in
  out_aval, = ctx.avals_out
  if canonical.is_empty(ctx):
    return canonical.zeros(ctx, filt, dy)
  batch = dy_aval.shape[0]
  if _portable.get():
    return canonical.lower(ctx, filt, dy, spec=spec, accumulate_f32=True)
  # The strategies loop over stride phases: bound a stride that TF allows
  # up to 2**31 - 1 where it cannot matter.
  spec = spec.with_equivalent_strides(filt_aval.shape[:spec.ndim])
  name = chosen(spec, filt_aval.shape, out_aval.dtype,
                batch if isinstance(batch, (int, np.integer)) else 1)
  if name == "canonical":
    return canonical.lower(ctx, filt, dy, spec=spec, accumulate_f32=True)
  fn = functools.partial(_STRATEGIES[name][0], spec=spec,
                         acc_dtype=_accumulation(out_aval.dtype))
  return lower_fun(fn)(ctx, filt, dy)


# The partner convolutions (the op's gradients).  XLA CPU's grouped
# convolutions are slow, its batch-grouped filter gradient catastrophically
# (g32 28x28 256: 6,969 ms); block-diagonal dense sub-problems instead.


def forward(x, filt, *, spec: ConvSpec):
  """The forward partner on CPU: depthwise as fused shifted products
  (depthwise s2 56x56 128: 2.1 ms vs 6.7 split, 34.4 grouped convolution;
  k5 s1: 5.8 vs 32.9, 215), other groups split (g32 28x28 256: 9.0 ms vs
  69.6 grouped convolution)."""
  if _portable.get():
    return partners.forward(x, filt, spec=spec)
  if depthwise.applies(spec, filt.shape):
    return depthwise.forward(x, filt, spec=spec,
                             acc_dtype=_accumulation(x.dtype))
  if spec.groups > 1:
    return grouped.forward(x, filt, spec=spec)
  return partners.forward(x, filt, spec=spec, conv=eigen_conv.conv)


def backprop_filter(x, dy, *, spec: ConvSpec, kernel):
  """The filter-gradient partner on CPU: strided depthwise as one reduction
  per tap (depthwise s2 56x56 128: 4.4 ms vs 15.6 split, 48.4 batch-grouped
  convolution; 28x28x512: 6.1 vs 16.3, compiling in 0.25 s vs 1.4; at
  stride 1 the split is faster: 56x56x128 28.6 vs 42.2), other groups split
  (g32 28x28 256: 15.2 ms vs 6,969 batch-grouped convolution); 2-D float32
  with up to 3 kernel rows and channels in x channels out >= 4096 as one
  1-D convolution on Eigen rather than YNNPACK's 2-D one
  (lowering/cpu/eigen_conv.py; filter gradients of the suite's op, ms, NHWC /
  NCHW: dense 64x64 37-41 vs 59-62 / 34-36 vs 54, unet-up 64x128 14-16 vs
  33-34 / 15-16 vs 32-33, 1x1 256x512 22-27 vs 114-117 / 21-22 vs 97; the
  2-D one is as fast or faster for DCGAN k5 128x256, 50-65 vs 36-76, ahead
  in four of six runs, and wins below the channel bound: thin 32x32 k4
  52-59 vs 35-40, 64x32 k3 s2 8.2-9.2 vs 7.7-7.9).  Strided ones with one
  group before all those, in 2-D and 3-D: 2-D float32 ones with a kernel
  dim over 4 XLA's own form, other float32 ones whose taps overlap
  (share a stride phase) one GEMM per leading tap (lowering/cpu/
  shift_gemm.py), the rest one dot per filter tap (lowering/cpu/
  tap_dots.py; ms, shift_gemm vs tap_dots vs XLA's form: unet-up 6.8 vs
  7.5 vs 8.8, 3-D unet-up 3.0 vs 3.4 vs 27.6, thin k4 9.8 vs 28.1 vs
  11.7, 64x128 k4 8.4 vs 19.9 vs 11.0, 256x256 k3 9.6 vs 9.2 vs 11.8,
  s2+d2 1.4 vs 1.9 vs 1.5; XLA's ahead from k5 on: dcgan k5 22.7 vs 32.7
  vs 21.2, N8 11.2 vs 11.8 vs 8.8, 64x128 k5 12.4 vs 25.7 vs 12.0, stem
  k7 3.2 vs 3.9 vs 2.5; taps apart: 1x1 5.8 vs 5.5, unet-up k2 2.6 vs
  2.4);
  3-D stride-1 ones: one 2-D filter gradient per depth tap; 2-D stride-1
  ones with 16 or more channels each side, a 3x3 kernel at most, 28x28
  positions or more and 8 MiB or more of kernel rows in the Eigen form:
  one GEMM per leading tap (lowering/cpu/shift_gemm.py).  Eigen's form
  slows down 2-4x once those rows outgrow the cache, and shift_gemm's
  products lose where they are short (ms, shift_gemm vs Eigen vs XLA's
  form, N8 unless said, rows in MiB: 56x56 64 18.4: 6.2-8.8 vs 18.6-22.1
  vs 13-14; N16 36.8: 19.7 vs 40.9 vs 27.2; 56x56 128 36.8: 24.6 vs 43.3
  vs 34.4; 28x28 256 18.4: 20.8 vs 29.0 vs 30.4; 112x112 64 73.5: 37 vs
  81 vs 109; 40x40 64 9.4: 3.8-4.6 vs 4.4-6.3 vs 7.1-7.7; N4 56x56 64
  9.2: 3.6 vs 4.3 vs 7.1; thinner, where XLA's form was the rule: 56x56
  32 9.2: 2.6 vs 5.4 vs 3.9; 112x112 32 36.8: 10.6 vs 39-42 vs 16-17;
  112x112 16x32 18.4: 6.9 vs 16-19 vs 8.6-9.3; even or behind: 28x28 128
  9.2: 6.1 vs 6.0-6.1 vs 7.4; 28x28 96 6.9: 3.9-4.0 vs 3.5-3.7 vs 5.9;
  28x28 64 4.6: 2.3 vs 2.0 vs 3.2; 20x20 512 18.8: 46.7-51.4 vs 47 vs
  67; 14x14 512 9.2: 24 vs 18.4 vs 24)."""
  if _portable.get():
    return partners.backprop_filter(x, dy, spec=spec, kernel=kernel)
  c = spec.feature_axis
  filter_shape = (*kernel, x.shape[c] // spec.groups, dy.shape[c])
  if (depthwise.applies(spec, filter_shape)
      and any(s > 1 for s in spec.strides)):
    return depthwise.backprop_filter(x, dy, spec=spec, kernel=kernel,
                                     acc_dtype=_accumulation(x.dtype))
  if tap_dots.applies(spec):
    if x.dtype == np.float32 and spec.ndim == 2 and max(kernel) > 4:
      return partners.backprop_filter(x, dy, spec=spec, kernel=kernel)
    if x.dtype == np.float32 and shift_gemm.taps_overlap(spec, kernel):
      return shift_gemm.backprop_filter(x, dy, spec=spec, kernel=kernel)
    return tap_dots.backprop_filter(x, dy, spec=spec, kernel=kernel,
                                    acc_dtype=_accumulation(x.dtype))
  if spec.ndim == 3:
    return _filter_per_depth_tap(x, dy, spec, kernel)
  if spec.groups > 1:
    return grouped.backprop_filter(x, dy, spec=spec, kernel=kernel)
  if _per_image_gemm(spec, kernel, x, dy):
    return shift_gemm.backprop_filter(x, dy, spec=spec, kernel=kernel)
  if (spec.ndim == 2 and x.dtype == np.float32 and kernel[0] <= 3
      and x.shape[c] * dy.shape[c] >= 4096):
    return eigen_conv.backprop_filter(x, dy, spec=spec, kernel=kernel)
  return partners.backprop_filter(x, dy, spec=spec, kernel=kernel)


def _per_image_gemm(spec: ConvSpec, kernel, x, dy) -> bool:
  c = spec.feature_axis
  batch = x.shape[0] if isinstance(x.shape[0], (int, np.integer)) else 1
  rows = kernel[0] * batch * math.prod(x.shape[1:]) * x.dtype.itemsize
  return (spec.ndim == 2 and x.dtype == np.float32
          and all(s == 1 for s in spec.strides)
          and all(d == 1 for d in spec.dilations) and max(kernel) <= 3
          and min(x.shape[c], dy.shape[c]) >= 16
          and math.prod(spec.input_spatial) >= 28 * 28
          and rows >= _MIN_KERNEL_ROW_BYTES)


def _filter_per_depth_tap(x, dy, spec: ConvSpec, kernel):
  """A 3-D filter gradient as one 2-D filter gradient (`backprop_filter`)
  per depth tap, the depth slices folded into the contracted batch: XLA
  CPU's 3-D convolutions are slow (3-D unet-up s2 32^3 32<-64: 27.9 ms;
  TF 2.4, PyTorch 2.3)."""
  if not spec.channels_last:
    x, dy = jnp.moveaxis(x, 1, -1), jnp.moveaxis(dy, 1, -1)
  (lo, hi), s, d = (spec.filter_grad_padding(kernel)[0], spec.strides[0],
                    spec.dilations[0])
  x = lax.pad(x, np.zeros((), x.dtype), [(0, 0, 0), (lo, hi, 0),
                                         *[(0, 0, 0)] * 3])
  flat = ConvSpec(spec.input_spatial[1:], spec.strides[1:],
                  spec.dilations[1:], spec.padding[1:], spec.groups)
  depth = dy.shape[1]
  dy = dy.reshape(-1, *dy.shape[2:])
  return jnp.stack([backprop_filter(
      lax.slice_in_dim(x, t * d, t * d + (depth - 1) * s + 1, stride=s,
                       axis=1).reshape(-1, *x.shape[2:]),
      dy, spec=flat, kernel=kernel[1:]) for t in range(kernel[0])])
