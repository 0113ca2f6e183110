"""Record golden data from real TensorFlow (tensorflow-cpu 2.21) for the family.

    pip install -e '.[golden]'
    TF_ENABLE_ONEDNN_OPTS=0 python tests/golden/record.py [--scale 1.0]

Writes tests/golden/tf_family.npz.  Each case i holds `call_i` (JSON: the
function's dotted name in jaxconv/TF, its keyword arguments with tensors
as "$name" or {"$zeros": shape} placeholders, the dtype, the TF path, the
kind of values) and the arrays `i.<name>` and `i.out` (TF's result).  The
golden tests replay the calls through jaxconv without TF.

TF paths:
  core       TF's CPU kernel, eager (channels-last, undilated, one group);
  xla        tf.function(jit_compile=True) for what the kernels refuse
             (channels-first, dilation, groups), except where TF's XLA path
             is known wrong or crashes (crops from large explicit pads,
             empty out_backprop with stride > 1, 2-entry input_sizes, empty
             filter-gradient windows): those configs are drawn again;
  counterpart  the 2-D V2 and 3-D v1 ops have no TF kernel: their
             counterpart op on the shape of their tensor argument.
Half precision runs TF in float32 on the (representable) half values: TF's
CPU kernels accumulate half in half; jaxconv follows float32 accumulation.
Values: "exact" (multiples of 1/8, every sum exact) or "generic" (normal
draws rounded to the dtype).
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

from tests.family import OPS, full_input_shape, resolve, spatial  # noqa: E402

OUT = pathlib.Path(__file__).with_name("tf_family.npz")


def _tf_function(dotted):
  obj = tf
  for part in dotted.split("."):
    obj = getattr(obj, part)
  return obj


def choose_path(case):
  """core, xla, or None (no TF path computes it correctly or safely)."""
  cfg = case.cfg
  fmt = cfg["data_format"]
  n = len(cfg["strides"]) - 2
  dilated = max(spatial(cfg["dilations"], fmt)) > 1
  sizes = full_input_shape(cfg)
  grouped = sizes[-1 if fmt[-1] == "C" else 1] != cfg["filter_shape"][-2]
  depthwise = "Depthwise" in case.fn or "depthwise" in case.fn
  strided = max(spatial(cfg["strides"], fmt)) > 1
  empty_dy = 0 in cfg["out_backprop_shape"]
  filter_grad = "Filter" in case.tf_fn or "filter" in case.tf_fn
  # TF's core kernels crash the process (SIGSEGV) on these, and its core
  # filter gradients (depthwise, 3-D) return uninitialised memory for an
  # empty input or out_backprop (1e16-1e36 where the answer is 0); XLA
  # refuses them: no TF path computes them.
  if (empty_dy and strided and n == 3) or (
      filter_grad and 0 in (*full_input_shape(cfg),
                            *cfg["out_backprop_shape"])):
    return None
  square = len(set(spatial(cfg["strides"], fmt))) == 1  # depthwise kernel
  if fmt[-1] == "C" and not dilated and (
      (depthwise and square) or not (grouped or depthwise)):
    return "core"
  if cfg["dtype"] == "int32":
    return None
  ek = [(k - 1) * d + 1 for k, d in zip(cfg["filter_shape"][:n],
                                        spatial(cfg["dilations"], fmt))]
  pads = cfg["explicit_paddings"]
  pairs = spatial([pads[2 * i:2 * i + 2] for i in range(n + 2)], fmt) if (
      pads) else []
  crop = any(max(p) > e - 1 for p, e in zip(pairs, ek))
  short = len(cfg["input_sizes"]) == n
  empty = 0 in (*cfg["out_backprop_shape"], *sizes)
  if crop or short or (empty_dy and strided) or (filter_grad and empty):
    return None
  return "xla"


def run_tf(case, path):
  dtype = case.cfg["dtype"]
  tf_dtype = tf.float32 if dtype in ("float16", "bfloat16") else getattr(
      tf, dtype)
  fn = _tf_function(case.tf_fn)
  kwargs = resolve(case.tf_kwargs, case.arrays, tf_dtype, tf.constant,
                   tf.zeros)
  if path == "xla":
    return tf.function(lambda: fn(**kwargs), jit_compile=True)().numpy()
  return fn(**kwargs).numpy()


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--scale", type=float, default=1.0,
                      help="multiply every op's case count (quick: 0.1)")
  parser.add_argument("--seed", type=int, default=20261129)
  args = parser.parse_args()
  rng = np.random.default_rng(args.seed)
  arrays, i = {}, 0
  for name, (count, draw) in OPS.items():
    count = max(1, round(count * args.scale))
    got, paths, tries = 0, {}, 0
    dtypes = ("float32",) + tuple(draw.dtypes)
    while got < count:
      tries += 1
      if tries > 50 * count:
        raise RuntimeError(f"{name}: {got} of {count} cases after {tries} "
                           "draws; the others had no TF path or failed")
      # The op's dtypes in turn (float32 twice as often), so each appears.
      case = draw(rng, dtypes[got % len(dtypes)])
      path = choose_path(case)
      if path is None:
        continue
      try:
        out = run_tf(case, path)
      except Exception as e:  # noqa: BLE001 - report and draw another
        print(f"  skip {name} ({path}): {type(e).__name__}: "
              f"{str(e).splitlines()[0][:140]}", file=sys.stderr)
        continue
      call = dict(fn=name, kwargs=case.kwargs, dtype=case.cfg["dtype"],
                  path=path if case.tf_fn == name else "counterpart:" + path,
                  values=case.cfg["values"], cfg=case.cfg)
      arrays[f"call_{i}"] = np.array(json.dumps(call))
      for key, a in case.arrays.items():
        arrays[f"{i}.{key}"] = (a if case.cfg["dtype"] in ("float64", "int32")
                                else a.astype(np.float32))
      arrays[f"{i}.out"] = out
      paths[path] = paths.get(path, 0) + 1
      got += 1
      i += 1
    print(f"{name}: {got} cases {paths}", file=sys.stderr, flush=True)
  np.savez_compressed(OUT, **arrays)
  print(f"wrote {OUT} ({OUT.stat().st_size // 1024} KiB, {i} cases)")


if __name__ == "__main__":
  main()
