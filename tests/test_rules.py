"""Autodiff and batching of the primitive: every transform, every attribute class."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from jax.test_util import check_grads

import jaxconv
from tests import configs
from tests.helpers import run_op, run_reference


def _float64_configs(count, seed):
  rng = np.random.default_rng(seed)
  out = []
  while len(out) < count:
    cfg = configs.random_config(rng, dtype="float64", max_size=6)
    if 0 not in cfg["out_backprop_shape"] and 0 not in cfg["input_sizes"]:
      out.append(cfg)
  return out


# A spread with every class: crops, groups, depthwise, NCHW, 2-entry sizes.
GRAD_CONFIGS = _float64_configs(24, seed=11)


def _operands(cfg, seed=0):
  rng = np.random.default_rng(seed)
  return (rng.standard_normal(cfg["filter_shape"]),
          rng.standard_normal(cfg["out_backprop_shape"]))


def _op(cfg):
  return lambda w, dy: run_op(cfg, w, dy)


def test_grad_configs_cover_every_class():
  def has(pred):
    return any(pred(c) for c in GRAD_CONFIGS)
  assert has(lambda c: c["data_format"] == "NCHW")
  assert has(lambda c: len(c["input_sizes"]) == 2)
  assert has(lambda c: c["padding"] == "EXPLICIT")
  assert has(lambda c: max(c["dilations"]) > 1 and max(c["strides"]) > 1)
  assert has(lambda c: len(c["input_sizes"]) == 4 and c["filter_shape"][2] != c[
      "input_sizes"][3 if c["data_format"] == "NHWC" else 1])


@pytest.mark.parametrize("i", range(len(GRAD_CONFIGS)))
def test_check_grads_order_2(i):
  cfg = GRAD_CONFIGS[i]
  check_grads(_op(cfg), _operands(cfg), order=2, modes=["fwd", "rev"])


@pytest.mark.parametrize("i", range(len(GRAD_CONFIGS)))
def test_adjoint_identities_against_reference(i):
  # <op(w, dy), ct> = <dy, T_dy(ct)> = <w, T_w(ct)>, op from the reference.
  cfg = GRAD_CONFIGS[i]
  w, dy = _operands(cfg)
  expected = run_reference(cfg, w, dy)
  ct = np.random.default_rng(1).standard_normal(expected.shape)
  lhs = np.vdot(expected, ct)
  _, vjp = jax.vjp(_op(cfg), w, dy)
  ct_w, ct_dy = vjp(jnp.asarray(ct))
  np.testing.assert_allclose(np.vdot(dy, ct_dy), lhs, rtol=1e-10, atol=1e-10)
  np.testing.assert_allclose(np.vdot(w, ct_w), lhs, rtol=1e-10, atol=1e-10)


class TransformsTest(parameterized.TestCase):

  CFG = dict(input_sizes=[2, 7, 6, 4], strides=[1, 2, 2, 1], padding="EXPLICIT",
             explicit_paddings=[0, 0, 4, 1, 0, 2, 0, 0], data_format="NHWC",
             dilations=[1, 1, 2, 1], dtype="float64",
             filter_shape=[3, 2, 2, 6], out_backprop_shape=[2, 5, 3, 6])

  def test_jvp_is_bilinear(self):
    w, dy = _operands(self.CFG)
    tw, tdy = _operands(self.CFG, seed=5)
    f = _op(self.CFG)
    out, tan = jax.jvp(f, (w, dy), (tw, tdy))
    np.testing.assert_allclose(out, run_reference(self.CFG, w, dy), atol=1e-12)
    np.testing.assert_allclose(
        tan, run_reference(self.CFG, tw, dy) + run_reference(self.CFG, w, tdy),
        atol=1e-12)

  def test_linearize_and_linear_transpose(self):
    w, dy = _operands(self.CFG)
    f = _op(self.CFG)
    _, f_lin = jax.linearize(lambda d: f(w, d), dy)
    np.testing.assert_allclose(f_lin(dy), f(w, dy), atol=1e-12)
    t = jax.linear_transpose(lambda d: f(w, d), dy)
    ct = jnp.ones(f(w, dy).shape)
    _, vjp = jax.vjp(lambda d: f(w, d), dy)
    np.testing.assert_allclose(t(ct)[0], vjp(ct)[0], atol=1e-12)

  def test_hessian(self):
    w, dy = _operands(self.CFG)
    f = _op(self.CFG)
    h = jax.hessian(lambda w: jnp.sum(jnp.sin(f(w, dy))))(w)
    self.assertEqual(h.shape, w.shape * 2)
    # Symmetric, and matches forward-over-reverse of the reference-checked grad.
    flat = h.reshape(w.size, w.size)
    np.testing.assert_allclose(flat, flat.T, atol=1e-9)
    v = np.random.default_rng(2).standard_normal(w.shape)
    hvp = jax.jvp(jax.grad(lambda w: jnp.sum(jnp.sin(f(w, dy)))), (w,), (v,))[1]
    np.testing.assert_allclose(hvp.ravel(), flat @ v.ravel(), atol=1e-9)

  def test_int32_has_no_gradient(self):
    cfg = {**self.CFG, "dtype": "int32"}
    w = np.ones(cfg["filter_shape"], np.int32)
    dy = np.ones(cfg["out_backprop_shape"], np.int32)
    with self.assertRaisesRegex(TypeError, "int32"):
      jax.grad(lambda w: jnp.sum(run_op(cfg, w, dy)))(w)

  @parameterized.parameters("float32", "bfloat16", "float16")
  def test_low_precision_grads_keep_dtype(self, dtype):
    cfg = {**self.CFG, "dtype": dtype}
    w, dy = (jnp.asarray(a, dtype) for a in _operands(cfg))
    gw, gdy = jax.grad(lambda w, dy: jnp.sum(run_op(cfg, w, dy).astype(
        jnp.float32)), argnums=(0, 1))(w, dy)
    self.assertEqual((gw.dtype, gdy.dtype), (w.dtype, dy.dtype))
    ref_gw, ref_gdy = jax.grad(lambda w, dy: jnp.sum(run_op(
        {**cfg, "dtype": "float64"}, w, dy)), argnums=(0, 1))(
            *_operands(cfg))
    scale = float(jnp.max(jnp.abs(ref_gw)))
    tol = {"float32": 1e-5, "bfloat16": 5e-2, "float16": 5e-3}[dtype]
    np.testing.assert_allclose(np.asarray(gw, np.float64), ref_gw,
                               atol=tol * scale)


def _hlo_convolutions(fn, *args):
  text = jax.jit(fn).lower(*args).compile().as_text()
  return [l for l in text.splitlines() if "convolution(" in l or
          "custom-call" in l and "conv" in l.lower()]


class FastFormsTest(parameterized.TestCase):
  """Gradients compile to ordinary convolutions, never window-reversed or
  (on CPU) grouped ones."""

  @parameterized.product(order=[1, 2], groups=[1, 4], dilation=[1, 2])
  def test_no_window_reversal(self, order, groups, dilation):
    cfg = dict(input_sizes=[2, 16, 16, 8], strides=[1, 2, 2, 1], padding="SAME",
               explicit_paddings=[], data_format="NHWC",
               dilations=[1, dilation, dilation, 1], dtype="float32",
               filter_shape=[3, 3, 8 // groups, 8])
    rng = np.random.default_rng(0)
    w = rng.standard_normal(cfg["filter_shape"]).astype(np.float32)
    dy = rng.standard_normal((2, 8, 8, 8)).astype(np.float32)
    loss = lambda w, dy: jnp.sum(run_op(cfg, w, dy) ** 2)
    g = jax.grad(loss, argnums=(0, 1))
    if order == 2:
      g1 = g
      g = jax.grad(lambda w, dy: sum(jnp.sum(t ** 2) for t in g1(w, dy)),
                   argnums=(0, 1))
    convs = _hlo_convolutions(g, w, dy)
    self.assertNotEmpty(convs)
    for conv in convs:
      self.assertNotIn("rhs_reversal=1", conv)
      if jax.default_backend() == "cpu":
        # Dense sub-problems, not XLA CPU's grouped convolutions (slow; the
        # batch-grouped filter gradient takes seconds): lowering/grouped.py.
        self.assertNotRegex(conv, r"(feature|batch)_group_count=(?!1\b)\d")


# --- batching -----------------------------------------------------------------

BATCH_CONFIGS = [c for c in _float64_configs(40, seed=23)][:10]


def _loop(f, in_axes, out_axes, w, dy):
  size = (w if in_axes[0] is not None else dy).shape[
      in_axes[0] if in_axes[0] is not None else in_axes[1]]
  take = lambda x, ax, i: x if ax is None else jnp.take(x, i, axis=ax)
  outs = [f(take(w, in_axes[0], i), take(dy, in_axes[1], i)) for i in range(size)]
  return jnp.stack(outs, axis=out_axes)


@pytest.mark.parametrize("i", range(len(BATCH_CONFIGS)))
@pytest.mark.parametrize("in_axes", [(0, None), (None, 0), (0, 0), (-1, 2),
                                     (2, -1), (None, -1), (3, None)])
@pytest.mark.parametrize("out_axes", [0, -1, 2])
def test_vmap_matches_loop(i, in_axes, out_axes):
  cfg = BATCH_CONFIGS[i]
  w, dy = _operands(cfg)
  rng = np.random.default_rng(4)
  b = 3
  bw = w if in_axes[0] is None else jnp.asarray(np.stack(
      [w * rng.standard_normal() + rng.standard_normal(w.shape) for _ in range(b)],
      axis=in_axes[0]))
  bdy = dy if in_axes[1] is None else jnp.asarray(np.stack(
      [rng.standard_normal(dy.shape) for _ in range(b)], axis=in_axes[1]))
  f = _op(cfg)
  got = jax.vmap(f, in_axes=in_axes, out_axes=out_axes)(bw, bdy)
  np.testing.assert_allclose(got, _loop(f, in_axes, out_axes, bw, bdy),
                             atol=1e-11)


class NestedBatchingTest(parameterized.TestCase):
  CFG = TransformsTest.CFG

  def setUp(self):
    super().setUp()
    rng = np.random.default_rng(9)
    self.w = rng.standard_normal((2, 3, *self.CFG["filter_shape"]))
    self.dy = rng.standard_normal((2, 3, *self.CFG["out_backprop_shape"]))
    self.f = _op(self.CFG)

  def test_nested_vmaps(self):
    got = jax.vmap(jax.vmap(self.f, in_axes=(0, None)), in_axes=(None, 0))(
        self.w[0], self.dy[:, 0])
    want = jnp.stack([jnp.stack([self.f(self.w[0, j], self.dy[i, 0])
                                 for j in range(3)]) for i in range(2)])
    np.testing.assert_allclose(got, want, atol=1e-11)

  def test_vmap_of_grad_and_grad_of_vmap(self):
    loss = lambda w, dy: jnp.sum(jnp.tanh(self.f(w, dy)))
    got = jax.vmap(jax.grad(loss, argnums=(0, 1)))(self.w[0], self.dy[0])
    for j in range(3):
      want = jax.grad(loss, argnums=(0, 1))(self.w[0, j], self.dy[0, j])
      for a, b in zip(got, want):
        np.testing.assert_allclose(a[j], b, atol=1e-11)
    batched_loss = lambda w, dy: jnp.sum(jax.vmap(loss)(w, dy))
    got = jax.grad(batched_loss, argnums=(0, 1))(self.w[0], self.dy[0])
    for j in range(3):
      want = jax.grad(loss, argnums=(0, 1))(self.w[0, j], self.dy[0, j])
      for a, b in zip(got, want):
        np.testing.assert_allclose(a[j], b, atol=1e-11)

  def test_batched_filter_is_one_grouped_call(self):
    jaxpr = jax.make_jaxpr(jax.vmap(self.f, in_axes=(0, 0)))(self.w[0], self.dy[0])
    prims = [e.primitive.name for e in jaxpr.eqns]
    self.assertEqual(prims.count("conv_backprop_input"), 1)
    self.assertNotIn("while", prims)
    self.assertNotIn("scan", prims)


def test_batched_filters_of_a_depthwise_op_stay_depthwise():
  # One call with b * C groups of in-depth 1 (the depthwise strategy), not
  # the in-depth stack of ungrouped ops (which would make it grouped).
  rng = np.random.default_rng(5)
  ws = rng.standard_normal((3, 3, 2, 1, 4))  # 3 filters, depthwise, C = 4
  dy = rng.standard_normal((2, 4, 3, 4))
  op = lambda w, dy: jaxconv.conv2d_backprop_input([2, 7, 5, 4], w, dy,
                                                   [1, 2, 2, 1], "SAME")
  jaxpr = jax.make_jaxpr(jax.vmap(op, in_axes=(0, None)))(ws, dy)
  calls = [e for e in jaxpr.eqns if e.primitive.name == "conv_backprop_input"]
  assert len(calls) == 1
  assert calls[0].params["spec"].groups == 12
  assert calls[0].invars[0].aval.shape[2] == 1
  got = jax.jit(jax.vmap(op, in_axes=(0, None)))(ws, dy)
  for i in range(3):
    np.testing.assert_allclose(got[i], run_reference(
        dict(input_sizes=[2, 7, 5, 4], strides=[1, 2, 2, 1], padding="SAME",
             explicit_paddings=[], data_format="NHWC", dilations=[1, 1, 1, 1]),
        ws[i], dy), rtol=1e-12, atol=1e-12)
