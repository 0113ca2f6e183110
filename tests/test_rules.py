"""Autodiff and batching of the primitive: every transform, every attribute class."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from jax.test_util import check_grads

import jaxconv
from tests import configs
from jaxconv import reference
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


def _partner_refs(cfg, w, dy, ct):
  """(d/d(w), d/d(dy)) of <op(w, dy), ct> from the independent reference:
  the filter gradient of (x = ct, dy) and the forward conv of ct with w."""
  geometry = reference.tf_geometry(cfg["data_format"], cfg["strides"],
                                   cfg["padding"], cfg["explicit_paddings"],
                                   cfg["dilations"])
  groups = ct.shape[-1 if geometry["channels_last"] else 1] // w.shape[2]
  return (reference.backprop_filter(ct, dy, kernel=w.shape[:2], groups=groups,
                                    **geometry),
          reference.forward(ct, w, **geometry))


def _exact_operands(cfg, seed):
  """w, dy, ct as multiples of 1/8 in [-4, 4]: exact in every float dtype,
  and every product and float32 partial sum of them exact too."""
  rng = np.random.default_rng(seed)
  w, dy = configs.random_operands(rng, cfg)
  out_shape = run_reference(cfg, w, dy).shape
  return w, dy, rng.integers(-32, 33, out_shape) / 8


def test_grad_configs_cover_every_class():
  def has(pred):
    return any(pred(c) for c in GRAD_CONFIGS)
  assert has(lambda c: c["data_format"] == "NCHW")
  assert has(lambda c: len(c["input_sizes"]) == 2)
  assert has(lambda c: c["padding"] == "EXPLICIT")
  assert has(lambda c: max(c["dilations"]) > 1 and max(c["strides"]) > 1)
  assert has(lambda c: len(c["input_sizes"]) == 4 and c["filter_shape"][2] != c[
      "input_sizes"][3 if c["data_format"] == "NHWC" else 1])


@pytest.mark.x64
@pytest.mark.parametrize("i", range(len(GRAD_CONFIGS)))
def test_check_grads_order_2(i):
  cfg = GRAD_CONFIGS[i]
  check_grads(_op(cfg), _operands(cfg), order=2, modes=["fwd", "rev"])


@pytest.mark.x64
@pytest.mark.parametrize("dtype", ["float64", "float32", "float16", "bfloat16"])
@pytest.mark.parametrize("i", range(len(GRAD_CONFIGS)))
def test_vjp_of_both_operands_against_reference(i, dtype):
  # Computed in float32 (half: float32 accumulation, rounded once) from
  # exact operands: each gradient is the reference's rounded to the dtype,
  # within one unit in the last place.
  cfg = {**GRAD_CONFIGS[i], "dtype": dtype}
  w, dy, ct = _exact_operands(cfg, seed=i)
  want_w, want_dy = _partner_refs(cfg, w, dy, ct)
  got_w, got_dy = jax.jit(lambda w, dy, ct: jax.vjp(_op(cfg), w, dy)[1](ct))(
      *(jnp.asarray(a, dtype) for a in (w, dy, ct)))  # one compile
  eps = float(jnp.finfo(dtype).eps)
  for got, want in ((got_w, want_w), (got_dy, want_dy)):
    assert got.dtype == jnp.dtype(dtype) and got.shape == want.shape
    err = np.abs(np.asarray(got, np.float64) - want)
    assert np.all(err <= eps * np.abs(want)), (float(err.max()), cfg)


class TransformsTest(parameterized.TestCase):

  CFG = dict(input_sizes=[2, 7, 6, 4], strides=[1, 2, 2, 1], padding="EXPLICIT",
             explicit_paddings=[0, 0, 4, 1, 0, 2, 0, 0], data_format="NHWC",
             dilations=[1, 1, 2, 1], dtype="float64",
             filter_shape=[3, 2, 2, 6], out_backprop_shape=[2, 5, 3, 6])

  @pytest.mark.x64
  def test_jvp_is_bilinear(self):
    w, dy = _operands(self.CFG)
    tw, tdy = _operands(self.CFG, seed=5)
    f = _op(self.CFG)
    out, tan = jax.jvp(f, (w, dy), (tw, tdy))
    np.testing.assert_allclose(out, run_reference(self.CFG, w, dy), atol=1e-12)
    np.testing.assert_allclose(
        tan, run_reference(self.CFG, tw, dy) + run_reference(self.CFG, w, tdy),
        atol=1e-12)

  @pytest.mark.x64
  def test_linearize_and_linear_transpose(self):
    w, dy = _operands(self.CFG)
    f = _op(self.CFG)
    _, f_lin = jax.linearize(lambda d: f(w, d), dy)
    np.testing.assert_allclose(f_lin(dy), run_reference(self.CFG, w, dy),
                               atol=1e-12)
    ct = np.random.default_rng(3).standard_normal(f(w, dy).shape)
    t_dy = jax.linear_transpose(lambda d: f(w, d), dy)
    t_w = jax.linear_transpose(lambda v: f(v, dy), w)
    want_w, want_dy = _partner_refs(self.CFG, w, dy, ct)
    np.testing.assert_allclose(t_dy(ct)[0], want_dy, atol=1e-12)
    np.testing.assert_allclose(t_w(ct)[0], want_w, atol=1e-12)

  @pytest.mark.x64
  def test_hessian(self):
    # The op is linear in w, so the Hessian of sum(sin(op(w, dy))) is
    # J^T diag(-sin(op(w, dy))) J, J the reference's matrix in w.
    w, dy = _operands(self.CFG)
    f = _op(self.CFG)
    loss = lambda w, dy: jnp.sum(jnp.sin(f(w, dy)))
    basis = np.eye(w.size).reshape(w.size, *w.shape)
    jac = np.stack([run_reference(self.CFG, e, dy).ravel() for e in basis], 1)
    y = run_reference(self.CFG, w, dy).ravel()
    want = jac.T @ (-np.sin(y)[:, None] * jac)
    # Forward-over-reverse (jax.hessian) and reverse-over-reverse (which
    # transposes the first-order partners: a second-order transpose).
    for hessian in (jax.hessian, lambda g: jax.jacrev(jax.grad(g))):
      h = hessian(lambda w: loss(w, dy))(w)
      self.assertEqual(h.shape, w.shape * 2)
      np.testing.assert_allclose(h.reshape(w.size, w.size), want, atol=1e-9)
    # The dy side: Hessian-vector products, both ways.
    v = np.random.default_rng(2).standard_normal(dy.shape)
    jac_dy = np.stack([run_reference(self.CFG, w, e.reshape(dy.shape)).ravel()
                       for e in np.eye(dy.size)], 1)
    want_v = jac_dy.T @ (-np.sin(y) * (jac_dy @ v.ravel()))
    grad_dy = jax.grad(lambda d: loss(w, d))
    fwd = jax.jvp(grad_dy, (dy,), (v,))[1]
    rev = jax.grad(lambda d: jnp.vdot(grad_dy(d), v))(dy)
    for hvp in (fwd, rev):
      np.testing.assert_allclose(np.ravel(hvp), want_v, atol=1e-9)

  def test_int32_has_no_gradient(self):
    cfg = {**self.CFG, "dtype": "int32"}
    w = np.ones(cfg["filter_shape"], np.int32)
    dy = np.ones(cfg["out_backprop_shape"], np.int32)
    with self.assertRaisesRegex(TypeError, "int32"):
      jax.grad(lambda w: jnp.sum(run_op(cfg, w, dy)))(w)


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
        # batch-grouped filter gradient takes seconds): lowering/cpu/grouped.py.
        self.assertNotRegex(conv, r"(feature|batch)_group_count=(?!1\b)\d")


# --- batching -----------------------------------------------------------------

BATCH_CONFIGS = [c for c in _float64_configs(40, seed=23)][:10]


def _loop(f, in_axes, out_axes, w, dy):
  size = (w if in_axes[0] is not None else dy).shape[
      in_axes[0] if in_axes[0] is not None else in_axes[1]]
  take = lambda x, ax, i: x if ax is None else np.take(x, i, axis=ax)
  outs = [f(take(w, in_axes[0], i), take(dy, in_axes[1], i)) for i in range(size)]
  return np.stack(outs, axis=out_axes)  # NumPy: no compile per shape


@pytest.mark.x64
@pytest.mark.parametrize("i", range(len(BATCH_CONFIGS)))
@pytest.mark.parametrize("in_axes", [(0, None), (None, 0), (0, 0), (-1, 2),
                                     (2, -1), (None, -1), (3, None)])
@pytest.mark.parametrize("out_axes", [0, -1, 2])
def test_vmap_matches_loop(i, in_axes, out_axes):
  cfg = BATCH_CONFIGS[i]
  w, dy = _operands(cfg)
  rng = np.random.default_rng(4)
  b = 3
  bw = w if in_axes[0] is None else np.stack(
      [w * rng.standard_normal() + rng.standard_normal(w.shape) for _ in range(b)],
      axis=in_axes[0])
  bdy = dy if in_axes[1] is None else np.stack(
      [rng.standard_normal(dy.shape) for _ in range(b)], axis=in_axes[1])
  f = _op(cfg)
  # Jitted: one compile (NestedBatchingTest batches eagerly).
  got = jax.jit(jax.vmap(f, in_axes=in_axes, out_axes=out_axes))(bw, bdy)
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

  @pytest.mark.x64
  def test_nested_vmaps(self):
    got = jax.vmap(jax.vmap(self.f, in_axes=(0, None)), in_axes=(None, 0))(
        self.w[0], self.dy[:, 0])
    want = jnp.stack([jnp.stack([self.f(self.w[0, j], self.dy[i, 0])
                                 for j in range(3)]) for i in range(2)])
    np.testing.assert_allclose(got, want, atol=1e-11)

  @pytest.mark.x64
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

  @pytest.mark.x64
  def test_batched_filter_is_one_grouped_call(self):
    jaxpr = jax.make_jaxpr(jax.vmap(self.f, in_axes=(0, 0)))(self.w[0], self.dy[0])
    prims = [e.primitive.name for e in jaxpr.eqns]
    self.assertEqual(prims.count("conv_backprop_input"), 1)
    self.assertNotIn("while", prims)
    self.assertNotIn("scan", prims)


@pytest.mark.x64
@pytest.mark.parametrize("channels, groups, in_depth", [
    (4, 12, 1), (2, 6, 1),  # depthwise, C = 4 and 2: b * C groups
    (1, 1, 3),              # one channel, one group: stacked in-depth
])
def test_batched_filters_of_a_depthwise_op_stay_depthwise(channels, groups,
                                                          in_depth):
  # One call with b * C groups of in-depth 1 (the depthwise strategy), not
  # the in-depth stack of ungrouped ops (which would make it grouped); an
  # ungrouped op's filters stack on the in-depth.
  rng = np.random.default_rng(5)
  ws = rng.standard_normal((3, 3, 2, 1, channels))  # 3 filters
  dy = rng.standard_normal((2, 4, 3, channels))
  sizes = [2, 7, 5, channels]
  op = lambda w, dy: jaxconv.conv2d_backprop_input(sizes, w, dy, [1, 2, 2, 1],
                                                   "SAME")
  jaxpr = jax.make_jaxpr(jax.vmap(op, in_axes=(0, None)))(ws, dy)
  calls = [e for e in jaxpr.eqns if e.primitive.name == "conv_backprop_input"]
  assert len(calls) == 1
  assert calls[0].params["spec"].groups == groups
  assert calls[0].invars[0].aval.shape[2] == in_depth
  got = jax.jit(jax.vmap(op, in_axes=(0, None)))(ws, dy)
  for i in range(3):
    np.testing.assert_allclose(got[i], run_reference(
        dict(input_sizes=sizes, strides=[1, 2, 2, 1], padding="SAME",
             explicit_paddings=[], data_format="NHWC", dilations=[1, 1, 1, 1]),
        ws[i], dy), rtol=1e-12, atol=1e-12)


@pytest.mark.x64
@pytest.mark.parametrize("fmt", ["NHWC", "NCHW"])
def test_batched_filters_of_a_grouped_op(fmt):
  # Filters batched alone, 2 groups of 2 channels: the in-depth stack with
  # the batch moved out of each group, in either layout.
  rng = np.random.default_rng(6)
  ws = rng.standard_normal((3, 3, 2, 2, 6))  # 3 filters
  sizes = [2, 7, 5, 4] if fmt == "NHWC" else [2, 4, 7, 5]
  dy = rng.standard_normal((2, 4, 3, 6) if fmt == "NHWC" else (2, 6, 4, 3))
  strides = [1, 2, 2, 1] if fmt == "NHWC" else [1, 1, 2, 2]
  cfg = dict(input_sizes=sizes, strides=strides, padding="SAME",
             explicit_paddings=[], data_format=fmt, dilations=[1, 1, 1, 1])
  op = lambda w, dy: jaxconv.conv2d_backprop_input(sizes, w, dy, strides,
                                                   "SAME", data_format=fmt)
  got = jax.jit(jax.vmap(op, in_axes=(0, None)))(ws, dy)
  for i in range(3):
    np.testing.assert_allclose(got[i], run_reference(cfg, ws[i], dy),
                               rtol=1e-12, atol=1e-12)
