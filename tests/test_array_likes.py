"""Every public function takes what `lax` takes as an operand: objects with
`__jax_array__` (`nnx.Param`, `nnx.Variable`; Keras Variables in
tests/keras_main.py, which needs Keras's JAX backend), NumPy arrays, nested
lists and Python numbers, eagerly and under jit, with the values of JAX
arrays."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import family
from tests.helpers import require

require("flax")
from flax import nnx  # noqa: E402


def _case(name):
  """A drawn float32 call with no empty operand (a nested list has no
  shape for one)."""
  rng = np.random.default_rng(7)
  while True:
    case = family.OPS[name][1](rng, "float32")
    if all(a.size for a in case.arrays.values()) and not any(
        0 in v["$zeros"] for v in case.kwargs.values() if isinstance(v, dict)):
      return case


KINDS = {
    "numpy": lambda a: a,
    "nested list": lambda a: a.tolist(),
    "nnx.Param": lambda a: nnx.Param(jnp.asarray(a)),
    "nnx.Variable": lambda a: nnx.Variable(jnp.asarray(a)),
}


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("name", sorted(family.OPS))
def test_operand_kinds(name, kind):
  case = _case(name)
  make = KINDS[kind]
  want = family.function(name)(**family.resolve(
      case.kwargs, case.arrays, "float32", asarray=jnp.asarray,
      zeros=jnp.zeros))
  got = family.function(name)(**family.resolve(
      case.kwargs, case.arrays, "float32",
      asarray=lambda a, dt: make(np.asarray(a, dt)),
      zeros=lambda s, dt: make(np.zeros(s, dt))))
  assert got.dtype == jnp.float32 and got.shape == want.shape
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_params_under_jit_and_grad():
  """An nnx.Param holding a tracer (what nnx.jit hands a layer)."""
  case = _case("nn.conv2d_transpose")
  kw = family.resolve(case.kwargs, case.arrays, "float32", jnp.asarray)
  fn = family.function("nn.conv2d_transpose")

  def loss(filters):
    return jnp.sum(fn(**{**kw, "filters": nnx.Param(filters)}) ** 2)
  want = jax.grad(lambda f: jnp.sum(fn(**{**kw, "filters": f}) ** 2))(
      kw["filters"])
  np.testing.assert_allclose(jax.jit(jax.grad(loss))(kw["filters"]), want,
                             rtol=1e-6)


def test_python_numbers_and_lists_take_tfs_default_dtypes():
  """TF converts Python floats to float32 and ints to int32."""
  import jaxconv
  sizes = [1, 4, 4, 1]
  ones = [[[[1.0]]]]  # filter [1, 1, 1, 1]
  dy = [[[[2.0], [3.0]], [[4.0], [5.0]]]]  # [1, 2, 2, 1]
  out = jaxconv.raw_ops.Conv2DBackpropInput(
      input_sizes=sizes, filter=ones, out_backprop=dy, strides=[1, 2, 2, 1],
      padding="VALID")
  assert out.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(out)[0, ::2, ::2, 0],
                                [[2, 3], [4, 5]])
  ints = jaxconv.raw_ops.Conv2DBackpropInput(
      input_sizes=sizes, filter=[[[[1]]]], out_backprop=[[[[2], [3]],
                                                            [[4], [5]]]],
      strides=[1, 2, 2, 1], padding="VALID")
  assert ints.dtype == jnp.int32


def test_layer_core_takes_params():
  """The layers. functional core (jaxconv.layers.ConvTransposeConfig, under
  the Flax, Keras and Equinox layers): kernel and bias as nnx.Param."""
  from jaxconv.layers import ConvTransposeConfig
  config = ConvTransposeConfig.make((3, 3), strides=2)
  rng = np.random.default_rng(1)
  x = rng.standard_normal((2, 5, 5, 4)).astype(np.float32)
  kernel = rng.standard_normal((3, 3, 6, 4)).astype(np.float32)
  bias = rng.standard_normal(6).astype(np.float32)
  want = config(jnp.asarray(x), jnp.asarray(kernel), jnp.asarray(bias))
  got = config(x.tolist(), nnx.Param(jnp.asarray(kernel)),
               nnx.Param(jnp.asarray(bias)))
  assert got.shape == (2, 10, 10, 6)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
