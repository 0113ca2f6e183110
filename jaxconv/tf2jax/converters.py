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

_FORWARD = {  # TF op: (ndim, depthwise, padding modes)
    "Conv2D": (2, False, ("SAME", "VALID", "EXPLICIT")),
    "Conv3D": (3, False, ("SAME", "VALID")),
    "DepthwiseConv2dNative": (2, True, ("SAME", "VALID", "EXPLICIT")),
}
_FORWARD_DEFAULTS = {2: dict(data_format="NHWC", dilations=[1] * 4),
                     3: dict(data_format="NDHWC", dilations=[1] * 5)}


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
  """The parser of one of the family's ops, by its jaxconv.raw_ops function."""
  fn = getattr(raw_ops, op_name)
  params = inspect.signature(fn).parameters
  operands = [n for n, p in params.items()
              if p.default is inspect.Parameter.empty and n in (
                  "input_sizes", "filter_sizes", "input", "filter",
                  "out_backprop")]

  def parse(proto):
    attributes = _attributes(proto, params)

    def func(*inputs):
      named = dict(zip(operands, inputs))
      for key in ("input_sizes", "filter_sizes"):
        if key in named:
          named[key] = _static(named[key], key, proto)
      return fn(**named, **attributes)
    return _named(proto, func)
  return parse


def _forward(op_name: str):
  ndim, depthwise, paddings = _FORWARD[op_name]

  def parse(proto):
    allowed = ["strides", "padding", "data_format", "dilations"]
    if "EXPLICIT" in paddings:
      allowed.append("explicit_paddings")
    attributes = dict(_FORWARD_DEFAULTS[ndim])
    attributes.update(_attributes(
        proto, allowed + ["use_cudnn_on_gpu"] * (op_name == "Conv2D")))
    attributes.pop("use_cudnn_on_gpu", None)

    def func(x, filt):
      return core.forward(ndim, x, filt, **attributes, paddings=paddings,
                          depthwise=depthwise)
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
    **{name: _family(name) for name in raw_ops.__all__},
    **{name: _forward(name) for name in _FORWARD},
    "ShapeN": _shape_n,
    "BiasAddGrad": _bias_add_grad,
}
