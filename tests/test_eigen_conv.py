"""lowering/cpu/eigen_conv.py: the same convolution, on XLA CPU's Eigen kernel."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export, lax

import jaxconv
from jaxconv import lowering
from jaxconv.lowering import _compat, cpu, geometry, partners
from jaxconv.lowering.cpu import eigen_conv
from tests import configs
from tests.helpers import assert_filter_gradient_matches

# XLA's CPU strategies and their rules (the native one is tests/test_onednn.py).
pytestmark = pytest.mark.xla_strategies


def ynn_convolutions(fn, *args):
  """How many convolutions XLA CPU compiled `fn` into YNNPACK fusions."""
  text = jax.jit(fn).lower(*args).compile().as_text()
  bodies = dict(re.findall(r"^(%\S+) \([^\n]*\{\n(.*?)^\}", text, re.M | re.S))
  fused = re.findall(r'calls=(%[^,\s]+).*"kind":"__ynn_fusion"', text)
  return sum("convolution(" in bodies[name] for name in fused)


# Whether this jaxlib's XLA CPU has YNNPACK convolutions at all (the premise
# of the tests that compile); the rule's own tests hold it on.
YNN = _compat.XLA_CPU_YNN_CONVOLUTIONS


@pytest.fixture
def ynn_rule(monkeypatch):
  monkeypatch.setattr(_compat, "XLA_CPU_YNN_CONVOLUTIONS", True)


def _case(rng, channels_last):
  """A random 2-D float32 conv with more than 16 channels."""
  spatial = rng.integers(4, 9, size=2)
  d = rng.choice([1, 1, 1, 2], size=2)
  k = rng.integers(1, 4, size=2)
  pads = [tuple(int(p) for p in rng.integers(0, 3, size=2)) for _ in range(2)]
  c, o = (int(v) for v in rng.integers(17, 25, size=2))
  lhs_shape = (2, *spatial, c) if channels_last else (2, c, *spatial)
  act = (0, 3, 1, 2) if channels_last else (0, 1, 2, 3)
  dn = lax.ConvDimensionNumbers(act, (3, 2, 0, 1), act)
  lhs = rng.standard_normal(lhs_shape).astype(np.float32)
  rhs = rng.standard_normal((*k, c, o)).astype(np.float32)
  return lhs, rhs, pads, tuple(int(v) for v in d), dn


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("strides", [(1, 1), (2, 1)])
def test_same_result_as_lax(channels_last, strides, ynn_rule):
  rng = np.random.default_rng(0)
  changed = 0
  for _ in range(12):
    lhs, rhs, pads, dil, dn = _case(rng, channels_last)
    fn = jax.jit(lambda a, b: eigen_conv.conv(
        a, b, strides, pads, rhs_dilation=dil, dimension_numbers=dn))
    text = fn.lower(lhs, rhs).as_text()
    changed += "stablehlo.slice" in text
    want = lax.conv_general_dilated(
        lhs.astype(np.float64), rhs.astype(np.float64), strides, pads,
        rhs_dilation=dil, dimension_numbers=dn)
    got = fn(lhs, rhs)
    assert got.shape == want.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
  # Stride 1: one more output row where YNNPACK would take the conv.
  assert changed > 0 if strides == (1, 1) else changed == 0


def test_what_passes_through(monkeypatch):
  monkeypatch.setattr(_compat, "XLA_CPU_YNN_CONVOLUTIONS", True)
  lhs = jnp.zeros((1, 8, 8, 16), np.float32)
  narrow = jnp.zeros((3, 3, 16, 16), np.float32)
  wide = jnp.zeros((3, 3, 16, 17), np.float32)
  dn = lax.ConvDimensionNumbers((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))
  same = [(1, 1), (1, 1)]

  def taken(lhs, rhs, strides=(1, 1), pads=same):
    return eigen_conv._ynn_would_take(lhs, rhs, strides, pads, (1, 1), dn)
  assert taken(lhs, wide)
  assert not taken(lhs, narrow)  # at most 16 channels
  assert not taken(lhs, wide, pads=[(2, 2), (1, 1)])  # output outgrows input
  assert not taken(lhs.astype(jnp.bfloat16), wide.astype(jnp.bfloat16))
  # Dilated: YNNPACK takes it, but Eigen is no faster; left as it is.
  dilated = jax.jit(lambda a, b: eigen_conv.conv(
      a, b, (1, 1), [(2, 2), (2, 2)], rhs_dilation=(2, 2),
      dimension_numbers=dn))
  assert "stablehlo.slice" not in dilated.lower(lhs, wide).as_text()
  # A strided convolution: no cheap way out; left as it is.
  strided = jax.jit(lambda a, b: eigen_conv.conv(
      a, b, (2, 2), same, rhs_dilation=(1, 1), dimension_numbers=dn))
  text = strided.lower(lhs, wide).as_text()
  assert "stablehlo.slice" not in text
  # A jaxlib without YNNPACK convolutions: nothing is taken.
  monkeypatch.setattr(_compat, "XLA_CPU_YNN_CONVOLUTIONS", False)
  assert not taken(lhs, wide)


@pytest.mark.parametrize("rows, extra", [(4, True), (3, False)])
def test_one_extra_row_up_to_a_quarter_more_work(rows, extra, ynn_rule):
  """4 output rows take one more (a quarter more work), 3 do not; the
  convolution computes exactly one extra row, sliced off."""
  lhs = jnp.zeros((1, rows, 8, 17), np.float32)
  rhs = jnp.zeros((3, 3, 17, 17), np.float32)
  dn = lax.ConvDimensionNumbers((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))
  text = jax.jit(lambda a, b: eigen_conv.conv(
      a, b, (1, 1), [(1, 1), (1, 1)], rhs_dilation=(1, 1),
      dimension_numbers=dn)).lower(lhs, rhs).as_text()
  conv_rows = rows + 1 if extra else rows
  assert re.search(rf"stablehlo.convolution.*-> tensor<1x{conv_rows}x8x17xf32>",
                   text)
  assert ("stablehlo.slice" in text) == extra


@pytest.mark.parametrize("lhs_shape, rhs_shape, pads, taken", [
    ((1, 8, 8, 17), (3, 3, 17, 16), [(1, 1), (1, 1)], True),  # 17 in
    ((1, 8, 8, 16), (3, 3, 16, 17), [(1, 1), (1, 1)], True),  # 17 out
    ((1, 8, 8, 16), (3, 3, 16, 16), [(1, 1), (1, 1)], False),
    ((1, 8, 8, 17), (8, 3, 17, 17), [(0, 0), (1, 1)], True),  # taps == size
    ((1, 8, 16, 17), (9, 3, 17, 17), [(4, 4), (1, 1)], False),  # taps > size
    ((1, 8, 8, 17), (3, 3, 17, 17), [(1, 2), (1, 1)], False),  # outgrows
    ((1, 8, 8, 17), (3, 3, 17, 17), [(1, 1), (2, 1)], False),
])
def test_ynn_rule_matches_xla(lhs_shape, rhs_shape, pads, taken):
  """_ynn_would_take says what XLA CPU does with the plain convolution."""
  taken = taken and YNN
  lhs, rhs = jnp.zeros(lhs_shape, np.float32), jnp.zeros(rhs_shape, np.float32)
  dn = lax.ConvDimensionNumbers((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))
  assert eigen_conv._ynn_would_take(lhs, rhs, (1, 1), pads, (1, 1),
                                    dn) == taken
  plain = lambda a, b: lax.conv_general_dilated(a, b, (1, 1), pads,
                                                dimension_numbers=dn)
  assert (ynn_convolutions(plain, lhs, rhs) >= 1) == taken


@pytest.mark.x64
@pytest.mark.parametrize("data_format", ["NHWC", "NCHW"])
@pytest.mark.parametrize("strategy, strides, size, fshape", [
    ("subpixel", 1, 12, (3, 3, 24, 32)),  # dense stride 1: one phase
    ("subpixel", 2, 12, (5, 5, 24, 32)),
    ("subpixel_fused", 2, 11, (4, 4, 24, 32)),
])
def test_cpu_op_and_gradient_use_no_ynn_convolution(
    strategy, strides, size, fshape, data_format, monkeypatch):
  rng = np.random.default_rng(1)
  out = -(-size // strides)
  sizes, s = [2, size, size, fshape[2]], [1, strides, strides, 1]
  dy_shape = (2, out, out, fshape[3])
  if data_format == "NCHW":
    sizes, s = [2, fshape[2], size, size], [1, 1, strides, strides]
    dy_shape = (2, fshape[3], out, out)
  w = jnp.asarray(rng.standard_normal(fshape), np.float32)
  dy = jnp.asarray(rng.standard_normal(dy_shape), np.float32)
  op = lambda w, dy: jaxconv.conv2d_backprop_input(
      sizes, w, dy, s, "SAME", data_format=data_format)
  loss = lambda w, dy: jnp.sum(op(w, dy) ** 2)
  with lowering.force_strategy(strategy):
    assert ynn_convolutions(op, w, dy) == 0
    got = jax.jit(lambda w, dy: op(w, dy))(w, dy)
  # Values: JAX's conv VJP in float64.
  fmt = data_format
  ref = lambda w, dy: jax.vjp(lambda x: lax.conv_general_dilated(
      x, w, s[1:3] if fmt == "NHWC" else s[2:], "SAME",
      dimension_numbers=(fmt, "HWIO", fmt)), jnp.zeros(sizes, w.dtype))[1](
          dy)[0]
  w64, dy64 = w.astype(np.float64), dy.astype(np.float64)
  np.testing.assert_allclose(got, ref(w64, dy64), rtol=1e-4, atol=1e-4)
  if strides == 1:  # d/d(dy) is then a stride-1 forward convolution
    assert ynn_convolutions(jax.grad(loss, 1), w, dy) == 0
    np.testing.assert_allclose(
        jax.jit(jax.grad(loss, 1))(w, dy),
        jax.grad(lambda w, dy: jnp.sum(ref(w, dy) ** 2), 1)(w64, dy64),
        rtol=1e-4, atol=1e-3)
  # The premise: left as they are, XLA CPU gives them to YNNPACK (where
  # this jaxlib has YNNPACK convolutions).
  monkeypatch.setattr(eigen_conv, "_ynn_would_take", lambda *args: False)
  with lowering.force_strategy(strategy):
    assert (ynn_convolutions(lambda w, dy: op(w, dy), w, dy) >= 1) == YNN
  if strides == 1:
    assert (ynn_convolutions(jax.grad(lambda w, dy: loss(w, dy), 1), w, dy)
            >= 1) == YNN


def test_filter_gradient_as_one_1d_convolution_matches_the_standard_form():
  rng = np.random.default_rng(3)
  crops = 0
  for _ in range(24):
    spec, kernel, x, dy = configs.random_filter_gradient_case(
        rng, 2, max_kernel=4, max_size=9, batch=3, max_ci=4, max_co=21)
    crops += any(hi < 0 for _, hi in spec.filter_grad_padding(kernel))
    assert_filter_gradient_matches(eigen_conv.backprop_filter, spec, kernel, x, dy)
  assert crops > 0


def test_cpu_filter_gradient_runs_on_eigen_with_a_symbolic_batch():
  rng = np.random.default_rng(5)
  spec, kernel = geometry.ConvSpec((12, 12), (2, 1), (1, 1),
                                   ((1, 1), (1, 1))), (3, 3)
  x = rng.standard_normal((3, 12, 12, 64)).astype(np.float32)
  dy = rng.standard_normal((3, 6, 12, 64)).astype(np.float32)
  fn = lambda a, b: cpu.backprop_filter(a, b, spec=spec, kernel=kernel)
  standard = lambda a, b: partners.backprop_filter(a, b, spec=spec,
                                                   kernel=kernel)
  assert ynn_convolutions(standard, x, dy) == YNN  # the premise
  assert ynn_convolutions(fn, x, dy) == 0
  b, = export.symbolic_shape("b")
  exp = export.export(jax.jit(fn), platforms=["cpu"])(
      jax.ShapeDtypeStruct((b, *x.shape[1:]), x.dtype),
      jax.ShapeDtypeStruct((b, *dy.shape[1:]), dy.dtype))
  np.testing.assert_allclose(exp.call(x[:2], dy[:2]), fn(x[:2], dy[:2]),
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", ["NDHWC", "NCDHW"])
@pytest.mark.parametrize("strides, pads, dilation, groups", [
    ((1, 1, 1), [(1, 1), (1, 0), (1, 1)], (1, 1, 1), 1),
    ((2, 1, 2), [(0, 2), (2, 2), (-1, 1)], (2, 1, 1), 2),
    ((3, 2, 1), [(2, -1), (0, 0), (0, 3)], (1, 2, 1), 1),
])
def test_3d_convolution_per_depth_tap_matches_lax(layout, strides, pads,
                                                  dilation, groups):
  """3-D: one 2-D convolution per depth tap, summed (any layout, stride,
  pad, crop, dilation, groups) equals XLA's 3-D convolution."""
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.standard_normal((2, 9, 7, 6, 8)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((3, 2, 3, 8 // groups, 6)), jnp.float32)
  if layout == "NCDHW":
    x = jnp.moveaxis(x, -1, 1)
  act = (0, 4, 1, 2, 3) if layout == "NDHWC" else (0, 1, 2, 3, 4)
  dn = lax.ConvDimensionNumbers(act, (4, 3, 0, 1, 2), act)
  kw = dict(rhs_dilation=dilation, dimension_numbers=dn,
            feature_group_count=groups)
  want = lax.conv_general_dilated(x, w, strides, pads, **kw)
  got = jax.jit(lambda x, w: eigen_conv.conv(x, w, strides, pads, **kw))(x, w)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
  text = jax.jit(lambda x, w: eigen_conv.conv(x, w, strides, pads, **kw)).lower(
      x, w).as_text()
  convs = re.findall(r"stablehlo.convolution.*", text)
  assert len(convs) == 3  # one per depth tap, each 2-D
  assert all(re.search(r"\[b, 0, 1, f\]", c) for c in convs), convs


@pytest.mark.parametrize("size, taps, pad, dilation, batches", [
    (9, 3, (1, 1), 1, [18, 18, 18]),  # each tap on x itself, no copy
    (9, 3, (6, 0), 1, [14, 18, 18]),  # tap 0: 7 of 9 slices: a slice of x
    (9, 3, (-1, 2), 1, [18, 14, 12]),  # a crop: 8, 7, 6 of 9 slices
    (4, 3, (6, 0), 3, [2, 8]),        # tap 0 reads only padding: no conv
    (1, 2, (2, 2), 4, [2, 2]),        # no tap reaches x: the padded form
])
def test_3d_stride_1_depth_taps_read_x_in_place(size, taps, pad, dilation,
                                                batches):
  """At depth stride 1 each depth tap's 2-D convolution runs on the input's
  depth slices themselves (dropping the output slices that would read
  padding, up to a quarter more work) or on a slice of them, never on a
  padded copy; taps that read only padding are left out."""
  rng = np.random.default_rng(4)
  x = jnp.asarray(rng.standard_normal((2, size, 5, 4, 3)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((taps, 2, 2, 3, 4)), jnp.float32)
  dn = lax.ConvDimensionNumbers((0, 4, 1, 2, 3), (4, 3, 0, 1, 2),
                                (0, 4, 1, 2, 3))
  pads = [pad, (1, 0), (0, 1)]
  kw = dict(rhs_dilation=(dilation, 1, 1), dimension_numbers=dn)
  want = lax.conv_general_dilated(x, w, (1, 1, 1), pads, **kw)
  fn = jax.jit(lambda x, w: eigen_conv.conv(x, w, (1, 1, 1), pads, **kw))
  np.testing.assert_allclose(fn(x, w), want, rtol=1e-5, atol=1e-5)
  lhs = re.findall(r"stablehlo.convolution.*: \(tensor<(\d+)x", fn.lower(
      x, w).as_text())
  assert sorted(map(int, lhs)) == sorted(batches)
