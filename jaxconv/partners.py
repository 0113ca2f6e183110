"""The op's two partner convolutions, as primitives of their own.

`conv_backprop_input` (the op), `conv_forward` (TF's Conv2D) and
`conv_backprop_filter` (TF's Conv2DBackpropFilter) share one `ConvSpec` and
are each other's transposes, so derivatives of any order stay inside this
closed family of fast forms (`jaxconv.rules` registers the transposes).
The partners lower through `lax.conv_general_dilated` in its ordinary
forward and filter-gradient forms.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.extend.core import Primitive
from jax.interpreters import mlir

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


def _empty(*shapes) -> bool:
  return any(d == 0 for shape in shapes for d in shape if isinstance(d, int))


def forward_impl(x, filt, *, spec: ConvSpec):
  out_shape = _forward_shape(x, filt, spec)
  if _empty(x.shape, filt.shape, out_shape):
    return jnp.zeros(out_shape, x.dtype)
  n = spec.ndim
  act = (0, spec.feature_axis, *spec.spatial_axes)
  return lax.conv_general_dilated(
      x, filt, window_strides=spec.strides, padding=spec.padding,
      rhs_dilation=spec.dilations,
      dimension_numbers=lax.ConvDimensionNumbers(act, (n + 1, n, *range(n)),
                                                 act),
      feature_group_count=spec.groups)


def backprop_filter_impl(x, dy, *, spec: ConvSpec, kernel):
  out_shape = _filter_shape(x, dy, spec, kernel)
  if _empty(x.shape, dy.shape, out_shape):
    return jnp.zeros(out_shape, x.dtype)
  n = spec.ndim
  pads = spec.filter_grad_padding(kernel)
  for axis, (_, hi) in zip(spec.spatial_axes, pads):
    if hi < 0:  # never hand a negative pad to the convolution: crop x instead
      x = lax.slice_in_dim(x, 0, x.shape[axis] + hi, axis=axis)
  act = (spec.feature_axis, 0, *spec.spatial_axes)  # batch <-> feature swapped
  return lax.conv_general_dilated(
      x, dy, window_strides=spec.dilations,
      padding=[(lo, max(hi, 0)) for lo, hi in pads],
      rhs_dilation=spec.strides,
      dimension_numbers=lax.ConvDimensionNumbers(act, act,
                                                 (n, n + 1, *range(n))),
      batch_group_count=spec.groups)


def _forward_shape(x, filt, spec: ConvSpec):
  kernel = filt.shape[:spec.ndim]
  return spec.activation_shape(x.shape[0], filt.shape[-1],
                               spec.out_backprop_spatial(kernel))


def _filter_shape(x, dy, spec: ConvSpec, kernel):
  return (*kernel, x.shape[spec.feature_axis] // spec.groups,
          dy.shape[spec.feature_axis])


for _p, _impl, _shape in (
    (conv_forward_p, forward_impl, _forward_shape),
    (conv_backprop_filter_p, backprop_filter_impl, _filter_shape)):
  _p.def_abstract_eval(
      lambda a, b, _shape=_shape, **params: jax.core.ShapedArray(
          _shape(a, b, **params), a.dtype))
  def_eager_impl(_p)
  mlir.register_lowering(_p, mlir.lower_fun(_impl, multiple_results=False))
