"""The Keras half of tests/test_onnx.py, in a child process (Keras's backend
is fixed per process): a U-Net decoder of jaxconv.keras layers exported
with Keras's own `model.export(format="onnx")` on the JAX backend.

    KERAS_BACKEND=jax python -m tests.onnx_keras_main DIR

Writes DIR/decoder.onnx and DIR/io.npz (the inputs and Keras's predictions).
"""
import os
import pathlib
import sys

assert os.environ.get("KERAS_BACKEND") == "jax"

import keras  # noqa: E402
import numpy as np  # noqa: E402

import jaxconv.keras as jk  # noqa: E402
import jaxconv.onnx  # noqa: E402,F401  (registers the ONNX lowerings)


def decoder() -> keras.Model:
  """Bottleneck 4x4x32 and skips 8x8x16, 15x15x8 (odd: TF's sizes) up to a
  15x15x1 mask: transposed convs, skip concatenations, a 1x1 head."""
  bottom = keras.Input((4, 4, 32), name="bottom")
  skip8 = keras.Input((8, 8, 16), name="skip8")
  skip15 = keras.Input((15, 15, 8), name="skip15")
  x = jk.Conv2DTranspose(16, 3, strides=2, padding="same",
                         activation="relu")(bottom)
  x = keras.layers.Concatenate()([x, skip8])
  x = jk.Conv2DTranspose(8, 3, strides=2, padding="valid",
                         activation="relu")(x)  # 8 -> 17
  x = keras.layers.Cropping2D(((1, 1), (1, 1)))(x)  # 15
  x = keras.layers.Concatenate()([x, skip15])
  x = jk.Conv2DTranspose(4, 5, strides=1, padding="same",
                         dilation_rate=2)(x)
  out = keras.layers.Conv2D(1, 1, activation="sigmoid")(x)
  return keras.Model([bottom, skip8, skip15], out)


def main(out_dir: str) -> None:
  out_dir = pathlib.Path(out_dir)
  keras.utils.set_random_seed(0)
  model = decoder()
  rng = np.random.default_rng(0)
  inputs = [rng.standard_normal((2, *i.shape[1:])).astype(np.float32)
            for i in model.inputs]
  predicted = np.asarray(model(inputs))  # Keras exports called models only
  model.export(str(out_dir / "decoder.onnx"), format="onnx", verbose=False)
  np.savez(out_dir / "io.npz", *inputs, predicted=predicted)


if __name__ == "__main__":
  main(sys.argv[1])
