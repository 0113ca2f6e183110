"""Random valid op configurations in TF's terms (shared by tests and recorder).

Shapes come from the reference's own TF arithmetic, never from `lowering`.

A config is a dict of TF attributes plus shapes and a dtype:
input_sizes, filter_shape, out_backprop_shape, strides, padding,
explicit_paddings, data_format, dilations, dtype.
"""
from __future__ import annotations

import numpy as np

from jaxconv import reference

DTYPES = ("float32", "float64", "float16", "bfloat16", "int32")


FORMATS = {1: ("NWC", "NCW"), 2: ("NHWC", "NCHW"), 3: ("NDHWC", "NCDHW")}
PADDINGS = ("SAME", "VALID", "EXPLICIT")
KINDS = ("dense", "dense", "grouped", "depthwise")


def random_config(rng: np.random.Generator, dtype: str | None = None,
                  max_size: int = 9, ndim: int = 2, paddings=PADDINGS,
                  kinds=KINDS, dtypes=DTYPES, formats=None,
                  spatial_sizes: bool = True, dilation_rate: float = 0.35
                  ) -> dict:
  """One valid configuration over `ndim` spatial dims, drawn over every
  attribute class: layouts, paddings (explicit pads past the window, i.e.
  crops), strides with dilations, groups, depthwise, zero sizes, and (with
  `spatial_sizes`, one group) spatial-only input_sizes."""
  formats = formats or FORMATS[ndim]
  while True:
    fmt = str(rng.choice(formats))
    padding = str(rng.choice(paddings))
    batch = int(rng.integers(0, 4)) if rng.random() < 0.1 else int(
        rng.integers(1, 4))
    kind = rng.choice(kinds)
    ci = int(rng.integers(1, 5))
    groups = 1 if kind == "dense" else (int(rng.integers(2, 4)) if kind ==
                                        "grouped" else ci)
    if kind == "depthwise":
      ci_filter, co = 1, groups * int(rng.integers(1, 3))
    else:
      ci_filter = ci if kind == "dense" else int(rng.integers(1, 3))
      co = groups * int(rng.integers(1, 4))
    in_depth = ci_filter * groups
    spatial, kernel, strides, dilations, pads, out = [], [], [], [], [], []
    for _ in range(ndim):
      size = int(rng.integers(0, max_size + 1)) if rng.random() < 0.08 else int(
          rng.integers(1, max_size + 1))
      k = int(rng.integers(1, 5))
      s = int(rng.integers(1, 4))
      d = int(rng.integers(1, 4)) if rng.random() < dilation_rate else 1
      ek = (k - 1) * d + 1
      # Explicit pads up to beyond ek - 1, so that crops occur.
      explicit = (int(rng.integers(0, ek + 3)), int(rng.integers(0, ek + 3)))
      pad = reference.pads(padding, size, k, s, d, explicit)
      spatial.append(size); kernel.append(k); strides.append(s)
      dilations.append(d); pads.append(pad)
      out.append(reference.output_size(padding, size, k, s, d, explicit))
    if min(out) < 0:
      continue
    short = spatial_sizes and groups == 1 and rng.random() < 0.2

    def ordered(b, c, sp):
      return [b, *sp, c] if fmt[-1] == "C" else [b, c, *sp]
    return dict(
        input_sizes=list(spatial) if short else ordered(batch, in_depth,
                                                        spatial),
        filter_shape=[*kernel, ci_filter, co],
        out_backprop_shape=ordered(batch, co, out),
        strides=ordered(1, 1, strides),
        dilations=ordered(1, 1, dilations),
        padding=padding,
        explicit_paddings=([] if padding != "EXPLICIT" else
                           [v for p in ordered((0, 0), (0, 0), pads) for v in p]),
        data_format=fmt,
        dtype=dtype or str(rng.choice(dtypes, p=_dtype_weights(dtypes))),
    )


def _dtype_weights(dtypes):
  """float32 half the time, float64 a fifth, the rest shared."""
  weights = {"float32": .5, "float64": .2}
  rest = (1 - sum(weights.get(d, 0) for d in dtypes)) / max(
      1, sum(d not in weights for d in dtypes))
  w = np.array([weights.get(d, rest) for d in dtypes])
  return w / w.sum()


def random_operands(rng: np.random.Generator, cfg: dict):
  """(filter, out_backprop) as float64/int32 values exact in cfg's dtype."""
  def draw(shape):
    if cfg["dtype"] == "int32":
      return rng.integers(-9, 10, size=shape).astype(np.int32)
    # Multiples of 1/8 in [-4, 4]: exact in every float dtype.
    return rng.integers(-32, 33, size=shape).astype(np.float64) / 8
  return draw(cfg["filter_shape"]), draw(cfg["out_backprop_shape"])


def _geometry(rng, kernel, max_size, max_pad):
  """(spatial, strides, dilations, explicit pads, out_backprop spatial),
  drawn until every output size is positive (the reference's arithmetic)."""
  ndim = len(kernel)
  while True:
    spatial = tuple(int(i) for i in rng.integers(1, max_size, ndim))
    strides = tuple(int(s) for s in rng.integers(1, 4, ndim))
    dilations = tuple(int(d) for d in rng.integers(1, 3, ndim))
    pads = tuple((int(a), int(b))
                 for a, b in rng.integers(0, max_pad, (ndim, 2)))
    out = [reference.output_size("EXPLICIT", i, k, s, d, p) for i, k, s, d, p
           in zip(spatial, kernel, strides, dilations, pads)]
    if min(out) > 0:
      return spatial, strides, dilations, pads, out


def random_nd_case(rng: np.random.Generator, ndim: int, dtype="float64",
                   max_size: int = 8):
  """(ConvSpec with explicit pads, filter, out_backprop) over `ndim` spatial
  dims; shapes from the reference's arithmetic, generic float64 values."""
  from jaxconv.lowering.geometry import ConvSpec  # the container only, no arithmetic
  groups = int(rng.choice([1, 1, 2, 3]))
  ci, cog = int(rng.integers(1, 4)), int(rng.integers(1, 4))
  kernel = tuple(int(k) for k in rng.integers(1, 4, ndim))
  spatial, strides, dilations, pads, out = _geometry(rng, kernel, max_size, 3)
  spec = ConvSpec(input_spatial=spatial, strides=strides, dilations=dilations,
                  padding=pads, groups=groups,
                  channels_last=bool(rng.integers(2)))
  w = rng.standard_normal((*kernel, ci, groups * cog))
  shape = ((2, *out, groups * cog) if spec.channels_last else
           (2, groups * cog, *out))
  return spec, w.astype(dtype), rng.standard_normal(shape).astype(dtype)


def random_filter_gradient_case(rng: np.random.Generator, ndim: int, *,
                                max_kernel=4, max_size=10, batch=None,
                                max_ci=6, max_co=6):
  """(one-group ConvSpec, kernel, float32 x, float32 dy) for a filter
  gradient: pads up to 4 (some crop x), shapes from the reference's
  arithmetic; batch None draws 1-5 images."""
  from jaxconv.lowering.geometry import ConvSpec  # the container only, no arithmetic
  kernel = tuple(int(k) for k in rng.integers(1, max_kernel, ndim))
  spatial, strides, dilations, pads, out = _geometry(rng, kernel, max_size, 5)
  spec = ConvSpec(input_spatial=spatial, strides=strides, dilations=dilations,
                  padding=pads, channels_last=bool(rng.integers(2)))
  n = int(rng.integers(1, 6)) if batch is None else batch
  ci, co = int(rng.integers(1, max_ci)), int(rng.integers(1, max_co))
  x = rng.standard_normal(spec.activation_shape(n, ci, spatial))
  dy = rng.standard_normal(spec.activation_shape(n, co, out))
  return spec, kernel, x.astype(np.float32), dy.astype(np.float32)
