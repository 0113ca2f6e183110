"""The family's functions as drawable calls (shared by the tests and the
golden recorder; no TF here).

`OPS[name] = (golden count, draw)`: `draw(rng, dtype=None)` (`draw.dtypes`:
the function's dtypes) returns a
`Case`, one valid call of the jaxconv function `name` (a dotted name under
`jaxconv`, the same under `tf`) with its keyword arguments in a form TF
accepts, tensors as "$name" or {"$zeros": shape} placeholders, the arrays,
and the generic config it came from (`tests/configs.py`'s raw-op terms,
HWIO filter).
"""
from __future__ import annotations

import ml_dtypes  # noqa: F401  (numpy learns the bfloat16 dtype name)
import numpy as np

from tests.configs import random_config

FLOATS = ("float32", "float64", "float16", "bfloat16")
ALL = FLOATS + ("int32",)
# Two in three configs channels-last, a fifth of the dims dilated: TF's
# kernels take those, and each XLA case costs the recorder a compile.
LAST_FIRST = {1: ("NWC", "NWC", "NCW"), 2: ("NHWC", "NHWC", "NCHW"),
              3: ("NDHWC", "NDHWC", "NCDHW")}
DILATION_RATE = 0.2


class Case:
  """One drawn call: jaxconv/TF function name, kwargs with placeholders."""

  def __init__(self, fn, cfg, kwargs, arrays, tf_fn=None, tf_kwargs=None):
    self.fn, self.cfg, self.kwargs, self.arrays = fn, cfg, kwargs, arrays
    self.tf_fn = tf_fn or fn  # the counterpart for kernel-less ops
    self.tf_kwargs = tf_kwargs if tf_kwargs is not None else kwargs


def spatial(values, fmt):
  return list(values[1:-1]) if fmt[-1] == "C" else list(values[2:])


def crops(cfg) -> bool:
  """Whether a generic config's explicit pads exceed the dilated kernel's
  reach (the input gradient crops its full result)."""
  n, pads = len(cfg["strides"]) - 2, cfg["explicit_paddings"]
  if not pads:
    return False
  k = cfg["filter_shape"][:n]
  d = spatial(cfg["dilations"], cfg["data_format"])
  pairs = spatial([pads[2 * i:2 * i + 2] for i in range(n + 2)],
                  cfg["data_format"])
  return any(max(p) > (kk - 1) * dd for p, kk, dd in zip(pairs, k, d))


def _window_form(rng, values, fmt, n):
  """strides/dilations as TF's wrappers take them: int, [v], n or n + 2,
  or None for all ones."""
  sp = spatial(values, fmt)
  forms = [values]
  if len(set(sp)) == 1:
    forms += [sp[0], [sp[0]]]
  if set(sp) == {1}:
    forms.append(None)
  forms.append(sp)
  return forms[int(rng.integers(len(forms)))]


def _pad_form(rng, cfg):
  """padding as TF's wrappers take it: a string, or (before, after) pairs."""
  if cfg["padding"] != "EXPLICIT":
    return cfg["padding"]
  p = cfg["explicit_paddings"]
  return [p[2 * i:2 * i + 2] for i in range(len(p) // 2)]


def _operands(rng, cfg, names_shapes):
  values = "exact" if rng.random() < 0.5 or cfg["dtype"] == "int32" else (
      "generic")
  arrays = {}
  for name, shape in names_shapes:
    if cfg["dtype"] == "int32":
      a = rng.integers(-9, 10, size=shape).astype(np.int32)
    elif values == "exact":
      a = rng.integers(-32, 33, size=shape) / 8
    else:
      a = rng.standard_normal(shape)
    if cfg["dtype"] != "int32":  # representable in the dtype
      a = np.asarray(a.astype(cfg["dtype"]), np.float64)
    arrays[name] = a
  cfg["values"] = values
  return arrays


def full_input_shape(cfg):
  sizes = cfg["input_sizes"]
  if len(sizes) == len(cfg["strides"]):
    return sizes
  n = cfg["out_backprop_shape"][0]
  c = cfg["filter_shape"][-2]
  return [n, *sizes, c] if cfg["data_format"][-1] == "C" else [n, c, *sizes]


def _dw_filter(shape, fmt_cfg):
  """HWIO [kh, kw, 1, C*M] -> TF's depthwise [kh, kw, C, M]."""
  c = full_input_shape(fmt_cfg)[-1 if fmt_cfg["data_format"][-1] == "C"
                                 else 1]
  return [*shape[:2], c, shape[3] // c]


# --- the ops ---------------------------------------------------------------


def _input_op(name, ndim, kinds=("dense", "dense", "grouped"), dtypes=FLOATS,
              paddings=("SAME", "VALID", "EXPLICIT"), formats=None,
              tensor=False, counterpart=None, depthwise=False, short=False):
  """A backprop-input raw op: sizes (or, V2/v1, a tensor) + filter + dy."""
  def draw(rng, dtype=None):
    cfg = random_config(rng, dtype, ndim=ndim, kinds=kinds, dtypes=dtypes,
                        paddings=paddings, formats=formats or LAST_FIRST[ndim],
                        spatial_sizes=short, dilation_rate=DILATION_RATE,
                        max_size={1: 12, 2: 8, 3: 5}[ndim])
    fshape = cfg["filter_shape"]
    if depthwise:
      fshape = _dw_filter(fshape, cfg)
    arrays = _operands(rng, cfg, [("filter", fshape),
                                  ("dy", cfg["out_backprop_shape"])])
    kw = dict(filter="$filter", out_backprop="$dy", strides=cfg["strides"],
              padding=cfg["padding"], dilations=cfg["dilations"])
    if "EXPLICIT" in paddings:
      kw["explicit_paddings"] = cfg["explicit_paddings"]
    if formats is None:
      kw["data_format"] = cfg["data_format"]
    if tensor:
      tf_kw = dict(kw, input_sizes=cfg["input_sizes"],
                   data_format=cfg["data_format"])
      kw = dict(kw, input={"$zeros": cfg["input_sizes"]})
      return Case(name, cfg, kw, arrays, counterpart, tf_kw)
    return Case(name, cfg, dict(kw, input_sizes=cfg["input_sizes"]), arrays)
  draw.dtypes = dtypes
  return draw


def _filter_op(name, ndim, kinds=("dense", "dense", "grouped"),
               paddings=("SAME", "VALID", "EXPLICIT"), formats=None,
               tensor=False, counterpart=None, depthwise=False):
  """A backprop-filter raw op: input + filter sizes (or a tensor) + dy."""
  def draw(rng, dtype=None):
    cfg = random_config(rng, dtype, ndim=ndim, kinds=kinds, dtypes=FLOATS,
                        paddings=paddings, formats=formats or LAST_FIRST[ndim],
                        spatial_sizes=False, dilation_rate=DILATION_RATE,
                        max_size={1: 12, 2: 8, 3: 5}[ndim])
    fshape = cfg["filter_shape"]
    if depthwise:
      fshape = _dw_filter(fshape, cfg)
    arrays = _operands(rng, cfg, [("input", cfg["input_sizes"]),
                                  ("dy", cfg["out_backprop_shape"])])
    kw = dict(input="$input", out_backprop="$dy", strides=cfg["strides"],
              padding=cfg["padding"], dilations=cfg["dilations"])
    if "EXPLICIT" in paddings:
      kw["explicit_paddings"] = cfg["explicit_paddings"]
    if formats is None:
      kw["data_format"] = cfg["data_format"]
    if tensor:
      tf_kw = dict(kw, filter_sizes=fshape, data_format=cfg["data_format"])
      return Case(name, cfg, dict(kw, filter={"$zeros": fshape}), arrays,
                  counterpart, tf_kw)
    return Case(name, cfg, dict(kw, filter_sizes=fshape), arrays)
  draw.dtypes = FLOATS
  return draw


def _transpose_fn(name, ndim, alias=None, kinds=("dense", "dense", "grouped"),
                  dtypes=FLOATS, pad_pairs=False, none_format=False,
                  short=True):
  """tf.nn.conv{1,2,3}d_transpose-like: input(dy), filters, output_shape."""
  def draw(rng, dtype=None):
    cfg = random_config(rng, dtype, ndim=ndim, kinds=kinds, dtypes=dtypes,
                        paddings=("SAME", "VALID", "EXPLICIT") if pad_pairs
                        else ("SAME", "VALID"), spatial_sizes=short and ndim == 2,
                        formats=LAST_FIRST[ndim], dilation_rate=DILATION_RATE,
                        max_size={1: 12, 2: 8, 3: 5}[ndim])
    arrays = _operands(rng, cfg, [("filter", cfg["filter_shape"]),
                                  ("dy", cfg["out_backprop_shape"])])
    fmt = cfg["data_format"]
    names = alias or ("input", "filters")
    kw = {names[0]: "$dy", names[1]: "$filter",
          "output_shape": cfg["input_sizes"],
          "strides": _window_form(rng, cfg["strides"], fmt, ndim),
          "padding": _pad_form(rng, cfg),
          "dilations": _window_form(rng, cfg["dilations"], fmt, ndim)}
    if not (none_format and fmt in ("NWC", "NHWC", "NDHWC")
            and rng.random() < 0.5):
      kw["data_format"] = fmt
    return Case(name, cfg, kw, arrays)
  draw.dtypes = dtypes
  return draw


def _atrous(name):
  def draw(rng, dtype=None):
    dilated = rng.random() < 0.7  # a rate > 1 (rare among random configs)
    while True:
      cfg = random_config(rng, dtype, ndim=2, kinds=("dense",), dtypes=FLOATS,
                          paddings=("SAME", "VALID"), formats=("NHWC",),
                          spatial_sizes=False)
      rate = cfg["dilations"][1]
      if (cfg["strides"] == [1, 1, 1, 1] and cfg["dilations"][2] == rate
          and (rate > 1) == dilated):
        break
    arrays = _operands(rng, cfg, [("filter", cfg["filter_shape"]),
                                  ("dy", cfg["out_backprop_shape"])])
    return Case(name, cfg, dict(value="$dy", filters="$filter",
                                output_shape=cfg["input_sizes"], rate=rate,
                                padding=cfg["padding"]), arrays)
  draw.dtypes = FLOATS
  return draw


def _wrapped(name, draw_raw, pairs=True):
  """A wrapper of a raw op: the same arguments, padding as a string or (with
  `pairs`) (before, after) pairs."""
  def draw(rng, dtype=None):
    case = draw_raw(rng, dtype)
    kw = {k: v for k, v in case.kwargs.items() if k != "explicit_paddings"}
    if pairs:
      kw["padding"] = _pad_form(rng, case.cfg)
    return Case(name, case.cfg, kw, case.arrays)
  draw.dtypes = draw_raw.dtypes
  return draw


DW = dict(kinds=("depthwise",), depthwise=True)
OPS = {
    # raw ops
    "raw_ops.Conv2DBackpropInput": (120, _input_op(
        "raw_ops.Conv2DBackpropInput", 2, kinds=("dense", "dense", "grouped",
                                                 "depthwise"),
        dtypes=ALL, short=True)),
    "raw_ops.Conv2DBackpropInputV2": (60, _input_op(
        "raw_ops.Conv2DBackpropInputV2", 2, tensor=True,
        counterpart="raw_ops.Conv2DBackpropInput")),
    "raw_ops.Conv3DBackpropInputV2": (60, _input_op(
        "raw_ops.Conv3DBackpropInputV2", 3, paddings=("SAME", "VALID"))),
    "raw_ops.Conv3DBackpropInput": (60, _input_op(
        "raw_ops.Conv3DBackpropInput", 3, paddings=("SAME", "VALID"),
        formats=("NDHWC",), tensor=True,
        counterpart="raw_ops.Conv3DBackpropInputV2")),
    "raw_ops.DepthwiseConv2dNativeBackpropInput": (60, _input_op(
        "raw_ops.DepthwiseConv2dNativeBackpropInput", 2, **DW)),
    "raw_ops.Conv2DBackpropFilter": (60, _filter_op(
        "raw_ops.Conv2DBackpropFilter", 2)),
    "raw_ops.Conv2DBackpropFilterV2": (60, _filter_op(
        "raw_ops.Conv2DBackpropFilterV2", 2, tensor=True,
        counterpart="raw_ops.Conv2DBackpropFilter")),
    "raw_ops.Conv3DBackpropFilterV2": (60, _filter_op(
        "raw_ops.Conv3DBackpropFilterV2", 3, paddings=("SAME", "VALID"))),
    "raw_ops.Conv3DBackpropFilter": (60, _filter_op(
        "raw_ops.Conv3DBackpropFilter", 3, paddings=("SAME", "VALID"),
        formats=("NDHWC",), tensor=True,
        counterpart="raw_ops.Conv3DBackpropFilterV2")),
    "raw_ops.DepthwiseConv2dNativeBackpropFilter": (60, _filter_op(
        "raw_ops.DepthwiseConv2dNativeBackpropFilter", 2, **DW)),
    # tf.nn
    "nn.conv1d_transpose": (24, _transpose_fn(
        "nn.conv1d_transpose", 1, dtypes=ALL)),
    "nn.conv2d_transpose": (24, _transpose_fn(
        "nn.conv2d_transpose", 2, dtypes=ALL, pad_pairs=True)),
    "nn.conv3d_transpose": (60, _transpose_fn("nn.conv3d_transpose", 3)),
    "nn.conv_transpose": (24, None),  # 1-, 2- and 3-D in turn, below
    "nn.atrous_conv2d_transpose": (24, _atrous("nn.atrous_conv2d_transpose")),
    "nn.depthwise_conv2d_backprop_input": (60, _wrapped(
        "nn.depthwise_conv2d_backprop_input",
        _input_op("", 2, **DW))),
    "nn.depthwise_conv2d_backprop_filter": (60, _wrapped(
        "nn.depthwise_conv2d_backprop_filter",
        _filter_op("", 2, **DW))),
    # tf.compat.v1.nn
    "compat.v1.nn.conv2d_backprop_input": (24, _wrapped(
        "compat.v1.nn.conv2d_backprop_input", _input_op(
            "", 2, kinds=("dense", "dense", "grouped", "depthwise"),
            dtypes=ALL, short=True))),
    "compat.v1.nn.conv2d_backprop_filter": (60, _wrapped(
        "compat.v1.nn.conv2d_backprop_filter", _filter_op("", 2))),
    "compat.v1.nn.conv2d_transpose": (24, _transpose_fn(
        "compat.v1.nn.conv2d_transpose", 2, alias=("value", "filter"),
        dtypes=ALL, pad_pairs=True)),
    "compat.v1.nn.conv3d_transpose": (60, _transpose_fn(
        "compat.v1.nn.conv3d_transpose", 3, alias=("value", "filters"))),
    "compat.v1.nn.conv1d_transpose": (24, _transpose_fn(
        "compat.v1.nn.conv1d_transpose", 1, dtypes=ALL)),
    "compat.v1.nn.conv_transpose": (24, None),
    "compat.v1.nn.conv3d_backprop_filter": (60, _wrapped(
        "compat.v1.nn.conv3d_backprop_filter",
        _filter_op("", 3, paddings=("SAME", "VALID")), pairs=False)),
    "compat.v1.nn.conv3d_backprop_filter_v2": (60, _wrapped(
        "compat.v1.nn.conv3d_backprop_filter_v2",
        _filter_op("", 3, paddings=("SAME", "VALID")), pairs=False)),
    "compat.v1.nn.depthwise_conv2d_native_backprop_input": (60, _wrapped(
        "compat.v1.nn.depthwise_conv2d_native_backprop_input",
        _input_op("", 2, **DW))),
    "compat.v1.nn.depthwise_conv2d_native_backprop_filter": (60, _wrapped(
        "compat.v1.nn.depthwise_conv2d_native_backprop_filter",
        _filter_op("", 2, **DW))),
    "compat.v1.nn.depthwise_conv2d_backprop_input": (60, _wrapped(
        "compat.v1.nn.depthwise_conv2d_backprop_input",
        _input_op("", 2, **DW))),
    "compat.v1.nn.depthwise_conv2d_backprop_filter": (60, _wrapped(
        "compat.v1.nn.depthwise_conv2d_backprop_filter",
        _filter_op("", 2, **DW))),
    "compat.v1.nn.atrous_conv2d_transpose": (24, _atrous(
        "compat.v1.nn.atrous_conv2d_transpose")),
}


def _conv_transpose(name):
  """tf.nn.conv_transpose: 1-, 2- or 3-D (3-D takes no int32)."""
  parts = [_transpose_fn(name, n, dtypes=ALL if n < 3 else FLOATS,
                         pad_pairs=n == 2, none_format=True, short=False)
           for n in (1, 2, 3)]

  def draw(rng, dtype=None):
    return parts[int(rng.integers(2 if dtype == "int32" else 3))](rng, dtype)
  draw.dtypes = ALL
  return draw


for _name in ("nn.conv_transpose", "compat.v1.nn.conv_transpose"):
  OPS[_name] = (OPS[_name][0], _conv_transpose(_name))


# --- replaying a call through jaxconv, and its reference -------------------


def function(name):
  """The jaxconv function with this dotted name."""
  import jaxconv
  fn = jaxconv
  for part in name.split("."):
    fn = getattr(fn, part)
  return fn


def resolve(kwargs, arrays, dtype, asarray=None, zeros=None):
  """kwargs with the placeholders replaced by arrays of `dtype` (made by
  `asarray(array, dtype)` and `zeros(shape, dtype)`: NumPy's by default,
  which cost no compile per shape)."""
  asarray, zeros = asarray or np.asarray, zeros or np.zeros
  out = {}
  for key, value in kwargs.items():
    if isinstance(value, str) and value.startswith("$"):
      value = asarray(arrays[value[1:]], dtype)
    elif isinstance(value, dict) and "$zeros" in value:
      value = zeros(value["$zeros"], dtype)
    out[key] = value
  return out


def tensor_names(case):
  """The names of a case's tensor placeholders, in argument order."""
  return [v[1:] for v in case.kwargs.values()
          if isinstance(v, str) and v.startswith("$")]


def as_function(case, kwargs=None):
  """(f(*tensors), tensors) for a case (or for `kwargs`, the case's with
  other attributes): its placeholders become arguments."""
  names, kwargs = tensor_names(case), kwargs or case.kwargs

  def f(*tensors):
    arrays = dict(zip(names, tensors))
    kw = {k: (arrays[v[1:]] if isinstance(v, str) and v.startswith("$") else
              v) for k, v in kwargs.items()}
    return function(case.fn)(**resolve(kw, {}, tensors[0].dtype))
  return f, [case.arrays[n] for n in names]


def run(name, kwargs, arrays, dtype):
  return function(name)(**resolve(kwargs, arrays, dtype))


def run_jitted(calls):
  """[run(*call) for call in calls] in one jax.jit: one XLA compile for all
  (compiling costs a small call more than the rest of it)."""
  import jax
  operands = [{k: np.asarray(v, dtype) for k, v in arrays.items()}
              for _, _, arrays, dtype in calls]

  def replay(operands):
    return [function(name)(**resolve(kwargs, arrays, dtype,
                                     asarray=lambda a, _: a))
            for (name, kwargs, _, dtype), arrays in zip(calls, operands)]
  return jax.jit(replay)(operands)


def reference_result(cfg, kwargs, arrays):
  """The float64 (int32: wrapped) reference for a call's generic config, in
  the shape the op promises (a filter gradient: filter_sizes or the shape
  of `filter`, depthwise [*K, C, M])."""
  from jaxconv import reference
  geometry = reference.tf_geometry(cfg["data_format"], cfg["strides"],
                                   cfg["padding"], cfg["explicit_paddings"],
                                   cfg["dilations"])
  hwio = cfg["filter_shape"]
  if "filter" in arrays:  # an input gradient
    return reference.raw_backprop_input(
        cfg["input_sizes"], np.reshape(arrays["filter"], hwio), arrays["dy"],
        strides=cfg["strides"], padding=cfg["padding"],
        explicit_paddings=cfg["explicit_paddings"],
        data_format=cfg["data_format"], dilations=cfg["dilations"])
  x = arrays["input"]
  depth = x.shape[-1 if geometry["channels_last"] else 1]
  dw = reference.backprop_filter(x, arrays["dy"], kernel=hwio[:-2],
                                 groups=depth // hwio[-2], **geometry)
  shape = kwargs.get("filter_sizes") or kwargs["filter"]["$zeros"]
  return dw.reshape(shape)
