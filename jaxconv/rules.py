"""Transformation rules of the op and its two partner convolutions.

All three are bilinear and each is the other two's transpose (see
`jaxconv.partners`), so JAX never transposes an lhs-dilated convolution
(XLA turns that into a slow window-reversed one) at any derivative order:

  op(w, dy)    = conv_backprop_input   T_w: backprop_filter(ct, dy)  T_dy: forward(ct, w)
  forward(x, w)                        T_x: op(w, ct)                T_w:  backprop_filter(x, ct)
  backprop_filter(x, dy)               T_x: op(ct, dy)               T_dy: forward(x, ct)

Batching folds a batched out_backprop into the batch and a batched filter
into feature groups (a depthwise one shares a broadcast out_backprop): one
call, never a loop.  The partners batch through
JAX's own convolution batching.

Under explicit sharding, a transpose's result is typed like the primal it
is the cotangent of (its `out_sharding`), and batching runs with the
explicit axes made Auto (`jax.sharding.auto_axes`), its result typed by
the unbatched rule (`jaxconv.sharding`) with the vmapped dim in front.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.interpreters import ad, batching

from jaxconv import sharding
from jaxconv.partners import (backprop_filter_impl, conv_backprop_filter,
                              conv_backprop_filter_p, conv_forward,
                              conv_forward_p, forward_impl)
from jaxconv.primitive import conv_backprop_input, conv_backprop_input_p
from jaxconv.lowering.geometry import ConvSpec


def _kernel(filt_aval, spec):
  return filt_aval.shape[:spec.ndim]


_of = sharding.of  # the cotangent's type: its primal's sharding
ad.defbilinear(
    conv_backprop_input_p,
    lambda ct, w, dy, *, spec, out_sharding=None: conv_backprop_filter(
        ct, dy, spec, _kernel(w.aval, spec), _of(w.aval)),
    lambda ct, w, dy, *, spec, out_sharding=None: conv_forward(
        ct, w, spec, _of(dy.aval)))
ad.defbilinear(
    conv_forward_p,
    lambda ct, x, w, *, spec, out_sharding=None: conv_backprop_input(
        w, ct, spec, _of(x.aval)),
    lambda ct, x, w, *, spec, out_sharding=None: conv_backprop_filter(
        x, ct, spec, _kernel(w.aval, spec), _of(w.aval)))
ad.defbilinear(
    conv_backprop_filter_p,
    lambda ct, x, dy, *, spec, kernel, out_sharding=None: conv_backprop_input(
        ct, dy, spec, _of(x.aval)),
    lambda ct, x, dy, *, spec, kernel, out_sharding=None: conv_forward(
        x, ct, spec, _of(dy.aval)))


def _batch_rule(args, dims, *, spec: ConvSpec, after_batch=False):
  """after_batch: fold a batched out_backprop in after its batch (a
  batch sharded in its type then stays one block per device)."""
  filt, dy = args
  f_dim, dy_dim = dims
  n, c = spec.ndim, spec.feature_axis
  if f_dim is None:  # batched out_backprop only: fold into the batch
    at = int(after_batch)
    dy = jnp.moveaxis(dy, dy_dim, at)
    folded = dy.reshape(dy.shape[0] * dy.shape[1], *dy.shape[2:])
    out = conv_backprop_input(filt, folded, spec)
    return out.reshape(*dy.shape[:2], *out.shape[1:]), at
  filt = jnp.moveaxis(filt, f_dim, 0)
  b = filt.shape[0]
  if dy_dim is None and filt.shape[n + 1] == 1 and spec.groups > 1:
    # Depthwise: stacking filters on the in-depth would make it a grouped
    # op; depthwise kernels are far faster, so share dy among b*groups
    # groups instead (CPU, 4 filters, 56x56x128 s2: 17.8 ms vs 62).
    dy = jnp.broadcast_to(dy, (b, *dy.shape))
    dy_dim = 0
  if dy_dim is None:
    # Batched filter only: stack the filters along their in-depth, so each
    # group's result channels are [b, c_in/groups]; no copy of dy.
    filt = jnp.moveaxis(filt, 0, n).reshape(*filt.shape[1:n + 1], -1,
                                            filt.shape[-1])
    out = conv_backprop_input(filt, dy, spec)
    out = out.reshape(*out.shape[:c], spec.groups, b, -1, *out.shape[c + 1:])
    if spec.groups == 1:  # leave the batch where it is: no transpose here
      return out.reshape(*out.shape[:c], b, -1, *out.shape[c + 3:]), c
    out = jnp.moveaxis(out, c + 1, 0)
    return out.reshape(*out.shape[:c + 1], -1, *out.shape[c + 3:]), 0
  # Both batched: b independent problems as b * groups feature groups.
  dy = jnp.moveaxis(dy, dy_dim, c)
  dy = dy.reshape(*dy.shape[:c], -1, *dy.shape[c + 2:])
  filt = jnp.moveaxis(filt, 0, n + 1).reshape(*filt.shape[1:n + 2], -1)
  out = conv_backprop_input(
      filt, dy, dataclasses.replace(spec, groups=b * spec.groups))
  return out.reshape(*out.shape[:c], b, -1, *out.shape[c + 1:]), c


def _batch_via_lax(impl, args, dims, **params):
  return jax.vmap(functools.partial(impl, **params), in_axes=dims)(*args), 0


def _typed_batching(batch_rule, result_sharding):
  """batch_rule, under explicit sharding run with Auto axes and typed."""
  def rule(args, dims, *, out_sharding=None, **params):
    avals = [jax.typeof(a) for a in args]
    if out_sharding is None and not any(map(_of, avals)):
      return batch_rule(args, dims, **params)
    typed = sharding.batched(result_sharding, avals, dims,
                             out_sharding=out_sharding, **params)

    def run(*args):
      out, dim = batch_rule(args, dims, **params)
      return jnp.moveaxis(out, dim, 0)
    return jax.sharding.auto_axes(run, out_sharding=typed)(*args), 0
  return rule


def _batch_op(args, dims, **params):
  dy, dy_dim = jax.typeof(args[1]), dims[1]
  batch = 1 if dy_dim == 0 else 0  # out_backprop's own batch dim
  after_batch = dims[0] is None and sharding.is_sharded(dy, batch)
  rule = functools.partial(_batch_rule, after_batch=after_batch)
  return _typed_batching(rule, sharding.backprop_input)(args, dims, **params)


batching.primitive_batchers[conv_backprop_input_p] = _batch_op
batching.primitive_batchers[conv_forward_p] = _typed_batching(
    functools.partial(_batch_via_lax, forward_impl), sharding.forward)
batching.primitive_batchers[conv_backprop_filter_p] = _typed_batching(
    functools.partial(_batch_via_lax, backprop_filter_impl),
    sharding.backprop_filter)
