"""The `conv_backprop_filter` primitive: TF's Conv*BackpropFilter, any rank.

(x, out_backprop) -> the filter gradient `[*kernel, C / groups, C_out]` of
the forward conv, for the op's `ConvSpec`; parameters `kernel` (the
filter's spatial sizes) and `out_sharding`.  The op's transpose w.r.t.
its filter, and ours are the op and the forward conv
(jaxconv/primitives/).  The back end says how each platform lowers it
(`lowering.partner_rules`).
"""
from __future__ import annotations

import functools

from jax.extend.core import Primitive
from jax.interpreters import ad, batching

from jaxconv import lowering, sharding
from jaxconv.lowering.geometry import ConvSpec
from jaxconv.primitives import backprop_input, forward
from jaxconv.primitives.common import (batch_via_lax, def_eager_impl, guarded,
                                       register_partner_lowerings, typed,
                                       typed_batching, vary_alike)

conv_backprop_filter_p = Primitive("conv_backprop_filter")


def conv_backprop_filter(x, dy, spec: ConvSpec, kernel: tuple[int, ...],
                         out_sharding=None):
  """Bind the primitive."""
  return conv_backprop_filter_p.bind(
      *vary_alike(x, dy), spec=spec, kernel=tuple(kernel),
      out_sharding=sharding.as_named(out_sharding))


# --- shape and sharding rules ----------------------------------------------


def _shape_rule(x, dy, *, spec: ConvSpec, kernel):
  c = spec.feature_axis
  return spec.filter_shape(kernel, x.shape[c], dy.shape[c])


def _sharding_rule(x, dy, spec: ConvSpec, out_sharding=None, kernel=None):
  """The result's depths follow x's and dy's channels; the contracted
  batch must not be sharded."""
  del kernel  # the result's dims follow from spec
  n, c = spec.ndim, spec.feature_axis

  def rule(a, d, names):
    sharding.check_free(spec, None, (a, d), names)
    if a[0] or d[0]:
      sharding.fail("the contracted batch is sharded", names)
    if a[c] and spec.groups > 1:
      sharding.fail("a grouped input's depth is sharded", names)
    if a[c] and a[c] == d[c]:
      sharding.fail("input and out_backprop depths are sharded over the "
                    "same axis", names)
    return sharding.P(*[None] * n, a[c], d[c])
  return sharding.result((x, dy), ("input", "out_backprop"), out_sharding,
                         rule)


def _abstract_eval(x, dy, *, spec: ConvSpec, kernel, out_sharding=None):
  return typed(x, _shape_rule(x, dy, spec=spec, kernel=kernel), x.dtype,
               _sharding_rule(x, dy, spec, out_sharding))


# --- transposes ----------------------------------------------------------------


def _transpose_input(ct, x, dy, *, spec: ConvSpec, kernel, out_sharding=None):
  del kernel, out_sharding
  return backprop_input.conv_backprop_input(ct, dy, spec, sharding.of(x.aval))


def _transpose_out_backprop(ct, x, dy, *, spec: ConvSpec, kernel,
                            out_sharding=None):
  del kernel, out_sharding
  return forward.conv_forward(x, ct, spec, sharding.of(dy.aval))


# --- registration (batching: JAX's own, of the portable form) --------------

_RULES = lowering.partner_rules()["backprop_filter"]
conv_backprop_filter_p.def_abstract_eval(_abstract_eval)
def_eager_impl(conv_backprop_filter_p)
ad.defbilinear(conv_backprop_filter_p, _transpose_input,
               _transpose_out_backprop)
batching.primitive_batchers[conv_backprop_filter_p] = typed_batching(
    functools.partial(batch_via_lax, guarded(_RULES[None], _shape_rule)),
    _sharding_rule)
register_partner_lowerings(conv_backprop_filter_p, _RULES, _shape_rule)
