"""`jaxconv.tf2jax`: tf2jax with exact converters for the whole family.

    jf, params = jaxconv.tf2jax.convert(tf_fn, *example_args)   # as tf2jax's
    jf = jaxconv.tf2jax.convert_functional(tf_fn, *example_args)
    jf = jaxconv.tf2jax.convert_from_restored(restored.f)   # a SavedModel's
    with jaxconv.tf2jax.override():   # tf2jax's own functions, our converters
      jf, params = tf2jax.convert(tf_fn, *example_args)

tf2jax (0.3.x) converts `Conv2DBackpropInput` with `lax.conv_transpose`,
dropping `input_sizes`, and refuses the rest of the family and TF's
gradient graphs.  Here every op of the family, the forward convs their
gradients contain, `ShapeN` and `BiasAddGrad` convert with jaxconv's
TF-exact functions (`converters.py`); the activation, pooling and
batch-norm gradients of training graphs, which tf2jax lacks, with TF's
formulas (`gradients.py`).  Needs the `tf2jax` extra.
"""
from __future__ import annotations

import contextlib
import functools

import tf2jax

from jaxconv.tf2jax import _table, converters, gradients

CONVERTERS = {**converters.CONVERTERS, **gradients.CONVERTERS}

__all__ = ["convert", "convert_from_restored", "convert_functional",
           "convert_functional_from_restored", "override"]


@contextlib.contextmanager
def override():
  """Within: tf2jax converts with jaxconv's converters; tf2jax's table is
  restored on exit.  tf2jax converts a graph's nested functions (a
  SavedModel's, for one) when first called: call what you convert within
  too, or use this module's `convert*`, whose results do that themselves."""
  saved = _table.swap(CONVERTERS)
  try:
    yield
  finally:
    _table.restore(saved)


def _within_override(fn):
  @functools.wraps(fn)
  def call(*args, **kwargs):
    with override():
      return fn(*args, **kwargs)
  return call


def _overridden(convert_fn):
  """convert_fn, run within `override()`, and so is the function it returns."""
  @functools.wraps(convert_fn)
  def wrapper(*args, **kwargs):
    result = _within_override(convert_fn)(*args, **kwargs)
    fn, *params = result if isinstance(result, tuple) else (result,)
    fn = tf2jax.AnnotatedFunction(
        _within_override(fn.fn), fn.structured_inputs, fn.structured_outputs,
        fn.signature)
    return (fn, *params) if params else fn
  return wrapper


convert = _overridden(tf2jax.convert)
convert_functional = _overridden(tf2jax.convert_functional)
convert_from_restored = _overridden(tf2jax.convert_from_restored)
convert_functional_from_restored = _overridden(
    tf2jax.convert_functional_from_restored)
