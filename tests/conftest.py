"""Test-wide setup.  Tests run in JAX's default mode (x64 off: float32,
int32); a test that needs float64 says so with `@pytest.mark.x64` (on the
test, a parameter or a module) and runs inside `jax.enable_x64(True)`.
Keras runs on its TF backend for the integration tests, which need the
optional extras (`tests.helpers.require`)."""
import os

import jax
import pytest

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@pytest.fixture(autouse=True)
def _x64_where_marked(request):
  if request.node.get_closest_marker("x64") is None:
    assert not jax.config.jax_enable_x64, "x64 leaked from an earlier test"
    yield
    return
  with jax.enable_x64(True):
    yield
