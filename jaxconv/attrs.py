"""TF attributes -> `ConvSpec`: parsing and validation at the edge.

Every check here raises ValueError (bad values) or TypeError (bad kinds)
naming the argument and the values it got, in TF's wording where TF has
one.  Attribute lists arrive in `data_format` order; after this module only
spatial tuples exist.  Shape checks that need operand shapes only (ranks,
out-depth, spatial sizes) are the primitive's shape rule.
"""
from __future__ import annotations

import operator

import jax
import jax.export
import numpy as np

from jaxconv.lowering.geometry import ConvSpec, forward_padding
from jaxconv.ops import DATA_FORMATS, WITH_INT32, Op

INT32_MAX = 2**31 - 1


def as_string(value, name: str):
  """A string attribute; bytes (as TF's gradient functions and tf.raw_ops
  pass them) are decoded.  Other values are returned for the caller's
  check to name."""
  if isinstance(value, bytes):
    try:
      return value.decode("ascii")
    except UnicodeDecodeError:
      raise ValueError(f"{name} must be an ASCII string, got {value!r}"
                       ) from None
  return value


def as_array(x, name: str):
  """An array (JAX, NumPy or tracer) from what `lax` takes: an object with
  `__jax_array__` (a Keras Variable, an `nnx.Param`), a nested list or a
  Python number (converted to TF's default dtypes, float32 and int32)."""
  if hasattr(x, "__jax_array__") and not isinstance(x, jax.Array):
    return x.__jax_array__()  # JAX no longer does this when binding
  if hasattr(x, "dtype") and hasattr(x, "shape"):
    return x
  try:
    x = np.asarray(x)
  except (ValueError, TypeError) as e:
    raise TypeError(f"{name} must be an array or nested list of numbers: {e}"
                    ) from None
  if x.dtype == np.float64:
    return x.astype(np.float32)
  if x.dtype == np.int64:
    return x.astype(np.int32)
  return x


def as_operand(x, name: str, dtypes=WITH_INT32):
  """`as_array(x)` with a dtype in `dtypes` (TF's list for the op: only
  Conv2DBackpropInput takes int32)."""
  x = as_array(x, name)
  if np.dtype(x.dtype) not in dtypes:
    raise TypeError(f"{name} has dtype {x.dtype}; expected one of "
                    f"{', '.join(map(str, dtypes))}")
  return x


def _int(value, name: str) -> int:
  if isinstance(value, (bool, np.bool_)):
    raise TypeError(f"{name} must contain integers, got {value!r}")
  try:
    return operator.index(value)
  except TypeError:
    raise TypeError(f"{name} must contain integers, got {value!r} "
                    f"({type(value).__name__})") from None


def int_list(value, name: str, length: int | None = None) -> list[int]:
  """A list of Python ints from a list/tuple/1-D array, with a length check."""
  if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
    raise TypeError(f"{name} must be a list of integers, got {value!r}")
  if isinstance(value, np.ndarray) and value.ndim != 1:
    raise ValueError(f"{name} must be 1-dimensional, got shape {value.shape}")
  values = [_int(v, name) for v in value]
  if length is not None and len(values) != length:
    raise ValueError(f"{name} must have {length} entries in data_format order, "
                     f"got {len(values)}: {values}")
  return values


def parse_data_format(data_format, ndim: int) -> bool:
  """True for channels-last ('NHWC'), False for channels-first ('NCHW')."""
  formats = DATA_FORMATS[ndim]
  data_format = as_string(data_format, "data_format")
  if data_format not in formats:
    raise ValueError(f"data_format must be one of {formats}, got "
                     f"{data_format!r}")
  return data_format == formats[0]


def parse_sizes(values, name: str, ndim: int, spatial_only: bool = False
                ) -> list:
  """A static shape vector (`input_sizes`, `filter_sizes`, `output_shape`):
  ndim + 2 entries, or with `spatial_only` also ndim (spatial) entries."""
  if isinstance(values, jax.core.Tracer):
    raise TypeError(
        f"{name} must be static (a list, tuple, NumPy array or concrete "
        "array): XLA needs the result shape at compile time, but got a traced "
        f"value {values}. Pass it as a Python list, or mark it static "
        "(e.g. jax.jit(..., static_argnames=...)).")
  if isinstance(values, (str, bytes)):
    raise TypeError(f"{name} must be a vector of integers, got {values!r}")
  if isinstance(values, (list, tuple)):
    entries = list(values)
  else:
    arr = np.asarray(values)
    if arr.ndim != 1:  # TF's wording
      raise ValueError(f"{name} shape must be rank 1 but is rank {arr.ndim} "
                       f"(shape {arr.shape})")
    entries = arr.tolist()
  lengths = (ndim + 2, ndim) if spatial_only else (ndim + 2,)
  if len(entries) not in lengths:
    raise ValueError(f"{name} must have {' or '.join(map(str, lengths))} "
                     f"entries, got {len(entries)}: {entries}")
  sizes = []
  for i, v in enumerate(entries):
    if i == 0 and len(entries) == ndim + 2 and jax.export.is_symbolic_dim(v):
      sizes.append(v)  # a symbolic batch; checked against out_backprop later
      continue
    v = _int(v, name)
    if not 0 <= v <= INT32_MAX:
      raise ValueError(f"{name} entries must be in [0, {INT32_MAX}], "
                       f"got {entries}")
    sizes.append(v)
  return sizes


def parse_window(values, name: str, channels_last: bool,
                 ndim: int) -> tuple[int, ...]:
  """Strides or dilations: spatial entries >= 1, batch/depth entries == 1."""
  values = int_list(values, name, ndim + 2)
  depth = ndim + 1 if channels_last else 1
  if values[0] != 1 or values[depth] != 1:
    raise ValueError(f"{name}: current implementation does not support "
                     f"{name} in the batch and depth dimensions (must be 1), "
                     f"got {values}")
  spatial = tuple(v for i, v in enumerate(values) if i not in (0, depth))
  if any(v < 1 for v in spatial):
    raise ValueError(f"{name} must be >= 1 in the spatial dimensions, "
                     f"got {values}")
  return spatial


def parse_explicit_paddings(padding: str, explicit_paddings, channels_last: bool,
                            ndim: int) -> tuple[tuple[int, int], ...]:
  """TF's flat explicit_paddings -> spatial (before, after) pairs, or ()."""
  values = int_list(explicit_paddings, "explicit_paddings")
  if padding != "EXPLICIT":
    if values:
      raise ValueError("explicit_paddings attribute must be empty if the "
                       f"padding attribute is not EXPLICIT, got {values}")
    return ()
  if len(values) != 2 * (ndim + 2):
    raise ValueError(f"explicit_paddings attribute must contain "
                     f"{2 * (ndim + 2)} values, but got: {len(values)} "
                     f"({values})")
  if any(v < 0 for v in values):
    raise ValueError("All elements of explicit_paddings must be nonnegative, "
                     f"got {values}")
  depth = ndim + 1 if channels_last else 1
  pairs = [tuple(values[2 * i:2 * i + 2]) for i in range(ndim + 2)]
  if any(pairs[0]) or any(pairs[depth]):
    raise ValueError("Nonzero explicit padding in the batch or depth "
                     f"dimensions is not supported, got {values}")
  return tuple(p for i, p in enumerate(pairs) if i not in (0, depth))


def check_operands(ndim: int, a, b, names=("filter", "out_backprop")) -> None:
  """Ranks and matching dtypes of the two array operands (named `names`)."""
  for name, x in zip(names, (a, b)):
    if x.ndim != ndim + 2:
      raise ValueError(f"{name} must be {ndim + 2}-dimensional, got shape "
                       f"{tuple(x.shape)}")
  if a.dtype != b.dtype:
    raise TypeError(f"{names[0]} and {names[1]} must have the same dtype, got "
                    f"{a.dtype} and {b.dtype}")


def make_spec(op: Op, input_sizes, filter_shape, batch, strides, padding,
              explicit_paddings, data_format, dilations, *,
              sizes_name="input_sizes") -> ConvSpec:
  """Validate TF's attributes of `op` (its row of the op table) against the
  filter shape and batch size.

  input_sizes: the forward conv's input shape, ndim + 2 entries (or, where
  `op.spatial_sizes`, ndim spatial ones: Conv2DBackpropInput's short
  form); `sizes_name` names it in errors.
  """
  n = op.ndim
  channels_last = parse_data_format(data_format, n)
  padding = as_string(padding, "padding")
  if padding not in op.paddings:
    raise ValueError(f"padding must be one of {op.paddings}, got {padding!r}")
  sizes = parse_sizes(input_sizes, sizes_name, n,
                      spatial_only=op.spatial_sizes)
  window_strides = parse_window(strides, "strides", channels_last, n)
  window_dilations = parse_window(dilations, "dilations", channels_last, n)
  explicit = parse_explicit_paddings(padding, explicit_paddings,
                                     channels_last, n)

  filter_shape = tuple(filter_shape)
  kernel, filt_in, filt_out = filter_shape[:n], filter_shape[n], filter_shape[n + 1]
  if len(sizes) == n:
    spatial, depth = tuple(sizes), filt_in
  else:
    depth = sizes[-1] if channels_last else sizes[1]
    spatial = tuple(sizes[1:-1] if channels_last else sizes[2:])
    if sizes[0] != batch:
      raise ValueError(
          "input and out_backprop must have the same batch size, input batch: "
          f"{sizes[0]} outbackprop batch: {batch} batch_dim: 0 ({sizes_name} "
          f"{sizes})" + (
              " (with a symbolic batch, put the same dimension in "
              f"{sizes_name}[0] or give 2-entry input_sizes)" if any(
                  map(jax.export.is_symbolic_dim, (sizes[0], batch))) else ""))
  if filt_in <= 0:
    raise ValueError(f"filter in_depth (filter.shape[{n}]) must be positive, "
                     f"got filter shape {filter_shape}")
  if depth % filt_in:
    raise ValueError(
        f"input depth must be evenly divisible by filter depth: input depth "
        f"{depth}, filter depth {filt_in} ({sizes_name} {sizes}, filter shape "
        f"{filter_shape})")
  groups = depth // filt_in
  if groups == 0:
    raise ValueError(f"input depth must be positive (a multiple of the filter "
                     f"depth {filt_in}), got {sizes_name} {sizes}")
  if filt_out % groups:
    raise ValueError(
        f"filter out_depth {filt_out} must be divisible by the number "
        f"of groups {groups} (input depth {depth} / filter depth {filt_in})")
  pads = tuple(
      forward_padding(padding, i, k, s, d, p) for i, k, s, d, p in zip(
          spatial, kernel, window_strides, window_dilations,
          explicit or [(0, 0)] * n, strict=True))
  return ConvSpec(input_spatial=spatial, strides=window_strides,
                  dilations=window_dilations, padding=pads, groups=groups,
                  channels_last=channels_last)


# --- TF's Python wrappers (tf.nn, tf.compat.v1.nn) --------------------------


def get_sequence(value, n: int, channel_index: int, name: str) -> list:
  """TF's `_get_sequence`: strides/dilations as an int (or 1 entry: every
  spatial dim), n spatial entries, or n + 2 entries used verbatim; None is
  all ones.  Returns n + 2 entries in data_format order."""
  if value is None:
    return [1] * (n + 2)
  if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
    value = [value]
  value = list(value)
  if len(value) == n + 2:
    return value
  if len(value) == 1:
    value = value * n
  elif len(value) != n:
    raise ValueError(f"{name} should be of length 1, {n} or {n + 2}. "
                     f"Received: {name}={value} of length {len(value)}")
  return [1, 1, *value] if channel_index == 1 else [1, *value, 1]


def convert_padding(padding, expected_length: int = 4):
  """TF's `convert_padding`: "SAME"/"VALID", or a list of (before, after)
  pairs, one per dimension in data_format order (meaning EXPLICIT; the
  string "EXPLICIT" itself is refused).  Returns (padding, explicit_paddings)."""
  padding = as_string(padding, "padding")
  if isinstance(padding, str) and padding == "EXPLICIT":
    raise ValueError("'EXPLICIT' is not a valid value for `padding`. To use "
                     "explicit padding, `padding` must be a list.")
  if not isinstance(padding, (list, tuple)):
    return padding, []
  flat = []
  for i, pair in enumerate(padding):
    if not isinstance(pair, (list, tuple)) or len(pair) != 2:
      raise ValueError("When `padding` is a list, each element of `padding` "
                       f"must be a list/tuple of size 2. Received: padding="
                       f"{padding} with element at index {i}: {pair!r}")
    flat.extend(pair)
  if len(padding) != expected_length:
    raise ValueError(f"When padding is a list, it must be of size "
                     f"{expected_length}. Received: padding={padding} of "
                     f"size {len(padding)}")
  return "EXPLICIT", flat


def alias(old_name, old, new_name, new, required=True):
  """TF's `deprecated_argument_lookup`: an argument with two names."""
  if old is not None and new is not None:
    raise ValueError(f"Cannot specify both '{new_name}' and '{old_name}': give "
                     f"exactly one of {old_name} and {new_name} (an alias), "
                     "got both")
  if required and old is None and new is None:
    raise ValueError(f"give exactly one of {old_name} and {new_name} (an "
                     "alias), got neither")
  return old if new is None else new
