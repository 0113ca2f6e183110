"""`jaxconv.deploy` and `jaxconv export --format onnx|tflite|serialized
--vjp-order`: the files run in ONNX Runtime, TFLite's interpreter and JAX
against the float64 NumPy reference."""
import numpy as np
import pytest

from tests.helpers import assert_close, require, run_reference

require("jax2onnx", "onnxruntime", "tensorflow")

import jax  # noqa: E402
import onnxruntime as ort  # noqa: E402
from jax import export as jax_export  # noqa: E402

from jaxconv import cli, deploy  # noqa: E402
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


@pytest.mark.parametrize("name", CASES)
def test_tflite_export_matches_the_reference(tmp_path, name, capsys):
  import tensorflow as tf
  config, path = CASES[name], tmp_path / "up.tflite"
  args = ["export", "--input-sizes", ",".join(map(str, config.input_sizes)),
          "--filter-sizes", ",".join(map(str, config.filter_sizes)),
          "--strides", "1,2,2,1", "--padding", config.padding,
          "--format", "tflite", "-o", str(path)]
  assert cli.main(args) == 0
  assert "checked in TFLite's interpreter" in capsys.readouterr().err
  interpreter = tf.lite.Interpreter(model_path=str(path))
  interpreter.allocate_tensors()
  filt, dy = _operands(config)
  for detail, a in zip(interpreter.get_input_details(), (filt, dy)):
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
    (["--vjp-order", "1", "--format", "onnx", "-o", "x"], "--vjp-order"),
    (["--format", "tflite", "--grad", "-o", "x"], "--grad"),
    (["--format", "onnx", "--platforms", "cpu", "-o", "x"], "--platforms")])
def test_format_flag_conflicts_are_named(flags, message, capsys):
  with pytest.raises(SystemExit):
    cli.main(["export", *flags])
  assert message in capsys.readouterr().err
