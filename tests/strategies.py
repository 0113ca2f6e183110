"""Hypothesis strategies: valid configurations and invalid calls of the raw op."""
from __future__ import annotations

import numpy as np
from hypothesis import assume
from hypothesis import strategies as st

from jaxconv import reference
from tests.configs import DTYPES, random_operands

ARG_NAMES = ("input_sizes", "filter", "out_backprop", "strides", "padding",
             "explicit_paddings", "data_format", "dilations", "use_cudnn_on_gpu")


@st.composite
def valid_configs(draw, dtypes=DTYPES, max_size=8):
  """A valid config dict (see tests/configs.py) over every attribute class.

  One in ten has an empty dimension (batch, a spatial size or the out
  channels: the zeros path); the others have work to do (no empty operand
  or result).
  """
  fmt = draw(st.sampled_from(["NHWC", "NCHW"]))
  padding = draw(st.sampled_from(["SAME", "VALID", "EXPLICIT"]))
  empty = draw(st.sampled_from([None] * 9 + ["batch", "size", "out"]))
  batch = 0 if empty == "batch" else draw(st.integers(1, 3))
  groups = draw(st.integers(1, 3))
  ci_f = draw(st.integers(1, 3))
  co = 0 if empty == "out" else groups * draw(st.integers(1, 3))
  two_entry = groups == 1 and draw(st.booleans())
  dims = []
  for dim in range(2):
    k, s, d = draw(st.integers(1, 4)), draw(st.integers(1, 3)), draw(
        st.integers(1, 3))
    ek = reference.window_extent(k, d)
    explicit = (draw(st.integers(0, ek + 2)), draw(st.integers(0, ek + 2)))
    # The smallest size with at least one window (SAME: always one).
    least = {"SAME": 1, "VALID": ek, "EXPLICIT": ek - sum(explicit)}[padding]
    size = 0 if empty == "size" and dim == 0 else draw(
        st.integers(max(least, 1), max(max_size, least)))
    pad = reference.pads(padding, size, k, s, d, explicit)
    o = reference.output_size(padding, size, k, s, d, explicit)
    assume(o >= 0)
    dims.append((size, k, s, d, pad, o))
  size, k, s, d, pad, o = map(list, zip(*dims))

  def ordered(b, c, sp):
    return [b, *sp, c] if fmt == "NHWC" else [b, c, *sp]
  return dict(
      input_sizes=size if two_entry else ordered(batch, ci_f * groups, size),
      filter_shape=[*k, ci_f, co], out_backprop_shape=ordered(batch, co, o),
      strides=ordered(1, 1, s), dilations=ordered(1, 1, d), padding=padding,
      explicit_paddings=([] if padding != "EXPLICIT" else
                         [v for p in ordered((0, 0), (0, 0), pad) for v in p]),
      data_format=fmt, dtype=draw(st.sampled_from(dtypes)))


def has_work(cfg) -> bool:
  """No empty operand or result."""
  return 0 not in (*cfg["filter_shape"], *cfg["out_backprop_shape"],
                   *cfg["input_sizes"])


def raw_kwargs(cfg, seed=0):
  """Keyword arguments of Conv2DBackpropInput for a config, with operands."""
  filt, dy = random_operands(np.random.default_rng(seed), cfg)
  dtype = np.dtype(cfg["dtype"])
  return dict(input_sizes=list(cfg["input_sizes"]), filter=filt.astype(dtype),
              out_backprop=dy.astype(dtype), strides=list(cfg["strides"]),
              padding=cfg["padding"],
              explicit_paddings=list(cfg["explicit_paddings"]),
              data_format=cfg["data_format"], dilations=list(cfg["dilations"]))


_BAD_INTS = st.sampled_from([0, -1, -7, -2**40])
_BAD_KINDS = st.sampled_from([None, "2", 2.0, 1.5, [1], True, {"a": 1}])


def _spatial_index(kw):
  return [1, 2] if kw["data_format"] == "NHWC" else [2, 3]


def _window_mutation(draw, kw, name):
  values = list(kw[name])
  how = draw(st.sampled_from(["length", "bad_int", "batch_depth", "kind",
                              "not_a_list"]))
  if how == "length":
    n = draw(st.sampled_from([0, 1, 2, 3, 5, 8]))
    values = (values * 3)[:n]
  elif how == "bad_int":
    values[draw(st.sampled_from(_spatial_index(kw)))] = draw(_BAD_INTS)
  elif how == "batch_depth":
    depth = 3 if kw["data_format"] == "NHWC" else 1
    values[draw(st.sampled_from([0, depth]))] = draw(st.integers(2, 5))
  elif how == "kind":
    values[draw(st.integers(0, 3))] = draw(_BAD_KINDS)
  else:
    values = draw(st.sampled_from([3, "1,2,2,1", None, 2.5]))
  kw[name] = values


@st.composite
def invalid_calls(draw):
  """(kwargs, what): a valid config's call with one always-invalid mutation."""
  cfg = draw(valid_configs(dtypes=("float32", "int32"), max_size=6))
  kw = raw_kwargs(cfg)
  what = draw(st.sampled_from([
      "strides", "dilations", "padding", "explicit_paddings", "data_format",
      "input_sizes", "filter", "out_backprop", "use_cudnn_on_gpu"]))
  if what in ("strides", "dilations"):
    _window_mutation(draw, kw, what)
  elif what == "padding":
    kw["padding"] = draw(st.sampled_from(["same", "FULL", "", None, 1, b"same",
                                          ["SAME"]]))
  elif what == "explicit_paddings":
    if kw["padding"] == "EXPLICIT":
      pads = list(kw["explicit_paddings"])
      how = draw(st.sampled_from(["length", "negative", "batch_or_depth",
                                  "kind"]))
      if how == "length":
        pads = pads[:draw(st.sampled_from([0, 2, 4, 6, 7]))] or pads + [0, 0]
      elif how == "negative":
        pads[draw(st.sampled_from([2 * i for i in _spatial_index(kw)]))] = -1
      elif how == "batch_or_depth":
        depth = 3 if kw["data_format"] == "NHWC" else 1
        pads[draw(st.sampled_from([0, 1, 2 * depth, 2 * depth + 1]))] = draw(
            st.integers(1, 3))
      else:
        pads[draw(st.integers(0, 7))] = draw(st.sampled_from(["1", 1.0, None]))
      kw["explicit_paddings"] = pads
    else:
      kw["explicit_paddings"] = [0] * draw(st.sampled_from([2, 8]))
  elif what == "use_cudnn_on_gpu":
    kw["use_cudnn_on_gpu"] = draw(st.sampled_from([None, 1, 0, "True", 1.0]))
  elif what == "data_format":
    kw["data_format"] = draw(st.sampled_from(["NWHC", "nhwc", "", "NCDHW",
                                              None, 4]))
  elif what == "input_sizes":
    sizes = list(kw["input_sizes"])
    how = draw(st.sampled_from(["length", "negative", "huge", "kind", "2d",
                                "batch", "depth_zero", "traced_like"]))
    if how == "length":
      sizes = (sizes * 3)[:draw(st.sampled_from([0, 1, 3, 5]))]
    elif how == "negative":
      sizes[draw(st.integers(0, len(sizes) - 1))] = draw(st.integers(-2**40, -1))
    elif how == "huge":
      sizes[draw(st.integers(0, len(sizes) - 1))] = draw(st.integers(2**31, 2**70))
    elif how == "kind":
      sizes[draw(st.integers(0, len(sizes) - 1))] = draw(_BAD_KINDS)
    elif how == "2d":
      sizes = np.array([sizes, sizes])
    elif how == "batch" and len(sizes) == 4:
      sizes[0] += draw(st.integers(1, 3))
    elif how == "depth_zero" and len(sizes) == 4:
      sizes[3 if kw["data_format"] == "NHWC" else 1] = 0
    else:
      sizes = draw(st.sampled_from(["8,8", None, 3.0]))
    kw["input_sizes"] = sizes
  elif what == "filter":
    f = kw["filter"]
    how = draw(st.sampled_from(["rank", "dtype", "kind", "in_depth_zero"]))
    if how == "rank":
      kw["filter"] = f.reshape(f.shape + (1,)) if draw(st.booleans()) else (
          np.zeros(f.shape[1:], f.dtype))
    elif how == "dtype":
      kw["filter"] = f.astype(draw(st.sampled_from(
          [np.complex64, np.bool_, np.int64, np.uint8, np.int8, np.float64
           if f.dtype == np.float32 else np.float32])))
    elif how == "kind":
      kw["filter"] = draw(st.sampled_from([None, "w", [["a"]], object()]))
    else:
      kw["filter"] = np.zeros((*f.shape[:2], 0, f.shape[3]), f.dtype)
  else:
    dy = kw["out_backprop"]
    how = draw(st.sampled_from(["rank", "spatial", "channels", "dtype"]))
    if how == "rank":
      kw["out_backprop"] = np.zeros(dy.shape[1:], dy.dtype)
    elif how == "spatial":
      axis = draw(st.sampled_from(_spatial_index(kw)))
      shape = list(dy.shape)
      shape[axis] += draw(st.sampled_from([1, 2, 5]))
      kw["out_backprop"] = np.zeros(shape, dy.dtype)
    elif how == "channels":
      axis = 3 if kw["data_format"] == "NHWC" else 1
      shape = list(dy.shape)
      shape[axis] += draw(st.integers(1, 3))
      kw["out_backprop"] = np.zeros(shape, dy.dtype)
    else:
      kw["out_backprop"] = dy.astype(np.float64 if dy.dtype != np.float64
                                     else np.float32)
  return kw, what


# --- the whole family (tests/family.py's calls) -----------------------------

FAMILY_ARGS = ("input_sizes", "filter_sizes", "output_shape", "input", "filter",
               "filters", "value", "out_backprop", "strides", "dilations",
               "padding", "explicit_paddings", "data_format", "rate")


@st.composite
def family_calls(draw, names=None):
  """A valid call of any function of the family (a tests/family.py Case)."""
  from tests import family
  name = draw(st.sampled_from(names or sorted(family.OPS)))
  return family.OPS[name][1](np.random.default_rng(draw(st.integers(0, 2**32))))


def _bad_tensor(draw, value, case):
  """An array argument made invalid: rank, dtype or kind."""
  shape = value["$zeros"] if isinstance(value, dict) else (
      case.arrays[value[1:]].shape)
  how = draw(st.sampled_from(["rank", "dtype", "kind"]))
  if how == "rank":
    return np.zeros((*shape, 1) if draw(st.booleans()) else shape[1:],
                    np.float32)
  if how == "dtype":
    return np.zeros(shape, draw(st.sampled_from([np.complex64, np.bool_,
                                                  np.uint8, np.int64])))
  return draw(st.sampled_from([None, "w", [["a"]], object()]))


@st.composite
def family_invalid_calls(draw):
  """(case, argument): a valid family call with one always-invalid argument
  (every argument the function has: sizes, tensors, windows, paddings,
  formats, the atrous rate)."""
  case = draw(family_calls())
  kw = dict(case.kwargs)
  key = draw(st.sampled_from(sorted(kw)))
  value = kw[key]
  if isinstance(value, dict) or (isinstance(value, str) and
                                 value.startswith("$")):
    kw[key] = _bad_tensor(draw, value, case)
  elif key in ("strides", "dilations"):
    if value is None or isinstance(value, int):  # None: all ones
      kw[key] = draw(st.sampled_from([0, -1, -2**40, "2", 2.5]))
    else:
      values = list(value)
      how = draw(st.sampled_from(["entry", "length", "kind"]))
      if how == "entry":
        values[draw(st.integers(0, len(values) - 1))] = draw(
            st.sampled_from([0, -1, -2**40]))
      elif how == "length":  # longer than N + 2 for every rank
        values = values + [1] * 5
      else:
        values[draw(st.integers(0, len(values) - 1))] = draw(
            st.sampled_from(["1", 1.5, None, [1]]))
      kw[key] = values
  elif key == "padding":
    kw[key] = draw(st.sampled_from(["same", "FULL", "", 1, b"same", b"\xff",
                                    ["SAME"]]))
  elif key == "explicit_paddings":
    kw[key] = draw(st.sampled_from([[0, 0, 1], [-1] * 8, [-1] * 10, ["1"]]))
  elif key == "data_format":
    kw[key] = draw(st.sampled_from(["NWHC", "nhwc", "", "NCDHWX", 4]))
  elif key in ("input_sizes", "filter_sizes", "output_shape"):
    values = list(value)
    how = draw(st.sampled_from(["negative", "huge", "length", "kind"]))
    if how == "negative":
      values[draw(st.integers(0, len(values) - 1))] = -1
    elif how == "huge":
      values[draw(st.integers(0, len(values) - 1))] = 2**40
    elif how == "length":
      values = values * 3
    else:
      values = draw(st.sampled_from(["8,8", 3.0, None]))
    kw[key] = values
  elif key == "rate":
    kw[key] = draw(st.sampled_from([0, -1, 1.5, "2", None]))
  else:
    raise AssertionError(f"no invalid value for {key}")
  return case, kw, key
