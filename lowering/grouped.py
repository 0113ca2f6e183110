"""Grouped (1 < groups < depth): dense block-diagonal sub-problems.

XLA CPU runs any convolution with feature_group_count > 1 on a slow
generic path.  Here every `per_problem` consecutive groups become one dense
problem whose filter is block-diagonal (about `TARGET_CHANNELS` channels
each side; a factor `per_problem` of wasted multiplies by zero), solved by
the sub-pixel strategy (a plain forward convolution when stride is 1), and
the results are concatenated along channels.
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp
from jax import lax

from lowering import subpixel
from lowering.geometry import ConvSpec

TARGET_CHANNELS = 16


def applies(spec: ConvSpec, filter_shape) -> bool:
  return spec.groups > 1 and filter_shape[spec.ndim] > 0


def groups_per_problem(groups: int, ci: int) -> int:
  """Largest divisor of `groups` with per_problem * ci <= TARGET_CHANNELS."""
  best = 1
  for k in range(1, groups + 1):
    if groups % k == 0 and k * ci <= TARGET_CHANNELS:
      best = k
  return best


def backprop_input(filt, dy, *, spec: ConvSpec, acc_dtype=None):
  n, groups = spec.ndim, spec.groups
  kernel, ci, co = filt.shape[:n], filt.shape[n], filt.shape[n + 1]
  cog = co // groups
  k = groups_per_problem(groups, ci)
  dense = dataclasses.replace(spec, groups=1)
  eye = jnp.eye(k, dtype=filt.dtype)
  c_axis = spec.feature_axis
  outs = []
  for j in range(groups // k):
    w = filt[..., j * k * cog:(j + 1) * k * cog].reshape(*kernel, ci, k, cog)
    # Block-diagonal [*K, k*ci, k*cog]: block (a, a) is group j*k + a.
    w = jnp.einsum("...cam,ab->...acbm", w, eye).reshape(*kernel, k * ci,
                                                          k * cog)
    part = lax.slice_in_dim(dy, j * k * cog, (j + 1) * k * cog, axis=c_axis)
    outs.append(subpixel.backprop_input(w, part, spec=dense,
                                        acc_dtype=acc_dtype))
  return jnp.concatenate(outs, axis=c_axis)

