"""The op's two partner convolutions, as primitives of their own.

`conv_backprop_input` (the op), `conv_forward` (TF's Conv2D) and
`conv_backprop_filter` (TF's Conv2DBackpropFilter) share one `ConvSpec` and
are each other's transposes, so derivatives of any order stay inside this
closed family of fast forms (`jaxconv.rules` registers the transposes).
The back end says how each platform lowers them (`lowering.partner_rules`).
"""
from __future__ import annotations

import jax.numpy as jnp
from jax.extend.core import Primitive
from jax.interpreters import mlir

from jaxconv import lowering
from jaxconv import sharding
from jaxconv.primitive import def_eager_impl, typed
from jaxconv.lowering.geometry import ConvSpec

conv_forward_p = Primitive("conv_forward")
conv_backprop_filter_p = Primitive("conv_backprop_filter")


def conv_forward(x, filt, spec: ConvSpec, out_sharding=None):
  """TF's Conv2D of x (shaped like the op's result): out_backprop-shaped."""
  return conv_forward_p.bind(x, filt, spec=spec,
                             out_sharding=sharding.as_named(out_sharding))


def conv_backprop_filter(x, dy, spec: ConvSpec, kernel: tuple[int, ...],
                         out_sharding=None):
  """TF's Conv2DBackpropFilter for the forward conv: filter-shaped."""
  return conv_backprop_filter_p.bind(
      x, dy, spec=spec, kernel=tuple(kernel),
      out_sharding=sharding.as_named(out_sharding))


def _forward_shape(x, filt, spec: ConvSpec):
  kernel = filt.shape[:spec.ndim]
  return spec.activation_shape(x.shape[0], filt.shape[-1],
                               spec.out_backprop_spatial(kernel))


def _filter_shape(x, dy, spec: ConvSpec, kernel):
  return (*kernel, x.shape[spec.feature_axis] // spec.groups,
          dy.shape[spec.feature_axis])


def _guarded(fn, shape_rule):
  """fn, with zeros for empty operands or results (no zero-size convs);
  out_sharding is the result aval's business, not fn's."""
  def impl(a, b, *, out_sharding=None, **params):
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

_SHARDING = {"forward": sharding.forward,
             "backprop_filter": sharding.backprop_filter}
for _p, _name, _shape in ((conv_forward_p, "forward", _forward_shape),
                          (conv_backprop_filter_p, "backprop_filter",
                           _filter_shape)):
  _p.def_abstract_eval(
      lambda a, b, *, out_sharding=None, _shape=_shape, _name=_name, **params:
      typed(_shape(a, b, **params), a.dtype, _SHARDING[_name](
          a, b, out_sharding=out_sharding, **params)))
  def_eager_impl(_p)
  for _platform, _fn in _RULES[_name].items():
    mlir.register_lowering(_p, lowering.lower_fun(_guarded(_fn, _shape)),
                           platform=_platform)
