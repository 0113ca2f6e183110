"""The op's two partner convolutions, as primitives of their own.

`conv_backprop_input` (the op), `conv_forward` (TF's Conv2D) and
`conv_backprop_filter` (TF's Conv2DBackpropFilter) share one `ConvSpec` and
are each other's transposes, so derivatives of any order stay inside this
closed family of fast forms (`jaxconv.rules` registers the transposes).
The back end says how each platform lowers them (`lowering.partner_rules`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.extend.core import Primitive
from jax.interpreters import mlir

import lowering
from jaxconv.primitive import def_eager_impl
from lowering.geometry import ConvSpec

conv_forward_p = Primitive("conv_forward")
conv_backprop_filter_p = Primitive("conv_backprop_filter")


def conv_forward(x, filt, spec: ConvSpec):
  """TF's Conv2D of x (shaped like the op's result): out_backprop-shaped."""
  return conv_forward_p.bind(x, filt, spec=spec)


def conv_backprop_filter(x, dy, spec: ConvSpec, kernel: tuple[int, ...]):
  """TF's Conv2DBackpropFilter for the forward conv: filter-shaped."""
  return conv_backprop_filter_p.bind(x, dy, spec=spec, kernel=tuple(kernel))


def _forward_shape(x, filt, spec: ConvSpec):
  kernel = filt.shape[:spec.ndim]
  return spec.activation_shape(x.shape[0], filt.shape[-1],
                               spec.out_backprop_spatial(kernel))


def _filter_shape(x, dy, spec: ConvSpec, kernel):
  return (*kernel, x.shape[spec.feature_axis] // spec.groups,
          dy.shape[spec.feature_axis])


def _guarded(fn, shape_rule):
  """fn, with zeros for empty operands or results (no zero-size convs)."""
  def impl(a, b, **params):
    out_shape = shape_rule(a, b, **params)
    if any(d == 0 for shape in (a.shape, b.shape, out_shape) for d in shape
           if isinstance(d, int)):
      return jnp.zeros(out_shape, a.dtype)
    return fn(a, b, **params)
  return impl


_RULES = lowering.partner_rules()
# The platform-independent forms, for the batching rules (jaxconv/rules.py).
forward_impl = _guarded(_RULES["forward"][None], _forward_shape)
backprop_filter_impl = _guarded(_RULES["backprop_filter"][None], _filter_shape)

for _p, _name, _shape in ((conv_forward_p, "forward", _forward_shape),
                          (conv_backprop_filter_p, "backprop_filter",
                           _filter_shape)):
  _p.def_abstract_eval(
      lambda a, b, _shape=_shape, **params: jax.core.ShapedArray(
          _shape(a, b, **params), a.dtype))
  def_eager_impl(_p)
  for _platform, _fn in _RULES[_name].items():
    mlir.register_lowering(
        _p, mlir.lower_fun(_guarded(_fn, _shape), multiple_results=False),
        platform=_platform)
