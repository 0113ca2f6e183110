"""Grouped (1 < groups < depth): dense block-diagonal sub-problems.

XLA CPU runs any convolution with feature or batch groups on a slow
generic path.  Here every `per_problem` consecutive groups become one dense
problem whose filter is block-diagonal (about `TARGET_CHANNELS` channels
each side; a factor `per_problem` of wasted multiplies by zero), and the
results are concatenated along channels.  The op solves each sub-problem
with the sub-pixel strategy (a plain forward convolution when stride is
1); its partner convolutions (the gradients) with their dense forms, the
filter gradient keeping only the diagonal blocks.
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp
from jax import lax

from .. import partners
from . import subpixel
from ..geometry import ConvSpec

TARGET_CHANNELS = 16


def applies(spec: ConvSpec, filter_shape) -> bool:
  del filter_shape
  return spec.groups > 1


def groups_per_problem(groups: int, ci: int) -> int:
  """Largest divisor of `groups` with per_problem * ci <= TARGET_CHANNELS."""
  best = 1
  for k in range(1, groups + 1):
    if groups % k == 0 and k * ci <= TARGET_CHANNELS:
      best = k
  return best


def _split(spec: ConvSpec, ci: int, cog: int):
  """(dense spec, k, [(in-channel slice, out-channel slice)] per problem)."""
  k = groups_per_problem(spec.groups, ci)
  return dataclasses.replace(spec, groups=1), k, [
      ((j * k * ci, (j + 1) * k * ci), (j * k * cog, (j + 1) * k * cog))
      for j in range(spec.groups // k)]


def _block_diagonal(w, k: int):
  """[*K, Ci, k*Cog] (k groups) -> [*K, k*Ci, k*Cog], block (a, a) = group a."""
  *kernel, ci, co = w.shape
  w = w.reshape(*kernel, ci, k, co // k)
  w = jnp.einsum("...cam,ab->...acbm", w, jnp.eye(k, dtype=w.dtype))
  return w.reshape(*kernel, k * ci, co)


def _diagonal_blocks(w, k: int):
  """Inverse of _block_diagonal: keep the k diagonal blocks."""
  *kernel, kci, co = w.shape
  w = w.reshape(*kernel, k, kci // k, k, co // k)
  w = jnp.einsum("...acbm,ab->...cam", w, jnp.eye(k, dtype=w.dtype))
  return w.reshape(*kernel, kci // k, co)


def _channels(a, bounds, spec: ConvSpec):
  return lax.slice_in_dim(a, *bounds, axis=spec.feature_axis)


def backprop_input(filt, dy, *, spec: ConvSpec, acc_dtype=None):
  n = spec.ndim
  dense, k, problems = _split(spec, filt.shape[n],
                              filt.shape[n + 1] // spec.groups)
  return jnp.concatenate([subpixel.backprop_input(
      _block_diagonal(filt[..., slice(*cos)], k), _channels(dy, cos, spec),
      spec=dense, acc_dtype=acc_dtype) for _, cos in problems],
                         axis=spec.feature_axis)


def forward(x, filt, *, spec: ConvSpec):
  n = spec.ndim
  dense, k, problems = _split(spec, filt.shape[n],
                              filt.shape[n + 1] // spec.groups)
  return jnp.concatenate([partners.forward(
      _channels(x, cis, spec), _block_diagonal(filt[..., slice(*cos)], k),
      spec=dense) for cis, cos in problems], axis=spec.feature_axis)


def backprop_filter(x, dy, *, spec: ConvSpec, kernel):
  c = spec.feature_axis
  dense, k, problems = _split(spec, x.shape[c] // spec.groups,
                              dy.shape[c] // spec.groups)
  return jnp.concatenate([_diagonal_blocks(partners.backprop_filter(
      _channels(x, cis, spec), _channels(dy, cos, spec), spec=dense,
      kernel=kernel), k) for cis, cos in problems], axis=-1)
