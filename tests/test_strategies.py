"""CPU lowering strategies: each exact against the float64 reference wherever
it can be selected, with the op's dtype semantics, symbolic-batch export,
gradients and batching intact, and no zero-inflated input."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

from jaxconv import lowering
from jaxconv.lowering import cpu, geometry, partners
from jaxconv.lowering.cpu import grouped, onednn, subpixel_fused
from tests import configs
from tests.helpers import (assert_close, filter_gradient_route,
                           negative_conv_pads, reference_for_spec, run_op, run_reference,
                           spatial)

import jaxconv
from jaxconv import attrs
from jaxconv.ops import OPS
from jaxconv.export import LayerConfig


# Every CPU strategy of the op; the native one where its extension loaded.
MATRIX = [pytest.param(name, marks=pytest.mark.skipif(
    name == "onednn" and not onednn.available(),
    reason="the oneDNN extension is not loaded here"))
          for name in cpu.STRATEGIES["backprop_input"]]


def _spec(fn, w, dy):
  """The ConvSpec that fn(w, dy) binds."""
  eqns = jax.make_jaxpr(fn)(w.astype(np.float32), dy.astype(np.float32)).eqns
  return next(e.params["spec"] for e in eqns
              if e.primitive is jaxconv.conv2d_backprop_input_p)


def _lowers(strategy, dtype):
  """Whether the strategy can be forced for this dtype (XLA CPU can abort
  on float64/int32 convolutions; tests/test_canonical.py covers float64
  through the canonical form in a child process; oneDNN has kernels for
  float32 and, on some CPUs, half precision)."""
  if strategy == "onednn":
    return np.dtype(dtype) in onednn.dtypes()
  return strategy != "canonical" or dtype not in ("float64", "int32")


def _configs_for(strategy, count, seed):
  """Random configs (every dtype, layout, padding, crop) the strategy applies
  to, at least half of them with work to do (no empty operand)."""
  rng = np.random.default_rng(seed)
  out = []
  while len(out) < count:
    cfg = configs.random_config(rng)
    w, dy = configs.random_operands(rng, cfg)
    empty = 0 in (*w.shape, *dy.shape, *cfg["input_sizes"])
    if (_lowers(strategy, cfg["dtype"]) and not (empty and len(out) % 2)
        and cpu.applies(strategy, _spec(lambda w, dy: run_op(cfg, w, dy), w,
                                        dy), w.shape)):
      out.append((cfg, w, dy))
  return out


def _jit_forced(strategy, fn, *args):
  """fn(*args) compiled with `strategy` forced strictly; asserts it ran."""
  with lowering.force_strategy(strategy, strict=True) as lowered:
    out = jax.jit(fn)(*args)
  assert lowered.backprop_input and set(lowered.backprop_input) == {strategy}, lowered
  return out


@pytest.mark.x64
@pytest.mark.parametrize("strategy", MATRIX)
def test_exact_against_reference(strategy):
  cases = [(cfg, w.astype(cfg["dtype"]), dy.astype(cfg["dtype"]))
           for cfg, w, dy in _configs_for(
               strategy, 40, seed=cpu.STRATEGIES["backprop_input"].index(strategy))]
  empty = [0 in (*w.shape, *dy.shape, *cfg["input_sizes"])
           for cfg, w, dy in cases]

  def calls(operands, which):  # the cases with `empty == which`, in one jit
    return [run_op(cfg, w, dy) for (cfg, _, _), (w, dy), e
            in zip(cases, operands, empty) if e == which]
  operands = [(w, dy) for _, w, dy in cases]
  with lowering.force_strategy(strategy, strict=True) as lowered:
    outs = iter(jax.jit(lambda o: calls(o, False))(operands))
  assert lowered.backprop_input == [strategy] * empty.count(False), lowered
  zeros = iter(jax.jit(lambda o: calls(o, True))(operands))  # no lowering
  for (cfg, w, dy), e in zip(cases, empty):
    out = next(zeros if e else outs)
    assert str(out.dtype) == cfg["dtype"]
    assert_close(out, run_reference(cfg, w, dy), cfg["dtype"], (strategy, cfg))


@pytest.mark.x64
@pytest.mark.parametrize("strategy", MATRIX)
def test_generic_float_values(strategy):
  # Not only multiples of 1/8: float32 and float64 with generic values.
  rng = np.random.default_rng(1)
  for cfg, _, _ in _configs_for(strategy, 12, seed=7):
    if 0 in (*cfg["filter_shape"], *cfg["out_backprop_shape"],
             *cfg["input_sizes"]):
      continue
    for dtype in ("float32", "float64"):
      if not _lowers(strategy, dtype):
        continue
      cfg = {**cfg, "dtype": dtype}
      w = rng.standard_normal(cfg["filter_shape"]).astype(dtype)
      dy = rng.standard_normal(cfg["out_backprop_shape"]).astype(dtype)
      out = _jit_forced(strategy, lambda w, dy, cfg=cfg: run_op(cfg, w, dy),
                        w, dy)
      assert_close(out, run_reference(cfg, w, dy), dtype, (strategy, cfg))


@pytest.mark.x64
@pytest.mark.parametrize("ndim", [1, 3])
@pytest.mark.parametrize("strategy", MATRIX)
def test_exact_in_1d_and_3d(strategy, ndim):
  # The primitive and every strategy are N-d (1-3 spatial dims).
  dtype = "float64" if _lowers(strategy, "float64") else "float32"
  rng = np.random.default_rng(ndim)
  cases = []
  while len(cases) < 6:
    spec, w, dy = configs.random_nd_case(rng, ndim, dtype)
    if cpu.applies(strategy, spec, w.shape):
      cases.append((spec, w, dy))
  for spec, w, dy in cases:
    out = _jit_forced(strategy, lambda w, dy, spec=spec:
                      jaxconv.conv2d_backprop_input_p.bind(w, dy, spec=spec),
                      w, dy)
    assert_close(out, reference_for_spec(w, dy, spec), dtype, (strategy, spec))


@pytest.mark.x64
@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_gradients_in_1d_to_3d(ndim):
  # The partner convolutions (grouped ones split on CPU) are the reference
  # op's adjoints: <op(w, dy), ct> = <dy, T_dy(ct)> = <w, T_w(ct)>.
  rng = np.random.default_rng(10 + ndim)
  for _ in range(8):
    spec, w, dy = configs.random_nd_case(rng, ndim)
    want = reference_for_spec(w, dy, spec)
    ct = rng.standard_normal(want.shape)
    _, vjp = jax.vjp(lambda w, dy, spec=spec:
                     jaxconv.conv2d_backprop_input_p.bind(w, dy, spec=spec), w, dy)
    ct_w, ct_dy = jax.jit(vjp)(ct)
    lhs = np.vdot(want, ct)
    np.testing.assert_allclose(np.vdot(dy, ct_dy), lhs, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(np.vdot(w, ct_w), lhs, rtol=1e-10, atol=1e-10)


@pytest.mark.xla_strategies
@pytest.mark.x64
@pytest.mark.parametrize("dtype", ["float64", "float32", "bfloat16"])
def test_cpu_partners_match_the_standard_forms(dtype):
  # Grouped and depthwise partner convolutions on CPU (lowering/cpu/__init__.py) vs
  # the standard lax forms, 1-3 spatial dims, both layouts, multipliers.
  rng = np.random.default_rng(3)
  tol = {"float64": 1e-12, "float32": 1e-5, "bfloat16": 2e-2}[dtype]
  kinds = []
  while len(kinds) < 12:
    spec, w, dy = configs.random_nd_case(rng, int(rng.integers(1, 4)))
    if spec.groups == 1:
      continue
    kinds.append("depthwise" if w.shape[spec.ndim] == 1 else "grouped")
    x = rng.standard_normal(spec.activation_shape(
        dy.shape[0], spec.groups * w.shape[spec.ndim], spec.input_spatial))
    kernel = w.shape[:spec.ndim]
    x, w, dy = (jnp.asarray(a, dtype) for a in (x, w, dy))
    for ours, standard, args, params in (
        (cpu.forward, partners.forward, (x, w), {}),
        (cpu.backprop_filter, partners.backprop_filter, (x, dy),
         {"kernel": kernel})):
      got, want = jax.jit(lambda a, b: (  # one compile for both
          ours(a, b, spec=spec, **params),
          standard(a.astype(np.float64), b.astype(np.float64), spec=spec,
                   **params)))(*args)
      assert got.dtype == x.dtype
      want = np.asarray(want)  # NumPy: no compile per shape
      scale = max(1.0, float(np.max(np.abs(want))))
      assert float(np.max(np.abs(np.asarray(got, np.float64) - want))) <= (
          tol * scale)
  assert set(kinds) == {"depthwise", "grouped"}


@pytest.mark.xla_strategies
@pytest.mark.parametrize("data_format", ["NHWC", "NCHW"])
def test_grouped_sub_problems_reassemble(data_format):
  """Four groups of 8 channels make two dense sub-problems of 16
  (lowering/cpu/grouped.py): the op and both partners put their results
  back in order; the forward partner emits no grouped convolution."""
  spec = lowering.ConvSpec(input_spatial=(7, 6), strides=(2, 1),
                           dilations=(1, 1), padding=((1, 1), (1, 0)),
                           groups=4, channels_last=data_format == "NHWC")
  kernel = (3, 2)
  assert grouped.groups_per_problem(4, 8) == 2
  rng = np.random.default_rng(6)
  w = rng.integers(-3, 4, (*kernel, 8, 12)).astype(np.float32)
  x = rng.integers(-3, 4, spec.activation_shape(2, 32, (7, 6)))
  dy = rng.integers(-3, 4, spec.activation_shape(
      2, 12, spec.out_backprop_spatial(kernel)))
  x, dy = x.astype(np.float32), dy.astype(np.float32)
  got = jax.jit(lambda w, dy: grouped.backprop_input(w, dy, spec=spec))(w, dy)
  np.testing.assert_array_equal(got, reference_for_spec(w, dy, spec))
  f64 = lambda *a: [v.astype(np.float64) for v in a]
  forward = jax.jit(lambda x, w: cpu.forward(x, w, spec=spec))
  assert "feature_group_count = 4" not in forward.lower(x, w).as_text()
  np.testing.assert_array_equal(
      forward(x, w), partners.forward(*f64(x, w), spec=spec))
  np.testing.assert_array_equal(
      jax.jit(lambda x, dy: cpu.backprop_filter(x, dy, spec=spec,
                                                kernel=kernel))(x, dy),
      partners.backprop_filter(*f64(x, dy), spec=spec, kernel=kernel))


@pytest.mark.xla_strategies
@pytest.mark.parametrize("groups", [2, 3])
def test_cpu_forward_partner_splits_every_grouping(groups):
  spec = lowering.ConvSpec(input_spatial=(6, 6), strides=(1, 1),
                           dilations=(1, 1), padding=((1, 1), (1, 1)),
                           groups=groups)
  x = jnp.ones((1, 6, 6, 4 * groups), np.float32)
  w = jnp.ones((3, 3, 4, 2 * groups), np.float32)
  text = jax.jit(lambda x, w: cpu.forward(x, w, spec=spec)).lower(
      x, w).as_text()
  assert "feature_group_count = 1" in text
  assert f"feature_group_count = {groups}" not in text


@pytest.mark.parametrize("groups, ci, want", [
    (4, 8, 2), (32, 8, 2), (6, 4, 3), (5, 4, 1), (4, 4, 4), (2, 32, 1),
    (8, 2, 8), (16, 2, 8),
])
def test_groups_per_problem(groups, ci, want):
  """The most groups (a divisor) whose channels fit 16 per sub-problem."""
  assert grouped.groups_per_problem(groups, ci) == want


@pytest.mark.xla_strategies
def test_cpu_filter_gradient_routes():
  """Depthwise: the split at stride 1, per-tap reductions when strided;
  3-D stride 1: 2-D filter gradients per depth tap; strided dense ones:
  GEMMs in 2-D (the strided rule: test_shift_gemm), XLA's convolution
  in 1-D."""
  for strides, want in (((1, 1), "grouped"), ((2, 1), "depthwise")):
    spec = lowering.ConvSpec(input_spatial=(6, 6), strides=strides,
                             dilations=(1, 1), padding=((1, 1), (1, 1)),
                             groups=8)
    x = jnp.ones((2, 6, 6, 8), np.float32)
    dy = jnp.ones((2, *spec.out_backprop_spatial((3, 3)), 8), np.float32)
    names, text = filter_gradient_route(spec, (3, 3), x, dy)
    assert names == [want]
    assert ("stablehlo.convolution" in text) == (want == "grouped")
  spec = lowering.ConvSpec(input_spatial=(5, 6, 4), strides=(1, 1, 1),
                           dilations=(1, 1, 1), padding=((1, 1),) * 3)
  x = jnp.ones((2, 5, 6, 4, 8), np.float32)
  names, text = filter_gradient_route(spec, (3, 3, 3), x, x)
  assert names == ["depth_taps"] and _conv_dims(text) == [2, 2, 2]
  for ndim, want in ((2, "shift_gemm"), (1, "standard")):
    spec = lowering.ConvSpec(input_spatial=(8,) * ndim, strides=(2,) * ndim,
                             dilations=(1,) * ndim, padding=((1, 0),) * ndim)
    x = jnp.ones((2, *(8,) * ndim, 8), np.float32)
    dy = jnp.ones((2, *(4,) * ndim, 8), np.float32)
    names, text = filter_gradient_route(spec, (3,) * ndim, x, dy)
    assert names == [want]
    assert _conv_dims(text) == ([] if ndim == 2 else [1])


def _conv_dims(text):
  """The spatial dims of every convolution in StableHLO text."""
  return [len(re.findall(r"\d", d)) for d in
          re.findall(r"dim_numbers = \[([^\]]*)\]x", text)]


@pytest.mark.xla_strategies
@pytest.mark.x64
@pytest.mark.parametrize("kernel, channels, dtype, want", [
    ((3, 3), (64, 64), np.float32, "eigen_rows"),  # one 1-D conv
    ((3, 4), (64, 64), np.float32, "eigen_rows"),
    ((4, 3), (64, 64), np.float32, "standard"),  # more kernel rows
    ((3, 3), (64, 63), np.float32, "standard"),  # channels x channels < 4096
    ((3, 3), (128, 32), np.float32, "eigen_rows"),
    ((3, 3), (64, 64), np.float64, "standard"),
])
def test_cpu_dense_filter_gradient_routes(kernel, channels, dtype, want):
  """Stride-1 2-D filter gradients outside shift_gemm's bounds (14x14)."""
  spec = lowering.ConvSpec(input_spatial=(14, 14), strides=(1, 1),
                           dilations=(1, 1), padding=((1, 1), (1, 1)))
  x = jnp.ones((2, 14, 14, channels[0]), dtype)
  dy = jnp.ones((2, *spec.out_backprop_spatial(kernel), channels[1]), dtype)
  names, text = filter_gradient_route(spec, kernel, x, dy)
  assert names == [want]
  assert _conv_dims(text) == ([1] if want == "eigen_rows" else [2])


@pytest.mark.xla_strategies
def test_cpu_grouped_filter_gradient_avoids_batch_groups():
  spec = lowering.ConvSpec(input_spatial=(6, 6), strides=(1, 1),
                           dilations=(1, 1), padding=((1, 1), (1, 1)),
                           groups=2)
  x, dy = jnp.ones((2, 6, 6, 8), np.float32), jnp.ones((2, 6, 6, 4),
                                                       np.float32)
  text = jax.jit(lambda x, dy: cpu.backprop_filter(
      x, dy, spec=spec, kernel=(3, 3))).lower(x, dy).as_text()
  assert "batch_group_count = 1 " in text
  assert "batch_group_count = 2" not in text


STRATEGY_LAYERS = {
    # strategy: (input_sizes NHWC, filter, strides)
    "canonical": ([2, 9, 8, 4], (3, 2, 4, 6), [1, 2, 2, 1]),
    "gemm_col2im": ([2, 9, 8, 4], (3, 2, 4, 6), [1, 2, 2, 1]),
    "subpixel": ([2, 9, 8, 4], (3, 2, 4, 6), [1, 2, 3, 1]),
    "subpixel_fused": ([2, 9, 8, 4], (4, 3, 4, 6), [1, 2, 2, 1]),
    "grouped": ([2, 9, 8, 8], (3, 3, 2, 8), [1, 1, 2, 1]),
    "depthwise": ([2, 9, 8, 4], (3, 3, 1, 8), [1, 2, 2, 1]),
    "onednn": ([2, 9, 8, 4], (3, 2, 4, 6), [1, 2, 3, 1]),
}


def _layer(strategy, data_format="NHWC"):
  sizes, fshape, strides = STRATEGY_LAYERS[strategy]
  if data_format == "NCHW":
    sizes = [sizes[0], sizes[3], *sizes[1:3]]
    strides = [1, 1, *strides[1:3]]
  rng = np.random.default_rng(0)
  w = rng.standard_normal(fshape).astype(np.float32)
  dy_shape = jax.eval_shape(lambda x: jax.lax.conv_general_dilated(
      x, jnp.zeros(fshape, np.float32), strides[1:3] if data_format == "NHWC"
      else strides[2:], "SAME",
      dimension_numbers=(data_format, "HWIO", data_format),
      feature_group_count=(sizes[3] if data_format == "NHWC" else sizes[1])
      // fshape[2]),
      jax.ShapeDtypeStruct(sizes, np.float32)).shape
  dy = rng.standard_normal(dy_shape).astype(np.float32)

  def op(w, dy, batch=None):
    s = list(sizes)
    if batch is not None:
      s[0] = batch
    return jaxconv.conv2d_backprop_input(s, w, dy, strides, "SAME",
                                         data_format=data_format)
  return op, w, dy


def test_layers_cover_every_strategy():
  assert set(STRATEGY_LAYERS) == set(cpu.STRATEGIES["backprop_input"])


@pytest.mark.parametrize("strategy", MATRIX)
def test_no_zero_inflated_input(strategy):
  op, w, dy = _layer(strategy)
  with lowering.force_strategy(strategy, strict=True) as lowered:
    text = jax.jit(lambda w, dy: op(w, dy)).lower(w, dy).as_text()
  assert lowered.backprop_input == [strategy]
  dilated = [c for c in re.findall(r"lhs_dilate = \[([^\]]*)\]", text)
             if set(c.split(", ")) != {"1"}]
  if strategy == "canonical":
    assert dilated  # the point of the others
  else:
    assert not dilated, dilated
  assert negative_conv_pads(text) == []


@pytest.mark.parametrize("data_format", ["NHWC", "NCHW"])
@pytest.mark.parametrize("strategy", MATRIX)
def test_symbolic_batch_export(strategy, data_format):
  op, w, dy = _layer(strategy, data_format)
  b, = export.symbolic_shape("b")
  args = (jax.ShapeDtypeStruct(w.shape, w.dtype),
          jax.ShapeDtypeStruct((b, *dy.shape[1:]), dy.dtype))
  fn = jax.jit(lambda w, dy: op(w, dy, batch=dy.shape[0]))
  if strategy == "onednn":  # a custom call: an export falls back, or raises
    with pytest.raises(ValueError, match="an export stays portable"):
      with lowering.force_strategy(strategy, strict=True):
        export.export(fn, platforms=["cpu"])(*args)
    strategy = cpu.choose(_spec(op, w, dy), w.shape, np.float32, 1,
                          native=False)[0]
  with lowering.force_strategy(strategy, strict=True) as lowered:
    exp = export.export(fn, platforms=["cpu"])(*args)
  assert lowered.backprop_input == [strategy]
  for batch in (1, 3):
    dyb = np.concatenate([dy] * 2)[:batch]
    np.testing.assert_allclose(exp.call(w, dyb), op(w, dyb, batch=batch),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("strategy", MATRIX)
def test_grad_and_vmap_under_strategy(strategy):
  op, w, dy = _layer(strategy)
  loss = lambda w, dy: jnp.sum(jnp.sin(op(w, dy)))
  want = jax.grad(loss, argnums=(0, 1))(w, dy)
  ws = np.stack([w, 2 * w])
  want_v = np.stack([op(w, dy), op(2 * w, dy)])
  with lowering.force_strategy(strategy) as lowered:
    got = jax.jit(jax.grad(lambda w, dy: loss(w, dy), argnums=(0, 1)))(w, dy)
    assert lowered.backprop_input == [strategy]  # the forward pass
    # the gradients: the partners' automatic choices, recorded per primitive
    assert lowered.backprop_filter and lowered.forward, lowered
    got_v = jax.jit(jax.vmap(lambda w, dy: op(w, dy), in_axes=(0, None)))(ws, dy)
  for a, b in zip(got, want):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(got_v, want_v, rtol=1e-4, atol=1e-4)


@pytest.mark.xla_strategies
@pytest.mark.x64
def test_forcing_falls_back_where_a_strategy_does_not_apply():
  op, w, dy = _layer("canonical")  # one group: depthwise cannot apply
  automatic = cpu.choose(_spec(op, w, dy), w.shape, np.float32, 2)[0]
  with lowering.force_strategy("depthwise") as lowered:
    out = jax.jit(lambda w, dy: op(w, dy))(w, dy)
  assert lowered.backprop_input == [automatic] != ["depthwise"]  # the fallback is visible
  np.testing.assert_allclose(out, op(w, dy), rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match=r"\Aforce_strategy\(backprop_input='depthwise', "
                     r"strict=True\): it does not apply to this "
                     r"configuration \(ConvSpec\(.*\), filter shape "
                     r"\(3, 2, 4, 6\), float32\)(\n|\Z)"):
    with lowering.force_strategy("depthwise", strict=True):
      jax.jit(lambda w, dy: op(w, dy))(w, dy)
  with pytest.raises(ValueError, match=r"\Aforce_strategy\(backprop_input='canonical', "
                     r"strict=True\): XLA CPU can abort the process on "
                     r"float64/int32 convolutions \(.*float64\)(\n|\Z)"):
    with lowering.force_strategy("canonical", strict=True):
      jax.jit(lambda w, dy: op(w, dy))(w.astype(np.float64),
                                       dy.astype(np.float64))
  with pytest.raises(ValueError, match="unknown CPU strategy"):
    with lowering.force_strategy("fastest"):
      pass


# filter shape (input depth 4): one group, two groups, depthwise.
_GROUPINGS = {"one group": (3, 3, 4, 6), "two groups": (3, 3, 2, 6),
              "depthwise": (3, 3, 1, 8)}
_APPLIES = {"canonical": set(_GROUPINGS), "gemm_col2im": set(_GROUPINGS),
            "subpixel": {"one group"}, "subpixel_fused": {"one group"},
            "grouped": {"two groups", "depthwise"}, "depthwise": {"depthwise"},
            "onednn": set(_GROUPINGS) if onednn.available() else set()}


def test_applies_table_covers_every_strategy():
  assert set(_APPLIES) == set(cpu.STRATEGIES["backprop_input"])


@pytest.mark.parametrize("grouping", list(_GROUPINGS))
@pytest.mark.parametrize("strategy", MATRIX)
def test_each_strategy_applies_exactly_where_it_lowers(strategy, grouping):
  """Forced strictly, a strategy lowers (and is exact) where it applies and
  raises where it does not."""
  fshape = _GROUPINGS[grouping]
  cfg = dict(input_sizes=[2, 6, 5, 4], filter_shape=list(fshape),
             strides=[1, 2, 2, 1], padding="SAME", explicit_paddings=[],
             data_format="NHWC", dilations=[1, 1, 1, 1], dtype="float32")
  rng = np.random.default_rng(0)
  w = rng.integers(-3, 4, fshape).astype(np.float32)
  dy = rng.integers(-3, 4, (2, 3, 3, fshape[3])).astype(np.float32)
  call = lambda: jax.jit(lambda w, dy: run_op(cfg, w, dy))(w, dy)
  if grouping in _APPLIES[strategy]:
    with lowering.force_strategy(strategy, strict=True) as lowered:
      out = call()
    assert lowered.backprop_input == [strategy]
    np.testing.assert_array_equal(out, run_reference(cfg, w, dy))
  else:
    with pytest.raises(ValueError, match="does not apply"):
      with lowering.force_strategy(strategy, strict=True):
        call()


@pytest.mark.xla_strategies
def test_choice_is_visible():
  op, w, dy = _layer("depthwise")
  name, reason = cpu.choose(_spec(op, w, dy), w.shape, np.float32)
  assert name == "depthwise" and reason.startswith("depthwise: ")
  sizes, fshape, strides = STRATEGY_LAYERS["depthwise"]
  config = LayerConfig(input_sizes=sizes, filter_sizes=fshape,
                       strides=strides)
  assert config.cpu_strategy() == (name, reason)


@pytest.mark.xla_strategies
@pytest.mark.parametrize("fmt, sizes, fshape, stride, dtype, want", [
    # The automatic choice on layer classes of benchmarks/suite.py (the
    # measured winners recorded in lowering/cpu/__init__.py's rules).
    ("NHWC", [8, 64, 64, 64], (3, 3, 64, 128), 2, "float32", "gemm_col2im"),
    ("NCHW", [8, 64, 64, 64], (3, 3, 64, 128), 2, "float32", "gemm_col2im"),
    ("NHWC", [8, 64, 64, 64], (2, 2, 64, 128), 2, "float32", "gemm_col2im"),
    ("NHWC", [8, 128, 128, 32], (4, 4, 32, 32), 2, "float32", "subpixel_fused"),
    ("NCHW", [16, 32, 32, 128], (5, 5, 128, 256), 2, "float32", "subpixel"),
    ("NHWC", [8, 56, 56, 64], (3, 3, 64, 64), 1, "float32", "subpixel"),
    ("NCHW", [8, 56, 56, 64], (3, 3, 64, 64), 1, "float32", "subpixel"),
    ("NHWC", [8, 28, 28, 256], (3, 3, 8, 256), 1, "float32", "grouped"),
    ("NHWC", [8, 56, 56, 128], (3, 3, 1, 128), 2, "float32", "depthwise"),
    ("NHWC", [2, 64, 64, 64], (3, 3, 64, 128), 2, "float64", "gemm_col2im"),
    # Beyond the suite: 32 MiB of GEMM columns or more (batch counts).
    ("NHWC", [16, 64, 64, 64], (3, 3, 64, 128), 2, "float32", "subpixel"),
    ("NCHW", [8, 128, 128, 64], (3, 3, 64, 64), 2, "float32", "subpixel"),
    ("NHWC", [8, 56, 56, 24], (3, 3, 24, 48), 2, "float32", "gemm_col2im"),
])
def test_choice_on_benchmark_classes(fmt, sizes, fshape, stride, dtype, want):
  if fmt == "NCHW":
    sizes = [sizes[0], sizes[3], *sizes[1:3]]
  strides = [1, stride, stride, 1] if fmt == "NHWC" else [1, 1, stride, stride]
  spec = attrs.make_spec(OPS["Conv2DBackpropInput"], sizes, fshape, sizes[0],
                         strides, "SAME", [], fmt, [1, 1, 1, 1])
  assert cpu.choose(spec, fshape, dtype, sizes[0])[0] == want


@pytest.mark.xla_strategies
@pytest.mark.parametrize("sizes, fshape, stride, dilation, dtype, batch, want", [
    # One configuration per rule of cpu.choose, each decided by that rule
    # (NHWC / NDHWC, SAME; batch None: choose's default of one image).
    ([2, 9, 8, 4], (3, 3, 4, 6), 2, 1, "float64", 2,
     ("gemm_col2im", "float64/int32: XLA CPU has no fast convolution")),
    ([2, 9, 8, 4], (3, 3, 4, 6), 2, 1, "int32", 2,
     ("gemm_col2im", "float64/int32: XLA CPU has no fast convolution")),
    ([2, 9, 8, 32], (3, 3, 32, 32), 1, 1, "float16", 2,
     ("gemm_col2im", "half precision: float32-accumulating dot")),
    ([2, 9, 8, 32], (3, 3, 32, 32), 1, 1, "bfloat16", 2,
     ("gemm_col2im", "half precision: float32-accumulating dot")),
    ([2, 9, 8, 4], (3, 3, 1, 8), 2, 1, "float32", 2,
     ("depthwise", "depthwise: XLA CPU runs grouped convolutions")),
    ([2, 9, 8, 2], (3, 3, 1, 4), 2, 1, "float32", 2,  # two channels
     ("depthwise", "depthwise: XLA CPU runs grouped convolutions")),
    ([2, 9, 8, 1], (3, 3, 1, 8), 2, 1, "float32", 2,  # one: not grouped
     ("gemm_col2im", "few result channels or a 1x1 kernel: one dot")),
    ([2, 9, 8, 8], (3, 3, 2, 8), 1, 1, "float32", 2,
     ("grouped", "grouped: dense block-diagonal sub-problems")),
    ([2, 9, 8, 8], (3, 3, 4, 8), 1, 1, "float32", 2,  # two groups
     ("grouped", "grouped: dense block-diagonal sub-problems")),
    ([2, 9, 8, 4], (3, 3, 4, 6), 1, 2, "float32", 2,
     ("canonical", "stride 1, dilated: XLA's YNNPACK convolution")),
    ([2, 9, 8, 4], (3, 3, 4, 6), 1, 1, "float32", 2,
     ("subpixel", "stride 1: one forward convolution on XLA's Eigen")),
    ([2, 9, 8, 32], (3, 3, 32, 32), 2, 2, "float32", 2,
     ("subpixel", "stride and dilation: stride-1 convolutions per phase")),
    ([2, 9, 8, 32], (1, 1, 32, 32), 2, 2, "float32", 2,
     ("gemm_col2im", "few result channels or a 1x1 kernel: one dot")),
    ([2, 16, 16, 64], (2, 2, 64, 128), 2, 1, "float32", 2,
     ("gemm_col2im", "kernel == stride (k2 s2, the U-Net up-convolution)")),
    ([2, 16, 16, 32], (4, 4, 32, 32), 2, 1, "float32", 2,
     ("subpixel_fused", "kernel a multiple of the stride: one exact")),
    ([2, 16, 16, 16], (3, 3, 16, 64), 2, 1, "float32", 2,
     ("gemm_col2im", "few result channels or a 1x1 kernel: one dot")),
    ([1, 8, 8, 8, 32], (3, 3, 3, 32, 64), 2, 1, "float32", 1,
     ("subpixel", "3-D, stride > 1: stride-1 convolutions per phase")),
    ([1, 32, 32, 128], (5, 5, 128, 256), 2, 1, "float32", 1,
     ("subpixel", "large kernel x channels: stride-1 convolutions")),
    ([1, 128, 128, 128], (3, 3, 128, 256), 2, 1, "float32", None,
     ("gemm_col2im", "stride > 1: dot + per-phase col2im")),  # 18.9 MB
    ([1, 128, 128, 128], (3, 3, 128, 256), 2, 1, "float32", 2,
     ("subpixel", "GEMM columns of 32 MiB or more: stride-1 convolutions")),
    # At the rules' bounds:
    ([2, 9, 8, 32], (2, 1, 32, 32), 2, 2, "float32", 2,
     ("subpixel", "stride and dilation: stride-1 convolutions per phase")),
    ([2, 10, 8, 32], (5, 1, 32, 32), (5, 1), 1, "float32", 2,
     ("subpixel_fused", "kernel a multiple of the stride: one exact")),
    ([2, 16, 16, 17], (3, 3, 17, 64), 2, 1, "float32", 2,
     ("gemm_col2im", "stride > 1: dot + per-phase col2im")),
    ([1, 8, 8, 32], (1, 4, 32, 1024), 2, 1, "float32", 1,
     ("subpixel", "large kernel x channels: stride-1 convolutions")),
    ([1, 8, 8, 32], (1, 4, 32, 1023), 2, 1, "float32", 1,
     ("gemm_col2im", "stride > 1: dot + per-phase col2im")),
    ([1, 512, 512, 64], (1, 2, 64, 64), 2, 1, "float32", 1,  # 32 MiB
     ("subpixel", "GEMM columns of 32 MiB or more: stride-1 convolutions")),
    ([1, 512, 496, 64], (1, 2, 64, 64), 2, 1, "float32", 1,  # 31 MiB
     ("gemm_col2im", "stride > 1: dot + per-phase col2im")),
])
def test_every_rule_names_its_choice(sizes, fshape, stride, dilation, dtype,
                                     batch, want):
  n = len(sizes) - 2
  stride = stride if isinstance(stride, tuple) else (stride,) * n
  spec = attrs.make_spec(OPS["Conv3DBackpropInputV2" if n == 3 else
                             "Conv2DBackpropInput"], sizes, fshape, sizes[0],
                         [1, *stride, 1], "SAME", [],
                         "NDHWC"[-n - 2:] if n == 3 else "NHWC",
                         [1, *[dilation] * n, 1])
  args = () if batch is None else (batch,)
  name, reason = cpu.choose(spec, fshape, dtype, *args)
  assert (name, reason[:len(want[1])]) == want


@pytest.mark.xla_strategies
@pytest.mark.parametrize("fmt, kernel, want", [
    ("NHWC", 3, "subpixel"), ("NCHW", 3, "subpixel"),
    ("NHWC", 1, "gemm_col2im"),  # a 1x1 kernel has nothing to dilate
])
def test_choice_with_stride_and_dilation(fmt, kernel, want):
  # The suite's s2+d2 class: 32x32 64<-64 k3 N8, stride 2, dilation 2.
  sizes = [8, 32, 32, 64] if fmt == "NHWC" else [8, 64, 32, 32]
  strides, dilations = ([1, 2, 2, 1], [1, 2, 2, 1]) if fmt == "NHWC" else (
      [1, 1, 2, 2], [1, 1, 2, 2])
  fshape = (kernel, kernel, 64, 64)
  spec = attrs.make_spec(OPS["Conv2DBackpropInput"], sizes, fshape, 8,
                         strides, "SAME", [], fmt, dilations)
  assert cpu.choose(spec, fshape, "float32", 8)[0] == want


@pytest.mark.xla_strategies
def test_lowering_counts_the_batch():
  # 64x64 64<-128 k3 s2: 2.25 MiB of GEMM columns per image; from 16
  # images (32 MiB) the sub-pixel convolutions win.  A symbolic batch
  # counts as one image.
  w = jax.ShapeDtypeStruct((3, 3, 64, 128), np.float32)

  def lowered(batch):
    dy = jax.ShapeDtypeStruct((batch, 32, 32, 128), np.float32)
    op = lambda w, dy: jaxconv.conv2d_backprop_input(
        [dy.shape[0], 64, 64, 64], w, dy, [1, 2, 2, 1], "SAME")
    return export.export(jax.jit(op), platforms=["cpu"])(
        w, dy).mlir_module()
  b, = export.symbolic_shape("b")
  for batch, conv in ((8, False), (16, True), (b, False)):
    text = lowered(batch)
    assert ("stablehlo.convolution" in text) == conv
    assert ("stablehlo.dot_general" in text) != conv
  # 128x128 128<-256: 18 MiB per image, so one image (and a symbolic batch)
  # take the GEMM, two the sub-pixel convolutions.
  w = jax.ShapeDtypeStruct((3, 3, 128, 256), np.float32)
  for batch, conv in ((1, False), (2, True), (b, False)):
    dy = jax.ShapeDtypeStruct((batch, 64, 64, 256), np.float32)
    text = export.export(jax.jit(lambda w, dy: jaxconv.conv2d_backprop_input(
        [dy.shape[0], 128, 128, 128], w, dy, [1, 2, 2, 1], "SAME")),
                         platforms=["cpu"])(w, dy).mlir_module()
    assert ("stablehlo.convolution" in text) == conv


@pytest.mark.xla_strategies
@pytest.mark.x64
def test_gemm_when_each_phase_is_one_tap():
  # kernel == stride (the U-Net up-convolution): the col2im is a plain
  # depth-to-space of the GEMM's result (no sums); exact like the rest,
  # in every layout, dtype and group count the random configs draw.
  rng = np.random.default_rng(11)
  plain = 0
  for _ in range(400):
    cfg = configs.random_config(rng)
    k = cfg["filter_shape"][:2]
    strides = spatial(cfg["strides"], cfg["data_format"])
    if list(k) != strides or set(spatial(cfg["dilations"],
                                         cfg["data_format"])) != {1}:
      continue
    w, dy = configs.random_operands(rng, cfg)
    with lowering.force_strategy("gemm_col2im"):
      fn = jax.jit(lambda w, dy, cfg=cfg: run_op(cfg, w, dy))
      text = fn.lower(w, dy).as_text()
      out = fn(w, dy)
    plain += "stablehlo.add" not in text
    assert_close(out, run_reference(cfg, w, dy), cfg["dtype"], cfg)
  assert plain >= 5


@pytest.mark.parametrize("kernel, strides, want", [
    ((4, 4), (2, 2), 1.0),           # every phase uses every window tap
    ((3, 4), (2, 2), 4 / 3),         # rows: windows of 2 for 3 taps over 2
    ((4, 3), (2, 2), 4 / 3),         # phases: the product over both dims
    ((3, 3), (2, 2), 16 / 9),
    ((5, 2), (3, 1), 6 / 5),         # rows: windows of 2 for 5 taps over 3
])
def test_phase_packed_waste(kernel, strides, want):
  """subpixel_fused.waste: multiplies per useful multiply of the combined
  kernel, the product over the dims of window x stride / taps."""
  spec = geometry.ConvSpec((12, 12), strides, (1, 1), ((1, 1), (1, 1)))
  assert subpixel_fused.waste(spec, kernel) == pytest.approx(want)
  if want != 1:
    assert cpu.choose(spec, (*kernel, 64, 64), "float32", 8)[0] != (
        "subpixel_fused")


def test_every_rule_reason_has_its_measurements_row():
  """Each rule's reason names a row of benchmarks/README.md ('Why each CPU
  rule') with the strategy it chooses: the figures live there, not in
  the code."""
  import inspect
  import pathlib
  from jaxconv.lowering.cpu import tables
  readme = (pathlib.Path(__file__).parents[1] / "benchmarks" /
            "README.md").read_text()
  section = readme[readme.index("## Why each CPU rule"):]
  section = section[:section.index("\n## ", 1)]
  rows = set(re.findall(r"^\| ([^|]+?) \| (\w+) \|", section, re.M))
  for primitive, rule in (*tables._RULES.items(), ("every", tables.choose)):
    source = inspect.getsource(rule)
    chosen = re.findall(r'return "(\w+)", _why\(\s*"([^"]+)"', source)
    assert chosen, primitive
    for name, label in chosen:
      assert (label, name) in rows, (primitive, label, name)
