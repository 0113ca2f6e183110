"""Shared by the integration tests (tf2jax, Flax against TF, Keras 3 and
PyTorch): Keras on its TF backend, quiet TF logs, float32 comparisons.
Import it before keras or tensorflow."""
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

RNG = np.random.default_rng(0)


def randn(*shape):
  return RNG.standard_normal(shape).astype(np.float32)


def assert_close(got, want, what=""):
  """Same shape; values within float32 tolerance of the result's scale."""
  got, want = np.asarray(got), np.asarray(want)
  assert got.shape == want.shape, (what, got.shape, want.shape)
  scale = max(1.0, float(np.abs(want).max(initial=0)))
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=3e-5 * scale,
                             err_msg=what)
