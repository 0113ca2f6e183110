"""Convolutions in the forms XLA CPU runs on its Eigen kernel.

XLA CPU (from jaxlib 0.10.1: `_compat.XLA_CPU_YNN_CONVOLUTIONS`) hands a
2-D float32 convolution with more than 16 channels to YNNPACK unless,
along some spatial dim, its output is larger than its input (or its
kernel, which sends it to a slow loop instead); those, and 1-D
convolutions, it runs on Eigen's multi-threaded convolution, which
measured faster here on every layer (benchmarks/README.md, 'Why each CPU
rule': Eigen).  So:
- `conv`: a stride-1 convolution YNNPACK would take computes one more
  output row (one more pad at the end of its first spatial dim) and drops
  it: 1/H more work, at most a quarter.  Strided ones have no cheap way
  out and stay with YNNPACK, as do dilated ones (a wash on Eigen, at twice
  the memory).
- `backprop_filter`: a 2-D filter gradient (its output is the filter, so
  no extra row helps) as one 1-D convolution, the rows of dy folded into
  the contracted batch.
- 3-D convolutions: XLA CPU's 3-D convolution is slow; `conv` sums one
  2-D convolution per depth tap over depth slices folded into the batch,
  at depth stride 1 over the input's own slices (no padded copy).
tests/test_eigen_conv.py pins the premise and the results.
"""
from __future__ import annotations

import numpy as np
import jax.numpy as jnp
from jax import lax

from .. import _compat
from ..geometry import ConvSpec, forward_output_size
from ..index import pad_zeros, window

_YNN_MAX_CHANNELS = 16  # YNNPACK leaves convolutions this narrow to Eigen
_MAX_EXTRA_WORK = 0.25  # beyond this, leave the convolution to YNNPACK


def _ynn_would_take(lhs, rhs, window_strides, padding, rhs_dilation,
                    dimension_numbers) -> bool:
  """Whether this jaxlib's XLA CPU gives the convolution to YNNPACK."""
  lhs_spec, rhs_spec, _ = dimension_numbers
  if (not _compat.XLA_CPU_YNN_CONVOLUTIONS or len(padding) != 2
      or lhs.dtype != np.float32):
    return False
  if max(lhs.shape[lhs_spec[1]], rhs.shape[rhs_spec[0]]) <= _YNN_MAX_CHANNELS:
    return False
  for a, k, s, (lo, hi), d in zip(lhs_spec[2:], rhs_spec[2:], window_strides,
                                  padding, rhs_dilation):
    size, taps = lhs.shape[a], rhs.shape[k]  # undilated, as YNNPACK counts
    if taps > size or forward_output_size(size, taps, s, d, (lo, hi)) > size:
      return False
  return True


def conv(lhs, rhs, window_strides, padding, *, rhs_dilation,
         dimension_numbers, feature_group_count=1,
         preferred_element_type=None):
  """lax.conv_general_dilated as XLA CPU runs it fastest.

  dimension_numbers: a lax.ConvDimensionNumbers of axis indices.
  """
  padding = [tuple(p) for p in padding]
  if len(padding) == 3:
    return _depth_taps(lhs, rhs, window_strides, padding, rhs_dilation,
                       dimension_numbers, feature_group_count,
                       preferred_element_type)
  lhs_spec, rhs_spec, out_spec = dimension_numbers
  (lo, hi), d = padding[0], rhs_dilation[0]
  out = forward_output_size(lhs.shape[lhs_spec[2]], rhs.shape[rhs_spec[2]], 1,
                            d, (lo, hi))
  extra_row = (all(s == 1 for s in window_strides)
               and all(d == 1 for d in rhs_dilation)
               and 0 < out and 1 / out <= _MAX_EXTRA_WORK
               and _ynn_would_take(lhs, rhs, window_strides, padding,
                                   rhs_dilation, dimension_numbers))
  if extra_row:
    padding[0] = (lo, hi + 1)
  y = lax.conv_general_dilated(
      lhs, rhs, window_strides, padding, rhs_dilation=rhs_dilation,
      dimension_numbers=dimension_numbers,
      feature_group_count=feature_group_count,
      preferred_element_type=preferred_element_type)
  if extra_row:
    y = lax.slice_in_dim(y, 0, out, axis=out_spec[2])
  return y


def _depth_taps(lhs, rhs, window_strides, padding, rhs_dilation,
                dimension_numbers, feature_group_count, preferred_element_type):
  """A 3-D convolution as the sum over depth taps of 2-D ones (`conv`) on
  depth slices folded into the batch; channels-last inside."""
  lhs_spec, rhs_spec, out_spec = dimension_numbers
  x = jnp.transpose(lhs, (lhs_spec[0], *lhs_spec[2:], lhs_spec[1]))  # NDHWC
  w = jnp.transpose(rhs, (*rhs_spec[2:], rhs_spec[1], rhs_spec[0]))  # DHWIO
  (lo, hi), s, d = padding[0], window_strides[0], rhs_dilation[0]
  depth = forward_output_size(x.shape[1], w.shape[0], s, d, (lo, hi))
  nhwc = lax.ConvDimensionNumbers((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))

  def conv2d(xs, t):
    """Tap t's 2-D convolution of depth slices xs, folded into the batch."""
    y = conv(xs.reshape(-1, *xs.shape[2:]), w[t], window_strides[1:],
             padding[1:], rhs_dilation=rhs_dilation[1:],
             dimension_numbers=nhwc, feature_group_count=feature_group_count,
             preferred_element_type=preferred_element_type)
    return y.reshape(xs.shape[0], -1, *y.shape[1:])

  # At stride 1 output slice q of tap t reads input slice q + t*d - lo:
  # the taps that read any slice of x run on x itself (their output slices
  # that read padding dropped, if that wastes little) or on a slice of it,
  # no padded copy of x.  Strided depths: strided slices of the padded x.
  reach = [(t, max(t * d - lo, 0), min(t * d - lo + depth, x.shape[1]))
           for t in range(w.shape[0])] if s == 1 else []
  reach = [(t, first, last) for t, first, last in reach if last > first]
  if reach:
    total = 0
    for t, first, last in reach:
      if x.shape[1] - (last - first) <= _MAX_EXTRA_WORK * (last - first):
        y = conv2d(x, t)[:, first:last]
      else:
        y = conv2d(x[:, first:last], t)
      before = first - (t * d - lo)
      total = total + pad_zeros(
          y, {1: (before, depth - before - (last - first))})
  else:
    x = pad_zeros(x, {1: (lo, hi)})
    total = sum(conv2d(window(x, {1: (t * d, depth, s)}), t)
                for t in range(w.shape[0]))
  canonical = (out_spec[0], *out_spec[2:], out_spec[1])  # axis of each dim
  return jnp.transpose(total, np.argsort(canonical))


def rows_apply(spec: ConvSpec, filter_shape) -> bool:
  """Where `backprop_filter` applies: 2-D, one feature group."""
  del filter_shape
  return spec.ndim == 2 and spec.groups == 1


def backprop_filter(x, dy, *, spec: ConvSpec, kernel):
  """TF's Conv2DBackpropFilter (lowering/partners.py) for one feature group
  as one 1-D convolution over the width: kernel row kh contracts rows kh*d,
  kh*d + s, ... of x with dy's rows; those rows are folded into the batch,
  the kernel rows stacked on x's channels."""
  if not spec.channels_last:
    x, dy = jnp.moveaxis(x, 1, -1), jnp.moveaxis(dy, 1, -1)
  (pb_h, pa_h), (pb_w, pa_w) = spec.filter_grad_padding(kernel)
  (s_h, s_w), (d_h, d_w) = spec.strides, spec.dilations
  batch = dy.shape[0] * dy.shape[1]  # images x dy's rows
  rows_out, width_out, co = dy.shape[1:]
  # Pad (or crop: negative) the height; crop the width's negative pad.
  x = pad_zeros(x, {1: (pb_h, pa_h), 2: (0, min(pa_w, 0))})
  rows = jnp.concatenate([window(x, {1: (kh * d_h, rows_out, s_h)})
                          for kh in range(kernel[0])], -1)
  y = lax.conv_general_dilated(
      rows.reshape(batch, *rows.shape[2:]), dy.reshape(batch, width_out, co),
      (d_w,), [(pb_w, max(pa_w, 0))], rhs_dilation=(s_w,),
      dimension_numbers=lax.ConvDimensionNumbers((2, 0, 1), (2, 0, 1),
                                                 (0, 1, 2)))  # [KH*C, O, KW]
  return jnp.transpose(y.reshape(kernel[0], -1, co, kernel[1]), (0, 3, 1, 2))
