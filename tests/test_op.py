"""The op's values, shapes and dtypes against the float64 reference and JAX's conv VJP."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

import jaxconv
from tests import configs
from tests.helpers import assert_close, run_op, run_reference

RNG_CONFIGS = [configs.random_config(np.random.default_rng(i)) for i in range(160)]


@pytest.mark.x64
@pytest.mark.parametrize("i", range(len(RNG_CONFIGS)))
def test_random_configs_match_reference(i):
  cfg = RNG_CONFIGS[i]
  rng = np.random.default_rng(1000 + i)
  if cfg["dtype"] in ("float32", "float64"):  # generic values, not only k/8
    filt = rng.standard_normal(cfg["filter_shape"])
    dy = rng.standard_normal(cfg["out_backprop_shape"])
  else:
    filt, dy = configs.random_operands(rng, cfg)
  dtype = np.dtype(cfg["dtype"])
  filt, dy = filt.astype(dtype), dy.astype(dtype)  # exact values of dtype
  assert_close(run_op(cfg, filt, dy), run_reference(cfg, filt, dy),
               cfg["dtype"], cfg)


@pytest.mark.x64  # absl's parameterized methods drop a method's mark
class JaxVjpOracleTest(parameterized.TestCase):
  """Second oracle: the VJP of lax.conv_general_dilated w.r.t. its input."""

  @parameterized.product(
      fmt=["NHWC", "NCHW"], stride=[1, 2, 3], dilation=[1, 2],
      padding=["SAME", "VALID", [(1, 4), (0, 2)]], groups=[1, 2])
  def test_matches_conv_vjp(self, fmt, stride, dilation, padding, groups):
    rng = np.random.default_rng(7)
    size, ci, co, k = (9, 8), 2 * groups, 3 * groups, (3, 2)
    x_shape = (2, *size, ci) if fmt == "NHWC" else (2, ci, *size)
    w = rng.standard_normal((*k, ci // groups, co))
    dn = (fmt, "HWIO", fmt)
    lax_pad = padding if isinstance(padding, str) else padding

    def forward(x):
      return jax.lax.conv_general_dilated(
          x, w, (stride, stride), lax_pad, rhs_dilation=(dilation, dilation),
          dimension_numbers=dn, feature_group_count=groups)

    x = jnp.zeros(x_shape)
    y, vjp = jax.vjp(forward, x)
    dy = rng.standard_normal(y.shape)
    expected, = vjp(dy)
    window = [1, stride, stride, 1] if fmt == "NHWC" else [1, 1, stride, stride]
    dil = [1, dilation, dilation, 1] if fmt == "NHWC" else [1, 1, dilation, dilation]
    pad = padding
    if not isinstance(padding, str):
      pad = [(0, 0), *padding, (0, 0)] if fmt == "NHWC" else [(0, 0), (0, 0), *padding]
    out = jaxconv.conv2d_backprop_input(list(x_shape), w, dy, window, pad,
                                        data_format=fmt, dilations=dil)
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.x64  # absl's parameterized methods drop a method's mark
class SemanticsTest(parameterized.TestCase):

  def test_sizes_conv_transpose_cannot_produce(self):
    # SAME, stride 2: input 7 -> o 4, but also 8 -> 4; lax.conv_transpose
    # would guess 8.
    rng = np.random.default_rng(0)
    w, dy = rng.standard_normal((3, 3, 2, 3)), rng.standard_normal((1, 4, 4, 3))
    for size in (7, 8):
      cfg = dict(input_sizes=[1, size, size, 2], strides=[1, 2, 2, 1],
                 padding="SAME", explicit_paddings=[], data_format="NHWC",
                 dilations=[1, 1, 1, 1], dtype="float64")
      out = run_op(cfg, w, dy)
      self.assertEqual(out.shape, (1, size, size, 2))
      assert_close(out, run_reference(cfg, w, dy), "float64")

  @parameterized.parameters("float16", "bfloat16", "float32", "float64", "int32")
  def test_output_dtype_is_input_dtype(self, dtype):
    w = np.ones((2, 2, 1, 1), dtype)
    dy = np.ones((1, 3, 3, 1), dtype)
    out = jaxconv.conv2d_backprop_input([1, 4, 4, 1], w, dy, [1, 1, 1, 1], "VALID")
    self.assertEqual(out.dtype, np.dtype(dtype))

  def test_int32_wraps_like_tf(self):
    w = np.full((1, 1, 1, 2), 2**30, np.int32)
    dy = np.full((1, 1, 1, 2), 3, np.int32)  # 6 * 2**30 wraps to -2**31
    out = jaxconv.conv2d_backprop_input([1, 1, 1, 1], w, dy, [1, 1, 1, 1], "VALID")
    self.assertEqual(int(out[0, 0, 0, 0]), -2**31)

  def test_nested_lists_and_numpy_and_jax_inputs(self):
    w = [[[[1.0]], [[2.0]]]]  # [1, 2, 1, 1]
    dy = [[[[1.0], [10.0]]]]  # [1, 1, 2, 1]
    for conv in (lambda x: x, np.asarray, jnp.asarray):
      out = jaxconv.conv2d_backprop_input([1, 1, 3, 1], conv(w), conv(dy),
                                          [1, 1, 1, 1], "VALID")
      np.testing.assert_array_equal(np.asarray(out).ravel(), [1, 12, 20])
    self.assertEqual(jaxconv.conv2d_backprop_input(
        [1, 1, 3, 1], w, dy, [1, 1, 1, 1], "VALID").dtype, np.float32)

  def test_filters_alias(self):
    w, dy = np.ones((1, 1, 1, 1)), np.ones((1, 2, 2, 1))
    a = jaxconv.conv2d_backprop_input([1, 2, 2, 1], filters=w, out_backprop=dy,
                                      strides=[1, 1, 1, 1], padding="VALID")
    np.testing.assert_array_equal(a, np.ones((1, 2, 2, 1)))

  @parameterized.parameters(
      # (input_sizes, filter, out_backprop): zero sizes everywhere.
      ([0, 5, 5, 2], (3, 3, 2, 3), (0, 5, 5, 3)),       # empty batch
      ([2, 0, 5, 2], (3, 3, 2, 3), (2, 0, 5, 3)),       # empty input height
      ([2, 5, 5, 0], (3, 3, 1, 3), (2, 5, 5, 3)),       # zero depth (groups 0)
      ([2, 5, 5, 2], (3, 3, 2, 0), (2, 5, 5, 0)),       # no out channels
  )
  def test_zero_sizes(self, input_sizes, filter_shape, dy_shape):
    if input_sizes[-1] == 0:  # TF errors (core) or aborts (XLA): ValueError
      with self.assertRaisesRegex(ValueError, "input depth must be positive"):
        jaxconv.conv2d_backprop_input(input_sizes, np.ones(filter_shape),
                                      np.ones(dy_shape), [1, 1, 1, 1], "SAME")
      return
    out = jaxconv.conv2d_backprop_input(input_sizes, np.ones(filter_shape),
                                        np.ones(dy_shape), [1, 1, 1, 1], "SAME")
    self.assertEqual(out.shape, tuple(input_sizes))
    np.testing.assert_array_equal(out, np.zeros(input_sizes))

  @parameterized.parameters(1, 2, 3)
  def test_empty_out_backprop_gives_zeros_of_input_shape(self, stride):
    # VALID, input 2 < kernel 3: o = (2 - 3 + s) / s = 0 for every stride.
    out = jaxconv.conv2d_backprop_input(
        [1, 2, 4, 1], np.ones((3, 1, 1, 1)), np.ones((1, 0, (4 + stride - 1) // stride, 1)),
        [1, stride, stride, 1], "VALID")
    self.assertEqual(out.shape, (1, 2, 4, 1))
    np.testing.assert_array_equal(out, 0)


class TracingTest(parameterized.TestCase):

  def _args(self):
    return np.ones((3, 3, 2, 4), np.float32), np.ones((2, 4, 4, 4), np.float32)

  def _op(self, w, dy):
    return jaxconv.conv2d_backprop_input([2, 8, 8, 2], w, dy, [1, 2, 2, 1], "SAME")

  def test_eval_shape_and_jaxpr_show_the_primitive(self):
    w, dy = self._args()
    shape = jax.eval_shape(self._op, w, dy)
    self.assertEqual((shape.shape, shape.dtype), ((2, 8, 8, 2), np.float32))
    jaxpr = jax.make_jaxpr(self._op)(w, dy)
    self.assertEqual([e.primitive for e in jaxpr.eqns],
                     [jaxconv.conv2d_backprop_input_p])
    self.assertIn("conv_backprop_input", str(jaxpr))

  def test_eager_and_jit_agree(self):
    w, dy = self._args()
    np.testing.assert_array_equal(self._op(w, dy), jax.jit(self._op)(w, dy))

  def test_primitive_binds_directly(self):
    w, dy = self._args()
    spec = jax.make_jaxpr(self._op)(w, dy).eqns[0].params["spec"]
    np.testing.assert_array_equal(
        jaxconv.conv2d_backprop_input_p.bind(w, dy, spec=spec), self._op(w, dy))

  def test_shape_errors_raise_before_compute(self):
    w = np.ones((3, 3, 2, 4), np.float32)
    with self.assertRaisesRegex(ValueError, "doesn't match computed"):
      jax.eval_shape(lambda w, dy: jaxconv.conv2d_backprop_input(
          [2, 8, 8, 2], w, dy, [1, 2, 2, 1], "SAME"), w, np.ones((2, 5, 4, 4), np.float32))
