"""Keras models where users build them: training steps and forward passes.

Keras 3 on the JAX backend (in a child process: the backend is fixed per
process) with its own `conv_transpose` (`lax.conv_transpose`) vs the same
stock model under `jaxconv.keras.use_jaxconv()`; and on the TF backend
(this process) TF's `tf.function` vs the graph converted by plain tf2jax
(forward only: it refuses training graphs) and by `jaxconv.tf2jax`
(forward and the whole training step).  Medians of interleaved
repetitions, one process per backend; writes results/keras_bench.json.

    python benchmarks/keras_bench.py [--models dcgan,unet] [--reps 5]
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
BATCH = 8


def build(name):
  """A Keras model (stock layers) by name."""
  import keras  # noqa: PLC0415
  from keras import layers as L  # noqa: PLC0415
  keras.utils.set_random_seed(0)
  if name == "dcgan":  # 4x4x256 -> 32x32x3, k5 s2, BatchNorm, LeakyReLU
    i = keras.Input((64,))
    x = L.Reshape((4, 4, 256))(L.Dense(4 * 4 * 256, use_bias=False)(i))
    for filters in (128, 64):
      x = L.Conv2DTranspose(filters, 5, strides=2, padding="same",
                            use_bias=False)(x)
      x = L.LeakyReLU(0.2)(L.BatchNormalization()(x))
    out = L.Conv2DTranspose(3, 5, strides=2, padding="same",
                            activation="tanh")(x)
  elif name == "unet":  # a U-Net's decoder half, 8x8x128 -> 64x64x3
    i = keras.Input((8, 8, 128))
    x = i
    for filters in (64, 32, 16):
      x = L.Conv2DTranspose(filters, 3, strides=2, padding="same",
                            activation="relu")(x)
      x = L.Conv2D(filters, 3, padding="same", activation="relu")(x)
    out = L.Conv2D(3, 3, padding="same", activation="sigmoid")(x)
  elif name == "vae":  # 7x7x32 -> 28x28x1
    i = keras.Input((16,))
    x = L.Reshape((7, 7, 32))(L.Dense(7 * 7 * 32, activation="relu")(i))
    x = L.Conv2DTranspose(32, 3, strides=2, padding="same",
                          activation="relu")(x)
    x = L.Conv2DTranspose(16, 3, strides=2, padding="same",
                          activation="relu")(x)
    out = L.Conv2DTranspose(1, 3, padding="same", activation="sigmoid")(x)
  elif name == "decoder3d":  # 4^3 x 32 -> 16^3 x 2
    i = keras.Input((4, 4, 4, 32))
    x = L.Conv3DTranspose(16, 3, strides=2, padding="same",
                          activation="relu")(i)
    out = L.Conv3DTranspose(2, 3, strides=2, padding="same")(x)
  else:
    raise ValueError(f"unknown model {name!r}")
  return keras.Model(i, out)


MODELS = ("dcgan", "unet", "vae", "decoder3d")


def data(model):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((BATCH, *model.input_shape[1:])).astype(np.float32)
  y = rng.standard_normal((BATCH, *model.output_shape[1:])).astype(np.float32)
  return x, y


def median_ms(candidates, reps):
  """{name: median ms}, repetitions interleaved (each warmed up once)."""
  for fn in candidates.values():
    fn()
  times = {name: [] for name in candidates}
  for _ in range(reps):
    for name, fn in candidates.items():
      start = time.perf_counter()
      fn()
      times[name].append((time.perf_counter() - start) * 1e3)
  return {name: float(np.median(t)) for name, t in times.items()}


def jax_backend(names, reps):
  """Child: Keras on JAX, stock op vs use_jaxconv(); training steps."""
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415
  import jaxconv.keras  # noqa: PLC0415
  rows = {}
  for name in names:
    model = build(name)
    x, y = data(model)
    trainable = [v.value for v in model.trainable_variables]
    other = [v.value for v in model.non_trainable_variables]

    def loss(trainable, x, y):
      out, _ = model.stateless_call(trainable, other, x, training=True)
      return jnp.mean((out - y) ** 2)
    steps = {}
    for route in ("keras", "jaxconv"):
      with jaxconv.keras.use_jaxconv(route == "jaxconv"):
        step = jax.jit(jax.value_and_grad(loss))
        jax.block_until_ready(step(trainable, x, y))  # compiled here
      steps[route] = (lambda s=step: jax.block_until_ready(
          s(trainable, x, y)))
    rows[name] = median_ms(steps, reps)
    print(f"  {name} (JAX backend): " + ", ".join(
        f"{k} {v:.1f} ms" for k, v in rows[name].items()), file=sys.stderr)
  return rows


def tf_backend(names, reps):
  """TF's tf.function vs plain tf2jax and jaxconv.tf2jax conversions."""
  import jax  # noqa: PLC0415
  import tensorflow as tf  # noqa: PLC0415
  import tf2jax  # noqa: PLC0415
  import jaxconv.tf2jax  # noqa: PLC0415
  rows = {}
  for name in names:
    model = build(name)
    x, y = data(model)
    forward = tf.function(lambda x: model(x, training=False))

    @tf.function
    def step(x, y):
      with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(model(x, training=True) - y))
      return loss, tape.gradient(loss, model.trainable_variables)
    candidates = {"tf forward": lambda: forward(x).numpy(),
                  "tf step": lambda: step(x, y)[0].numpy()}
    for label, convert in (("tf2jax", tf2jax.convert),
                           ("jaxconv.tf2jax", jaxconv.tf2jax.convert)):
      try:
        fn, params = convert(forward, x)
      except ValueError as e:  # plain tf2jax: no 3-D transposed conv
        print(f"  {name}: {label} cannot convert: {str(e).splitlines()[0]}",
              file=sys.stderr)
        continue
      fn = jax.jit(fn)
      candidates[f"{label} forward"] = (
          lambda f=fn, p=params: jax.block_until_ready(f(p, x)))
    fn, params = jaxconv.tf2jax.convert(step, x, y)
    fn = jax.jit(fn)
    candidates["jaxconv.tf2jax step"] = (
        lambda: jax.block_until_ready(fn(params, x, y)))
    rows[name] = median_ms(candidates, reps)
    print(f"  {name} (TF backend): " + ", ".join(
        f"{k} {v:.1f}" for k, v in rows[name].items()), file=sys.stderr)
  return rows


def main(argv=None):
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--models", default=",".join(MODELS),
                      help=f"comma-separated, of {', '.join(MODELS)}")
  parser.add_argument("--reps", type=int, default=5)
  parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
  parser.add_argument("--jax-backend-child", action="store_true",
                      help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  names = args.models.split(",")
  if args.jax_backend_child:
    print(json.dumps(jax_backend(names, args.reps)))
    return
  print("Keras on the JAX backend (child process) ...", file=sys.stderr)
  env = dict(os.environ, KERAS_BACKEND="jax")
  child = subprocess.run(
      [sys.executable, __file__, "--jax-backend-child", "--models",
       args.models, "--reps", str(args.reps)], env=env, check=True,
      stdout=subprocess.PIPE, text=True, timeout=3600)
  on_jax = json.loads(child.stdout.strip().splitlines()[-1])
  print("Keras on the TF backend ...", file=sys.stderr)
  os.environ["KERAS_BACKEND"] = "tensorflow"
  on_tf = tf_backend(names, args.reps)
  print(f"\nms per call, N={BATCH}, 2-core CPU; training step = loss and "
        "every gradient")
  print("| model | Keras-JAX step | + use_jaxconv | speed-up | TF step | "
        "jaxconv.tf2jax step | vs TF | TF fwd | tf2jax fwd | "
        "jaxconv.tf2jax fwd | vs tf2jax |")
  print("|---|" + "---|" * 10)
  for name in names:
    j, t = on_jax[name], on_tf[name]
    plain = t.get("tf2jax forward", float("nan"))  # nan: cannot convert
    print(f"| {name} | {j['keras']:.1f} | {j['jaxconv']:.1f} | "
          f"{j['keras'] / j['jaxconv']:.1f}x | {t['tf step']:.1f} | "
          f"{t['jaxconv.tf2jax step']:.1f} | "
          f"{t['jaxconv.tf2jax step'] / t['tf step']:.2f}x | "
          f"{t['tf forward']:.1f} | {plain:.1f} | "
          f"{t['jaxconv.tf2jax forward']:.1f} | "
          f"{t['jaxconv.tf2jax forward'] / plain:.2f}x |")
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  (out / "keras_bench.json").write_text(json.dumps(
      {"jax_backend": on_jax, "tf_backend": on_tf, "batch": BATCH}, indent=1))


if __name__ == "__main__":
  main()
