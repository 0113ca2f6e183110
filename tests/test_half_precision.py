"""Half precision accumulates in float32 and rounds once, in every strategy.

The operands are small multiples of a power of two, so that every product
and every float32 partial sum is exact: accumulating in float32 and
rounding once gives exactly the float64 result rounded to the dtype, while
accumulating in the dtype itself (tap by tap, as a col2im or a sum of
shifted products would) gives something else on about half the elements.
Each test first proves that its inputs tell the two apart.
"""
import dataclasses

import jax
import numpy as np
import pytest

import jaxconv
from jaxconv import lowering
from jaxconv import reference
from jaxconv.lowering import cpu
from jaxconv.lowering.cpu import onednn
from jaxconv.lowering.cpu import tables
from tests.helpers import reference_for_spec, run_op, run_reference

# strategy: (input_sizes NHWC, filter shape, stride); SAME padding.
LAYERS = {
    "canonical": ([2, 7, 6, 4], (3, 3, 4, 6), 1),
    "gemm_col2im": ([2, 7, 6, 4], (3, 3, 4, 6), 1),
    "subpixel": ([2, 7, 6, 4], (3, 3, 4, 6), 1),
    "subpixel_fused": ([2, 8, 6, 4], (4, 4, 4, 6), 2),
    "grouped": ([2, 7, 6, 8], (3, 3, 2, 8), 1),
    "depthwise": ([2, 7, 6, 4], (3, 3, 1, 8), 1),
    # Strided: k4 gives every output 2x2 taps, sums long enough to tell
    # the two accumulations apart.
    "onednn": ([2, 7, 6, 16], (4, 4, 16, 16), 2),
}
# Strategies with sums of their own (not a dot or convolution, which XLA CPU
# widens to float32 by itself): narrowing their accumulation is visible.
OWN_SUMS = ("gemm_col2im", "depthwise")
HALF = ("float16", "bfloat16")


def _draw(rng, shape, dtype):
  """Multiples of 1/q with |k| < q: products and sums exact in float32."""
  q = 64 if dtype == "float16" else 32
  return (rng.integers(1 - q, q, shape) / q).astype(dtype)


def _case(strategy, dtype, data_format="NHWC"):
  sizes, fshape, s = LAYERS[strategy]
  dy_shape = [sizes[0], -(-sizes[1] // s), -(-sizes[2] // s), fshape[3]]
  strides = [1, s, s, 1]
  if data_format == "NCHW":  # channels first: the GEMM's other operand order
    sizes, dy_shape = ([v[0], v[3], v[1], v[2]] for v in (sizes, dy_shape))
    strides = [1, 1, s, s]
  cfg = dict(input_sizes=sizes, filter_shape=list(fshape), strides=strides,
             padding="SAME", explicit_paddings=[], data_format=data_format,
             dilations=[1, 1, 1, 1], dtype=dtype)
  rng = np.random.default_rng(0)
  return cfg, _draw(rng, fshape, dtype), _draw(rng, dy_shape, dtype)


def _run(strategy, cfg, w, dy):
  with lowering.force_strategy(strategy, strict=True) as lowered:
    out = np.asarray(jax.jit(lambda w, dy: run_op(cfg, w, dy))(w, dy))
  assert lowered.backprop_input == [strategy]
  return out


def test_layers_cover_every_strategy():
  assert set(LAYERS) == set(cpu.STRATEGIES["backprop_input"])


@pytest.mark.parametrize("data_format", ["NHWC", "NCHW"])
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("strategy", cpu.STRATEGIES["backprop_input"])
def test_accumulates_in_float32_and_rounds_once(strategy, dtype, data_format):
  if strategy == "onednn" and np.dtype(dtype) not in onednn.dtypes():
    pytest.skip(f"oneDNN has no {dtype} kernel on this CPU (or did not load)")
  cfg, w, dy = _case(strategy, dtype, data_format)
  expected = run_reference(cfg, w, dy).astype(dtype)
  in_half = run_reference(cfg, w, dy, accumulate=dtype)
  assert np.mean(in_half != expected) > 0.3  # the inputs discriminate
  out = _run(strategy, cfg, w, dy)
  assert out.dtype == np.dtype(dtype)
  np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("data_format", ["NHWC", "NCHW"])
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("strategy", OWN_SUMS)
def test_narrowed_accumulation_fails(strategy, dtype, data_format,
                                     monkeypatch):
  # The planted bug: accumulate in the operands' dtype.  The test above
  # would fail on it (for the other strategies XLA CPU widens anyway).
  cfg, w, dy = _case(strategy, dtype, data_format)
  expected = run_reference(cfg, w, dy).astype(dtype)
  monkeypatch.setattr(tables, "_accumulation", lambda dtype: None)
  assert np.mean(_run(strategy, cfg, w, dy) != expected) > 0.3


@pytest.mark.parametrize("narrow", [False, True])
@pytest.mark.parametrize("dtype", HALF)
def test_depthwise_partners_accumulate_in_float32(dtype, narrow, monkeypatch):
  # The gradients' own sums: depthwise forward and filter gradient on CPU.
  spec = lowering.ConvSpec(input_spatial=(7, 6), strides=(1, 2),
                           dilations=(1, 1), padding=((1, 1), (0, 1)),
                           groups=4)
  rng = np.random.default_rng(1)
  x = _draw(rng, (2, 7, 6, 4), dtype)
  w = _draw(rng, (3, 3, 1, 8), dtype)
  dy = _draw(rng, (2, 7, 3, 8), dtype)
  geometry = dict(strides=spec.strides, dilations=spec.dilations,
                  padding="EXPLICIT", explicit=spec.padding)
  want_y = reference.forward(x, w, **geometry)
  want_w = reference.backprop_filter(x, dy, kernel=(3, 3), groups=4,
                                     **geometry)
  if narrow:
    monkeypatch.setattr(tables, "_accumulation", lambda dtype: None)
  y = jax.jit(lambda x, w: cpu.forward(x, w, spec=spec))(x, w)
  dw = jax.jit(lambda x, dy: cpu.backprop_filter(x, dy, spec=spec,
                                                 kernel=(3, 3)))(x, dy)
  # Narrowed, the sums of products go wrong; so does the filter gradient's
  # reduction in float16 (XLA CPU reduces bfloat16 in float32 by itself).
  for got, want, visible in ((y, want_y, True),
                             (dw, want_w, dtype == "float16")):
    wrong = np.mean(np.asarray(got) != want.astype(dtype))
    assert wrong > 0.05 if narrow and visible else wrong == 0, wrong


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("dtype", HALF)
def test_strided_filter_gradient_accumulates_in_float32(dtype, ndim,
                                                        monkeypatch):
  # lowering/cpu/tap_dots.py: one dot per tap, float32 results rounded once.
  calls, strategy = [], tables.BACKPROP_FILTER["tap_dots"]
  monkeypatch.setitem(tables.BACKPROP_FILTER, "tap_dots", dataclasses.replace(
      strategy, lower=lambda *a, **k: calls.append(k["acc_dtype"])
      or strategy.lower(*a, **k)))
  sizes, pads, dy_sizes = (7, 6, 5)[:ndim], ((1, 1), (0, 1), (1, 0))[:ndim], (
      4, 3, 2)[:ndim]  # dy: (size + pads - 3) // 2 + 1
  spec = lowering.ConvSpec(input_spatial=sizes, strides=(2,) * ndim,
                           dilations=(1,) * ndim, padding=pads)
  rng = np.random.default_rng(2)
  x = _draw(rng, (2, *sizes, 4), dtype)
  dy = _draw(rng, (2, *dy_sizes, 6), dtype)
  want = reference.backprop_filter(
      x, dy, kernel=(3,) * ndim, groups=1, strides=spec.strides,
      dilations=spec.dilations, padding="EXPLICIT", explicit=pads)
  with lowering.force_strategy(backprop_filter="tap_dots", strict=True):
    dw = jax.jit(lambda x, dy: cpu.backprop_filter(x, dy, spec=spec,
                                                   kernel=(3,) * ndim))(x, dy)
  assert calls == [np.float32]
  np.testing.assert_array_equal(np.asarray(dw), want.astype(dtype))


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("strategy", ["subpixel", "subpixel_fused", "grouped"])
def test_3d_depth_taps_accumulate_in_float32(strategy, dtype):
  # 3-D convolutions run as one 2-D convolution per depth tap
  # (lowering/cpu/eigen_conv.py): their sum over the taps stays float32,
  # also in the grouped strategy's sub-problems (two here, of 16 channels).
  stride = 2 if strategy == "subpixel_fused" else 1
  spec = lowering.ConvSpec(input_spatial=(6, 5, 4), strides=(stride,) * 3,
                           dilations=(1, 1, 1),
                           padding=((1, 1), (1, 1), (1, 1)) if stride == 1
                           else ((1, 1), (1, 2), (1, 1)),  # TF's SAME
                           groups=2 if strategy == "grouped" else 1)
  kernel = (3, 3, 3) if stride == 1 else (4, 4, 4)
  depth = 32 if strategy == "grouped" else 4
  dy_sizes = spec.out_backprop_spatial(kernel)
  rng = np.random.default_rng(4)
  w = _draw(rng, (*kernel, depth // spec.groups, 6), dtype)
  dy = _draw(rng, (2, *dy_sizes, 6), dtype)
  expected = reference_for_spec(w, dy, spec).astype(dtype)
  in_half = reference_for_spec(w, dy, spec, accumulate=dtype)
  assert np.mean(in_half != expected) > 0.3  # the inputs discriminate
  with lowering.force_strategy(strategy, strict=True) as lowered:
    out = jax.jit(lambda w, dy: jaxconv.raw_ops.Conv3DBackpropInputV2(
        input_sizes=[2, *spec.input_spatial, depth], filter=w,
        out_backprop=dy, strides=[1, *spec.strides, 1], padding="SAME"))(
            w, dy)
  assert lowered.backprop_input == [strategy]
  np.testing.assert_array_equal(np.asarray(out), expected)
