"""A strided filter gradient as one dot per filter tap.

TF's Conv2DBackpropFilter (lowering/partners.py) sums, for each filter tap,
the products of the input positions that tap sees with dy over the batch
and dy's positions.  With a stride, each tap sees a strided slice of the
input (1/stride^N of it): one slice and one dot ([C, positions] x
[positions, C_out]) per tap is a small, dense GEMM where XLA CPU runs a
slow dilated convolution (unet-up s2 64x64 64x128 N8: 5.5 ms vs 8.5; 3-D
unet-up s2 32^3 32x64: 2.5 ms vs 26.7).  At stride 1 every slice is the
whole input and the copies cost more than they save (dense s1 56x56 64:
32.4 vs 14.9), so it is for strided ones only; and in 2-D and 3-D: XLA
runs 1-D convolutions on Eigen, faster than the dots (ms, dots vs XLA:
k4 s2 4096 64 N8 5.6 vs 3.8; k16 s8 8192 128x256 N4 26.3 vs 16.6; k5 s2
1024 256 N16 30.3 vs 17.7; k3 s2 2048 128 N8 4.2 vs 4.6).  Where taps
overlap (share a stride phase), float32 layers take lowering/cpu/
shift_gemm.py instead (the rule: lowering/cpu/__init__.py).  One feature
group.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax import lax

from lowering.geometry import ConvSpec


def applies(spec: ConvSpec) -> bool:
  return (spec.groups == 1 and spec.ndim > 1
          and any(s > 1 for s in spec.strides))


def backprop_filter(x, dy, *, spec: ConvSpec, kernel, acc_dtype=None):
  """Filter-shaped `[*kernel, C, C_out]`; acc_dtype: the dots' result type
  (float32 for half precision), rounded once at the end."""
  if not spec.channels_last:
    x, dy = jnp.moveaxis(x, 1, -1), jnp.moveaxis(dy, 1, -1)
  pads = spec.filter_grad_padding(kernel)  # negative: crop
  x = lax.pad(x, np.zeros((), x.dtype),
              [(0, 0, 0), *[(lo, hi, 0) for lo, hi in pads], (0, 0, 0)])
  positions = dy.shape[1:-1]
  dy = dy.reshape(-1, dy.shape[-1])
  taps = []
  for tap in np.ndindex(*kernel):
    start = [t * d for t, d in zip(tap, spec.dilations)]
    limit = [b + (p - 1) * s + 1 for b, p, s in zip(start, positions,
                                                    spec.strides)]
    seen = lax.slice(x, [0, *start, 0], [x.shape[0], *limit, x.shape[-1]],
                     [1, *spec.strides, 1])
    taps.append(lax.dot_general(
        seen.reshape(-1, x.shape[-1]), dy, (((0,), (0,)), ((), ())),
        preferred_element_type=acc_dtype))
  out = jnp.stack(taps).reshape(*kernel, x.shape[-1], dy.shape[-1])
  return out.astype(x.dtype)
