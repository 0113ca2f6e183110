"""Record golden data from real TensorFlow (tensorflow-cpu 2.21).

    pip install -e '.[golden]'
    TF_ENABLE_ONEDNN_OPTS=0 python tests/golden/record.py [--count 240]

Writes tests/golden/tf_conv2d_backprop_input.npz: for each config i,
`cfg_i` (JSON), `filter_i`, `dy_i` and `out_i` (TF's result), and `path_i`,
which TF path produced it:
  core       TF's CPU kernel (NHWC, no dilation, one group);
  core_nhwc  the same kernel on NHWC-transposed NCHW data;
  xla        tf.function(jit_compile=True), for what the kernel rejects
             (NCHW + dilation, dilation, groups), except where TF's XLA path
             is known wrong (crops from large explicit pads, empty
             out_backprop with stride > 1, 2-entry input_sizes): skipped.
Half-precision configs run TF in float32 on the (exactly representable)
half-precision values: TF's CPU kernel accumulates half in half, and we
follow float32 accumulation (see ../shared/notes/tf-semantics.md).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys

import numpy as np

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import tensorflow as tf  # noqa: E402

from tests.configs import random_config, random_operands  # noqa: E402

OUT = pathlib.Path(__file__).with_name("tf_conv2d_backprop_input.npz")


def _spatial(values, fmt):
  return values[1:3] if fmt == "NHWC" else values[2:4]


def choose_path(cfg):
  """Which TF path can compute cfg correctly (None: none can)."""
  fmt = cfg["data_format"]
  dilated = max(_spatial(cfg["dilations"], fmt)) > 1
  in_depth = (cfg["filter_shape"][2] if len(cfg["input_sizes"]) == 2 else
              cfg["input_sizes"][3 if fmt == "NHWC" else 1])
  grouped = in_depth != cfg["filter_shape"][2]
  if not dilated and not grouped:
    return "core" if fmt == "NHWC" else "core_nhwc"
  ek = [(k - 1) * d + 1 for k, d in zip(cfg["filter_shape"][:2],
                                        _spatial(cfg["dilations"], fmt))]
  pads = cfg["explicit_paddings"]
  pad_pairs = _spatial([pads[2 * i:2 * i + 2] for i in range(4)], fmt) if pads else []
  crop = any(max(p) > e - 1 for p, e in zip(pad_pairs, ek))
  empty = 0 in cfg["out_backprop_shape"]
  if crop or (empty and max(_spatial(cfg["strides"], fmt)) > 1) or len(
      cfg["input_sizes"]) == 2:
    return None
  return "xla"


def run_tf(cfg, filt, dy, path):
  dtype = cfg["dtype"]
  tf_dtype = tf.float32 if dtype in ("float16", "bfloat16") else getattr(tf, dtype)
  kwargs = dict(strides=cfg["strides"], padding=cfg["padding"],
                explicit_paddings=cfg["explicit_paddings"],
                data_format=cfg["data_format"], dilations=cfg["dilations"])
  sizes = list(cfg["input_sizes"])
  if path == "core_nhwc":
    def nhwc(v):
      return [v[0], v[2], v[3], v[1]]
    kwargs.update(strides=nhwc(cfg["strides"]), dilations=nhwc(cfg["dilations"]),
                  data_format="NHWC")
    if kwargs["explicit_paddings"]:
      p = cfg["explicit_paddings"]
      kwargs["explicit_paddings"] = p[0:2] + p[4:8] + p[2:4]
    if len(sizes) == 4:
      sizes = nhwc(sizes)
    dy = np.transpose(dy, (0, 2, 3, 1))

  def op(f, g):
    return tf.raw_ops.Conv2DBackpropInput(
        input_sizes=tf.constant(sizes, tf.int32), filter=f, out_backprop=g,
        **kwargs)

  if path == "xla":
    op = tf.function(op, jit_compile=True)
  out = op(tf.constant(filt, tf_dtype), tf.constant(dy, tf_dtype)).numpy()
  if path == "core_nhwc":
    out = np.transpose(out, (0, 3, 1, 2))
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--count", type=int, default=240)
  parser.add_argument("--seed", type=int, default=20261121)
  args = parser.parse_args()
  rng = np.random.default_rng(args.seed)
  arrays, paths = {}, {}
  i = 0
  while i < args.count:
    cfg = random_config(rng)
    path = choose_path(cfg)
    if path is None:
      continue
    filt, dy = random_operands(rng, cfg)
    try:
      out = run_tf(cfg, filt, dy, path)
    except Exception as e:  # noqa: BLE001 - report and draw another
      print(f"skip ({path}): {type(e).__name__}: {str(e)[:120]}", file=sys.stderr)
      continue
    arrays.update({f"cfg_{i}": np.array(json.dumps(cfg)), f"filter_{i}": filt,
                   f"dy_{i}": dy, f"out_{i}": out, f"path_{i}": np.array(path)})
    paths[path] = paths.get(path, 0) + 1
    i += 1
    if i % 20 == 0:
      print(f"{i}/{args.count} recorded", file=sys.stderr)
  np.savez_compressed(OUT, **arrays)
  print(f"wrote {OUT} ({OUT.stat().st_size // 1024} KiB): {paths}")


if __name__ == "__main__":
  main()
