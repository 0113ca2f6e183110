"""tf2jax converters: TF op name -> parser of a NodeDef -> function of the
node's inputs.  The family's ops call `jaxconv.raw_ops` (exact TF
semantics); the forward convs (what their gradients contain) call
`jaxconv.core.forward`; `ShapeN` and `BiasAddGrad` are what TF's gradient
graphs of conv layers need around them.  Sizes (`input_sizes`,
`filter_sizes`) must be static: tf2jax keeps `Shape`/`ShapeN` results and
constants as NumPy values; a size computed from tensor values is an error
naming the node.
"""
from __future__ import annotations

import functools
import inspect

import jax
import jax.numpy as jnp
import numpy as np

from jaxconv import core, raw_ops
from jaxconv.ops import FORWARD_OPS, OPS


def _attr_value(value):
  """A NodeDef attribute as a Python value."""
  kind = value.WhichOneof("value")
  if kind == "list":
    return list(value.list.s and [s.decode() for s in value.list.s]
                or value.list.i)
  if kind == "s":
    return value.s.decode()
  return getattr(value, kind)


def _attributes(proto, allowed) -> dict:
  """The node's attributes (but dtypes like `T`, `Tshape`, and private
  ones), checked against the keywords the converter takes."""
  out = {}
  for key, value in proto.attr.items():
    if key.startswith("_") or (value.WhichOneof("value") == "type"
                               and key not in allowed):
      continue
    if key not in allowed:
      raise ValueError(f"{proto.op} node {proto.name!r}: unexpected attribute "
                       f"{key}={_attr_value(value)!r}")
    out[key] = _attr_value(value)
  return out


def _static(value, name: str, proto) -> np.ndarray:
  try:
    return np.asarray(value)
  except (jax.errors.TracerArrayConversionError,
          jax.errors.ConcretizationTypeError) as e:
    raise ValueError(
        f"{proto.op} node {proto.name!r}: {name} is data-dependent (computed "
        "from tensor values, not from shapes); jaxconv needs it static, as "
        "XLA needs the result shape at compile time") from e


def _named(proto, fn):
  """fn's errors, prefixed with the node that raised them."""
  @functools.wraps(fn)
  def call(*args):
    try:
      return fn(*args)
    except (ValueError, TypeError) as e:
      if str(e).startswith(f"{proto.op} node "):
        raise
      raise type(e)(f"{proto.op} node {proto.name!r}: {e}") from e
  return call


def _family(op_name: str):
  """The parser of one of the family's ops, by its jaxconv.raw_ops function;
  the node's inputs in TF's order (the op table's `inputs`)."""
  fn = getattr(raw_ops, op_name)
  params = inspect.signature(fn).parameters
  inputs = OPS[op_name].inputs

  def parse(proto):
    attributes = _attributes(proto, params)

    def func(*values):
      named = dict(zip(inputs, values))
      for key in ("input_sizes", "filter_sizes"):
        if key in named:
          named[key] = _static(named[key], key, proto)
      return fn(**named, **attributes)
    return _named(proto, func)
  return parse


def _forward(op_name: str):
  op = FORWARD_OPS[op_name]

  def parse(proto):
    allowed = ["strides", "padding", "data_format", "dilations"]
    if op.has_explicit_paddings:
      allowed.append("explicit_paddings")
    if op.use_cudnn_on_gpu:
      allowed.append("use_cudnn_on_gpu")
    attributes = dict(data_format=op.formats[0], dilations=[1] * (op.ndim + 2))
    attributes.update(_attributes(proto, allowed))
    attributes.pop("use_cudnn_on_gpu", None)

    def func(x, filt):
      return core.forward(op, x, filt, **attributes)
    return _named(proto, func)
  return parse


def _shape_n(proto):
  """ShapeN: the static shapes of its N inputs."""
  import tensorflow as tf  # noqa: PLC0415  (tf2jax's own dependency)
  _attributes(proto, ("N", "out_type"))
  dtype = tf.dtypes.as_dtype(proto.attr["out_type"].type or tf.int32)
  return lambda *xs: tuple(np.array(x.shape, dtype.as_numpy_dtype) for x in xs)


def _bias_add_grad(proto):
  """BiasAddGrad: the sum over every axis but the channels."""
  data_format = _attributes(proto, ("data_format",)).get("data_format", "NHWC")

  def func(dy):
    channel = 1 if data_format.startswith("NC") and dy.ndim > 2 else dy.ndim - 1
    return jnp.sum(dy, axis=tuple(a for a in range(dy.ndim) if a != channel))
  return func


CONVERTERS = {
    **{name: _family(name) for name in OPS},
    **{name: _forward(name) for name in FORWARD_OPS},
    "ShapeN": _shape_n,
    "BiasAddGrad": _bias_add_grad,
}
