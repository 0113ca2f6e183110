"""The canonical form (what GPU and TPU run), checked by value on CPU.

CPU never chooses it for most configurations, so these tests force it
strictly and prove it ran; the GPU/TPU exports are then shown to be the
very module that was checked.
"""
import os
import pathlib
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

import jaxconv
from jaxconv import lowering
from tests import configs
from tests.helpers import (assert_close, reference_for_spec, run_op,
                           run_reference)

ROOT = pathlib.Path(__file__).resolve().parents[1]
DTYPES = ("float32", "float16", "bfloat16")


def _canonical(fn, *args):
  """fn(*args) lowered with the canonical form on CPU (proved: it ran)."""
  with lowering.force_strategy("canonical", strict=True) as lowered:
    compiled = jax.jit(fn)
    text = compiled.lower(*args).as_text()
    out = compiled(*args)
  assert lowered.backprop_input and set(lowered.backprop_input) == {"canonical"}, lowered
  assert "stablehlo.convolution" in text and "stablehlo.dot_general" not in text
  return out


def _bind(spec):
  return lambda w, dy: jaxconv.conv2d_backprop_input_p.bind(w, dy, spec=spec)


def _nd_cases(ndim, count, seed):
  rng = np.random.default_rng(seed)
  return [configs.random_nd_case(rng, ndim) for _ in range(count)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_nd_values(ndim, dtype):
  cases = _nd_cases(ndim, 10, seed=ndim)
  kinds = set()
  for spec, w, dy in cases:
    k = w.shape[:ndim]
    kinds |= {"groups"} if spec.groups > 1 else set()
    kinds |= {"channels_first"} if not spec.channels_last else set()
    kinds |= {"stride"} if max(spec.strides) > 1 else set()
    kinds |= {"dilation"} if max(spec.dilations) > 1 else set()
    kinds |= {"crop"} if any(max(p) > (kk - 1) * d for p, kk, d in zip(
        spec.padding, k, spec.dilations)) else set()
    w, dy = w.astype(dtype), dy.astype(dtype)
    out = _canonical(_bind(spec), w, dy)
    assert out.dtype == np.dtype(dtype)
    assert_close(out, reference_for_spec(w, dy, spec), dtype, spec)
  assert kinds == {"groups", "channels_first", "stride", "dilation", "crop"}


@pytest.mark.parametrize("dtype", DTYPES)
def test_tf_attribute_classes(dtype):
  # SAME / VALID / EXPLICIT with crops, NHWC / NCHW, grouped, depthwise,
  # 2-entry input_sizes: the raw op, as TF users call it.
  rng = np.random.default_rng({"float32": 0, "float16": 1, "bfloat16": 2}[dtype])
  seen = set()
  for _ in range(60):
    cfg = configs.random_config(rng, dtype=dtype)
    w, dy = configs.random_operands(rng, cfg)
    if 0 in (*w.shape, *dy.shape, *cfg["input_sizes"]):
      continue
    w, dy = w.astype(dtype), dy.astype(dtype)
    out = _canonical(lambda w, dy, cfg=cfg: run_op(cfg, w, dy), w, dy)
    assert_close(out, run_reference(cfg, w, dy), dtype, cfg)
    seen |= {cfg["padding"], cfg["data_format"], len(cfg["input_sizes"]),
             "depthwise" if w.shape[2] == 1 and dy.shape[-1] > 1 else None}
  assert {"SAME", "VALID", "EXPLICIT", "NHWC", "NCHW", 2, 4,
          "depthwise"} <= seen


def _module_ops(text):
  """The StableHLO op lines of a module, without locations."""
  return [re.sub(r"\s*loc\(.*\)$", "", line.strip()) for line in
          text.splitlines() if "stablehlo." in line]


@pytest.mark.parametrize("platform", ["cuda", "rocm", "tpu"])
def test_gpu_tpu_export_is_the_module_checked_here(platform):
  # float32: the exported GPU/TPU module is op for op the CPU one that the
  # tests above value-check (half precision differs only in that CPU asks
  # the convolution for a float32 result; the accelerators accumulate in
  # float32 in hardware).
  from jax import export
  for spec, w, dy in _nd_cases(2, 4, seed=9):
    args = [jax.ShapeDtypeStruct(a.shape, np.float32) for a in (w, dy)]
    with lowering.force_strategy("canonical", strict=True):
      cpu = export.export(jax.jit(_bind(spec)), platforms=["cpu"])(*args)
    other = export.export(jax.jit(_bind(spec)), platforms=[platform])(*args)
    assert _module_ops(other.mlir_module()) == _module_ops(cpu.mlir_module())


@pytest.mark.parametrize("dtype, short", [("float16", "f16"),
                                          ("bfloat16", "bf16")])
def test_half_precision_difference_between_cpu_and_gpu(dtype, short):
  """The one difference: forced on CPU, the convolution returns float32
  (rounded once after); on GPU it returns the dtype (float32 in hardware)."""
  from jax import export
  (spec, w, dy), = _nd_cases(2, 1, seed=9)
  args = [jax.ShapeDtypeStruct(a.shape, dtype) for a in (w, dy)]
  with lowering.force_strategy("canonical", strict=True):
    cpu = _module_ops(export.export(jax.jit(_bind(spec)),
                                    platforms=["cpu"])(*args).mlir_module())
  gpu = _module_ops(export.export(jax.jit(_bind(spec)),
                                  platforms=["cuda"])(*args).mlir_module())
  conv = lambda ops: [op for op in ops if "stablehlo.convolution" in op]
  assert re.search(r"-> tensor<[0-9x]+xf32>$", conv(cpu)[0])
  assert re.search(rf"-> tensor<[0-9x]+x{short}>$", conv(gpu)[0])
  assert [op for op in cpu if "stablehlo.convert" in op and
          re.search(rf"xf32>\) -> tensor<[0-9x]+x{short}>$", op)]


def test_float64_where_xla_cpu_runs_it():
  # XLA CPU's algebraic simplifier aborts the process on some float64
  # lhs-dilated convolutions, so a child process lowers float64 with the
  # canonical form (registered for CPU there) and reports each case.
  env = {**os.environ, "PYTHONPATH": str(ROOT)}
  proc = subprocess.run(
      [sys.executable, "-m", "tests.canonical_f64", "--cases", "40"],
      capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
  summary = proc.stdout.strip().splitlines()[-1]
  ran, aborted = map(int, re.findall(r"(\d+) agree, (\d+) aborted", summary)[0])
  print(summary)
  assert ran >= 30 and ran + aborted == 40, summary
