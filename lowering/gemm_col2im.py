"""GEMM + col2im: the op as one matrix product and a fused scatter-add.

    P[g, n, o, t, c] = sum_m dy[n, o, g, m] * w[t, c, g, m]      (dot_general)
    dx[n, i, g, c]   = sum_t P[g, n, o, t, c] at i = o*s - pb + t*d  (col2im)

The col2im is, per tap, an interior+edge `pad` (negative edges crop) of
P's tap slice, summed over taps: XLA fuses it into one loop.  No
convolution, so none of XLA CPU's slow or fragile convolution paths: the
FLOPs go to a dot, accumulated in `acc_dtype` and rounded once.
"""
from __future__ import annotations

import itertools

import jax.numpy as jnp
from jax import lax

from lowering.geometry import ConvSpec


def backprop_input(filt, dy, *, spec: ConvSpec, acc_dtype=None):
  """The op for `spec`, computed as GEMM + col2im (non-empty operands)."""
  n, groups = spec.ndim, spec.groups
  out_dtype = dy.dtype
  acc_dtype = acc_dtype or out_dtype
  if not spec.channels_last:
    dy = jnp.moveaxis(dy, 1, -1)
  batch, out_spatial, co = dy.shape[0], dy.shape[1:n + 1], dy.shape[-1]
  kernel, ci = filt.shape[:n], filt.shape[n]
  dy = dy.reshape(batch, *out_spatial, groups, co // groups)
  w = filt.reshape(*kernel, ci, groups, co // groups)
  # [G, N, *O, *K, Ci]
  cols = lax.dot_general(dy, w, (((n + 2,), (n + 2,)), ((n + 1,), (n + 1,))),
                         preferred_element_type=acc_dtype)
  total = None
  zero = jnp.zeros((), cols.dtype)
  for tap in itertools.product(*(range(k) for k in kernel)):
    part = cols[(slice(None),) * (n + 2) + tap]  # [G, N, *O, Ci]
    config = [(0, 0, 0)] * 2
    for t, o, i, s, d, (pb, _) in zip(tap, out_spatial, spec.input_spatial,
                                      spec.strides, spec.dilations,
                                      spec.padding):
      lo = t * d - pb
      config.append((lo, i - lo - ((o - 1) * s + 1), s - 1))
    part = lax.pad(part, zero, config + [(0, 0, 0)])
    total = part if total is None else total + part
  total = jnp.moveaxis(total, 0, -2)  # [N, *I, G, Ci]
  total = total.reshape(*total.shape[:-2], groups * ci).astype(out_dtype)
  return total if spec.channels_last else jnp.moveaxis(total, -1, 1)
