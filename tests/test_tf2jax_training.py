"""Whole TF training steps through `jaxconv.tf2jax`: the gradient ops of
activations, pooling and batch norm (jaxconv/tf2jax/gradients.py), each
against TF's own kernel, then the training steps of five Keras models
(losses, every gradient, a few SGD steps) against TF's."""
import zlib

import numpy as np
import pytest

from tests.helpers import require

require("tf2jax", "tensorflow", "keras")
import jax  # noqa: E402
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import layers as L  # noqa: E402

import jaxconv.tf2jax as bridge  # noqa: E402

RNG = np.random.default_rng(0)


def _randn(*shape, dtype=np.float32):
  return RNG.standard_normal(shape).astype(dtype)


def _converted(fn, *args, reference=None):
  """fn(*args) in TF (or `reference(*args)`) and through jaxconv.tf2jax
  (jitted), as NumPy."""
  want = tf.nest.map_structure(lambda t: t.numpy(), (reference or fn)(*args))
  jax_fn, params = bridge.convert(tf.function(fn), *args)
  got, _ = jax.jit(jax_fn)(params, *args)
  return tf.nest.flatten(got), tf.nest.flatten(want)


def _assert_same(fn, *args, rtol=2e-6, reference=None):
  got, want = _converted(fn, *args, reference=reference)
  assert len(got) == len(want)
  for a, b in zip(got, want):
    a = np.asarray(a)
    assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, b.shape)
    scale = max(float(np.max(np.abs(b.astype(np.float64)))), 1.0) if b.size else 1
    np.testing.assert_allclose(a.astype(np.float64), b.astype(np.float64),
                               rtol=0, atol=rtol * scale)


# Activation gradients: (gradients, features) / (gradients, outputs) /
# TF's cwise (y, dy).
X = _randn(3, 5, 7) * 4
X[0, 0, :3] = [0.0, 6.0, -0.0]  # the kinks, where TF's masks decide
G = _randn(3, 5, 7)
ACTIVATIONS = {
    "ReluGrad": lambda: tf.raw_ops.ReluGrad(gradients=G, features=X),
    "Relu6Grad": lambda: tf.raw_ops.Relu6Grad(gradients=G, features=X),
    "LeakyReluGrad": lambda: tf.raw_ops.LeakyReluGrad(
        gradients=G, features=X, alpha=0.3),
    "SoftplusGrad": lambda: tf.raw_ops.SoftplusGrad(gradients=G, features=X),
    "SoftsignGrad": lambda: tf.raw_ops.SoftsignGrad(gradients=G, features=X),
    "EluGrad": lambda: tf.raw_ops.EluGrad(gradients=G, outputs=tf.nn.elu(X)),
    "SeluGrad": lambda: tf.raw_ops.SeluGrad(gradients=G,
                                            outputs=tf.nn.selu(X)),
    "Selu": lambda: tf.raw_ops.Selu(features=X),
    "SigmoidGrad": lambda: tf.raw_ops.SigmoidGrad(y=tf.sigmoid(X), dy=G),
    "TanhGrad": lambda: tf.raw_ops.TanhGrad(y=tf.tanh(X), dy=G),
    "RsqrtGrad": lambda: tf.raw_ops.RsqrtGrad(y=tf.math.rsqrt(abs(X) + 1),
                                              dy=G),
    "SqrtGrad": lambda: tf.raw_ops.SqrtGrad(y=tf.sqrt(abs(X) + 1), dy=G),
    "ReciprocalGrad": lambda: tf.raw_ops.ReciprocalGrad(y=1 / (X + 9), dy=G),
}


@pytest.mark.parametrize("op", sorted(ACTIVATIONS))
def test_activation_gradients_match_tf(op):
  _assert_same(ACTIVATIONS[op])


def test_leaky_relu_grad_takes_the_default_alpha():
  _assert_same(lambda g, x: tf.raw_ops.LeakyReluGrad(gradients=g, features=x),
               G, X)


POOLS = [  # rank, ksize, strides, padding
    (2, 2, 2, "VALID"), (2, 3, 2, "SAME"), (2, 3, 1, "SAME"),
    (2, (2, 3), (1, 2), "VALID"), (3, 2, 2, "VALID"), (3, 3, 2, "SAME"),
]


def _pool_input(rank):
  x = _randn(2, *(7, 6, 5)[:rank], 3)
  x[0, 0, 0] = x[0, 0, 1] = 9.0  # a tie in a window: TF takes the first
  return x


@pytest.mark.parametrize("rank,ksize,strides,padding", POOLS)
def test_pooling_and_its_gradients_match_tf(rank, ksize, strides, padding):
  x = _pool_input(rank)
  pool = {2: (tf.nn.max_pool2d, tf.nn.avg_pool2d),
          3: (tf.nn.max_pool3d, tf.nn.avg_pool3d)}[rank]
  for pool_fn in pool:
    _assert_same(_pool_loss_grad(pool_fn, ksize, strides, padding), x)


def _pool_loss_grad(pool_fn, ksize, strides, padding):
  def loss_grad(v):
    v = tf.convert_to_tensor(v)
    with tf.GradientTape() as tape:
      tape.watch(v)
      y = pool_fn(v, ksize, strides, padding)
      loss = tf.reduce_sum(y * tf.cos(y))
    return y, tape.gradient(loss, v)
  return loss_grad


def test_max_pool_grad_with_explicit_pads_and_v2():
  x = _pool_input(2)
  y = tf.nn.max_pool2d(x, 3, 2, [[0, 0], [1, 2], [2, 0], [0, 0]])
  g = _randn(*y.shape)
  _assert_same(lambda a, b, c: tf.raw_ops.MaxPoolGrad(
      orig_input=a, orig_output=b, grad=c, ksize=[1, 3, 3, 1],
      strides=[1, 2, 2, 1], padding="EXPLICIT",
      explicit_paddings=[0, 0, 1, 2, 2, 0, 0, 0]), x, y.numpy(), g)
  y = tf.nn.max_pool2d(x, 2, 2, "SAME")
  g = _randn(*y.shape)
  _assert_same(lambda a, b, c: tf.raw_ops.MaxPoolGradV2(
      orig_input=a, orig_output=b, grad=c, ksize=[1, 2, 2, 1],
      strides=[1, 2, 2, 1], padding="SAME"), x, y.numpy(), g)


@pytest.mark.parametrize("dtype", [np.float32, tf.bfloat16.as_numpy_dtype])
@pytest.mark.parametrize("ksize,strides,padding", [(2, 2, "VALID"),
                                                   (3, 1, "SAME")])
def test_max_pool3d_grad_takes_every_input_within_1e_5_of_the_max(
    dtype, ksize, strides, padding):
  """TF's 3-D CPU kernel tests |x - max| < 1e-5, not x == max: small
  activations (a decoder's after ReLU) share their window's gradient."""
  rng = np.random.default_rng(7)
  x = (1e-4 + 3e-5 * rng.random((2, 4, 5, 4, 3))).astype(dtype)
  y = tf.nn.max_pool3d(x, ksize, strides, padding)
  g = rng.standard_normal(y.shape).astype(dtype)
  window = [1, *(ksize,) * 3, 1]
  def grad(a, b, c):  # tensors: eager TF takes NumPy bfloat16 as float32
    a, b, c = map(tf.convert_to_tensor, (a, b, c))
    return tf.raw_ops.MaxPool3DGrad(
        orig_input=a, orig_output=b, grad=c, ksize=window,
        strides=[1, *(strides,) * 3, 1], padding=padding)
  # bfloat16: overlapping windows sum in another order than TF's (a few ulp)
  _assert_same(grad, x, y.numpy(), g,
               rtol=2e-2 if dtype != np.float32 else 2e-6)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("data_format,dtype", [
    ("NHWC", np.float32), ("NCHW", np.float32), ("NHWC", np.float16),
    ("NDHWC", np.float32)])
def test_fused_batch_norm_grad_matches_tf(training, data_format, dtype):
  shape = (4, 5, 6, 3) if data_format == "NHWC" else (
      (4, 3, 5, 6) if data_format == "NCHW" else (2, 3, 4, 5, 3))
  x = _randn(*shape, dtype=dtype) * 3 + 1
  dy = _randn(*shape, dtype=dtype)
  scale, offset = _randn(3) + 2, _randn(3)
  mean, var = _randn(3), abs(_randn(3)) + 0.5

  def loss_grad(x, dy, scale, offset):
    y, batch_mean, batch_var, r1, r2, r3 = tf.raw_ops.FusedBatchNormV3(
        x=x, scale=scale, offset=offset, mean=mean if not training else [],
        variance=var if not training else [], epsilon=1e-3,
        data_format=data_format, is_training=training,
        exponential_avg_factor=1.0)
    if not training:  # what TF's gradient function passes (nn_grad.py)
      r1, r2 = mean, var
    grads = tf.raw_ops.FusedBatchNormGradV3(
        y_backprop=dy, x=x, scale=scale, reserve_space_1=r1,
        reserve_space_2=r2, reserve_space_3=r3, epsilon=1e-3,
        data_format=data_format, is_training=training)
    return y, batch_mean, batch_var, *grads[:3]
  # TF's CPU kernel refuses NCHW in inference ("only support NHWC"): its
  # XLA lowering is the reference there.
  reference = (tf.function(loss_grad, jit_compile=True)
               if data_format == "NCHW" and not training else None)
  _assert_same(loss_grad, x, dy, scale, offset, reference=reference,
               rtol=2e-3 if dtype == np.float16 else 1e-5)


def test_concat_offset_and_static_transpose():
  def fn(a, b):
    offsets = tf.raw_ops.ConcatOffset(concat_dim=-1,
                                      shape=[tf.shape(a), tf.shape(b)])
    # A shape vector through Transpose stays static: Reshape needs it.
    shape = tf.transpose(tf.reshape(tf.shape(a), [2, 2]))
    return (*offsets, tf.reshape(a, tf.reshape(shape, [-1])))
  _assert_same(fn, _randn(2, 3, 4, 5), _randn(2, 3, 4, 1))


def test_transpose_of_tensors_is_unchanged():
  _assert_same(lambda a: tf.transpose(a, [2, 0, 1]), _randn(2, 3, 4))


# Training steps of whole models ----------------------------------------------

def _unet():  # BatchNorm, max pooling, concatenation, sigmoid output
  i = keras.Input((16, 16, 3))
  a = L.ReLU()(L.BatchNormalization()(L.Conv2D(8, 3, padding="same")(i)))
  b = L.Conv2D(16, 3, padding="same", activation="relu")(L.MaxPooling2D()(a))
  u = L.Conv2DTranspose(8, 3, strides=2, padding="same")(b)
  o = L.Conv2D(3, 3, padding="same", activation="sigmoid")(
      L.Concatenate()([u, a]))
  return keras.Model(i, o)


def _dcgan():  # Dense, BatchNorm, LeakyReLU, tanh
  i = keras.Input((16,))
  x = L.Dense(4 * 4 * 32, use_bias=False)(i)
  x = L.Reshape((4, 4, 32))(L.LeakyReLU(0.2)(L.BatchNormalization()(x)))
  x = L.Conv2DTranspose(16, 5, strides=2, padding="same", use_bias=False)(x)
  x = L.LeakyReLU(0.2)(L.BatchNormalization()(x))
  return keras.Model(i, L.Conv2DTranspose(3, 5, strides=2, padding="same",
                                          activation="tanh")(x))


def _vae_decoder():  # ELU, SELU, softplus, sigmoid, odd sizes from 7x7
  i = keras.Input((8,))
  x = L.Reshape((7, 7, 16))(L.Dense(7 * 7 * 16, activation="elu")(i))
  x = L.Conv2DTranspose(16, 3, strides=2, padding="same",
                        activation="selu")(x)
  x = L.Conv2DTranspose(8, 3, strides=2, padding="same",
                        activation="softplus")(x)
  return keras.Model(i, L.Conv2DTranspose(1, 3, padding="same",
                                          activation="sigmoid")(x))


def _decoder3d():  # 3-D: pooling both ways, ReLU6, upsampling
  i = keras.Input((3, 3, 3, 4))
  x = L.Conv3DTranspose(8, 3, strides=2, padding="same", activation="relu")(i)
  x = L.Conv3D(8, 3, padding="same", activation="relu6")(
      L.AveragePooling3D(2, strides=1, padding="same")(x))
  # Max pooling over upsampled copies: exact ties, every copy takes the
  # gradient in TF's 3-D kernel.  (Over distinct values its rule, within
  # 1e-5 of the maximum, flips on a rounding difference at the threshold:
  # tested on its own above.)
  x = L.MaxPooling3D(2)(L.UpSampling3D(2)(x))
  return keras.Model(i, L.Conv3DTranspose(2, 3, strides=2, padding="valid",
                                          activation="tanh")(x))


def _odd():  # odd sizes, output_padding, average pooling, UpSampling2D
  i = keras.Input((7, 9, 3))
  x = L.Conv2DTranspose(6, 3, strides=2, padding="same")(i)
  x = L.AveragePooling2D(2, padding="same")(L.Activation("relu6")(x))
  x = L.Conv2DTranspose(4, 4, strides=3, padding="valid", output_padding=1,
                        activation="tanh")(L.UpSampling2D(2)(x))
  return keras.Model(i, L.Conv2D(2, 3, strides=2, activation="softplus")(x))


MODELS = {"unet": _unet, "dcgan": _dcgan, "vae_decoder": _vae_decoder,
          "decoder3d": _decoder3d, "odd": _odd}
LR, STEPS = 0.05, 3


@pytest.mark.parametrize("name", sorted(MODELS))
def test_training_steps_of_keras_models_match_tf(name):
  keras.utils.set_random_seed(1)
  model = MODELS[name]()
  rng = np.random.default_rng(zlib.crc32(name.encode()))  # not the order run
  x, y = (rng.standard_normal((2, *shape[1:])).astype(np.float32)
          for shape in (model.input_shape, model.output_shape))
  trainable = model.trainable_variables

  @tf.function
  def step(x, y):
    with tf.GradientTape() as tape:
      loss = tf.reduce_mean(tf.square(model(x, training=True) - y))
    return loss, tape.gradient(loss, trainable)

  jax_fn, params = bridge.convert(step, x, y)
  jax_fn = jax.jit(jax_fn)
  paths = [v.path for v in trainable]
  for i in range(STEPS):  # SGD in both, from the same weights
    (loss, grads), params = jax_fn(params, x, y)
    tf_loss, tf_grads = step(x, y)  # also updates TF's moving statistics
    np.testing.assert_allclose(float(loss), float(tf_loss), rtol=1e-5,
                               err_msg=f"{name} step {i}")
    scale = max(float(np.max(np.abs(g))) for g in tf_grads)
    for path, g, tf_g in zip(paths, grads, tf_grads):
      np.testing.assert_allclose(np.asarray(g), tf_g.numpy(), rtol=0,
                                 atol=2e-5 * scale,
                                 err_msg=f"{name} step {i}: {path}")
    params = {**params, **{p: params[p] - LR * g
                           for p, g in zip(paths, grads)}}
    for v, g in zip(trainable, tf_grads):
      v.assign_sub(LR * g)
  for v in model.variables:  # weights and BatchNorm's moving statistics
    np.testing.assert_allclose(np.asarray(params[v.path]), v.numpy(),
                               rtol=0, atol=1e-5, err_msg=f"{name}: {v.path}")


@pytest.mark.parametrize("out_channels,route", [(3, "standard"),
                                                (16, "standard"),
                                                (32, "eigen")])
def test_converted_forward_conv_route(out_channels, route):
  """A converted model's few-output-channel Conv2D (a decoder's last
  layer) keeps XLA's own convolution, plain tf2jax's form, where it beat
  Eigen's (benchmarks/README.md); the native back end off."""
  import jaxconv
  x, w = _randn(2, 12, 12, 24), _randn(5, 5, 24, out_channels)
  fn = tf.function(lambda x, w: tf.nn.conv2d(x, w, 1, "SAME"))
  jax_fn, params = bridge.convert(fn, x, w)
  with jaxconv.xla_strategies(), jaxconv.force_strategy() as lowered:
    got, _ = jax.jit(jax_fn)(params, x, w)
  assert lowered.forward == [route]
  np.testing.assert_allclose(np.asarray(got), fn(x, w).numpy(), rtol=0,
                             atol=2e-5 * np.max(np.abs(fn(x, w).numpy())))
