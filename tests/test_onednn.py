"""The native CPU back end (lowering/cpu/onednn.py, native/onednn_conv.cc):
oneDNN's kernels for the three primitives under jax.jit, against the
float64 reference and XLA's strategies on every function of the family,
forced and automatic; never in an export; cached primitives; threads;
transformations; the extension turned off."""
import dataclasses
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

import jaxconv
from jaxconv import lowering
from jaxconv.export import LayerConfig, export_layer
from jaxconv.lowering import cpu, partners
from jaxconv.lowering.cpu import onednn
from tests import configs, family
from tests.helpers import RTOL, assert_close, reference_for_spec

ROOT = pathlib.Path(__file__).resolve().parents[1]
BUILDS_HERE = (sys.platform.startswith("linux")
               and platform.machine() == "x86_64")
native = pytest.mark.skipif(not onednn.available(),
                            reason="the oneDNN extension is not loaded here")
NAMES = sorted(family.OPS)
ALL_NATIVE = dict(backprop_input="onednn", backprop_filter="onednn",
                  forward="onednn")


def test_the_extension_is_built_where_it_can_be():
  # pip install builds it on x86-64 Linux (CI runs there): not a skip.
  if BUILDS_HERE and os.environ.get("JAXCONV_ONEDNN", "1") != "0":
    assert onednn.available(), onednn.refusal(np.float32)
    assert np.dtype(np.float32) in onednn.dtypes()


def _native_jit(fn, *args):
  """fn(*args) jitted afresh with every primitive forced onto oneDNN
  (strictly); the strategies that lowered."""
  with lowering.force_strategy(**ALL_NATIVE, strict=True) as lowered:
    out = jax.jit(fn)(*args)
  return out, lowered


def _draw(name, count, seed):
  rng = np.random.default_rng(seed)
  return [family.OPS[name][1](rng, dtype="float32") for _ in range(count)]


@native
@pytest.mark.parametrize("name", NAMES)
def test_every_function_of_the_family(name):
  """Forced onto oneDNN: values against the float64 reference, gradients
  against XLA's strategies (zero sizes included, where drawn)."""
  for i, case in enumerate(_draw(name, 4, seed=NAMES.index(name))):
    f, tensors = family.as_function(case)
    tensors = [jnp.asarray(t, jnp.float32) for t in tensors]
    out, lowered = _native_jit(f, *tensors)
    want = family.reference_result(case.cfg, case.kwargs, case.arrays)
    assert_close(out, want, "float32", (name, case.cfg))
    empty = 0 in (*case.cfg["out_backprop_shape"], *case.cfg["input_sizes"],
                  *case.cfg["filter_shape"])
    assert empty or set(sum(
        (lowered.backprop_input, lowered.backprop_filter), [])) == {"onednn"}
    if i % 2:
      continue
    ct = jnp.asarray(np.random.default_rng(i).standard_normal(out.shape),
                     jnp.float32)
    grad = lambda *t: jax.grad(lambda *t: jnp.vdot(f(*t), ct),
                               argnums=tuple(range(len(t))))(*t)
    got, lowered = _native_jit(grad, *tensors)
    assert empty or {"onednn"} == set(
        lowered.backprop_input + lowered.backprop_filter + lowered.forward)
    with lowering.xla_strategies():
      want = jax.jit(grad)(*tensors)
    for g, w in zip(got, want):
      scale = max(1.0, float(jnp.max(jnp.abs(w)))) if w.size else 1.0
      np.testing.assert_allclose(g, w, rtol=0, atol=2e-5 * scale,
                                 err_msg=name)


def _native_compiled(fn, *args):
  """fn jitted and compiled with every primitive forced onto oneDNN
  (strictly), after asserting that every call lowered there."""
  with lowering.force_strategy(**ALL_NATIVE, strict=True) as lowered:
    compiled = jax.jit(fn).lower(*args).compile()
  assert {*lowered.backprop_input, *lowered.backprop_filter,
          *lowered.forward} == {"onednn"}, lowered
  return compiled


def _rounded(a, dtype):
  """`a` rounded to `dtype`, as float64: exact operands for both sides."""
  return np.asarray(jnp.asarray(a, dtype), np.float64)


def _partner_calls(spec, x, w, dy, dtype):
  """Both partners of `spec` compiled on oneDNN in `dtype`, each with its
  float64 standard form (JAX's convolutions): [(compiled, args, want)]."""
  calls = []
  x, w, dy = (_rounded(a, dtype) for a in (x, w, dy))
  for ours, standard, operands, params in (
      (cpu.forward, partners.forward, (x, w), {}),
      (cpu.backprop_filter, partners.backprop_filter, (x, dy),
       {"kernel": w.shape[:len(spec.strides)]})):
    args = tuple(jnp.asarray(a, dtype) for a in operands)
    compiled = _native_compiled(
        lambda a, b, f=ours: f(a, b, spec=spec, **params), *args)
    with jax.enable_x64(True):
      want = np.asarray(jax.jit(
          lambda a, b, f=standard: f(a, b, spec=spec, **params))(*operands))
    calls.append((compiled, args, want))
  return calls


# Timed per configuration (the default), then each policy pinned.
POLICIES = ("", *onednn.LAYOUTS)


@native
@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_every_attribute_class_on_every_layout_policy(ndim):
  """Random geometries (strides, dilations, explicit pads past the kernel,
  groups incl. depthwise, both layouts): the op and both partners, float32
  on oneDNN against float64, each compiled once and run on every layout
  policy (timed both ways; oneDNN's own; TF's for the activations)."""
  from jaxconv.lowering.cpu import _onednn
  rng = np.random.default_rng(20 + ndim)
  kinds, calls = set(), []
  for _ in range(12):
    spec, w, dy = configs.random_nd_case(rng, ndim)
    kinds.add(("grouped" if spec.groups > 1 else "dense", spec.channels_last,
               any(lo > 0 or hi > 0 for lo, hi in spec.padding)))
    args = (w.astype(np.float32), dy.astype(np.float32))
    op = _native_compiled(lambda w, dy, spec=spec: jaxconv.conv_backprop_input_p
                          .bind(w, dy, spec=spec), *args)
    want = reference_for_spec(w, dy, spec)
    calls.append((op, args, want, RTOL["float32"], spec))
    x = rng.standard_normal(want.shape)
    calls += [(*call, 1e-5, spec) for call in
              _partner_calls(spec, x, w, dy, np.float32)]
  assert {k[0] for k in kinds} == {"dense", "grouped"}
  assert {k[1] for k in kinds} == {True, False}
  for policy in POLICIES:
    tuned, built = onednn.layout_tuning()[0], _onednn.primitives_created()
    with onednn.pinned_layouts(policy):
      for compiled, args, want, tol, spec in calls:
        assert_close(compiled(*args), want, "float32", (policy, spec), tol)
    # Each policy builds its own primitives; a pinned one times nothing.
    assert _onednn.primitives_created() > built, policy
    if policy:
      assert onednn.layout_tuning()[0] == tuned, policy


@native
def test_half_precision_keeps_onednn_layouts_under_tf_layouts():
  """bfloat16 on TF's activation layouts gave wrong filter gradients in
  oneDNN 3.2: with "tf" pinned for float32, half precision keeps oneDNN's
  layouts.  Both partners of a 3-D layer that came out wrong then (a golden
  call: stride 3 over a depth of 1, SAME), and a VJP of the op."""
  if np.dtype(jnp.bfloat16) not in onednn.dtypes():
    pytest.skip("oneDNN has no bfloat16 kernel on this CPU")
  from jaxconv.lowering.geometry import ConvSpec  # the container only
  rng = np.random.default_rng(7)
  spec = ConvSpec(input_spatial=(3, 1, 4), strides=(1, 3, 2),
                  dilations=(1, 1, 1), padding=((0, 0), (1, 1), (0, 1)))
  x, w, dy = (rng.standard_normal(s) for s in
              ((2, 3, 1, 4, 4), (1, 3, 3, 4, 1), (2, 3, 1, 2, 1)))
  calls = _partner_calls(spec, x, w, dy, jnp.bfloat16)
  spec, w, dy = configs.random_nd_case(rng, 2)
  op = lambda w, dy: jaxconv.conv_backprop_input_p.bind(w, dy, spec=spec)
  ct = rng.standard_normal(reference_for_spec(w, dy, spec).shape)
  w, dy, ct = (_rounded(a, jnp.bfloat16) for a in (w, dy, ct))
  args = tuple(jnp.asarray(a, jnp.bfloat16) for a in (w, dy, ct))
  vjp = _native_compiled(lambda w, dy, ct: jax.vjp(op, w, dy)[1](ct), *args)
  with jax.enable_x64(True):  # d/dw: the filter gradient; d/dy: forward
    want = (partners.backprop_filter(ct, dy, spec=spec, kernel=w.shape[:2]),
            partners.forward(ct, w, spec=spec))
  with onednn.pinned_layouts("tf"):
    for compiled, args_, want_ in calls:
      assert_close(compiled(*args_), want_, "bfloat16", spec, 1e-2)
    for got, want_ in zip(vjp(*args), want):
      assert_close(got, np.asarray(want_), "bfloat16", "vjp", 1e-2)


@native
@pytest.mark.parametrize("layouts", ["tf", "blocked"])
def test_the_layout_policy_from_the_environment(layouts):
  """JAXCONV_ONEDNN_LAYOUTS pins the policy when the extension loads; a
  value it does not know is an error naming it, as pinned_layouts's."""
  script = ("from jaxconv.lowering.cpu import onednn, _onednn\n"
            "onednn.available()\nprint('policy', _onednn.layout_policy())")
  proc = subprocess.run([sys.executable, "-c", script], capture_output=True,
                        text=True, cwd=ROOT, timeout=120, env={
                            **os.environ, "JAXCONV_ONEDNN_LAYOUTS": layouts})
  if layouts == "blocked":
    assert proc.returncode != 0
    assert ("ValueError: JAXCONV_ONEDNN_LAYOUTS='blocked': expected one of "
            "('onednn', 'tf')") in proc.stderr, proc.stderr[-2000:]
    with pytest.raises(ValueError, match=r"^policy='blocked': expected one"):
      with onednn.pinned_layouts("blocked"):
        pass
  else:
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[-2:] == ["policy", layouts], proc.stdout


@native
def test_large_explicit_pads_huge_strides_and_empty_operands():
  spec = lowering.ConvSpec(input_spatial=(5, 4), strides=(2**31 - 1, 2),
                           dilations=(1, 2), padding=((6, 7), (3, 0)))
  rng = np.random.default_rng(3)
  w = rng.standard_normal((2, 2, 3, 4))
  dy = rng.standard_normal((2, 1, 3, 4))
  out, lowered = _native_jit(lambda w, dy: jaxconv.conv_backprop_input_p.bind(
      w, dy, spec=spec), w.astype(np.float32), dy.astype(np.float32))
  assert lowered.backprop_input == ["onednn"]
  assert_close(out, reference_for_spec(w, dy, spec), "float32")
  for batch, channels in ((0, 3), (2, 0)):
    x = jnp.ones((batch, 5, 4, channels), jnp.float32)
    got, _ = _native_jit(lambda x, w: cpu.forward(x, w, spec=spec), x,
                         jnp.ones((2, 2, channels, 4), jnp.float32))
    assert got.shape == (batch, 1, 3, 4) and not np.any(got)


@native
def test_chosen_automatically_for_float32_and_reported():
  config = LayerConfig()
  assert config.cpu_strategy()[0] == "onednn"
  assert config.cpu_strategy(for_export=True)[0] != "onednn"
  name, reason = cpu.choose(config.spec(), config.hwio_filter_sizes,
                            np.float32, 8)
  assert name == "onednn" and "oneDNN" in reason
  for dtype in ("float64", "int32"):
    assert cpu.choose(config.spec(), config.hwio_filter_sizes, dtype,
                      8)[0] != "onednn"
  for dtype in ("bfloat16", "float16"):
    chosen = cpu.choose(config.spec(), config.hwio_filter_sizes, dtype, 8)[0]
    assert (chosen == "onednn") == (np.dtype(dtype) in onednn.dtypes())
  with jax.enable_x64(True), pytest.raises(ValueError,
                                           match="no kernel for float64"):
    with lowering.force_strategy("onednn", strict=True):
      jax.jit(config.op_fn())(*(jnp.ones(s, jnp.float64) for s in (
          config.operand_shapes()[n] for n in config.operand_names())))


@native
def test_grouped_and_kernel_equals_stride_go_native_with_avx512():
  """The rule's ISA split (benchmarks/README.md, the AVX-512 suite): grouped
  input gradients and kernel == stride layers on oneDNN where its kernels
  are AVX-512 ones, on XLA's forms where they are AVX2; depthwise layers
  and grouped filter gradients on XLA's forms everywhere."""
  grouped = LayerConfig((8, 28, 28, 256), (3, 3, 8, 256), (1, 1, 1, 1))
  k2 = LayerConfig((8, 64, 64, 64), (2, 2, 64, 128), (1, 2, 2, 1))
  for config in (grouped, k2):
    assert (config.cpu_strategy()[0] == "onednn") == onednn.avx512(), config
  depthwise = LayerConfig((8, 56, 56, 128), (3, 3, 128, 1), (1, 2, 2, 1),
                          op="DepthwiseConv2dNativeBackpropInput")
  assert depthwise.cpu_strategy()[0] == "depthwise"
  grouped_filter = dataclasses.replace(grouped, op="Conv2DBackpropFilter")
  assert grouped_filter.cpu_strategy()[0] != "onednn"


@native
def test_exports_never_hold_the_custom_call():
  w = jnp.ones((3, 3, 8, 16), jnp.float32)
  dy = jnp.ones((2, 4, 4, 16), jnp.float32)

  def step(w, dy):
    f = lambda w, dy: jaxconv.conv2d_backprop_input([2, 8, 8, 8], w, dy,
                                                    [1, 2, 2, 1], "SAME")
    return jax.grad(lambda w, dy: jnp.sum(f(w, dy) ** 2), (0, 1))(w, dy)
  jitted = jax.jit(step).lower(w, dy).as_text()
  assert "jaxconv_onednn_conv" in jitted  # the native path is active here
  for text in (export.export(jax.jit(step))(w, dy).mlir_module(),
               export.export(jax.jit(step), platforms=("cpu", "cuda"))(
                   w, dy).mlir_module(),
               export_layer(LayerConfig(), cpu_strategy="auto").mlir_module(),
               export_layer(LayerConfig(), grad=True).mlir_module()):
    assert "stablehlo.custom_call" not in text
  with pytest.raises(ValueError, match="cannot carry"):
    export_layer(LayerConfig(), cpu_strategy="onednn")


@native
def test_each_primitive_is_built_once_per_configuration():
  from jaxconv.lowering.cpu import _onednn
  w = jnp.ones((3, 3, 5, 7), jnp.float32)
  dy = jnp.ones((1, 6, 5, 7), jnp.float32)
  f = lambda w, dy: jaxconv.conv2d_backprop_input([1, 11, 9, 5], w, dy,
                                                  [1, 2, 2, 1], "SAME")
  jax.jit(f)(w, dy).block_until_ready()
  built = _onednn.primitives_created()
  for _ in range(3):
    jax.clear_caches()  # a new executable: the handler's cache still holds
    jax.jit(f)(w, dy).block_until_ready()
  assert _onednn.primitives_created() == built


@native
def test_concurrent_calls_from_many_threads():
  rng = np.random.default_rng(5)
  cases = []
  for i in range(4):
    spec, w, dy = configs.random_nd_case(rng, 2, "float32")
    fn = jax.jit(lambda w, dy, spec=spec: jaxconv.conv_backprop_input_p.bind(
        w, dy, spec=spec))
    with lowering.force_strategy("onednn", strict=True):
      fn(w, dy).block_until_ready()
    cases.append((fn, w, dy, reference_for_spec(w, dy, spec)))
  errors = []

  def work(k):
    fn, w, dy, want = cases[k % len(cases)]
    try:
      for _ in range(20):
        assert_close(fn(w, dy), want, "float32")
    except Exception as e:  # noqa: BLE001 - reported below
      errors.append(e)
  threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
  for t in threads:
    t.start()
  for t in threads:
    t.join(timeout=120)
  assert not errors and not any(t.is_alive() for t in threads), errors


@native
def test_transformations_compose():
  """vmap (the batching rule folds the mapped axis into batch or groups),
  grad of grad, jvp and linear_transpose: values as on XLA's strategies."""
  rng = np.random.default_rng(7)
  w = jnp.asarray(rng.standard_normal((3, 3, 4, 6)), jnp.float32)
  dy = jnp.asarray(rng.standard_normal((3, 2, 5, 5, 6)), jnp.float32)
  op = lambda w, dy: jaxconv.conv2d_backprop_input([2, 10, 10, 4], w, dy,
                                                   [1, 2, 2, 1], "SAME")
  fns = {
      "vmap": (jax.vmap(op, (None, 0)), (w, dy)),
      "vmap both": (jax.vmap(op), (jnp.stack([w] * 3), dy)),
      "grad of grad": (jax.grad(lambda w, dy: jnp.sum(jax.grad(
          lambda w: jnp.sum(op(w, dy) ** 2))(w) ** 2)), (w, dy[0])),
      "jvp": (lambda w, dy: jax.jvp(op, (w, dy), (w, dy)), (w, dy[0])),
      "linear_transpose": (lambda w, dy: jax.linear_transpose(
          lambda d: op(w, d), dy)(op(w, dy)), (w, dy[0])),
  }
  for label, (fn, args) in fns.items():
    with lowering.force_strategy(**ALL_NATIVE) as lowered:
      got = jax.jit(fn)(*args)
    assert "onednn" in str(lowered), label
    with lowering.xla_strategies():
      want = jax.jit(fn)(*args)
    for g, e in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      scale = max(1.0, float(jnp.max(jnp.abs(e))))
      np.testing.assert_allclose(g, e, rtol=0, atol=1e-5 * scale,
                                 err_msg=label)


def test_turned_off_runs_on_xla_strategies_and_says_so():
  script = """
import jax, jax.numpy as jnp, numpy as np, jaxconv
from jaxconv import lowering, reference
rng = np.random.default_rng(0)
w, dy = rng.standard_normal((3, 3, 4, 8)), rng.standard_normal((1, 4, 4, 8))
with lowering.force_strategy() as lowered:
  out = jax.jit(lambda w, dy: jaxconv.conv2d_backprop_input(
      [1, 8, 8, 4], w, dy, [1, 2, 2, 1], "SAME"))(w, dy)
assert "onednn" not in str(lowered), lowered
want = reference.raw_backprop_input([1, 8, 8, 4], w, dy, strides=[1, 2, 2, 1],
                                    padding="SAME")
print(float(np.abs(out - want).max()))
"""
  env = {**os.environ, "JAXCONV_ONEDNN": "0", "PYTHONPATH": str(ROOT)}
  proc = subprocess.run([sys.executable, "-c", script], capture_output=True,
                        text=True, env=env, cwd=ROOT, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert float(proc.stdout.split()[-1]) < 1e-5
  lines = [l for l in proc.stderr.splitlines() if "oneDNN back end" in l]
  assert len(lines) == 1 and "JAXCONV_ONEDNN=0" in lines[0], proc.stderr


@pytest.mark.skipif(shutil.which("cmake") is None, reason="no cmake here")
@pytest.mark.parametrize("missing", ["dnnl", "compiler"])
def test_the_build_goes_on_without_the_extension(tmp_path, missing):
  """Where oneDNN's CMake package or a C++ compiler is missing, configuring
  the project succeeds and builds no extension (jaxconv still installs)."""
  flags = ["-DCMAKE_DISABLE_FIND_PACKAGE_dnnl=TRUE"] if missing == "dnnl" else []
  env = ({**os.environ, "CXX": "/nonexistent/c++"} if missing == "compiler"
         else os.environ)
  proc = subprocess.run(
      ["cmake", "-S", str(ROOT), "-B", str(tmp_path),
       f"-DPython_EXECUTABLE={sys.executable}", *flags],
      capture_output=True, text=True, env=env, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  said = " ".join((proc.stderr + proc.stdout).split())  # CMake wraps lines
  assert "the oneDNN back end is not built" in said
  assert "_onednn" not in (tmp_path / "Makefile").read_text()
