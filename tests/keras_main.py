"""The JAX-backend half of tests/test_keras.py, in a child process (Keras's
backend is fixed per process; the tests' is TensorFlow, the reference).

    KERAS_BACKEND=jax python -m tests.keras_main IN.npz OUT.npz DIR

IN holds each case's layer config, weights, input and cotangent, and the
fit model's weights and data; OUT gets what jaxconv.keras computes (values,
gradients, the stock layer's under use_jaxconv(), the fitted weights and
losses, predictions of the .keras file saved to DIR and reloaded).
"""
import contextlib
import json
import os
import pathlib
import sys

assert os.environ.get("KERAS_BACKEND") == "jax"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

import jaxconv  # noqa: E402
import jaxconv.keras as jk  # noqa: E402

STOCK = {1: keras.layers.Conv1DTranspose, 2: keras.layers.Conv2DTranspose,
         3: keras.layers.Conv3DTranspose}
OURS = {1: jk.Conv1DTranspose, 2: jk.Conv2DTranspose, 3: jk.Conv3DTranspose}


def _uses_jaxconv(layer, x) -> bool:
  # A new function each time: JAX caches the traces of one.
  text = str(jax.make_jaxpr(lambda v: layer(v))(x))
  return "conv_backprop_input" in text and "conv_general_dilated" not in text


def _values_and_grads(layer, x, ct):
  """y, and d(sum(y * ct)) by the input and each weight."""
  weights = [v.value for v in layer.trainable_variables]

  def loss(x, weights):
    y, _ = layer.stateless_call(weights, [], x)
    return jnp.sum(y * ct), y
  (_, y), (dx, dw) = jax.value_and_grad(loss, (0, 1), has_aux=True)(
      x, weights)
  return [y, dx, *dw]


def _case(out, i, arrays):
  cfg = json.loads(str(arrays[f"{i}.config"]))
  rank = int(arrays[f"{i}.rank"])
  x, ct = arrays[f"{i}.x"], arrays[f"{i}.ct"]
  weights = [arrays[f"{i}.w{j}"] for j in range(int(arrays[f"{i}.nw"]))]
  for kind, cls in (("ours", OURS[rank]), ("stock", STOCK[rank])):
    layer = cls.from_config(cfg)
    layer.build(x.shape)
    layer.set_weights(weights)
    with jk.use_jaxconv() if kind == "stock" else contextlib.nullcontext():
      results = _values_and_grads(layer, x, ct)
      out[f"{i}.{kind}.routed"] = _uses_jaxconv(layer, x)
    for j, r in enumerate(results):
      out[f"{i}.{kind}.{j}"] = np.asarray(r)
  out[f"{i}.stock_after_undo"] = not _uses_jaxconv(layer, x)


def _fit_model(shape):
  i = keras.Input(shape)
  x = jk.Conv2DTranspose(8, 3, strides=2, padding="same",
                         activation="relu")(i)
  x = jk.Conv2DTranspose(4, 3, strides=2, padding="valid",
                         output_padding=1)(x)
  return keras.Model(i, jk.Conv2DTranspose(3, 3, padding="same")(x))


def _fit(out, arrays, folder):
  x, y = arrays["fit.x"], arrays["fit.y"]
  model = _fit_model(x.shape[1:])
  model.set_weights([arrays[f"fit.w{j}"]
                     for j in range(int(arrays["fit.nw"]))])
  model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
  history = model.fit(x, y, epochs=3, batch_size=len(x), shuffle=False,
                      verbose=0)
  out["fit.loss"] = np.asarray(history.history["loss"])
  for j, w in enumerate(model.get_weights()):
    out[f"fit.out{j}"] = w
  out["fit.nout"] = len(model.get_weights())
  path = pathlib.Path(folder) / "model.keras"
  model.save(path)
  restored = keras.saving.load_model(path)
  out["fit.restored_types"] = json.dumps(
      [type(layer).__module__ for layer in restored.layers[1:]])
  out["fit.predict"] = np.asarray(model.predict(x, verbose=0))
  out["fit.restored_predict"] = np.asarray(restored.predict(x, verbose=0))


def _variables(out, arrays):
  """A Keras Variable as an operand of the family's functions."""
  w = arrays["fit.w0"]  # [3, 3, 8, C]
  dy = np.arange(16 * w.shape[-1], dtype=np.float32).reshape(
      1, 4, 4, w.shape[-1])
  kwargs = dict(output_shape=[1, 8, 8, w.shape[2]], strides=2)
  out["variable.got"] = np.asarray(jaxconv.nn.conv2d_transpose(
      dy, keras.Variable(w), **kwargs))
  out["variable.want"] = np.asarray(jaxconv.nn.conv2d_transpose(
      dy, jnp.asarray(w), **kwargs))


def main(source, target, folder):
  arrays = dict(np.load(source))
  out = {}
  for i in range(int(arrays["cases"])):
    _case(out, i, arrays)
  _fit(out, arrays, folder)
  _variables(out, arrays)
  np.savez(target, **out)


if __name__ == "__main__":
  main(*sys.argv[1:])
