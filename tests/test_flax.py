"""jaxconv.flax against the real Keras 3 (TF backend) and PyTorch layers:
outputs and input/weight/bias gradients over their hyperparameters; the
nnx and linen modules; errors."""
from tests.helpers import assert_matches_peer, randn, require

require("flax", "keras", "tensorflow", "torch")

import jax
import jax.numpy as jnp
import keras
import numpy as np
import pytest
import tensorflow as tf
import torch
from flax import nnx

from jaxconv.layers import ConvTransposeConfig
from jaxconv.flax import linen as jlinen
from jaxconv.flax import nnx as jnnx


def _loss(layer_fn):
  """sum(sin(y)): non-linear, so gradients check every output element."""
  return lambda *args: jnp.sum(jnp.sin(layer_fn(*args)))


def _ours_with_grads(module, x, output_shape=None):
  """The nnx module's output and d/d(x, kernel, bias) of sum(sin(y))."""
  config = module.config
  kernel, bias = module.kernel[...], module.bias[...]
  y = module(x, output_shape) if output_shape is not None else module(x)
  grads = jax.grad(_loss(lambda x, k, b: config(x, k, b, output_shape)),
                   argnums=(0, 1, 2))(x, kernel, bias)
  return y, grads


# --- Keras --------------------------------------------------------------

_KERAS = {1: keras.layers.Conv1DTranspose, 2: keras.layers.Conv2DTranspose,
          3: keras.layers.Conv3DTranspose}
_SPATIAL = {1: (10,), 2: (6, 7), 3: (4, 5, 3)}
KERAS_CASES = [  # rank, padding, strides, output_padding, dilation, format, kernel
    (1, "valid", 3, 2, 1, "channels_last", 4),
    (1, "same", 2, None, 1, "channels_first", 3),
    (1, "same", 1, None, 3, "channels_last", 3),
    (2, "valid", 2, 1, 1, "channels_last", 3),
    (2, "same", 2, None, 1, "channels_last", 4),
    (2, "same", 3, 1, 1, "channels_first", 3),
    (2, "valid", 1, None, 2, "channels_first", 3),
    (2, "same", (2, 3), (1, 2), 1, "channels_last", (3, 2)),
    (3, "same", 2, None, 1, "channels_last", 3),
    (3, "valid", 2, 1, 1, "channels_first", 2),
    (3, "same", 1, None, 2, "channels_last", 3),
]


def _keras_with_grads(layer, x):
  """The layer's output and the gradients of sum(sin(output)) w.r.t. x,
  kernel and bias, on TF's CPU kernels, or where they cannot (channels
  first or dilations without oneDNN, which TF turns on for AVX-512 CPUs,
  not AVX2 ones) through TF's XLA compilation."""
  def run(x):
    with tf.GradientTape() as tape:
      tape.watch(x)
      y = layer(x)
      loss = tf.reduce_sum(tf.sin(y))
    return y, tape.gradient(loss, [x, layer.kernel, layer.bias])
  try:
    return run(tf.constant(x))
  except tf.errors.InvalidArgumentError:
    return tf.function(run, jit_compile=True)(tf.constant(x))


@pytest.mark.parametrize("case", KERAS_CASES, ids=str)
def test_from_keras_matches_keras(case):
  rank, padding, strides, output_padding, dilation, data_format, kernel = case
  layer = _KERAS[rank](5, kernel, strides=strides, padding=padding,
                       output_padding=output_padding, dilation_rate=dilation,
                       data_format=data_format, bias_initializer="random_normal")
  shape = (2, *_SPATIAL[rank], 3) if data_format == "channels_last" else (
      2, 3, *_SPATIAL[rank])
  x = randn(*shape)
  want, want_grads = _keras_with_grads(layer, x)

  module = jnnx.from_keras(layer)
  y, grads = _ours_with_grads(module, x)
  assert_matches_peer(y, want, "output")
  for name, g, w in zip(("x", "kernel", "bias"), grads, want_grads):
    assert_matches_peer(g, w, f"d/d{name}")
  linen_module, variables = jlinen.from_keras(layer)
  assert_matches_peer(linen_module.apply(variables, x), want, "linen output")


def test_from_keras_refuses_what_it_cannot_port():
  layer = keras.layers.Conv2DTranspose(4, 3, activation="relu")
  with pytest.raises(ValueError, match="not built yet"):
    jnnx.from_keras(layer)
  layer(np.zeros((1, 5, 5, 2), np.float32))
  with pytest.raises(ValueError, match="activation relu"):
    jnnx.from_keras(layer)
  with pytest.raises(TypeError, match="from_keras takes a Keras"):
    jnnx.from_keras(keras.layers.Conv2D(4, 3))


# --- PyTorch ------------------------------------------------------------

_TORCH = {1: torch.nn.ConvTranspose1d, 2: torch.nn.ConvTranspose2d,
          3: torch.nn.ConvTranspose3d}
TORCH_CASES = [  # rank, kernel, stride, padding, output_padding, groups, dilation
    (1, 4, 2, 1, 0, 1, 1),
    (1, 3, 3, 0, 2, 2, 1),
    (1, 3, 1, 0, 1, 1, 2),  # output_padding >= stride (< dilation)
    (2, 3, 2, 1, 1, 1, 1),
    (2, 4, 2, 1, 0, 2, 1),
    (2, (3, 5), (2, 1), (2, 0), (1, 0), 1, (1, 2)),
    (2, 3, 1, 1, 1, 1, 2),  # past TF's size check with the pads kept
    (2, 2, 3, 2, 2, 1, 1),  # pads larger than the window: crops
    (2, 3, 1, 0, 2, 1, 3),  # output rows no tap reaches: zeros
    (3, 3, 2, 1, 1, 1, 1),
    (3, 2, (1, 2, 3), 0, (0, 1, 2), 2, 1),
]


def _torch_module(case):
  rank, kernel, stride, padding, output_padding, groups, dilation = case
  torch.manual_seed(0)
  return _TORCH[rank](4, 6, kernel, stride, padding, output_padding,
                      groups=groups, dilation=dilation)


@pytest.mark.parametrize("case", TORCH_CASES, ids=str)
def test_from_torch_matches_pytorch(case):
  module = _torch_module(case)
  x = randn(2, 4, *_SPATIAL[case[0]])
  x_t = torch.tensor(x, requires_grad=True)
  want = module(x_t)
  torch.sin(want).sum().backward()
  rank = case[0]
  weight_grad = module.weight.grad.numpy().transpose(
      *range(2, rank + 2), 1, 0)  # to Keras's layout
  ours = jnnx.from_torch(module)
  y, grads = _ours_with_grads(ours, x)
  assert_matches_peer(y, want.detach(), "output")
  for name, g, w in zip(("x", "kernel", "bias"), grads,
                        (x_t.grad, weight_grad, module.bias.grad)):
    assert_matches_peer(g, w, f"d/d{name}")
  linen_module, variables = jlinen.from_torch(module)
  assert_matches_peer(linen_module.apply(variables, x), want.detach(), "linen output")


@pytest.mark.parametrize("extra", [0, 1])
def test_torch_output_size_at_call(extra):
  """PyTorch's forward(x, output_size): the size within its range."""
  module = _torch_module((2, 3, 2, 1, 0, 1, 1))
  x = randn(1, 4, 5, 6)
  size = (9 + extra, 11 + extra)
  want = module(torch.tensor(x), output_size=size).detach()
  assert_matches_peer(jnnx.from_torch(module)(x, output_shape=size), want)
  with pytest.raises(ValueError, match="not reachable"):
    jnnx.from_torch(module)(x, output_shape=(11, 11))


def test_from_torch_refuses_other_modules():
  with pytest.raises(TypeError, match="from_torch takes"):
    jnnx.from_torch(torch.nn.Conv2d(2, 2, 3))
  with pytest.raises(ValueError, match="output_padding"):
    jnnx.ConvTranspose(2, 2, 3, 2, padding=((1, 1),), output_padding=2,
                       rngs=nnx.Rngs(0))


# --- the modules themselves ---------------------------------------------

def test_nnx_and_linen_layers_train_and_transform():
  """Parameters in Keras's layout, Flax-style init; jit, grad, vmap."""
  layer = jnnx.ConvTranspose(3, 8, (3, 3), 2, padding="SAME", output_padding=1,
                             rngs=nnx.Rngs(0))
  assert layer.kernel[...].shape == (3, 3, 8, 3)
  assert layer.bias[...].shape == (8,)
  x = randn(4, 5, 5, 3)
  y = nnx.jit(lambda m, x: m(x))(layer, x)
  assert y.shape == (4, 10, 10, 8)  # Keras: (5 - 1) * 2 + 3 % 2 + 1
  grads = nnx.grad(lambda m: jnp.sum(m(x) ** 2))(layer)
  assert grads["kernel"][...].shape == (3, 3, 8, 3)
  batched = jax.vmap(layer)(x[:, None])
  assert_matches_peer(batched[:, 0], y)

  module = jlinen.ConvTranspose(8, (3, 3), 2, padding="SAME", output_padding=1)
  variables = module.init(jax.random.key(0), x)
  assert variables["params"]["kernel"].shape == (3, 3, 8, 3)
  variables = {"params": {"kernel": layer.kernel[...],
                         "bias": layer.bias[...]}}
  assert_matches_peer(module.apply(variables, x), y)


def test_dtypes_and_no_bias():
  layer = jnnx.ConvTranspose(2, 4, 3, padding="VALID", use_bias=False,
                             dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
  assert layer.bias is None
  y = layer(randn(1, 6, 2))
  assert y.dtype == jnp.bfloat16 and y.shape == (1, 8, 4)
  layer = jnnx.ConvTranspose(2, 4, 3, param_dtype=jnp.float16, rngs=nnx.Rngs(0))
  assert layer.kernel[...].dtype == jnp.float16
  assert layer(randn(1, 6, 2)).dtype == jnp.float32  # promoted with x


@pytest.mark.parametrize("kwargs, match", [
    (dict(kernel_size=(3, 3, 3, 3)), "1 to 3 entries"),
    (dict(kernel_size=3, strides=0), "strides must be >= 1"),
    (dict(kernel_size=3, padding="FULL"), "padding must be"),
    (dict(kernel_size=(3, 3), padding=((1, 1),)), "padding must be"),
    (dict(kernel_size=3, strides=2, padding="SAME", output_padding=2),
     r"output_padding \(2,\) must be smaller than the strides"),
    (dict(kernel_size=3, groups=0), "feature_group_count"),
])
def test_config_errors(kwargs, match):
  with pytest.raises(ValueError, match=match):
    ConvTransposeConfig.make(**kwargs)


def test_call_errors():
  config = ConvTransposeConfig.make(3, 2, "SAME")
  with pytest.raises(ValueError, match="3-dimensional"):
    config(jnp.zeros((1, 4, 4, 2)), jnp.zeros((3, 2, 2)))
  with pytest.raises(ValueError, match="kernel must have shape"):
    config(jnp.zeros((1, 4, 2)), jnp.zeros((5, 2, 2)))
  with pytest.raises(ValueError, match="not reachable"):  # TF's SAME rule
    config(jnp.zeros((1, 4, 2)), jnp.zeros((3, 2, 2)), output_shape=(10,))
  with pytest.raises(ValueError, match="divisible by feature_group_count"):
    jnnx.ConvTranspose(3, 4, 3, feature_group_count=2, rngs=nnx.Rngs(0))
