"""The `conv_backprop_input` primitive: TF's Conv*BackpropInput, any rank.

(filter, out_backprop) -> the forward conv's input gradient; parameters: a
`ConvSpec` and `out_sharding` (None, or the result's sharding under
explicit sharding).  Bilinear: its transposes are its two partners
(jaxconv/primitives/forward.py, backprop_filter.py), so no derivative
ever transposes an lhs-dilated convolution.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.export
import jax.numpy as jnp
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from jaxconv import lowering, sharding
from jaxconv.lowering.geometry import ConvSpec, effective_size
from jaxconv.primitives import backprop_filter, forward
from jaxconv.primitives.common import (SUPPORTED_DTYPES, check_fits,
                                       check_representable, def_eager_impl,
                                       typed, typed_batching, vary_alike)

conv_backprop_input_p = Primitive("conv_backprop_input")


def conv_backprop_input(filt, out_backprop, spec: ConvSpec, out_sharding=None):
  """Bind the primitive (inputs already validated by jaxconv.core)."""
  return conv_backprop_input_p.bind(
      *vary_alike(filt, out_backprop), spec=spec,
      out_sharding=sharding.as_named(out_sharding))


# --- shape, dtype and sharding rules ---------------------------------------


def check_out_backprop(filter_shape, dy_shape, spec: ConvSpec) -> None:
  """TF's checks of out_backprop against the filter shape and the spec
  (shared by the op, its public filter gradient and the forward conv;
  raises ValueError)."""
  n = spec.ndim
  if len(dy_shape) != n + 2:
    raise ValueError(
        f"out_backprop must be {n + 2}-dimensional, got shape {dy_shape}")
  if any(map(jax.export.is_symbolic_dim, (*filter_shape, *dy_shape[1:]))):
    raise ValueError(
        "only the batch dimension of out_backprop may be symbolic, got filter "
        f"shape {filter_shape} and out_backprop shape {dy_shape}")
  kernel, filt_out = filter_shape[:n], filter_shape[n + 1]
  dy_depth = dy_shape[spec.feature_axis]
  if filt_out != dy_depth:
    raise ValueError(
        "filter and out_backprop must have the same out_depth: filter "
        f"out_depth {filt_out}, out_backprop depth {dy_depth} (filter shape "
        f"{filter_shape}, out_backprop shape {dy_shape})")
  if spec.groups < 1 or filt_out % spec.groups:
    raise ValueError(
        f"filter out_depth {filt_out} must be divisible by the group count "
        f"{spec.groups}")
  for dim, (k, s, d) in enumerate(zip(kernel, spec.strides, spec.dilations)):
    # TF fails inside its kernel on a 0-tap filter; we say so up front.
    if k < 1 or s < 1 or d < 1:
      raise ValueError(
          f"filter spatial sizes, strides and dilations must be >= 1, got "
          f"filter {k}, stride {s}, dilation {d} in spatial dim {dim} (filter "
          f"shape {filter_shape})")
  computed = spec.out_backprop_spatial(kernel)
  actual = tuple(dy_shape[a] for a in spec.spatial_axes)
  for dim, (i, k, s, d, o, got) in enumerate(zip(
      spec.input_spatial, kernel, spec.strides, spec.dilations, computed,
      actual)):
    if o < 0:
      raise ValueError(
          f"Computed output size would be negative: {o} [input_size: {i}, "
          f"effective_filter_size: {effective_size(k, d)}, stride: {s}] "
          f"(spatial dim {dim} of the input, filter, strides, dilations "
          "and padding)")
    if got != o:
      raise ValueError(
          "Size of out_backprop doesn't match computed: actual = "
          f"{got}, computed = {o} spatial_dim: {spec.spatial_axes[dim]} "
          f"input: {i} filter: {k} output: {got} stride: {s} dilation: {d}")


def _shape_rule(filt, dy, spec: ConvSpec):
  """Result shape, with TF's shape checks (raises ValueError)."""
  n = spec.ndim
  if filt.ndim != n + 2:
    raise ValueError(f"filter must be {n + 2}-dimensional, got shape {filt.shape}")
  check_out_backprop(filt.shape, dy.shape, spec)
  return spec.activation_shape(dy.shape[0], filt.shape[n] * spec.groups,
                               spec.input_spatial)


def _dtype_rule(filt, dy):
  if filt.dtype != dy.dtype:
    raise TypeError("filter and out_backprop must have the same dtype, got "
                    f"{filt.dtype} and {dy.dtype}")
  if filt.dtype not in SUPPORTED_DTYPES:
    raise TypeError(f"filter dtype {filt.dtype} is not supported; expected one "
                    f"of {', '.join(map(str, SUPPORTED_DTYPES))}")
  return filt.dtype


def _sharding_rule(filt, dy, spec: ConvSpec, out_sharding=None):
  """The batch follows out_backprop's, the result's channels the filter's
  in_depth; the contracted channels must not be sharded."""
  n, c = spec.ndim, spec.feature_axis

  def rule(f, d, names):
    sharding.check_free(spec, f, (d,), names)
    if d[c] or f[n + 1]:
      sharding.fail("the contracted channels (out_backprop's depth, the "
                    "filter's out_depth) are sharded", names)
    if f[n] and spec.groups > 1:
      sharding.fail("a grouped filter's in_depth is sharded", names)
    return sharding.layout(spec, d[0], f[n])
  return sharding.result((filt, dy), ("filter", "out_backprop"), out_sharding,
                         rule)


def _abstract_eval(filt, dy, *, spec: ConvSpec, out_sharding=None):
  dtype = _dtype_rule(filt, dy)
  shape = _shape_rule(filt, dy, spec)
  check_representable(shape, dtype)
  return typed(dy, shape, dtype, _sharding_rule(filt, dy, spec, out_sharding))


def _check_eager(filt, dy, *, spec: ConvSpec, out_sharding=None):
  """An eager call's result, per shard, fits the devices that hold it: the
  batch split as out_backprop's, the channels as the filter's in-depth (or
  as out_sharding says)."""
  shape = _shape_rule(filt, dy, spec)
  if out_sharding is not None:
    shard = out_sharding.shard_shape(shape)
  else:
    shard = list(shape)
    for operand, axis, result_axis in ((dy, 0, 0),
                                       (filt, spec.ndim, spec.feature_axis)):
      if isinstance(operand, jax.Array) and operand.shape[axis]:
        parts = (operand.shape[axis]
                 // operand.sharding.shard_shape(operand.shape)[axis])
        shard[result_axis] = -(-shard[result_axis] // parts)
  check_fits(shape, filt.dtype, (filt, dy), shard)


# --- transposes (a cotangent is typed like its primal) ---------------------


def _transpose_filter(ct, filt, dy, *, spec: ConvSpec, out_sharding=None):
  del out_sharding
  return backprop_filter.conv_backprop_filter(
      ct, dy, spec, filt.aval.shape[:spec.ndim], sharding.of(filt.aval))


def _transpose_out_backprop(ct, filt, dy, *, spec: ConvSpec,
                            out_sharding=None):
  del out_sharding
  return forward.conv_forward(ct, filt, spec, sharding.of(dy.aval))


# --- batching: one call, never a loop --------------------------------------


def _batch_rule(args, dims, *, spec: ConvSpec, after_batch=False):
  """A batched out_backprop folds into the batch (after its own batch with
  `after_batch`: a batch sharded in its type then stays one block per
  device), a batched filter into feature groups (a depthwise one shares a
  broadcast out_backprop: benchmarks/README.md, 'Why each CPU rule')."""
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
    # op; share dy among b * groups groups instead.
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


def _batch(args, dims, **params):
  dy, dy_dim = jax.typeof(args[1]), dims[1]
  batch = 1 if dy_dim == 0 else 0  # out_backprop's own batch dim
  after_batch = dims[0] is None and sharding.is_sharded(dy, batch)

  def rule(args, dims, **params):
    return _batch_rule(args, dims, after_batch=after_batch, **params)
  return typed_batching(rule, _sharding_rule)(args, dims, **params)


# --- lowering: the back end's rule per platform ----------------------------


def _lowering(rule):
  """rule(ctx, filt, dy, *, spec): the result aval carries out_sharding."""
  def lower(ctx, filt, dy, *, spec: ConvSpec, out_sharding=None):
    del out_sharding
    return rule(ctx, filt, dy, spec=spec)
  return lower


# --- registration ------------------------------------------------------------

conv_backprop_input_p.def_abstract_eval(_abstract_eval)
def_eager_impl(conv_backprop_input_p, _check_eager)
ad.defbilinear(conv_backprop_input_p, _transpose_filter,
               _transpose_out_backprop)
batching.primitive_batchers[conv_backprop_input_p] = _batch
for _platform, _rule in lowering.platform_rules().items():
  mlir.register_lowering(conv_backprop_input_p, _lowering(_rule),
                         platform=_platform)
