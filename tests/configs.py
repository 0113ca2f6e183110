"""Random valid op configurations in TF's terms (shared by tests and recorder).

A config is a dict of TF attributes plus shapes and a dtype:
input_sizes, filter_shape, out_backprop_shape, strides, padding,
explicit_paddings, data_format, dilations, dtype.
"""
from __future__ import annotations

import numpy as np

from lowering.geometry import forward_output_size, forward_padding

DTYPES = ("float32", "float64", "float16", "bfloat16", "int32")


def random_config(rng: np.random.Generator, dtype: str | None = None,
                  max_size: int = 9) -> dict:
  """One valid configuration, drawn over every attribute class."""
  while True:
    fmt = str(rng.choice(["NHWC", "NCHW"]))
    padding = str(rng.choice(["SAME", "VALID", "EXPLICIT"]))
    batch = int(rng.integers(0, 4)) if rng.random() < 0.1 else int(
        rng.integers(1, 4))
    kind = rng.choice(["dense", "dense", "grouped", "depthwise"])
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
    for _ in range(2):
      size = int(rng.integers(0, max_size + 1)) if rng.random() < 0.08 else int(
          rng.integers(1, max_size + 1))
      k = int(rng.integers(1, 5))
      s = int(rng.integers(1, 4))
      d = int(rng.integers(1, 4)) if rng.random() < 0.35 else 1
      ek = (k - 1) * d + 1
      # Explicit pads up to beyond ek - 1, so that crops occur.
      explicit = (int(rng.integers(0, ek + 3)), int(rng.integers(0, ek + 3)))
      pad = forward_padding(padding, size, k, s, d, explicit)
      spatial.append(size); kernel.append(k); strides.append(s)
      dilations.append(d); pads.append(pad)
      out.append(forward_output_size(size, k, s, d, pad))
    if min(out) < 0:
      continue
    two_entry = groups == 1 and rng.random() < 0.2
    def ordered(b, c, sp):
      return [b, *sp, c] if fmt == "NHWC" else [b, c, *sp]
    return dict(
        input_sizes=list(spatial) if two_entry else ordered(batch, in_depth,
                                                            spatial),
        filter_shape=[*kernel, ci_filter, co],
        out_backprop_shape=ordered(batch, co, out),
        strides=ordered(1, 1, strides),
        dilations=ordered(1, 1, dilations),
        padding=padding,
        explicit_paddings=([] if padding != "EXPLICIT" else
                           [v for p in ordered((0, 0), (0, 0), pads) for v in p]),
        data_format=fmt,
        dtype=dtype or str(rng.choice(DTYPES, p=[.5, .2, .1, .1, .1])),
    )


def random_operands(rng: np.random.Generator, cfg: dict):
  """(filter, out_backprop) as float64/int32 values exact in cfg's dtype."""
  def draw(shape):
    if cfg["dtype"] == "int32":
      return rng.integers(-9, 10, size=shape).astype(np.int32)
    # Multiples of 1/8 in [-4, 4]: exact in every float dtype.
    return rng.integers(-32, 33, size=shape).astype(np.float64) / 8
  return draw(cfg["filter_shape"]), draw(cfg["out_backprop_shape"])
