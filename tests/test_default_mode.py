"""JAX's default mode (x64 off), the one users run: every function of the
family takes float32 and gives float32, takes its sizes as int32 arrays,
and under jit emits no 64-bit value; its gradients stay float32 too."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import family
from tests.helpers import assert_close

NAMES = sorted(family.OPS)
SIZES = ("input_sizes", "filter_sizes", "output_shape")


def _case(name):
  rng = np.random.default_rng(1000 + NAMES.index(name))
  while True:
    case = family.OPS[name][1](rng, dtype="float32")
    if 0 not in (*case.cfg["out_backprop_shape"], *case.cfg["input_sizes"]):
      return case


def _int32_sizes(kwargs):
  return {k: (np.asarray(v, np.int32) if k in SIZES else v)
          for k, v in kwargs.items()}


@pytest.mark.parametrize("name", NAMES)
def test_float32_in_float32_out_int32_sizes(name):
  assert not jax.config.jax_enable_x64
  case = _case(name)
  kwargs = _int32_sizes(case.kwargs)
  out = family.run(case.fn, kwargs, case.arrays, "float32")
  assert out.dtype == jnp.float32 and not out.weak_type
  want = family.reference_result(case.cfg, case.kwargs, case.arrays)
  assert_close(out, want, "float32", (name, case.cfg))

  f, tensors = family.as_function(case, kwargs)
  tensors = [jnp.asarray(t, jnp.float32) for t in tensors]
  text = jax.jit(f).lower(*tensors).as_text()
  assert re.search(r"tensor<[\dx]*f32>", text), name
  # No 64-bit value (a native custom call's attributes are not values).
  values = re.sub(r"mhlo\.backend_config = \{[^}]*\}", "", text)
  assert not re.search(r"tensor<[\dx?]*[fi]64>", values), name
  grads = jax.grad(lambda *t: f(*t).sum(), argnums=tuple(range(len(tensors))))(
      *tensors)
  assert [g.dtype for g in grads] == [jnp.float32] * len(tensors)
