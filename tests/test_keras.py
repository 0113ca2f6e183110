"""`jaxconv.keras` on Keras's JAX backend (tests/keras_main.py, a child
process) against Keras's TF backend (this process) on the same weights:
every layer's values and gradients, stock layers under `use_jaxconv()`,
`fit`, `.keras` saving, Keras Variables as operands."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import require

require("keras", "tensorflow")
# `run` (module scope) runs the JAX child once per worker that needs it:
# the whole module on one worker (loadgroup, pyproject.toml) runs it once.
pytestmark = pytest.mark.xdist_group("keras")
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

import jaxconv.keras as jk  # noqa: E402

assert keras.backend.backend() == "tensorflow"  # conftest's

STOCK = {1: keras.layers.Conv1DTranspose, 2: keras.layers.Conv2DTranspose,
         3: keras.layers.Conv3DTranspose}
CASES = [  # rank, filters, kernel, strides, padding, output_padding,
           # dilation, data_format, use_bias, activation, input spatial
    (2, 4, 3, 2, "same", None, 1, "channels_last", True, None, (5, 6)),
    (2, 4, 3, 2, "same", 1, 1, "channels_last", True, "relu", (5, 5)),
    (2, 3, 4, 3, "valid", (2, 1), 1, "channels_last", False, None, (4, 3)),
    (2, 5, 3, 1, "same", None, 2, "channels_last", True, "tanh", (6, 5)),
    (2, 2, (5, 3), (2, 1), "valid", None, 1, "channels_first", True, None,
     (4, 5)),
    (2, 6, 1, 1, "valid", None, 1, "channels_last", True, None, (3, 3)),
    (1, 4, 5, 2, "same", None, 1, "channels_last", True, "sigmoid", (9,)),
    (1, 3, 4, 3, "valid", 2, 1, "channels_last", False, None, (7,)),
    (1, 2, 3, 1, "valid", None, 3, "channels_first", True, None, (8,)),
    (3, 3, 3, 2, "same", None, 1, "channels_last", True, None, (3, 4, 3)),
    (3, 2, 2, (2, 1, 2), "valid", (1, 0, 0), 1, "channels_last", True, "relu",
     (3, 3, 2)),
    (3, 2, 3, 1, "same", None, 1, "channels_first", False, None, (3, 3, 3)),
]
RNG = np.random.default_rng(0)


def _randn(*shape):
  return RNG.standard_normal(shape).astype(np.float32)


def _stock(case):
  rank, filters, k, s, pad, op, d, fmt, bias, act, spatial = case
  layer = STOCK[rank](filters, k, strides=s, padding=pad, output_padding=op,
                      dilation_rate=d, data_format=fmt, use_bias=bias,
                      activation=act, bias_initializer="random_normal")
  shape = (2, *spatial, 3) if fmt == "channels_last" else (2, 3, *spatial)
  x = _randn(*shape)
  layer.build(x.shape)
  return layer, x


def _tf_values_and_grads(layer, x, ct, xla):
  def run(x):
    with tf.GradientTape() as tape:
      tape.watch(x)
      y = layer(x)
      loss = tf.reduce_sum(y * ct)
    return [y, *tape.gradient(loss, [x, *layer.trainable_variables])]
  # TF's CPU kernels refuse channels-first and dilated transposed convs
  # here; its XLA lowering of the same Keras layer is the reference there.
  run = tf.function(run, jit_compile=xla)
  return [t.numpy() for t in run(tf.constant(x))]


def _fit_model(shape):
  i = keras.Input(shape)
  x = keras.layers.Conv2DTranspose(8, 3, strides=2, padding="same",
                                   activation="relu")(i)
  x = keras.layers.Conv2DTranspose(4, 3, strides=2, padding="valid",
                                   output_padding=1)(x)
  return keras.Model(i, keras.layers.Conv2DTranspose(3, 3, padding="same")(x))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """The cases in TF here and in the JAX child: (TF's results, the
  child's, the fit's TF side, the folder of the saved model)."""
  folder = tmp_path_factory.mktemp("keras")
  arrays, expected = {"cases": len(CASES)}, []
  for i, case in enumerate(CASES):
    layer, x = _stock(case)
    y = layer.compute_output_shape(x.shape)
    ct = _randn(*y)
    weights = layer.get_weights()
    arrays.update({f"{i}.config": json.dumps(layer.get_config()),
                   f"{i}.rank": case[0], f"{i}.x": x, f"{i}.ct": ct,
                   f"{i}.nw": len(weights)})
    arrays.update({f"{i}.w{j}": w for j, w in enumerate(weights)})
    expected.append(_tf_values_and_grads(
        layer, x, ct, case[7] == "channels_first" or case[6] != 1))
  keras.utils.set_random_seed(3)
  x, y = _randn(4, 5, 5, 3), _randn(4, 22, 22, 3)
  model = _fit_model(x.shape[1:])
  arrays.update({"fit.x": x, "fit.y": y, "fit.nw": len(model.weights)})
  arrays.update({f"fit.w{j}": w for j, w in enumerate(model.get_weights())})
  model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
  history = model.fit(x, y, epochs=3, batch_size=len(x), shuffle=False,
                      verbose=0)
  np.savez(folder / "in.npz", **arrays)
  env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
  subprocess.run([sys.executable, "-m", "tests.keras_main",
                  str(folder / "in.npz"), str(folder / "out.npz"),
                  str(folder)], check=True, env=env, timeout=600,
                 cwd=os.path.dirname(os.path.dirname(__file__)))
  got = dict(np.load(folder / "out.npz"))
  return expected, got, (model, history.history["loss"], x), folder


def _close(a, b, what):
  scale = max(float(np.max(np.abs(b))), 1.0) if b.size else 1.0
  assert a.shape == b.shape, (what, a.shape, b.shape)
  np.testing.assert_allclose(a, b, rtol=0, atol=3e-6 * scale, err_msg=what)


@pytest.mark.parametrize("i", range(len(CASES)), ids=[str(c) for c in CASES])
def test_layers_match_keras_tf_backend(run, i):
  """jaxconv.keras's layer and the stock layer under use_jaxconv(), on
  the JAX backend: values and gradients (input, kernel, bias) as TF's."""
  expected, got, _, _ = run
  for kind in ("ours", "stock"):
    assert got[f"{i}.{kind}.routed"], f"{kind} did not run on jaxconv"
    for j, want in enumerate(expected[i]):
      _close(got[f"{i}.{kind}.{j}"], want, f"{CASES[i]} {kind} output {j}")
  assert got[f"{i}.stock_after_undo"], "use_jaxconv's undo left jaxconv on"


def test_fit_matches_keras_tf_backend(run):
  _, got, (model, losses, _), _ = run
  np.testing.assert_allclose(got["fit.loss"], losses, rtol=2e-5)
  for j, w in enumerate(model.get_weights()):
    _close(got[f"fit.out{j}"], w, f"fitted weight {j}")


def test_keras_files_save_and_load_on_both_backends(run):
  """A .keras file saved on the JAX backend reloads there and here (TF
  backend, jaxconv.keras imported) as jaxconv's layers, same values."""
  _, got, (_, _, x), folder = run
  assert json.loads(str(got["fit.restored_types"])) == ["jaxconv.keras"] * 3
  np.testing.assert_array_equal(got["fit.restored_predict"],
                                got["fit.predict"])
  restored = keras.saving.load_model(folder / "model.keras")
  assert all(isinstance(layer, (jk.Conv2DTranspose)) for layer in
             restored.layers[1:])
  _close(restored.predict(x, verbose=0), got["fit.predict"],
         "reloaded on the TF backend")


def test_keras_variables_are_operands(run):
  _, got, _, _ = run
  np.testing.assert_array_equal(got["variable.got"], got["variable.want"])


def test_layers_defer_to_keras_on_other_backends():
  layer, x = _stock(CASES[1])
  ours = jk.Conv2DTranspose.from_config(layer.get_config())
  ours.build(x.shape)
  ours.set_weights(layer.get_weights())
  np.testing.assert_array_equal(ours(x).numpy(), layer(x).numpy())


def test_a_changed_keras_internal_fails_loudly(monkeypatch):
  from keras.src.backend.jax import nn

  monkeypatch.setattr(nn, "conv_transpose", lambda inputs, kernel: None)
  with pytest.raises(RuntimeError, match="cannot route Keras"):
    jk.use_jaxconv()
