"""The `conv_forward` primitive: TF's Conv2D/Conv3D, the op's partner.

(x, filter) -> out_backprop-shaped, for the op's `ConvSpec` (x is shaped
like the op's result).  The op's transpose w.r.t. out_backprop, and ours
are the op and the filter gradient (jaxconv/primitives/).  The back end
says how each platform lowers it (`lowering.partner_rules`).
"""
from __future__ import annotations

import functools

from jax.extend.core import Primitive
from jax.interpreters import ad, batching

from jaxconv import lowering, sharding
from jaxconv.lowering.geometry import ConvSpec
from jaxconv.primitives import backprop_filter, backprop_input
from jaxconv.primitives.common import (batch_via_lax, def_eager_impl, guarded,
                                       register_partner_lowerings, typed,
                                       typed_batching, vary_alike)

conv_forward_p = Primitive("conv_forward")


def conv_forward(x, filt, spec: ConvSpec, out_sharding=None):
  """Bind the primitive."""
  return conv_forward_p.bind(*vary_alike(x, filt), spec=spec,
                             out_sharding=sharding.as_named(out_sharding))


# --- shape and sharding rules ----------------------------------------------


def _shape_rule(x, filt, *, spec: ConvSpec):
  kernel = filt.shape[:spec.ndim]
  return spec.activation_shape(x.shape[0], filt.shape[-1],
                               spec.out_backprop_spatial(kernel))


def _sharding_rule(x, filt, spec: ConvSpec, out_sharding=None):
  """The batch follows x's, the result's channels the filter's out_depth;
  the contracted channels must not be sharded."""
  n, c = spec.ndim, spec.feature_axis

  def rule(a, f, names):
    sharding.check_free(spec, f, (a,), names)
    if a[c] or f[n]:
      sharding.fail("the contracted channels (the input's depth, the "
                    "filter's in_depth) are sharded", names)
    return sharding.layout(spec, a[0], f[n + 1])
  return sharding.result((x, filt), ("input", "filter"), out_sharding, rule)


def _abstract_eval(x, filt, *, spec: ConvSpec, out_sharding=None):
  return typed(x, _shape_rule(x, filt, spec=spec), x.dtype,
               _sharding_rule(x, filt, spec, out_sharding))


# --- transposes ----------------------------------------------------------------


def _transpose_input(ct, x, filt, *, spec: ConvSpec, out_sharding=None):
  del out_sharding
  return backprop_input.conv_backprop_input(filt, ct, spec,
                                            sharding.of(x.aval))


def _transpose_filter(ct, x, filt, *, spec: ConvSpec, out_sharding=None):
  del out_sharding
  return backprop_filter.conv_backprop_filter(
      x, ct, spec, filt.aval.shape[:spec.ndim], sharding.of(filt.aval))


# --- registration (batching: JAX's own, of the portable form) --------------

_RULES = lowering.partner_rules()["forward"]
conv_forward_p.def_abstract_eval(_abstract_eval)
def_eager_impl(conv_forward_p)
ad.defbilinear(conv_forward_p, _transpose_input, _transpose_filter)
batching.primitive_batchers[conv_forward_p] = typed_batching(
    functools.partial(batch_via_lax, guarded(_RULES[None], _shape_rule)),
    _sharding_rule)
register_partner_lowerings(conv_forward_p, _RULES, _shape_rule)
