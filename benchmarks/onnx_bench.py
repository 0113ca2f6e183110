"""ONNX Runtime vs jaxconv on the CPU suite's layer classes (informative).

Each class of benchmarks/suite.py is converted with jax2onnx (the
`jaxconv.onnx` lowerings: one ConvTranspose, or a Conv for the filter
gradients, with NHWC transposes around it) and run in ONNX Runtime's CPU
provider next to jaxconv under jax.jit, interleaved in one process; the two
results are also compared.  Float64 has no ORT Conv kernel (n/a).

    python benchmarks/onnx_bench.py [--quick] [--classes unet-up,...] [--reps N]

Writes a table and `results/onnx_bench.json`.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import pathlib
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax2onnx  # noqa: E402
import ml_dtypes  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402

import jaxconv.onnx  # noqa: E402,F401  (registers the lowerings)
from benchmarks import suite  # noqa: E402
from benchmarks.timing import (interleaved_medians, progress,  # noqa: E402
                               steady_allocator)


def _ort_value(a: np.ndarray):
  """An ORT tensor of a NumPy array (bfloat16 by its bits)."""
  if a.dtype == ml_dtypes.bfloat16:
    return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(
        np.ascontiguousarray(a).view(np.uint16), onnx.TensorProto.BFLOAT16)
  return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(a))


def onnx_session(fn, args):
  """(session, ORT-valued feeds, conv ops) of `fn` converted by jax2onnx."""
  model = jax2onnx.to_onnx(
      fn, [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in args])
  options = ort.SessionOptions()
  options.log_severity_level = 3
  session = ort.InferenceSession(model.SerializeToString(), options,
                                 providers=["CPUExecutionProvider"])
  feeds = {s.name: _ort_value(np.asarray(a))
           for s, a in zip(session.get_inputs(), args)}
  conv = [n.op_type for n in model.graph.node if n.op_type.startswith("Conv")]
  return session, feeds, conv


def run_case(case, reps, rng) -> dict:
  b = suite.build(case, rng)
  row = {"class": case.name}
  if case.dtype == "float64":
    return {**row, "note": "ORT has no float64 Conv kernel (jaxconv.onnx "
            "refuses it)"}
  ours, args = b["ours"], b["args"]
  session, feeds, conv = onnx_session(ours, args)
  check, check_feeds = session, feeds
  if case.dtype == "bfloat16":  # NumPy cannot take ORT's bfloat16 out
    check, check_feeds, _ = onnx_session(
        lambda *a: ours(*a).astype(np.float32), args)
  got = np.asarray(check.run(None, check_feeds)[0], np.float64)
  want = np.asarray(b["cands"]["jaxconv"]().astype(np.float32), np.float64)
  scale = max(1.0, float(np.max(np.abs(want))))
  times = interleaved_medians(  # ORT's outputs stay OrtValues, as JAX's stay
      {"jaxconv": b["cands"]["jaxconv"],  # device arrays
       "onnxruntime": lambda: session.run_with_ort_values(None, feeds)}, reps)
  return {**row, "onnx_conv_nodes": conv,
          "ms": {k: v * 1e3 for k, v in times.items()},
          "ort_over_jaxconv": times["onnxruntime"] / times["jaxconv"],
          "max_rel_diff": float(np.max(np.abs(got - want))) / scale}


def print_row(r) -> None:
  if "ms" not in r:
    print(f"{r['class']:34s} {'n/a':>9s} {'n/a':>9s}   {r['note']}")
    return
  ms = r["ms"]
  print(f"{r['class']:34s} {ms['jaxconv']:9.2f} {ms['onnxruntime']:9.2f} "
        f"{r['ort_over_jaxconv']:7.2f}x {r['max_rel_diff']:9.1e}  "
        f"{'+'.join(r['onnx_conv_nodes'])}", flush=True)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  suite.class_arguments(parser)
  args = parser.parse_args(argv)
  cases, reps = suite.selected_cases(
      parser, args, (suite.CASES[1], suite.CASES[7], suite.CASES[-2]))
  steady_allocator()
  jax.config.update("jax_enable_x64", True)
  print(f"{'class':34s} {'jaxconv':>9s} {'ORT':>9s} {'ORT/jc':>8s} "
        f"{'max diff':>9s}  ORT conv node   (ms, medians; diff: of the "
        "result's scale)")
  rng, results = np.random.default_rng(0), []
  for i, case in enumerate(cases):
    progress(f"[{i + 1}/{len(cases)}] {case.name} ...")
    results.append(run_case(case, reps, rng))
    print_row(results[-1])
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  meta = {"onnxruntime": ort.__version__, "jax": jax.__version__,
          "jax2onnx": importlib.metadata.version("jax2onnx")}
  (out / "onnx_bench.json").write_text(json.dumps(
      {"meta": meta, "results": results}, indent=1))
  progress(f"wrote {out / 'onnx_bench.json'}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
