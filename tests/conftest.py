"""Test-wide setup.  Tests run in JAX's default mode (x64 off: float32,
int32); a test that needs float64 says so with `@pytest.mark.x64` (on the
test, a parameter or a module) and runs inside `jax.enable_x64(True)`.
Keras runs on its TF backend for the integration tests, which need the
optional extras (`tests.helpers.require`).  A test of XLA's CPU strategies
and the rules among them says so with `@pytest.mark.xla_strategies` and runs
inside `lowering.xla_strategies()` (the native oneDNN strategy off)."""
import importlib
import importlib.abc
import importlib.util
import os
import sys

import jax
import pytest

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


class _MutmutLowering(importlib.abc.MetaPathFinder, importlib.abc.Loader):
  """Under mutmut, `jaxconv.lowering[.x]` is mutmut's copy of `lowering/`
  imported as `lowering[.x]`: mutmut names a mutant by its file's path and
  acts only where the running function's module has that name."""

  def find_spec(self, name, path=None, target=None):
    if name == "jaxconv.lowering" or name.startswith("jaxconv.lowering."):
      return importlib.util.spec_from_loader(name, self)
    return None

  def create_module(self, spec):
    return importlib.import_module(spec.name.removeprefix("jaxconv."))

  def exec_module(self, module):
    pass


if "MUTANT_UNDER_TEST" in os.environ:
  sys.meta_path.insert(0, _MutmutLowering())


@pytest.fixture(autouse=True)
def _x64_where_marked(request):
  if request.node.get_closest_marker("x64") is None:
    assert not jax.config.jax_enable_x64, "x64 leaked from an earlier test"
    yield
    return
  with jax.enable_x64(True):
    yield


@pytest.fixture(autouse=True)
def _xla_strategies_where_marked(request):
  if request.node.get_closest_marker("xla_strategies") is None:
    yield
    return
  from jaxconv import lowering
  with lowering.xla_strategies():
    yield
