"""`jaxconv.deploy` and `jaxconv export --format onnx|tflite|serialized
--vjp-order`: the files run in ONNX Runtime, TFLite's interpreter and JAX
against the float64 NumPy reference; a jax2tf SavedModel for every
platform, reloaded, against TF's own op and its gradients."""
import warnings

import numpy as np
import pytest

from tests.helpers import assert_close, require, run_reference

require("jax2onnx", "onnxruntime", "tensorflow")

import jax  # noqa: E402
import onnxruntime as ort  # noqa: E402
from jax import export as jax_export  # noqa: E402

import jaxconv  # noqa: E402
from jaxconv import cli  # noqa: E402
from jaxconv.export import LayerConfig, layer_function  # noqa: E402

CASES = {"odd": LayerConfig((1, 7, 7, 8), (3, 3, 8, 16), (1, 2, 2, 1), "SAME"),
         "even": LayerConfig((1, 8, 8, 8), (3, 3, 8, 16), (1, 2, 2, 1),
                             "VALID")}


def _operands(config, batch=None):
  rng = np.random.default_rng(1)
  shapes = config.operand_shapes(batch)
  return [rng.standard_normal(shapes[n]).astype(np.float32)
          for n in config.operand_names()]


def _reference(config, filt, dy):
  cfg = dict(input_sizes=[dy.shape[0], *config.input_sizes[1:]],
             strides=config.strides, padding=config.padding,
             explicit_paddings=config.explicit_paddings,
             data_format=config.data_format, dilations=config.dilations)
  return run_reference(cfg, filt, dy)


@pytest.mark.parametrize("filter_kind", ["input", "constant"])
@pytest.mark.parametrize("name", CASES)
def test_tflite_export_matches_the_reference(tmp_path, name, filter_kind,
                                             capsys):
  """Odd and even sizes, the filter an input or a constant (TFLite's
  converter turns a constant one into TRANSPOSE_CONV weights)."""
  import tensorflow as tf
  config, path = CASES[name], tmp_path / "up.tflite"
  filt, dy = _operands(config)
  args = ["export", "--input-sizes", ",".join(map(str, config.input_sizes)),
          "--filter-sizes", ",".join(map(str, config.filter_sizes)),
          "--strides", "1,2,2,1", "--padding", config.padding,
          "--format", "tflite", "-o", str(path)]
  inputs = (filt, dy)
  if filter_kind == "constant":
    np.save(tmp_path / "w.npy", filt)
    args += ["--filter-values", str(tmp_path / "w.npy")]
    inputs = (dy,)
  assert cli.main(args) == 0
  assert "checked in TFLite's interpreter" in capsys.readouterr().err
  interpreter = tf.lite.Interpreter(model_path=str(path))
  interpreter.allocate_tensors()
  details = interpreter.get_input_details()
  assert [tuple(d["shape"]) for d in details] == [a.shape for a in inputs]
  for detail, a in zip(details, inputs):
    interpreter.set_tensor(detail["index"], a)
  interpreter.invoke()
  out = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
  assert_close(out, _reference(config, filt, dy), "float32")


def test_onnx_export_with_a_symbolic_batch(tmp_path):
  config, path = CASES["odd"], tmp_path / "up.onnx"
  assert cli.main(["export", "--input-sizes", "1,7,7,8", "--filter-sizes",
                   "3,3,8,16", "--batch", "N", "--format", "onnx", "-o",
                   str(path)]) == 0
  session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
  for batch in (1, 3):
    filt, dy = _operands(config, batch)
    out, = session.run(None, {s.name: a for s, a in
                              zip(session.get_inputs(), (filt, dy))})
    assert_close(out, _reference(config, filt, dy), "float32")


def test_vjp_order_two_differentiates_the_vjp(tmp_path):
  config, path = CASES["odd"], tmp_path / "up.bin"
  assert cli.main(["export", "--input-sizes", "1,7,7,8", "--filter-sizes",
                   "3,3,8,16", "--grad", "--format", "serialized",
                   "--vjp-order", "2", "-o", str(path)]) == 0
  exported = jax_export.deserialize(bytearray(path.read_bytes()))
  filt, dy = _operands(config)
  ct = np.random.default_rng(2).standard_normal((1, 7, 7, 8)).astype(
      np.float32)
  fn, _ = layer_function(config, grad=True)

  def second(call):  # two orders of derivatives of the artifact's call
    def first(d):
      return jax.grad(lambda e: (call(filt, e, ct)[1] ** 3).sum())(d)
    return jax.grad(lambda d: (first(d) ** 2).sum())(dy)
  got, want = second(exported.call), second(fn)
  assert np.max(np.abs(want)) > 0
  assert_close(got, np.asarray(want, np.float64), "float32")


@pytest.mark.parametrize("flags, message", [
    (["--format", "onnx"], "needs -o"),
    (["--filter-values", "missing.npy"], "--filter-values: cannot read"),
    (["--op", "Conv2DBackpropFilter", "--filter-values", "{w}"],
     "--filter-values: filter_values: Conv2DBackpropFilter takes no filter"),
    (["--filter-sizes", "3,3,8,4", "--input-sizes", "1,7,7,8",
      "--filter-values", "{w}"], "is not the filter's [3, 3, 8, 4]"),
    (["--vjp-order", "1", "--format", "onnx", "-o", "x"], "--vjp-order"),
    (["--format", "tflite", "--grad", "-o", "x"], "--grad"),
    (["--format", "onnx", "--platforms", "cpu", "-o", "x"], "--platforms")])
def test_format_flag_conflicts_are_named(flags, message, capsys, tmp_path):
  np.save(tmp_path / "w.npy", np.ones((3, 3, 8, 16), np.float32))
  with pytest.raises(SystemExit):
    cli.main(["export", *(f.format(w=tmp_path / "w.npy") for f in flags)])
  assert message in capsys.readouterr().err


# --- jax2tf: a SavedModel for every platform, with gradients ---------------


def _decoder(w1, w2, x):
  """Two TF-sized transposed convolutions (4x4 -> 7x7 -> 14x14)."""
  n = x.shape[0]
  h = jax.nn.relu(jaxconv.nn.conv2d_transpose(x, w1, (n, 7, 7, 4), 2, "SAME"))
  return jaxconv.nn.conv2d_transpose(h, w2, (n, 14, 14, 2), 2, "SAME")


def _tf_decoder(tf, w1, w2, x):
  n = tf.shape(x)[0]
  h = tf.nn.relu(tf.nn.conv2d_transpose(x, w1, tf.stack([n, 7, 7, 4]), 2,
                                        "SAME"))
  return tf.nn.conv2d_transpose(h, w2, tf.stack([n, 14, 14, 2]), 2, "SAME")


def _xla_call_module_platforms(tf, saved_model_dir):
  """The `platforms` of every XlaCallModule op a SavedModel holds."""
  from tensorflow.core.protobuf import saved_model_pb2
  proto = saved_model_pb2.SavedModel()
  proto.ParseFromString((saved_model_dir / "saved_model.pb").read_bytes())
  graph = proto.meta_graphs[0].graph_def
  nodes = [*graph.node, *(n for f in graph.library.function
                          for n in f.node_def)]
  return [tuple(p.decode() for p in n.attr["platforms"].list.s)
          for n in nodes if n.op == "XlaCallModule"]


# A symbolic dimension puts shape assertions in the module, which TF 2.21's
# StableHLO cannot read from jax 0.12 ("unregistered operation
# 'vhlo.custom_call_v2'": outside jax.export's 4-week forward
# compatibility); from jax 0.10.2 it can (README, Deploy).
SYMBOLIC_BATCH_IN_TF = tuple(
    int(v) for v in jax.__version__.split(".")[:2]) < (0, 12)


def test_jax2tf_saved_model_for_every_platform_with_gradients(tmp_path):
  """README's jax2tf path: native serialization for cpu, cuda and tpu (no
  CPU-only warning), a symbolic batch where TF reads it, custom gradients
  saved; reloaded, values and filter gradients match TF's own
  conv2d_transpose."""
  import tensorflow as tf
  from jax.experimental import jax2tf
  rng = np.random.default_rng(3)
  w1 = rng.standard_normal((3, 3, 4, 8)).astype(np.float32) * 0.3
  w2 = rng.standard_normal((3, 3, 2, 4)).astype(np.float32) * 0.3
  module = tf.Module()
  module.w1, module.w2 = tf.Variable(w1), tf.Variable(w2)
  batches = (1, 3) if SYMBOLIC_BATCH_IN_TF else (3,)
  converted = jax2tf.convert(
      _decoder, native_serialization_platforms=("cpu", "cuda", "tpu"),
      polymorphic_shapes=[None, None, "(b, 4, 4, 8)"]
      if SYMBOLIC_BATCH_IN_TF else None)
  module.decode = tf.function(
      lambda x: converted(module.w1, module.w2, x), autograph=False,
      input_signature=[tf.TensorSpec(
          (None if SYMBOLIC_BATCH_IN_TF else 3, 4, 4, 8), tf.float32)])
  with warnings.catch_warnings():
    warnings.simplefilter("error", jaxconv.CpuOnlyExportWarning)
    tf.saved_model.save(module, str(tmp_path), options=tf.saved_model.SaveOptions(
        experimental_custom_gradients=True))
  platforms = _xla_call_module_platforms(tf, tmp_path)
  assert len(platforms) >= 2, platforms  # the decoder and its VJP
  assert set(platforms) == {("CPU", "CUDA", "TPU")}, platforms

  loaded = tf.saved_model.load(str(tmp_path))
  for batch in batches:
    x = tf.constant(rng.standard_normal((batch, 4, 4, 8)).astype(np.float32))
    with tf.GradientTape() as tape:
      y = loaded.decode(x)
      loss = tf.reduce_sum(y * y)
    got = [y, *tape.gradient(loss, [loaded.w1, loaded.w2])]
    v1, v2 = tf.Variable(w1), tf.Variable(w2)
    with tf.GradientTape() as tape:
      y_tf = _tf_decoder(tf, v1, v2, x)
      loss_tf = tf.reduce_sum(y_tf * y_tf)
    want = [y_tf, *tape.gradient(loss_tf, [v1, v2])]
    for g, w in zip(got, want):
      assert_close(g.numpy(), w.numpy().astype(np.float64), "float32")


def test_jax2tf_for_cpu_alone_warns_and_portable_does_not():
  from jax.experimental import jax2tf
  w1 = np.ones((3, 3, 4, 8), np.float32)
  w2 = np.ones((3, 3, 2, 4), np.float32)
  x = np.ones((2, 4, 4, 8), np.float32)
  with pytest.warns(jaxconv.CpuOnlyExportWarning, match="runs on CPU only"):
    jax2tf.convert(_decoder)(w1, w2, x)  # this machine's platform: cpu
  with warnings.catch_warnings():
    warnings.simplefilter("error", jaxconv.CpuOnlyExportWarning)
    with jaxconv.portable():
      jax2tf.convert(_decoder)(w1, w2, x)


def test_readme_deploy_examples_run(tmp_path, monkeypatch):
  import pathlib
  import re
  readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md"
            ).read_text()
  start = readme.index("## Deploy")
  section = readme[start:readme.index("\n## ", start + 1)]
  blocks = re.findall(r"```python\n(.*?)```", section, re.S)
  assert len(blocks) == 2
  monkeypatch.chdir(tmp_path)
  namespace = {}
  with warnings.catch_warnings():
    warnings.simplefilter("error", jaxconv.CpuOnlyExportWarning)
    for block in blocks:
      exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102
  assert (tmp_path / "up_savedmodel" / "saved_model.pb").exists()


@pytest.mark.parametrize("platforms, note", [([], True),
                                             (["--platforms", "cpu,cuda"],
                                              False)])
def test_cli_notes_an_artifact_for_cpu_alone(tmp_path, capsys, platforms,
                                             note):
  assert cli.main(["export", "--input-sizes", "1,7,7,8", "--filter-sizes",
                   "3,3,8,16", "--cpu-strategy", "auto", *platforms, "-o",
                   str(tmp_path / "up.mlir")]) == 0
  err = capsys.readouterr().err
  assert ("note: an artifact for cpu alone" in err) is note, err
  assert "CpuOnlyExportWarning" not in err
