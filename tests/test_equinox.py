"""`jaxconv.equinox.ConvTranspose` against PyTorch's and Keras's layers
(values and gradients, weights carried by from_torch/from_keras), TF's
output_shape, and Equinox's filtered transforms."""
import numpy as np
import pytest

from tests.helpers import require

require("equinox", "torch", "keras", "tensorflow")
import equinox as eqx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
import torch  # noqa: E402

import jaxconv.equinox as jeqx  # noqa: E402

RNG = np.random.default_rng(0)
TORCH = {1: torch.nn.ConvTranspose1d, 2: torch.nn.ConvTranspose2d,
         3: torch.nn.ConvTranspose3d}
KERAS = {1: keras.layers.Conv1DTranspose, 2: keras.layers.Conv2DTranspose,
         3: keras.layers.Conv3DTranspose}
TORCH_CASES = [  # rank, in, out, kernel, stride, padding, output_padding,
                 # dilation, groups, spatial
    (2, 4, 6, 3, 2, 1, 1, 1, 1, (5, 6)),
    (2, 4, 6, 3, 2, 0, 0, 1, 2, (4, 4)),
    (2, 3, 2, (4, 3), (3, 1), (2, 0), (1, 0), 1, 1, (3, 5)),
    (2, 4, 4, 3, 2, 2, 1, 2, 4, (5, 4)),  # depthwise, dilated, output_padding
    (1, 3, 5, 5, 2, 2, 1, 1, 1, (7,)),
    (1, 2, 2, 3, 1, 0, 0, 3, 1, (6,)),
    (3, 2, 3, 3, 2, 1, 0, 1, 1, (3, 4, 3)),
    (3, 4, 2, 2, (1, 2, 2), 0, (0, 1, 0), 1, 2, (2, 3, 3)),
]


def _randn(*shape):
  return RNG.standard_normal(shape).astype(np.float32)


def _loss(layer, x, ct):
  return jnp.sum(eqx.filter_vmap(layer)(x) * ct)


@pytest.mark.parametrize("case", TORCH_CASES, ids=str)
def test_from_torch_matches_pytorch(case):
  rank, cin, cout, k, s, p, op, d, g, spatial = case
  torch.manual_seed(0)
  module = TORCH[rank](cin, cout, k, stride=s, padding=p, output_padding=op,
                       dilation=d, groups=g)
  x = _randn(3, cin, *spatial)
  xt = torch.tensor(x, requires_grad=True)
  yt = module(xt)
  ct = _randn(*yt.shape)
  (yt * torch.tensor(ct)).sum().backward()

  layer = jeqx.from_torch(module)
  y = eqx.filter_jit(eqx.filter_vmap(layer))(x)
  np.testing.assert_allclose(y, yt.detach().numpy(), rtol=0, atol=2e-5)
  grads, dx = eqx.filter_jit(eqx.filter_grad(_loss, has_aux=False))(
      layer, x, ct), jax.grad(lambda v: _loss(layer, v, ct))(x)
  np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=0, atol=2e-5)
  weight_grad = module.weight.grad.numpy()  # [in, out / groups, *K]
  np.testing.assert_allclose(
      grads.weight, np.transpose(weight_grad, (*range(2, rank + 2), 1, 0)),
      rtol=0, atol=1e-4)
  np.testing.assert_allclose(grads.bias, module.bias.grad.numpy(), rtol=0,
                             atol=1e-4)


@pytest.mark.parametrize("rank,padding,strides,output_padding", [
    (2, "same", 2, None), (2, "same", 2, 1), (2, "valid", 3, (2, 0)),
    (1, "valid", 2, None), (3, "same", (2, 1, 2), None)])
def test_from_keras_matches_keras(rank, padding, strides, output_padding):
  layer = KERAS[rank](4, 3, strides=strides, padding=padding,
                      output_padding=output_padding,
                      bias_initializer="random_normal")
  x = _randn(2, *(5, 4, 3)[:rank], 3)
  want = layer(x).numpy()  # channels last
  ours = jeqx.from_keras(layer)
  got = eqx.filter_vmap(ours)(np.moveaxis(x, -1, 1))
  np.testing.assert_allclose(np.moveaxis(np.asarray(got), 1, -1), want,
                             rtol=0, atol=2e-5)


def test_tf_output_shape_per_call():
  """TF's odd sizes: 5 -> 9 or 10 at stride 2, SAME (tf.nn's output_shape)."""
  layer = jeqx.ConvTranspose(2, 3, 2, 3, stride=2, padding="SAME",
                             key=jax.random.PRNGKey(1))
  x = _randn(3, 5, 5)
  filters = np.asarray(layer.weight)  # [3, 3, out, in]: TF's layout
  for size in (9, 10):
    want = tf.nn.conv2d_transpose(
        np.moveaxis(x, 0, -1)[None], filters, [1, size, size, 2], 2,
        "SAME").numpy()[0] + np.asarray(layer.bias)
    got = layer(x, output_shape=(size, size))
    np.testing.assert_allclose(np.moveaxis(np.asarray(got), 0, -1), want,
                               rtol=0, atol=2e-5)
  with pytest.raises(ValueError, match="not reachable"):
    layer(x, output_shape=(12, 12))


def test_construction_init_and_errors():
  layer = jeqx.ConvTranspose(2, 8, 4, 3, stride=2, padding=1,
                             output_padding=1, groups=2,
                             key=jax.random.PRNGKey(0))
  assert layer.weight.shape == (3, 3, 2, 8) and layer.bias.shape == (4,)
  limit = 1 / np.sqrt(2 * 9)
  assert float(jnp.max(jnp.abs(layer.weight))) <= limit
  assert layer(jnp.ones((8, 5, 5))).shape == (4, 10, 10)  # PyTorch's rule
  with pytest.raises(ValueError, match="filter_vmap for a batch"):
    layer(jnp.ones((2, 8, 5, 5)))
  with pytest.raises(ValueError, match="in_channels=8"):
    layer(jnp.ones((6, 5, 5)))
  with pytest.raises(ValueError, match="num_spatial_dims=2"):
    jeqx.ConvTranspose(2, 8, 4, (3, 3, 3), key=jax.random.PRNGKey(0))
  with pytest.raises(TypeError, match="from_torch takes"):
    jeqx.from_torch(torch.nn.Conv2d(2, 2, 3))


def test_is_a_pytree_of_its_weights():
  layer = jeqx.ConvTranspose(1, 2, 3, 3, key=jax.random.PRNGKey(0))
  leaves = jax.tree_util.tree_leaves(eqx.filter(layer, eqx.is_array))
  assert [leaf.shape for leaf in leaves] == [(3, 3, 2), (3,)]
  no_bias = jeqx.ConvTranspose(1, 2, 3, 3, use_bias=False,
                               key=jax.random.PRNGKey(0))
  assert no_bias.bias is None and no_bias(jnp.ones((2, 4))).shape == (3, 6)
