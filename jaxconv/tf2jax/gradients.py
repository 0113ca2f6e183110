"""tf2jax converters for the ops TF's training graphs hold around convs and
tf2jax lacks: activation gradients, pooling (3-D forward, every gradient),
batch norm (every rank, every output) and its gradients, `ConcatOffset`, `Selu`, and a `Transpose` that keeps
static (NumPy) values static, as a shape vector in a gradient graph must be
for a later `Reshape`.

Each is TF's formula (tensorflow/core/kernels/*_op.h), written on the
node's inputs in TF's order; pooling gradients are the VJPs of the pooling
written here, so the routing (first maximum of a window, counts without
padding for averages) is TF's.  Registered with the family's converters
through `jaxconv.tf2jax._table`.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxconv.lowering import index
from jaxconv.lowering.geometry import forward_padding
from jaxconv.tf2jax.converters import _attributes, _named, _static

# TF's Selu constants (tensorflow/core/kernels/relu_op_functor.h).
SELU_SCALE = 1.0507009873554804934193349852946
SELU_ALPHA = 1.6732632423543772848170429916717


def _elementwise(fn, allowed=()):
  """A parser for an op computing fn(*inputs, **attributes)."""
  def parse(proto):
    attributes = _attributes(proto, allowed)
    return _named(proto, lambda *xs: fn(*xs, **attributes))
  return parse


def _leaky_relu_grad(g, x, alpha=0.2):
  return jnp.where(x > 0, g, (g * alpha).astype(g.dtype))


def _elu_grad(g, y):
  return jnp.where(y < 0, g * (y + 1), g)


def _selu(x):
  return jnp.where(x > 0, SELU_SCALE * x,
                   (SELU_SCALE * SELU_ALPHA) * jnp.expm1(x)).astype(x.dtype)


def _selu_grad(g, y):
  return jnp.where(y < 0, g * (y + SELU_SCALE * SELU_ALPHA),
                   g * SELU_SCALE).astype(g.dtype)


ACTIVATION_GRADIENTS = {
    # (gradients, features)
    "ReluGrad": _elementwise(lambda g, x: jnp.where(x > 0, g, 0)),
    "Relu6Grad": _elementwise(lambda g, x: jnp.where((x > 0) & (x < 6), g, 0)),
    "LeakyReluGrad": _elementwise(_leaky_relu_grad, ("alpha",)),
    "SoftplusGrad": _elementwise(lambda g, x: g / (1 + jnp.exp(-x))),
    "SoftsignGrad": _elementwise(lambda g, x: g / jnp.square(1 + jnp.abs(x))),
    # (gradients, outputs)
    "EluGrad": _elementwise(_elu_grad),
    "SeluGrad": _elementwise(_selu_grad),
    # (outputs, gradients): TF's cwise "*Grad" ops take y first
    "SigmoidGrad": _elementwise(lambda y, g: g * (y * (1 - y))),
    "TanhGrad": _elementwise(lambda y, g: g * (1 - y * y)),
    "RsqrtGrad": _elementwise(lambda y, g: g * (-0.5 * (y * y * y))),
    "SqrtGrad": _elementwise(lambda y, g: g * (0.5 / y)),
    "ReciprocalGrad": _elementwise(lambda y, g: g * -(y * y)),
    "Selu": _elementwise(_selu),
}


# Pooling ---------------------------------------------------------------------

def _pool_pads(shape, ksize, strides, padding, explicit=()):
  """TF's (before, after) pads per axis of a pooling window (ksize/strides
  of full rank, in data_format order)."""
  pairs = ([explicit[2 * i:2 * i + 2] for i in range(len(shape))]
           if explicit else [(0, 0)] * len(shape))
  return [forward_padding(padding, n, k, s, 1, p)
          for n, k, s, p in zip(shape, ksize, strides, pairs)]


def _max_pool(x, ksize, strides, padding, explicit=()):
  pads = _pool_pads(x.shape, ksize, strides, padding, explicit)
  return lax.reduce_window(x, np.array(-np.inf, x.dtype), lax.max,
                           tuple(ksize), tuple(strides), pads)


def _avg_pool(x, ksize, strides, padding):
  """The mean over each window's positions inside the input (TF divides by
  that count, not by the window's size)."""
  pads = _pool_pads(x.shape, ksize, strides, padding)
  window = tuple(ksize), tuple(strides), pads
  total = lax.reduce_window(x, np.array(0, x.dtype), lax.add, *window)
  if padding == "VALID":
    return total / jnp.array(math.prod(ksize), x.dtype)
  count = lax.reduce_window(np.ones(x.shape, x.dtype), np.array(0, x.dtype),
                            lax.add, *window)
  return total / count


_POOL_ATTRS = ("ksize", "strides", "padding", "data_format")


def _pool_attributes(proto, explicit=False):
  allowed = _POOL_ATTRS + (("explicit_paddings",) if explicit else ())
  attributes = _attributes(proto, allowed)
  attributes.pop("data_format", None)  # ksize and strides are in its order
  return attributes


def _forward_pool(pool, explicit=False):
  def parse(proto):
    attributes = _pool_attributes(proto, explicit)
    if "explicit_paddings" in attributes:
      attributes["explicit"] = attributes.pop("explicit_paddings")
    return _named(proto, lambda x: pool(x, **attributes))
  return parse


def _max_pool_grad(windows_as_inputs=False):
  """MaxPoolGrad(orig_input, orig_output, grad) (V2: ksize and strides as
  inputs): grad routed to the first maximum of each window."""
  def parse(proto):
    attributes = _pool_attributes(proto, explicit=True)
    explicit = attributes.pop("explicit_paddings", ())

    def func(x, _, g, *windows):
      kw = dict(attributes, explicit=explicit)
      if windows_as_inputs:
        kw.update(ksize=_static(windows[0], "ksize", proto).tolist(),
                  strides=_static(windows[1], "strides", proto).tolist())
      return jax.vjp(lambda v: _max_pool(v, **kw), x)[1](g)[0]
    return _named(proto, func)
  return parse


def _avg_pool_grad(proto):
  """AvgPoolGrad(orig_input_shape, grad)."""
  attributes = _pool_attributes(proto)

  def func(shape, g):
    shape = tuple(_static(shape, "orig_input_shape", proto).tolist())
    zeros = jnp.zeros(shape, g.dtype)
    return jax.linear_transpose(lambda v: _avg_pool(v, **attributes),
                                zeros)(g)[0]
  return _named(proto, func)


def _max_pool3d_grad(proto):
  """MaxPool3DGrad(orig_input, orig_output, grad): TF's 3-D CPU kernel
  gives each window's gradient to every position within 1e-5 (absolute,
  in the input's dtype) of the window's maximum; the 2-D kernel to the
  first maximum only."""
  attributes = _pool_attributes(proto)

  def func(x, y, g):
    ksize, strides = attributes["ksize"], attributes["strides"]
    pads = _pool_pads(x.shape, ksize, strides, attributes["padding"])
    padded = lax.pad(x, np.array(-np.inf, x.dtype),
                     [(lo, hi, 0) for lo, hi in pads])
    dx = jnp.zeros(padded.shape, g.dtype)
    for tap in np.ndindex(*ksize):  # each window position in turn
      axes = list(zip(tap, y.shape, strides))
      seen = index.window(padded, dict(enumerate(axes)))
      share = jnp.where(jnp.abs(seen - y) < np.array(1e-5, x.dtype), g, 0)
      dx = dx + index.pad_zeros(share, [
          (t, size - t - (n - 1) * s - 1, s - 1)
          for (t, n, s), size in zip(axes, padded.shape)])
    return index.pad_zeros(dx, [(-lo, -hi) for lo, hi in pads])  # crop
  return _named(proto, func)


POOLING = {
    "MaxPool3D": _forward_pool(_max_pool),
    "AvgPool3D": _forward_pool(_avg_pool),
    "MaxPoolGrad": _max_pool_grad(),
    "MaxPoolGradV2": _max_pool_grad(windows_as_inputs=True),
    "MaxPool3DGrad": _max_pool3d_grad,
    "AvgPoolGrad": _avg_pool_grad,
    "AvgPool3DGrad": _avg_pool_grad,
}


# Batch normalisation ---------------------------------------------------------

def _channels(x, data_format):
  """(reduced axes, broadcast shape) of a per-channel vector."""
  channel = 1 if data_format.startswith("NC") else x.ndim - 1
  return (tuple(a for a in range(x.ndim) if a != channel),
          [-1 if a == channel else 1 for a in range(x.ndim)])


def _batch_norm(proto):
  """FusedBatchNorm(V2, V3)(x, scale, offset, mean, variance) -> (y,
  batch_mean, batch_variance, reserve_space_1, reserve_space_2[,
  reserve_space_3]), any rank (tf2jax's: 4-D, three outputs).  Training:
  the batch's statistics normalise; the outputs are the running statistics
  updated by exponential_avg_factor, the variance Bessel-corrected."""
  attributes = _attributes(proto, ("epsilon", "data_format", "is_training",
                                   "exponential_avg_factor"))
  epsilon = attributes.get("epsilon", 1e-4)
  training = attributes.get("is_training", True)
  factor = attributes.get("exponential_avg_factor", 1.0)
  data_format = attributes.get("data_format", "NHWC")

  def func(x, scale, offset, mean, var):
    axes, shape = _channels(x, data_format)
    x32 = x.astype(jnp.promote_types(x.dtype, scale.dtype))
    if training:
      mean_used, var_used = jnp.mean(x32, axes), jnp.var(x32, axes)
      count = math.prod(x.shape[a] for a in axes)
      corrected = var_used * (count / max(count - 1, 1))
      out_mean, out_var = mean_used, corrected
      if factor != 1.0:
        out_mean = (1 - factor) * mean + factor * mean_used
        out_var = (1 - factor) * var + factor * corrected
    else:
      mean_used = out_mean = mean
      var_used = out_var = var
    inv = lax.rsqrt(var_used + jnp.array(epsilon, var_used.dtype))
    y = (x32 - mean_used.reshape(shape)) * (scale * inv).reshape(
        shape) + offset.reshape(shape)
    extra = (jnp.zeros((0,), scale.dtype),) if proto.op.endswith("V3") else ()
    return (y.astype(x.dtype), out_mean, out_var, mean_used, var_used,
            *extra)
  return _named(proto, func)


def _batch_norm_grad(proto):
  """FusedBatchNormGrad(V2, V3)(y_backprop, x, scale, reserve_space_1,
  reserve_space_2[, reserve_space_3]) -> (x_backprop, scale_backprop,
  offset_backprop, empty, empty).  Training: the batch's statistics,
  recomputed from x (what TF saved in the reserve spaces); inference:
  reserve_space_1/2 are the population mean and variance TF passes."""
  attributes = _attributes(proto, ("epsilon", "data_format", "is_training"))
  epsilon = attributes.get("epsilon", 1e-4)
  training = attributes.get("is_training", True)
  data_format = attributes.get("data_format", "NHWC")

  def func(dy, x, scale, mean, var, *_):
    axes, shape = _channels(x, data_format)
    acc = jnp.promote_types(x.dtype, scale.dtype)  # float32 for half x
    dy32, x32 = dy.astype(acc), x.astype(acc)
    if training:
      mean, var = jnp.mean(x32, axes), jnp.var(x32, axes)
    inv = lax.rsqrt(var.astype(acc) + jnp.array(epsilon, acc))
    centered = x32 - mean.astype(acc).reshape(shape)
    offset_backprop = jnp.sum(dy32, axes)
    scale_backprop = jnp.sum(dy32 * centered, axes) * inv
    if training:
      count = math.prod(x.shape[a] for a in axes)
      dx = (scale * inv).reshape(shape) * (
          dy32 - (offset_backprop / count).reshape(shape)
          - centered * (scale_backprop * inv / count).reshape(shape))
    else:
      dx = dy32 * (scale * inv).reshape(shape)
    empty = jnp.zeros((0,), scale.dtype)
    return (dx.astype(x.dtype), scale_backprop.astype(scale.dtype),
            offset_backprop.astype(scale.dtype), empty, empty)
  return _named(proto, func)


# Shapes ----------------------------------------------------------------------

def _concat_offset(proto):
  """ConcatOffset(concat_dim, shape_0, ...): where each input starts."""
  _attributes(proto, ("N", "shape_type"))

  def func(dim, *shapes):
    shapes = [_static(s, "shape", proto) for s in shapes]
    dim = int(_static(dim, "concat_dim", proto)) % len(shapes[0])
    starts = np.cumsum([0] + [s[dim] for s in shapes[:-1]])
    offsets = []
    for start, shape in zip(starts, shapes):
      offset = np.zeros_like(shape)
      offset[dim] = start
      offsets.append(offset)
    return tuple(offsets)
  return _named(proto, func)


def _transpose(proto):
  """Transpose; NumPy in, NumPy out (tf2jax's makes a static shape vector a
  traced value)."""
  _attributes(proto, ())

  def func(x, perm):
    perm = _static(perm, "perm", proto).tolist()
    if isinstance(x, np.ndarray):
      return np.transpose(x, perm)
    return jnp.transpose(x, perm)
  return _named(proto, func)


CONVERTERS = {
    **ACTIVATION_GRADIENTS,
    **POOLING,
    "FusedBatchNorm": _batch_norm,
    "FusedBatchNormV2": _batch_norm,
    "FusedBatchNormV3": _batch_norm,
    "FusedBatchNormGrad": _batch_norm_grad,
    "FusedBatchNormGradV2": _batch_norm_grad,
    "FusedBatchNormGradV3": _batch_norm_grad,
    "ConcatOffset": _concat_offset,
    "Transpose": _transpose,
}
