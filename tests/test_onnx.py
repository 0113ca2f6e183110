"""`jaxconv.onnx`: the family converted by jax2onnx and run in ONNX Runtime,
against TF's golden data (tests/golden/) and the JAX result; symbolic
batch, dtypes, node counts, a training step, Keras's own ONNX export."""
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import assert_close, require

require("jax2onnx", "onnxruntime", "onnx")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jax2onnx  # noqa: E402
import ml_dtypes  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402

import jaxconv  # noqa: E402
import jaxconv.onnx  # noqa: E402,F401
from tests import family  # noqa: E402
from tests import test_golden as golden  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _session(model):
  options = ort.SessionOptions()
  options.log_severity_level = 3
  return ort.InferenceSession(model.SerializeToString(), options,
                              providers=["CPUExecutionProvider"])


def run_onnx(f, *arrays, inputs=None):
  """f converted by jax2onnx (inputs: its specs, default the arrays'),
  run in ONNX Runtime on `arrays`: (outputs, model)."""
  model = jax2onnx.to_onnx(
      f, inputs or [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in arrays])
  session = _session(model)
  feeds = {}
  for spec, a in zip(session.get_inputs(), arrays):
    if a.dtype == ml_dtypes.bfloat16:  # ORT's numpy bridge lacks bfloat16
      a = ort.OrtValue.ortvalue_from_numpy_with_onnx_type(
          np.ascontiguousarray(a).view(np.uint16), onnx.TensorProto.BFLOAT16)
    feeds[spec.name] = a
  return session.run(None, feeds), model


def ops_of(model):
  return [n.op_type for n in model.graph.node]


# --- the golden replay ------------------------------------------------------


def _tensor_names(kwargs):
  return [v[1:] for v in kwargs.values()
          if isinstance(v, str) and v.startswith("$")]


def _golden_function(call):
  """f(*tensors) calling the call's jaxconv function, and the tensors."""
  names = _tensor_names(call["kwargs"])

  def f(*tensors):
    given = dict(zip(names, tensors))
    kwargs = {k: given.get(v[1:], v) if isinstance(v, str) else v
              for k, v in call["kwargs"].items()}
    return family.function(call["fn"])(
        **family.resolve(kwargs, {}, tensors[0].dtype))
  return f, names


def _groups(cfg) -> int:
  sizes = cfg["input_sizes"]
  if len(sizes) != len(cfg["strides"]):
    return 1  # spatial-only sizes
  depth = sizes[-1] if cfg["data_format"][-1] == "C" else sizes[1]
  return depth // cfg["filter_shape"][-2] if cfg["filter_shape"][-2] else 1


def _empty(cfg) -> bool:
  return 0 in cfg["out_backprop_shape"] or 0 in cfg["input_sizes"]


def _selected():
  """A fifth of the float32 golden calls of every function, with every
  crop and empty case; one in 15 float16 ones."""
  chosen, seen = [], {}
  for i, call in enumerate(golden.CALLS):
    k = seen[call["fn"], call["dtype"]] = seen.get(
        (call["fn"], call["dtype"]), -1) + 1
    cfg = call["cfg"]
    if call["dtype"] == "float32" and (k % 5 == 0 or family.crops(cfg)
                                       or _empty(cfg)):
      chosen.append(i)
    elif call["dtype"] == "float16" and k % 15 == 0:
      chosen.append(i)
  return chosen


SELECTED = _selected()


def test_the_replay_covers_the_family_broadly():
  calls = [golden.CALLS[i] for i in SELECTED]
  cfgs = [c["cfg"] for c in calls]
  assert len(calls) >= 60
  assert {c["fn"] for c in calls} == set(family.OPS)
  assert {c["padding"] for c in cfgs} == {"SAME", "VALID", "EXPLICIT"}
  assert any(family.crops(c) for c in cfgs) and any(_empty(c) for c in cfgs)
  assert any(max(c["strides"]) > 1 for c in cfgs)
  assert any(max(c["dilations"]) > 1 for c in cfgs)
  assert {c["data_format"][-1] == "C" for c in cfgs} == {True, False}
  assert {len(c["strides"]) - 2 for c in cfgs} == {1, 2, 3}
  assert any("Depthwise" in c["fn"] or "depthwise" in c["fn"] for c in calls)
  # Odd sizes (TF's that lax.conv_transpose cannot give) and groups.
  assert any(s % 2 for c in cfgs for s in family.spatial(
      c["input_sizes"], c["data_format"]) if len(c["input_sizes"]) > 2)
  assert any(_groups(c) > 1 for c in cfgs)
  assert {c["dtype"] for c in calls} == {"float32", "float16"}


@pytest.mark.parametrize("i", SELECTED)
def test_onnx_runtime_matches_tensorflow_and_jax(i):
  call, arrays = golden.CALLS[i], golden._arrays(i)
  dtype = call["dtype"]
  f, names = _golden_function(call)
  tensors = [arrays[n].astype(dtype) for n in names]
  (out,), model = run_onnx(f, *tensors)
  context = (call["fn"], call["cfg"])
  assert str(out.dtype) == dtype, context
  assert_close(out, golden.GOLDEN[f"{i}.out"].astype(np.float64), dtype,
               context)
  assert_close(out, np.asarray(f(*tensors)).astype(np.float64), dtype,
               context)
  # One convolution node (an empty result: none, only zeros).
  convs = [op for op in ops_of(model) if op in ("Conv", "ConvTranspose")]
  assert len(convs) == (0 if _empty(call["cfg"]) else 1), ops_of(model)


# --- shapes, dtypes, node counts --------------------------------------------


def _up2d(dy, w):
  return jaxconv.nn.conv2d_transpose(dy, w, (dy.shape[0], 13, 13, 4), 2,
                                     "SAME")


def _up3d_ncdhw(dy, w):
  return jaxconv.nn.conv3d_transpose(dy, w, (dy.shape[0], 3, 7, 6, 11),
                                     [1, 1, 2, 1, 2], "VALID", "NCDHW")


def _filter_grad(x, w, dy):
  return jaxconv.raw_ops.Conv2DBackpropFilterV2(
      input=x, filter=w, out_backprop=dy, strides=[1, 2, 2, 1],
      padding="SAME")


def _depthwise_filter_grad(x, dy):
  return jaxconv.raw_ops.DepthwiseConv2dNativeBackpropFilter(
      input=x, filter_sizes=[3, 3, 4, 2], out_backprop=dy,
      strides=[1, 1, 1, 1], padding="VALID")


SYMBOLIC = {  # f: its tensors' shapes, "B" the batch
    _up2d: [("B", 7, 7, 8), (3, 3, 4, 8)],
    _up3d_ncdhw: [("B", 6, 3, 4, 5), (2, 3, 2, 3, 6)],
    _filter_grad: [("B", 9, 9, 4), (3, 3, 4, 6), ("B", 5, 5, 6)],
    _depthwise_filter_grad: [("B", 6, 6, 4), ("B", 4, 4, 8)],
}


@pytest.mark.parametrize("f", SYMBOLIC, ids=lambda f: f.__name__)
def test_a_symbolic_batch_runs_at_any_batch(f):
  shapes = SYMBOLIC[f]
  model = jax2onnx.to_onnx(f, shapes)
  assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "B"
  session = _session(model)
  rng = np.random.default_rng(0)
  for batch in (1, 3, 5):
    arrays = [rng.standard_normal([batch if d == "B" else d for d in s])
              .astype(np.float32) for s in shapes]
    out, = session.run(None, {s.name: a for s, a in
                              zip(session.get_inputs(), arrays)})
    assert_close(out, np.asarray(f(*arrays)).astype(np.float64), "float32",
                 (f.__name__, batch))


def _transpose_case(dtype):
  rng = np.random.default_rng(0)
  dy = rng.standard_normal((2, 5, 5, 6)).astype(dtype)
  w = rng.standard_normal((3, 3, 4, 6)).astype(dtype)

  def f(dy, w):
    return jaxconv.nn.conv2d_transpose(dy, w, (2, 12, 12, 4), strides=2,
                                       padding="VALID")
  return f, dy, w


def test_the_op_is_one_conv_transpose_with_tf_sizes():
  f, dy, w = _transpose_case(np.float32)
  (out,), model = run_onnx(f, dy, w)
  assert out.shape == (2, 12, 12, 4)  # a row TF adds: output_padding
  assert sorted(ops_of(model)) == ["ConvTranspose"] + ["Transpose"] * 3
  assert_close(out, np.asarray(f(dy, w)).astype(np.float64), "float32")


def test_bfloat16_is_computed_in_float32_between_casts():
  f, dy, w = _transpose_case(ml_dtypes.bfloat16)
  (out,), model = run_onnx(lambda *a: f(*a).astype(jnp.float32), dy, w)
  assert ops_of(model).count("Cast") >= 3  # two operands in, one out
  want = np.asarray(f(dy, w)).astype(np.float64)
  assert_close(out, want, "bfloat16")


def test_float64_is_refused_with_the_dtype_named():
  with jax.enable_x64(True):
    f, dy, w = _transpose_case(np.float64)
    with pytest.raises(ValueError, match="float64.*no float64 kernel"):
      jax2onnx.to_onnx(f, [jax.ShapeDtypeStruct(a.shape, a.dtype)
                           for a in (dy, w)], enable_double_precision=True)


# --- a training step ---------------------------------------------------------


def test_a_training_step_converts_and_runs():
  """loss(w1, w2) of a two-layer decoder; its gradients (the filter
  gradient and forward partners) and one SGD step, as one ONNX graph."""
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 4, 4, 8)).astype(np.float32)
  target = rng.standard_normal((2, 15, 15, 2)).astype(np.float32)
  w1 = rng.standard_normal((3, 3, 4, 8)).astype(np.float32) * 0.3
  w2 = rng.standard_normal((3, 3, 2, 4)).astype(np.float32) * 0.3

  def loss(w1, w2, x, target):
    h = jax.nn.relu(jaxconv.nn.conv2d_transpose(x, w1, (2, 8, 8, 4), 2,
                                                "SAME"))
    y = jaxconv.nn.conv2d_transpose(h, w2, (2, 15, 15, 2), 2, "SAME")
    return jnp.mean((y - target) ** 2)

  def step(w1, w2, x, target):
    value, (g1, g2) = jax.value_and_grad(loss, (0, 1))(w1, w2, x, target)
    return value, w1 - 0.1 * g1, w2 - 0.1 * g2

  got, model = run_onnx(step, w1, w2, x, target)
  ops = ops_of(model)
  assert ops.count("ConvTranspose") == 2 and ops.count("Conv") == 3, ops
  for g, want in zip(got, step(w1, w2, x, target)):
    assert_close(g, np.asarray(want).astype(np.float64), "float32")


def test_nested_jits_around_the_op_convert():
  """jnp.where and an inner jax.jit (nested `jit` equations: jax2onnx
  0.17's jit plugin needs jaxconv.onnx's mend on JAX 0.12)."""
  rng = np.random.default_rng(0)
  w = rng.standard_normal((3, 3, 4, 8)).astype(np.float32)
  dy = rng.standard_normal((2, 4, 4, 8)).astype(np.float32)

  def f(w, dy):
    y = jaxconv.nn.conv2d_transpose(dy, w, (2, 7, 7, 4), 2, "SAME")
    return jnp.where(y > 0, y, 0.1 * y) + jax.jit(lambda v: v * v)(y)

  (got,), model = run_onnx(f, w, dy)
  assert ops_of(model).count("ConvTranspose") == 1
  assert_close(got, np.asarray(f(w, dy), np.float64), "float32")


# --- Keras's own export; jax2onnx's internals ------------------------------


def test_keras_exports_a_jaxconv_decoder_to_onnx(tmp_path):
  require("keras")
  env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": str(ROOT)}
  subprocess.run([sys.executable, "-m", "tests.onnx_keras_main",
                  str(tmp_path)], check=True, env=env, cwd=ROOT, timeout=300)
  model = onnx.load(tmp_path / "decoder.onnx")
  assert ops_of(model).count("ConvTranspose") == 3
  io = np.load(tmp_path / "io.npz")
  session = _session(model)
  for batch in (2, 1):  # Keras leaves the batch symbolic
    inputs = [io[f"arr_{k}"][:batch] for k in range(3)]
    out, = session.run(None, {s.name: a for s, a in
                              zip(session.get_inputs(), inputs)})
    assert out.shape == (batch, 15, 15, 1)
    assert_close(out, io["predicted"][:batch].astype(np.float64), "float32")


def test_changed_jax2onnx_internals_fail_loudly():
  code = ("import sys, types; "
          "sys.modules['jax2onnx.plugins.plugin_system'] = "
          "types.ModuleType('jax2onnx.plugins.plugin_system'); "
          "import jaxconv.onnx")
  run = subprocess.run([sys.executable, "-c", code], capture_output=True,
                       text=True, cwd=ROOT, timeout=120)
  assert run.returncode != 0
  assert "ImportError: jaxconv.onnx cannot register its lowerings" in (
      run.stderr), run.stderr[-2000:]
  assert ">=0.17,<0.18" in run.stderr
