"""The filter gradient as one GEMM per stride phase (lowering/cpu/shift_gemm.py)
against the standard filter-gradient convolution, and where the CPU rule
uses it."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

import jaxconv
from jaxconv.lowering import cpu, geometry
from jaxconv.lowering.cpu import shift_gemm, tables
from tests import configs
from tests.helpers import (assert_filter_gradient_matches,
                           filter_gradient_route)

# XLA's CPU strategies and their rules (the native one is tests/test_onednn.py).
pytestmark = pytest.mark.xla_strategies


@pytest.mark.parametrize("chunk_bytes", [1, 1 << 30],
                         ids=["image-by-image", "whole-batch"])
@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_matches_the_standard_form(ndim, chunk_bytes, monkeypatch):
  """Any stride (phases with one or more taps), dilation, pad, crop and
  layout; scanned over images one by one or in one piece."""
  monkeypatch.setattr(shift_gemm, "_CHUNK_BYTES", chunk_bytes)
  rng = np.random.default_rng(ndim)
  crops = strided = 0
  for _ in range(12):
    spec, kernel, x, dy = configs.random_filter_gradient_case(
        rng, ndim, max_kernel=5)
    crops += any(hi < 0 for _, hi in spec.filter_grad_padding(kernel))
    strided += any(s > 1 for s in spec.strides)
    assert_filter_gradient_matches(shift_gemm.backprop_filter, spec, kernel, x, dy)
  assert crops > 0 and strided > 0


def test_scans_image_chunks_that_divide_the_batch():
  budget = shift_gemm._CHUNK_BYTES
  assert shift_gemm._chunk(8, budget // 3) == 2
  assert shift_gemm._chunk(6, budget // 4) == 3
  assert shift_gemm._chunk(8, budget // 2) == 2  # the budget itself fits
  assert shift_gemm._chunk(8, budget // 2 + 1) == 1
  assert shift_gemm._chunk(8, budget * 2) == 1  # at least one image
  assert shift_gemm._chunk(5, budget * 2) == 1
  assert shift_gemm._chunk(7, 1) == 7


def _dense(n=8, size=28, c=64):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((n, size, size, c)).astype(np.float32)
  dy = rng.standard_normal((n, size, size, c)).astype(np.float32)
  return x, dy


def _op(x, dy):
  return jaxconv.raw_ops.Conv2DBackpropFilter(
      input=x, filter_sizes=[3, 3, x.shape[-1], dy.shape[-1]],
      out_backprop=dy, strides=[1, 1, 1, 1], padding="SAME")


@pytest.mark.x64
def test_cpu_rule_takes_it_for_dense_stride_1_layers(monkeypatch):
  """The dense stride-1 filter gradient lowers to dots in a scan over the
  images, with no convolution, and equals JAX's conv VJP (the size bound,
  tested below, lowered to keep the layer small)."""
  monkeypatch.setattr(tables, "MIN_KERNEL_ROW_BYTES", 0)
  x, dy = _dense()
  with cpu.force_strategy() as lowered:
    text = jax.jit(_op).lower(x, dy).as_text()
  assert lowered.backprop_filter == ["shift_gemm"]
  assert "stablehlo.convolution" not in text
  assert "stablehlo.while" in text and "stablehlo.dot_general" in text
  want = jax.vjp(lambda w: jax.lax.conv_general_dilated(
      x.astype(np.float64), w, (1, 1), "SAME",
      dimension_numbers=("NHWC", "HWIO", "NHWC")),
                 jnp.zeros((3, 3, 64, 64), np.float64))[1](
                     dy.astype(np.float64))[0]
  np.testing.assert_allclose(jax.jit(_op)(x, dy), want, rtol=0,
                             atol=1e-5 * float(np.max(np.abs(want))))


# N8 float32: Eigen's kernel rows are KH x 8 x H x W x C x 4 bytes.
@pytest.mark.parametrize("spatial, channels, kernel, strides, dilation, want", [
    ((36, 38), (64, 64), (3, 3), 1, 1, True),    # 8.0 MiB of rows
    ((36, 37), (64, 64), (3, 3), 1, 1, False),   # 7.8 MiB
    ((56, 56), (64, 64), (3, 3), 1, 1, True),
    ((28, 28), (256, 128), (3, 2), 1, 1, True),  # 18.4 MiB, 28x28
    ((27, 29), (256, 128), (3, 2), 1, 1, False),  # one position fewer
    ((28, 28), (256, 128), (1, 3), 1, 1, False),  # one row: 6.1 MiB
    ((112, 112), (16, 32), (3, 3), 1, 1, True),  # 18.4 MiB, 16 channels
    ((112, 112), (15, 32), (3, 3), 1, 1, False),  # too few channels
    ((112, 112), (32, 15), (3, 3), 1, 1, False),
    ((56, 56), (64, 64), (4, 3), 1, 1, False),   # a larger kernel
    ((56, 56), (64, 64), (3, 4), 1, 1, False),
    ((56, 56), (64, 64), (3, 3), 2, 1, False),   # strided: its own rule
    ((56, 56), (64, 64), (3, 3), 1, 2, False),   # dilated
])
def test_cpu_rule_bounds(spatial, channels, kernel, strides, dilation, want):
  """The stride-1 rule of the filter-gradient table, by its reason's label."""
  def takes(spec, dtype=np.float32, batch=8):
    name, reason = cpu.choose(spec, (*kernel, *channels), dtype, batch,
                              primitive="backprop_filter")
    return (name, reason.startswith("stride 1, 8 MiB of kernel rows")) == (
        "shift_gemm", True)

  spec = geometry.ConvSpec(spatial, (strides,) * 2, (dilation,) * 2,
                           ((1, 1), (1, 1)))
  assert takes(spec) == want
  nchw = geometry.ConvSpec(spatial, (strides,) * 2, (dilation,) * 2,
                           ((1, 1), (1, 1)), channels_last=False)
  assert takes(nchw) == want
  if want:  # float32 only; a symbolic batch counts as one image
    assert not takes(spec, np.float16)
    b, = export.symbolic_shape("b")
    out = spec.out_backprop_spatial(kernel)
    with cpu.force_strategy() as lowered:
      export.export(jax.jit(lambda x, dy: cpu.backprop_filter(
          x, dy, spec=spec, kernel=kernel)), platforms=["cpu"])(
              jax.ShapeDtypeStruct((b, *spatial, channels[0]), np.float32),
              jax.ShapeDtypeStruct((b, *out, channels[1]), np.float32))
    assert lowered.backprop_filter == [cpu.choose(
        spec, (*kernel, *channels), np.float32, 1,
        primitive="backprop_filter")[0]] != ["shift_gemm"]


def test_symbolic_batch_exports_in_one_piece(monkeypatch):
  monkeypatch.setattr(tables, "MIN_KERNEL_ROW_BYTES", 0)
  x, dy = _dense(n=3)
  b, = export.symbolic_shape("b")
  exp = export.export(jax.jit(_op), platforms=["cpu"])(
      jax.ShapeDtypeStruct((b, *x.shape[1:]), x.dtype),
      jax.ShapeDtypeStruct((b, *dy.shape[1:]), dy.dtype))
  assert "stablehlo.convolution" not in exp.mlir_module()
  np.testing.assert_allclose(exp.call(x[:2], dy[:2]),
                             jax.jit(_op)(x[:2], dy[:2]), rtol=1e-5,
                             atol=1e-4)


@pytest.mark.parametrize("kernel, strides, dilations, dtype, want", [
    ((3, 3), (2, 2), (1, 1), np.float32, "shift_gemm"),  # taps 0 and 2 share
    ((3, 1), (2, 1), (1, 1), np.float32, "shift_gemm"),  # a phase in one dim
    ((3, 3, 3), (2, 2, 2), (1, 1, 1), np.float32, "shift_gemm"),
    ((3, 3), (2, 2), (2, 2), np.float32, "shift_gemm"),  # 0, 2, 4: one phase
    ((2, 2), (2, 2), (1, 1), np.float32, "tap_dots"),    # one tap per phase
    ((1, 1), (2, 2), (1, 1), np.float32, "tap_dots"),
    ((3, 3), (3, 3), (1, 1), np.float32, "tap_dots"),
    ((2, 2), (2, 2), (3, 3), np.float32, "tap_dots"),    # 0 and 3: apart
    ((3, 3), (2, 2), (1, 1), np.float16, "tap_dots"),    # float32 sums
    ((4, 4), (2, 2), (1, 1), np.float32, "shift_gemm"),
    ((5, 5), (2, 2), (1, 1), np.float32, "standard"),  # 2-D from k5
    ((3, 5), (2, 2), (1, 1), np.float32, "standard"),
    ((5, 5), (2, 2), (1, 1), np.float16, "tap_dots"),
    ((5, 3, 3), (2, 2, 2), (1, 1, 1), np.float32, "shift_gemm"),  # 3-D
])
def test_cpu_rule_for_strided_layers(kernel, strides, dilations, dtype, want):
  """Strided one-group filter gradients: this form where taps overlap,
  one dot per tap where they do not (or in half precision), XLA's own
  convolution for 2-D kernels over 4 ("standard")."""
  ndim = len(kernel)
  spec = geometry.ConvSpec((9,) * ndim, strides, dilations, ((1, 1),) * ndim)
  x = jnp.ones((2, *(9,) * ndim, 8), dtype)
  dy = jnp.ones((2, *spec.out_backprop_spatial(kernel), 8), dtype)
  names, text = filter_gradient_route(spec, kernel, x, dy)
  assert names == [want]
  assert ("stablehlo.convolution" in text) == (want == "standard")
