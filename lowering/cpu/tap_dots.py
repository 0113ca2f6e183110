"""A strided filter gradient as one dot per filter tap.

TF's Conv2DBackpropFilter (lowering/partners.py) sums, for each filter tap,
the products of the input positions that tap sees with dy over the batch
and dy's positions.  With a stride, each tap sees a strided slice of the
input (1/stride^N of it): one slice and one dot ([C, positions] x
[positions, C_out]) per tap is a small, dense GEMM where XLA CPU runs a
slow dilated convolution.  At stride 1 every slice is the whole input and
the copies cost more than they save, and XLA runs 1-D convolutions on
Eigen, faster than the dots: so strided 2-D and 3-D layers only, one
feature group (where it wins: benchmarks/README.md, 'Why each CPU rule').
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax import lax

from ..geometry import ConvSpec
from ..index import pad_zeros, window


def applies(spec: ConvSpec, filter_shape) -> bool:
  del filter_shape
  return (spec.groups == 1 and spec.ndim > 1
          and any(s > 1 for s in spec.strides))


def backprop_filter(x, dy, *, spec: ConvSpec, kernel, acc_dtype=None):
  """Filter-shaped `[*kernel, C, C_out]`; acc_dtype: the dots' result type
  (float32 for half precision), rounded once at the end."""
  if not spec.channels_last:
    x, dy = jnp.moveaxis(x, 1, -1), jnp.moveaxis(dy, 1, -1)
  x = pad_zeros(x, dict(enumerate(spec.filter_grad_padding(kernel), 1)))
  positions = dy.shape[1:-1]
  dy = dy.reshape(-1, dy.shape[-1])
  taps = []
  for tap in np.ndindex(*kernel):
    seen = window(x, {axis: (t * d, p, s) for axis, t, d, p, s in zip(
        range(1, x.ndim - 1), tap, spec.dilations, positions, spec.strides)})
    taps.append(lax.dot_general(
        seen.reshape(-1, x.shape[-1]), dy, (((0,), (0,)), ((), ())),
        preferred_element_type=acc_dtype))
  out = jnp.stack(taps).reshape(*kernel, x.shape[-1], dy.shape[-1])
  return out.astype(x.dtype)
