"""The one place that touches Keras's internals: the JAX backend's
`conv_transpose`.

Keras 3 has no public way to replace a backend op.  Its layers call
`keras.ops.conv_transpose`, which calls `keras.src.backend.nn.conv_transpose`
(on the JAX backend the module `keras.src.backend.jax.nn`) at call time.
Checked with Keras 3.10-3.15 (the range pyproject.toml's `keras` extra
declares); if that module or its function's signature changes, `swap`
raises instead of leaving Keras's op in place silently.
"""
from __future__ import annotations

import importlib.metadata
import inspect

SUPPORTED = ">=3.10,<4"
SIGNATURE = ["inputs", "kernel", "strides", "padding", "output_padding",
             "data_format", "dilation_rate"]


def _broken(what: str) -> RuntimeError:
  version = importlib.metadata.version("keras")
  return RuntimeError(
      f"jaxconv.keras cannot route Keras {version}'s conv_transpose through "
      f"jaxconv: {what}.  jaxconv.keras supports Keras {SUPPORTED} "
      "(pip install 'jaxconv[keras]').")


def _module():
  try:
    from keras.src.backend.jax import nn  # noqa: PLC0415
  except ImportError as e:
    raise _broken(f"keras.src.backend.jax.nn is gone ({e})") from e
  fn = getattr(nn, "conv_transpose", None)
  if fn is None or list(inspect.signature(fn).parameters) != SIGNATURE:
    raise _broken("keras.src.backend.jax.nn.conv_transpose is gone or takes "
                  "other arguments")
  return nn


def swap(fn):
  """Make `fn` the JAX backend's conv_transpose; return what it replaced."""
  nn = _module()
  saved, nn.conv_transpose = nn.conv_transpose, fn
  return saved


def current():
  """The JAX backend's conv_transpose now."""
  return _module().conv_transpose
