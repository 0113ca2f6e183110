"""Independent float64 NumPy definition of the op and its two partners.

It shares nothing with the implementation, not even the geometry: sizes and
pads follow TF's documented formulas (`tf.nn.convolution`, "SAME" and
"VALID" padding; `GetWindowedOutputSizeVerbose`), written out here, and the
sums are direct loops over taps (no convolution routine):

    forward:         y[n, o, g*Cog + m]  = sum_t,c x[n, i, g*Ci + c] * w[t, c, g*Cog + m]
    backprop_input:  dx[n, i, g*Ci + c]  = sum_t,o,m dy[n, o, g*Cog + m] * w[t, c, g*Cog + m]
    backprop_filter: dw[t, c, g*Cog + m] = sum_n,o x[n, i, g*Ci + c] * dy[n, o, g*Cog + m]

with i = o * stride - pad_before + t * dilation, inside [0, size).
`padding` is "SAME", "VALID" or "EXPLICIT" (then `explicit` holds one
(before, after) pair per spatial dim).  Activations are channels-last
unless `channels_last=False`; filters are `[*K, C_in / groups, C_out]`.
"""
from __future__ import annotations

import fractions
import itertools
import math

import numpy as np


def window_extent(k: int, dilation: int) -> int:
  """A k-tap window with holes of dilation - 1 between taps spans this many."""
  return dilation * (k - 1) + 1


def output_size(mode: str, size: int, k: int, stride: int, dilation: int,
                explicit=(0, 0)) -> int:
  """TF's output size of the forward conv along one dim (negative: TF's error).

  SAME: ceil(size / stride).  VALID / EXPLICIT: the number of window starts
  in the padded input, TF's (padded - extent + stride) / stride with C++'s
  division (toward zero).
  """
  if mode == "SAME":
    return math.ceil(fractions.Fraction(size, stride))
  before, after = explicit if mode == "EXPLICIT" else (0, 0)
  last_start = size + before + after - window_extent(k, dilation)
  return math.trunc(fractions.Fraction(last_start + stride, stride))


def pads(mode: str, size: int, k: int, stride: int, dilation: int,
         explicit=(0, 0)) -> tuple[int, int]:
  """TF's (before, after) pads of the forward conv along one dim.

  SAME pads just enough for ceil(size / stride) windows, the odd one after.
  """
  if mode == "EXPLICIT":
    return tuple(explicit)
  if mode == "VALID":
    return (0, 0)
  if mode != "SAME":
    raise ValueError(f"reference: unknown padding {mode!r}")
  windows = output_size("SAME", size, k, stride, dilation)
  total = max((windows - 1) * stride + window_extent(k, dilation) - size, 0)
  return (total // 2, total - total // 2)


def _dims(mode, explicit, spatial, kernel, strides, dilations):
  """Per spatial dim: (size, k, stride, dilation, pad_before, out_size)."""
  explicit = explicit or [(0, 0)] * len(spatial)
  dims = []
  for size, k, s, d, e in zip(spatial, kernel, strides, dilations, explicit):
    dims.append((size, k, s, d, pads(mode, size, k, s, d, e)[0],
                 output_size(mode, size, k, s, d, e)))
  return dims


def _taps(dims):
  """(tap, input indices, output indices) per tap, one array pair per dim."""
  for tap in itertools.product(*(range(dim[1]) for dim in dims)):
    idx_in, idx_out = [], []
    for t, (size, _, s, d, before, out) in zip(tap, dims):
      o = np.arange(max(out, 0))
      i = o * s - before + t * d
      ok = (i >= 0) & (i < size)
      idx_in.append(i[ok])
      idx_out.append(o[ok])
    yield tap, np.ix_(*idx_in), np.ix_(*idx_out)


def _to_last(a, channels_last):
  a = np.asarray(a)
  return a if channels_last else np.moveaxis(a, 1, -1)


def _from_last(a, channels_last):
  return a if channels_last else np.moveaxis(a, -1, 1)


def _accumulator(*arrays):
  integer = all(np.issubdtype(np.asarray(a).dtype, np.integer) for a in arrays)
  return np.int64 if integer else np.float64


def _finish(total, integer):
  if integer:  # int32 wraps, like TF
    return ((total + 2**31) % 2**32 - 2**31).astype(np.int32)
  return total


def _check_spatial(name, got, dims):
  want = tuple(dim[5] for dim in dims)
  if tuple(got) != want:
    raise ValueError(f"reference: {name} spatial shape {tuple(got)}, but TF's "
                     f"formulas give {want}")


def backprop_input(filt, dy, *, input_spatial, strides, dilations, padding,
                   explicit=None, groups=1, channels_last=True,
                   accumulate=None):
  """The op (TF's Conv2DBackpropInput, N-d) in float64 (int64 for ints).

  accumulate: a dtype to keep the running sum over taps in instead (each
  tap's contribution is rounded to it before it is added), to show what
  accumulating in, e.g., float16 would give.
  """
  acc = _accumulator(filt, dy)
  w, dy = np.asarray(filt).astype(acc), _to_last(dy, channels_last).astype(acc)
  n = w.ndim - 2
  dims = _dims(padding, explicit, input_spatial, w.shape[:n], strides,
               dilations)
  _check_spatial("out_backprop", dy.shape[1:-1], dims)
  ci, cog = w.shape[-2], w.shape[-1] // groups
  total = np.zeros((dy.shape[0], *input_spatial, groups * ci),
                   accumulate or acc)
  for tap, at_in, at_out in _taps(dims):
    for g in range(groups):
      block = dy[(slice(None), *at_out, slice(g * cog, (g + 1) * cog))]
      part = block @ w[tap][:, g * cog:(g + 1) * cog].T
      total[(slice(None), *at_in, slice(g * ci, (g + 1) * ci))] += part.astype(
          total.dtype)
  return _from_last(_finish(total, acc == np.int64), channels_last)


def forward(x, filt, *, strides, dilations, padding, explicit=None,
            channels_last=True):
  """TF's Conv2D (N-d, groups = x's depth / the filter's in-depth)."""
  acc = _accumulator(x, filt)
  x, w = _to_last(x, channels_last).astype(acc), np.asarray(filt).astype(acc)
  n = w.ndim - 2
  ci, co = w.shape[-2:]
  groups, cog = x.shape[-1] // ci, co // (x.shape[-1] // ci)
  dims = _dims(padding, explicit, x.shape[1:-1], w.shape[:n], strides,
               dilations)
  total = np.zeros((x.shape[0], *(dim[5] for dim in dims), co), acc)
  for tap, at_in, at_out in _taps(dims):
    for g in range(groups):
      block = x[(slice(None), *at_in, slice(g * ci, (g + 1) * ci))]
      total[(slice(None), *at_out, slice(g * cog, (g + 1) * cog))] += (
          block @ w[tap][:, g * cog:(g + 1) * cog])
  return _from_last(_finish(total, acc == np.int64), channels_last)


def backprop_filter(x, dy, *, kernel, strides, dilations, padding,
                    explicit=None, groups=1, channels_last=True):
  """TF's Conv2DBackpropFilter (N-d): the `[*kernel, C_in / groups, C_out]`
  gradient of Conv2D(x, w) w.r.t. w, given dy."""
  acc = _accumulator(x, dy)
  x, dy = (_to_last(a, channels_last).astype(acc) for a in (x, dy))
  dims = _dims(padding, explicit, x.shape[1:-1], kernel, strides, dilations)
  _check_spatial("out_backprop", dy.shape[1:-1], dims)
  ci, co = x.shape[-1] // groups, dy.shape[-1]
  cog = co // groups
  total = np.zeros((*kernel, ci, co), acc)
  for tap, at_in, at_out in _taps(dims):
    for g in range(groups):
      xs = x[(slice(None), *at_in, slice(g * ci, (g + 1) * ci))]
      ds = dy[(slice(None), *at_out, slice(g * cog, (g + 1) * cog))]
      total[tap][:, g * cog:(g + 1) * cog] += (
          xs.reshape(-1, ci).T @ ds.reshape(-1, cog))
  return _finish(total, acc == np.int64)




def tf_geometry(data_format: str, strides, padding, explicit_paddings=(),
                dilations=None) -> dict:
  """TF's attribute lists (data_format order) -> this module's keywords
  (strides, dilations, padding, explicit, channels_last)."""
  n = len(data_format) - 2
  channels_last = data_format.endswith("C")

  def spatial(values):
    values = list(values)
    return values[1:n + 1] if channels_last else values[2:n + 2]
  flat = list(explicit_paddings)
  pairs = [tuple(flat[2 * i:2 * i + 2]) for i in range(len(flat) // 2)]
  return dict(strides=spatial(strides),
              dilations=spatial(dilations or [1] * (n + 2)), padding=padding,
              explicit=spatial(pairs) or None, channels_last=channels_last)


def raw_backprop_input(input_sizes, filt, dy, *, strides, padding,
                       explicit_paddings=(), data_format="NHWC",
                       dilations=None, accumulate=None):
  """`backprop_input` from TF's raw-op arguments: lists in data_format order;
  input_sizes with N + 2 entries or N spatial ones (depth from the filter)."""
  geometry = tf_geometry(data_format, strides, padding, explicit_paddings,
                         dilations)
  sizes, n = list(input_sizes), len(data_format) - 2
  if len(sizes) == n:
    spatial, depth = sizes, np.shape(filt)[-2]
  elif geometry["channels_last"]:
    spatial, depth = sizes[1:-1], sizes[-1]
  else:
    spatial, depth = sizes[2:], sizes[1]
  return backprop_input(filt, dy, input_spatial=spatial,
                        groups=depth // np.shape(filt)[-2],
                        accumulate=accumulate, **geometry)
