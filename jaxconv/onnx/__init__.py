"""ONNX lowerings of the family's three primitives, for jax2onnx.

Importing this module registers them, so `jax2onnx.to_onnx` (and Keras's
`model.export(format="onnx")` on the JAX backend, which calls it) converts
any function that calls jaxconv, its gradients included:

  conv_backprop_input(w, dy) -> one ConvTranspose: the weight is TF's
      filter as (C_out, C_in/g, *K), `pads` are the forward pads (which crop
      the full result) and `output_padding` the rows TF's sizes add;
  conv_forward(x, w)         -> one Conv with the same weight;
  conv_backprop_filter(x, dy)-> one Conv with batch and feature swapped:
      x's channels become the batch and its images the channels (grouped),
      dy the weight, the forward strides its dilations.

Channels-last operands are transposed to ONNX's channels-first and back;
the batch may be symbolic.  Float32 and float16 run on ONNX Runtime's CPU
kernels; bfloat16, which they lack, is computed in float32 between two
Casts (TF's float32 accumulation); float64, which they also lack, raises
ValueError at conversion.  An empty operand gives zeros, as in TF.
"""
from __future__ import annotations

import ml_dtypes
import numpy as np

from jaxconv.lowering.geometry import transposed_output_size
from jaxconv.lowering.index import any_empty, is_static
from jaxconv.onnx import _jax2onnx
from jaxconv.primitives import (conv_backprop_filter_p, conv_backprop_input_p,
                                conv_forward_p)

__all__ = ["DTYPES"]

# The dtypes a converted convolution takes (bfloat16 through float32).
DTYPES = ("float16", "float32", "bfloat16")
_BFLOAT16 = np.dtype(ml_dtypes.bfloat16)


# --- layouts ----------------------------------------------------------------


def _channels_first(spec, shape):
  """(perm to channels-first, perm back, `shape` in channels-first)."""
  n = spec.ndim
  if not spec.channels_last:
    return None, None, tuple(shape)
  to = [0, n + 1, *range(1, n + 1)]
  return to, [0, *range(2, n + 2), 1], tuple(shape[i] for i in to)


def _to_channels_first(g, value, var, spec, dtype):
  to, _, shape = _channels_first(spec, var.aval.shape)
  if to is None:
    return value
  return g.node("Transpose", value, perm=to, shape=shape, dtype=dtype)


def _from_channels_first(g, op, *inputs, out, spec, dtype, name, **attributes):
  """`op(*inputs)` in channels-first, returned in the spec's layout."""
  _, back, shape = _channels_first(spec, out.aval.shape)
  if back is None:
    return g.node(op, *inputs, shape=shape, dtype=dtype, name=name,
                  **attributes)
  value = g.node(op, *inputs, shape=shape, dtype=dtype, **attributes)
  return g.node("Transpose", value, perm=back, shape=out.aval.shape,
                dtype=dtype, name=name)


def _oihw(g, value, var, n, dtype):
  """TF's filter [*K, C_in/g, C_out] as ONNX's (C_out, C_in/g, *K)."""
  perm = [n + 1, n, *range(n)]
  return g.node("Transpose", value, perm=perm, dtype=dtype,
                shape=tuple(var.aval.shape[i] for i in perm))


def _pads(spec):
  return ([int(b) for b, _ in spec.padding]
          + [int(a) for _, a in spec.padding])


# --- the three lowerings: (graph, eqn, operands, dtype, name) -> result -----


def _backprop_input(g, eqn, filt, dy, dtype, name):
  spec = eqn.params["spec"]
  n = spec.ndim
  filt_var, dy_var = eqn.invars
  kernel = filt_var.aval.shape[:n]
  dy_spatial = [dy_var.aval.shape[a] for a in spec.spatial_axes]
  full = [transposed_output_size(o, k, s, d, pad)
          for o, k, s, d, pad in zip(dy_spatial, kernel, spec.strides,
                                     spec.dilations, spec.padding)]
  return _from_channels_first(
      g, "ConvTranspose", _to_channels_first(g, dy, dy_var, spec, dtype),
      _oihw(g, filt, filt_var, n, dtype), out=eqn.outvars[0], spec=spec,
      dtype=dtype, name=name, kernel_shape=list(kernel),
      strides=list(spec.strides), dilations=list(spec.dilations),
      pads=_pads(spec), group=spec.groups,
      output_padding=[i - f for i, f in zip(spec.input_spatial, full)])


def _forward(g, eqn, x, filt, dtype, name):
  spec = eqn.params["spec"]
  x_var, filt_var = eqn.invars
  n = spec.ndim
  return _from_channels_first(
      g, "Conv", _to_channels_first(g, x, x_var, spec, dtype),
      _oihw(g, filt, filt_var, n, dtype), out=eqn.outvars[0], spec=spec,
      dtype=dtype, name=name, kernel_shape=list(filt_var.aval.shape[:n]),
      strides=list(spec.strides), dilations=list(spec.dilations),
      pads=_pads(spec), group=spec.groups)


def _backprop_filter(g, eqn, x, dy, dtype, name):
  """dW[k, i, o] = sum_{n, p} x[n, p*s + k*d - pad, i] dy[n, p, o] as a
  Conv of x viewed as (C_in/g, g*N, *S) with dy as (C_out, N, *P): stride
  d, dilation s, groups g."""
  spec = eqn.params["spec"]
  n, groups, kernel = spec.ndim, spec.groups, eqn.params["kernel"]
  x_var, dy_var = eqn.invars
  x = _to_channels_first(g, x, x_var, spec, dtype)
  batch, channels, *spatial = _channels_first(spec, x_var.aval.shape)[2]
  per_group = channels // groups
  x = g.node("Reshape", x, g.int64([0, groups, per_group, *spatial]),
             shape=(batch, groups, per_group, *spatial), dtype=dtype)
  x = g.node("Transpose", x, perm=[2, 1, 0, *range(3, n + 3)],
             shape=(per_group, groups, batch, *spatial), dtype=dtype)
  x = g.node("Reshape", x, g.int64([per_group, -1, *spatial]),
             shape=(per_group, groups * batch, *spatial), dtype=dtype)
  dy = _to_channels_first(g, dy, dy_var, spec, dtype)
  _, out_depth, *dy_spatial = _channels_first(spec, dy_var.aval.shape)[2]
  dy = g.node("Transpose", dy, perm=[1, 0, *range(2, n + 2)],
              shape=(out_depth, batch, *dy_spatial), dtype=dtype)
  # The right pad that makes the result exactly `kernel` long; where the
  # forward pads leave more, x's end is cut instead (ONNX pads are >= 0).
  pads_after, cut = [], []
  for size, k, s, d, p, (before, _) in zip(spatial, kernel, spec.strides,
                                           spec.dilations, dy_spatial,
                                           spec.padding):
    need = (k - 1) * d + (p - 1) * s + 1 - size - before
    pads_after.append(max(need, 0))
    cut.append(size + min(need, 0))
  if cut != list(spatial):
    x = g.node("Slice", x, g.int64([0] * n), g.int64(cut),
               g.int64(list(range(2, n + 2))),
               shape=(per_group, groups * batch, *cut), dtype=dtype)
  value = g.node("Conv", x, dy, shape=(per_group, out_depth, *kernel),
                 dtype=dtype, kernel_shape=list(dy_spatial),
                 strides=list(spec.dilations), dilations=list(spec.strides),
                 pads=[int(b) for b, _ in spec.padding] + pads_after,
                 group=groups)
  return g.node("Transpose", value, perm=[*range(2, n + 2), 0, 1],
                shape=eqn.outvars[0].aval.shape, dtype=dtype, name=name)


# --- what every lowering shares: dtypes, empty operands, the result --------


def _zeros(g, eqn, name):
  """The result as zeros; a symbolic batch is read off an operand."""
  out = eqn.outvars[0]
  shape = out.aval.shape
  if all(is_static(d) for d in shape):
    dims = g.int64(shape)
  else:
    source = next(v for v in eqn.invars if not is_static(v.aval.shape[0]))
    batch = g.node("Shape", g.input(source), start=0, end=1, shape=(1,),
                   dtype=np.int64)
    dims = g.node("Concat", batch, g.int64(shape[1:]), axis=0,
                  shape=(len(shape),), dtype=np.int64)
  return g.zeros(dims, shape=shape, dtype=out.aval.dtype, name=name)


def _lowering(lower):
  """`lower` behind the dtype check, the empty case and bfloat16's casts."""
  def lowering(g, eqn):
    out = eqn.outvars[0]
    dtype = np.dtype(out.aval.dtype)
    if dtype.name not in DTYPES:
      raise ValueError(
          f"jaxconv.onnx: {eqn.primitive.name} in {dtype.name}: ONNX "
          f"Runtime's CPU Conv/ConvTranspose have no {dtype.name} kernel "
          f"(converted: {', '.join(DTYPES)}); cast the operands first")
    name = g.output_name(out)
    if any_empty(*(v.aval.shape for v in (*eqn.invars, *eqn.outvars))):
      g.bind(out, _zeros(g, eqn, name))
      return
    operands = [g.input(v) for v in eqn.invars]
    if dtype != _BFLOAT16:
      g.bind(out, lower(g, eqn, *operands, dtype, name))
      return
    operands = [g.cast(v, shape=var.aval.shape, dtype=np.float32)
                for v, var in zip(operands, eqn.invars)]
    value = lower(g, eqn, *operands, np.dtype(np.float32), None)
    g.bind(out, g.cast(value, shape=out.aval.shape, dtype=dtype, name=name))
  return lowering


for _primitive, _lower in ((conv_backprop_input_p, _backprop_input),
                           (conv_forward_p, _forward),
                           (conv_backprop_filter_p, _backprop_filter)):
  _jax2onnx.register(_primitive.name, _lowering(_lower))
