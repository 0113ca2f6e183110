"""Never crash, never lie: fuzzing, TF crash/advisory regressions, huge sizes,
non-finite values, determinism, concurrency, and the command line."""
import concurrent.futures
import os
import pathlib
import subprocess
import sys
import tempfile

import jax
import numpy as np
import pytest
from absl.testing import parameterized
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jaxconv
from jaxconv import cli, reference
from tests import configs, fuzz
from tests.helpers import assert_close, run_op, run_reference
from tests.strategies import (family_calls, family_invalid_calls,
                              invalid_calls, valid_configs)

ROOT = pathlib.Path(__file__).resolve().parents[1]
def fast(max_examples):
  return settings(max_examples=max_examples, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))


@pytest.mark.x64
@fast(60)
@given(valid_configs())
def test_property_valid_configs_match_reference(cfg):
  fuzz.check_valid(cfg)


@fast(300)
@given(invalid_calls())
def test_property_invalid_calls_raise_named_errors(case):
  fuzz.check_invalid(*case)


@pytest.mark.x64
@fast(60)
@given(family_calls())
def test_property_family_calls_match_reference(case):
  fuzz.check_family_valid(case)


@fast(300)
@given(family_invalid_calls())
def test_property_family_invalid_calls_raise_named_errors(args):
  fuzz.check_family_invalid(*args)


def _campaign(valid, invalid, seed):
  """Run a campaign in a child process so that an abort is seen, not lost."""
  log = tempfile.NamedTemporaryFile("r", suffix=".log", delete=False)
  env = {**os.environ, "PYTHONPATH": str(ROOT)}
  proc = subprocess.run(
      [sys.executable, "-m", "tests.fuzz", "--valid", str(valid), "--invalid",
       str(invalid), "--seed", str(seed), "--log", log.name],
      capture_output=True, text=True, cwd=ROOT, env=env, timeout=3000)
  last = (open(log.name).read().splitlines() or ["<none>"])[-1]
  os.unlink(log.name)
  if proc.returncode < 0 or proc.returncode > 1:
    pytest.fail(f"the fuzz process died (code {proc.returncode}) on case: "
                f"{last}\n{proc.stderr[-2000:]}")
  assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
  assert f"fuzz valid: {valid} cases ran" in proc.stdout
  assert f"fuzz invalid: {invalid} cases ran" in proc.stdout
  assert f"fuzz family valid: {valid} cases ran" in proc.stdout
  assert f"fuzz family invalid: {invalid} cases ran" in proc.stdout
  share = int(proc.stdout.split(" with work (")[1].split("%")[0])
  assert share >= 80, proc.stdout  # examples that do real work
  return proc.stdout


def test_campaign_in_child_process():
  print(_campaign(valid=60, invalid=600, seed=1))


@pytest.mark.slow
def test_long_campaign_in_child_process():
  print(_campaign(valid=1500, invalid=20000, seed=2))


GOOD = dict(input_sizes=[1, 4, 4, 2], filter=np.ones((2, 2, 2, 3), np.float32),
            out_backprop=np.ones((1, 4, 4, 3), np.float32), strides=[1, 1, 1, 1],
            padding="SAME", dilations=[1, 1, 1, 1])


class TfCrashRegressionTest(parameterized.TestCase):
  """Inputs that crash or corrupt TensorFlow (its notes and advisories)."""

  @parameterized.named_parameters(
      # TF 2.21 CPU aborts the process (../shared/notes/tf-semantics.md).
      ("abort_3_entry_input_sizes", dict(input_sizes=[1, 4, 4])),
      ("abort_negative_input_sizes", dict(input_sizes=[1, -4, 4, 2])),
      ("abort_3_entry_strides", dict(strides=[1, 1, 1])),
      ("fpe_stride_zero", dict(strides=[1, 0, 1, 1])),
      # Division by zero on empty filters (CVE-2021-41209) and in
      # Conv2DBackpropInput's shape code (CVE-2021-29525).
      ("div0_filter_in_depth_zero", dict(filter=np.ones((2, 2, 0, 3), np.float32))),
      ("div0_all_empty", dict(input_sizes=[0, 0, 0, 0],
                              filter=np.ones((0, 0, 0, 0), np.float32),
                              out_backprop=np.ones((0, 0, 0, 0), np.float32))),
      ("div0_zero_input_depth", dict(input_sizes=[1, 4, 4, 0])),
      ("div0_zero_dilation", dict(dilations=[1, 0, 1, 1])),
      # CHECK failures / out-of-bounds reads on malformed shapes.
      ("check_non_vector_input_sizes",
       dict(input_sizes=np.ones((2, 2), np.int32))),
      ("check_scalar_input_sizes", dict(input_sizes=np.int32(4))),
      ("oob_short_explicit_paddings",
       dict(padding="EXPLICIT", explicit_paddings=[1, 1])),
      ("oob_filter_rank_5", dict(filter=np.ones((2, 2, 2, 3, 1), np.float32))),
      ("oob_out_backprop_rank_3", dict(out_backprop=np.ones((4, 4, 3), np.float32))),
      ("overflow_input_sizes_beyond_int32", dict(input_sizes=[1, 2**33, 4, 2])),
      ("overflow_huge_negative_stride", dict(strides=[1, -2**62, 1, 1])),
      ("mismatched_out_backprop", dict(out_backprop=np.ones((1, 9, 4, 3), np.float32))),
      ("mismatched_batch", dict(input_sizes=[5, 4, 4, 2])),
  )
  def test_clean_error(self, overrides):
    with self.assertRaises((ValueError, TypeError)):
      jaxconv.raw_ops.Conv2DBackpropInput(**{**GOOD, **overrides})

  @pytest.mark.x64
  def test_xla_float64_simplifier_abort_found_by_fuzzing(self):
    # XLA CPU's algebraic simplifier aborts the process on this float64
    # lhs-dilated convolution; float64 never reaches a CPU convolution here.
    cfg = dict(input_sizes=[2, 6, 2, 3], strides=[1, 1, 2, 2],
               dilations=[1, 1, 1, 3], padding="EXPLICIT",
               explicit_paddings=[0, 0, 0, 0, 2, 3, 1, 0], data_format="NCHW",
               dtype="float64")
    rng = np.random.default_rng(0)
    w, dy = rng.standard_normal((2, 2, 3, 2)), rng.standard_normal((2, 2, 3, 1))
    assert_close(run_op(cfg, w, dy), run_reference(cfg, w, dy), "float64")


_F32 = np.float32
_DW_GOOD = dict(input_sizes=[1, 4, 4, 2], filter=np.ones((2, 2, 2, 3), _F32),
                out_backprop=np.ones((1, 4, 4, 6), _F32), strides=[1, 1, 1, 1],
                padding="SAME")
_C2BF_GOOD = dict(input=np.ones((1, 4, 4, 2), _F32), filter_sizes=[2, 2, 2, 3],
                  out_backprop=np.ones((1, 4, 4, 3), _F32),
                  strides=[1, 1, 1, 1], padding="SAME")
_DWBF_GOOD = dict(input=np.ones((1, 4, 4, 2), _F32), filter_sizes=[2, 2, 2, 3],
                  out_backprop=np.ones((1, 4, 4, 6), _F32),
                  strides=[1, 1, 1, 1], padding="SAME")
_C3BI_GOOD = dict(input_sizes=[1, 4, 4, 4, 2],
                  filter=np.ones((2, 2, 2, 2, 3), _F32),
                  out_backprop=np.ones((1, 4, 4, 4, 3), _F32),
                  strides=[1, 1, 1, 1, 1], padding="SAME")
_C3BF_GOOD = dict(input=np.ones((1, 4, 4, 4, 2), _F32),
                  filter_sizes=[2, 2, 2, 2, 3],
                  out_backprop=np.ones((1, 4, 4, 4, 3), _F32),
                  strides=[1, 1, 1, 1, 1], padding="SAME")


def _raw(op, good, **overrides):
  return lambda: getattr(jaxconv.raw_ops, op)(**{**good, **overrides})


class FamilyTfCrashRegressionTest(parameterized.TestCase):
  """Inputs that kill TF 2.21's process for the family's other ops
  (../shared/notes/tf-family.md): clean errors, or the right result."""

  @parameterized.named_parameters(
      # SIGFPE inside tf.function: a spatial stride of 0 on any 2-D op.
      ("sigfpe_stride_0_c2bi_v2", _raw("Conv2DBackpropInputV2", {
          **{k: v for k, v in GOOD.items() if k != "input_sizes"},
          "input": np.zeros((1, 4, 4, 2), _F32)}, strides=[1, 0, 1, 1])),
      ("sigfpe_stride_0_dw_input", _raw(
          "DepthwiseConv2dNativeBackpropInput", _DW_GOOD, strides=[1, 1, 0, 1])),
      ("sigfpe_stride_0_c2bf", _raw("Conv2DBackpropFilter", _C2BF_GOOD,
                                    strides=[1, 0, 1, 1])),
      ("sigfpe_stride_0_dw_filter", _raw(
          "DepthwiseConv2dNativeBackpropFilter", _DWBF_GOOD,
          strides=[1, 0, 1, 1])),
      ("sigfpe_stride_0_conv1d_transpose", lambda: jaxconv.nn.conv1d_transpose(
          np.ones((1, 4, 3), _F32), np.ones((2, 2, 3), _F32), [1, 4, 2], 0)),
      ("sigfpe_stride_0_conv2d_transpose", lambda: jaxconv.nn.conv2d_transpose(
          np.ones((1, 4, 4, 3), _F32), np.ones((2, 2, 2, 3), _F32),
          [1, 4, 4, 2], [1, 0])),
      # SIGFPE: filter_sizes in-depth 0 (Conv2DBackpropFilter, depthwise).
      ("sigfpe_filter_sizes_in_depth_0_c2bf", _raw(
          "Conv2DBackpropFilter", _C2BF_GOOD, filter_sizes=[2, 2, 0, 3])),
      ("sigfpe_filter_sizes_in_depth_0_dw", _raw(
          "DepthwiseConv2dNativeBackpropFilter", _DWBF_GOOD,
          filter_sizes=[2, 2, 0, 3])),
      # SIGFPE under XLA: in-depth 0 in the sizes or the filter (3-D).
      ("sigfpe_in_depth_0_sizes_c3bi", _raw(
          "Conv3DBackpropInputV2", _C3BI_GOOD, input_sizes=[1, 4, 4, 4, 0])),
      ("sigfpe_in_depth_0_filter_c3bi", _raw(
          "Conv3DBackpropInputV2", _C3BI_GOOD,
          filter=np.ones((2, 2, 2, 0, 3), _F32))),
      # SIGABRT (oneDNN CHECK): malformed input_sizes of DW and 3-D ops.
      ("sigabrt_3_entry_sizes_dw", _raw(
          "DepthwiseConv2dNativeBackpropInput", _DW_GOOD, input_sizes=[1, 4, 4])),
      ("sigabrt_negative_sizes_dw", _raw(
          "DepthwiseConv2dNativeBackpropInput", _DW_GOOD,
          input_sizes=[1, -4, 4, 2])),
      ("sigabrt_rank_2_sizes_c3bi", _raw(
          "Conv3DBackpropInputV2", _C3BI_GOOD,
          input_sizes=np.ones((5, 1), np.int32))),
      ("sigabrt_overflowing_sizes_c3bi", _raw(
          "Conv3DBackpropInputV2", _C3BI_GOOD,
          input_sizes=[1, 2**40, 4, 4, 2])),
      ("sigabrt_negative_depth_c3bi", _raw(
          "Conv3DBackpropInputV2", _C3BI_GOOD, input_sizes=[1, 4, 4, 4, -2])),
      # SIGABRT (oneDNN): 3 strides on 2-D ops; rank-3 input/dy.
      ("sigabrt_3_strides_c2bf", _raw("Conv2DBackpropFilter", _C2BF_GOOD,
                                      strides=[1, 1, 1])),
      ("sigabrt_3_strides_dw_input", _raw(
          "DepthwiseConv2dNativeBackpropInput", _DW_GOOD, strides=[1, 1, 1])),
      ("sigabrt_rank_3_input_c2bf", _raw(
          "Conv2DBackpropFilter", _C2BF_GOOD, input=np.ones((4, 4, 2), _F32))),
      ("sigabrt_rank_3_dy_dw_filter", _raw(
          "DepthwiseConv2dNativeBackpropFilter", _DWBF_GOOD,
          out_backprop=np.ones((4, 4, 6), _F32))),
  )
  def test_clean_error(self, call):
    with self.assertRaises((ValueError, TypeError)):
      call()

  @parameterized.named_parameters(
      # SIGSEGV (core, eager): an empty out_backprop with stride > 1.
      ("sigsegv_empty_dy_stride_2_c3bi", "Conv3DBackpropInputV2",
       dict(input_sizes=[1, 0, 4, 4, 2], filter=np.ones((2, 2, 2, 2, 3), _F32),
            out_backprop=np.ones((1, 0, 2, 2, 3), _F32),
            strides=[1, 2, 2, 2, 1], padding="SAME"), (1, 0, 4, 4, 2)),
      ("sigsegv_empty_dy_stride_2_c3bf", "Conv3DBackpropFilterV2",
       dict(input=np.ones((1, 0, 4, 4, 2), _F32), filter_sizes=[2, 2, 2, 2, 3],
            out_backprop=np.ones((1, 0, 2, 2, 3), _F32),
            strides=[1, 2, 2, 2, 1], padding="SAME"), (2, 2, 2, 2, 3)),
      ("sigsegv_empty_dy_width_stride_2_c2bf", "Conv2DBackpropFilter",
       dict(input=np.ones((1, 4, 0, 2), _F32), filter_sizes=[2, 2, 2, 3],
            out_backprop=np.ones((1, 4, 0, 3), _F32), strides=[1, 1, 2, 1],
            padding="SAME"), (2, 2, 2, 3)),
      # TF's core filter gradients return uninitialised memory for an
      # empty input or out_backprop (seen: 1e16 to 1e36 where it is 0).
      ("garbage_empty_input_dw_filter", "DepthwiseConv2dNativeBackpropFilter",
       dict(input=np.ones((3, 0, 6, 3), _F32), filter_sizes=[1, 4, 3, 1],
            out_backprop=np.ones((3, 0, 6, 3), _F32), strides=[1, 1, 1, 1],
            padding="SAME"), (1, 4, 3, 1)),
      ("garbage_empty_dy_dw_filter", "DepthwiseConv2dNativeBackpropFilter",
       dict(input=np.ones((1, 1, 8, 4), _F32), filter_sizes=[2, 4, 4, 2],
            out_backprop=np.ones((1, 0, 5, 8), _F32), strides=[1, 1, 1, 1],
            padding="VALID"), (2, 4, 4, 2)),
      ("garbage_empty_dy_3d_filter", "Conv3DBackpropFilterV2",
       dict(input=np.ones((2, 2, 3, 3, 2), _F32), filter_sizes=[3, 1, 2, 2, 1],
            out_backprop=np.ones((2, 0, 3, 2, 1), _F32),
            strides=[1, 1, 1, 1, 1], padding="VALID"), (3, 1, 2, 2, 1)),
  )
  def test_empty_gives_zeros(self, op, kwargs, shape):
    out = getattr(jaxconv.raw_ops, op)(**kwargs)
    self.assertEqual(out.shape, shape)
    np.testing.assert_array_equal(out, 0)

  @parameterized.parameters("Conv2DBackpropInput", "Conv3DBackpropInputV2")
  def test_stride_2_31_minus_1_is_computed(self, op):
    # oneDNN SIGSEGV; here the exact result, promptly (the stride-phase
    # strategies see the equivalent stride).
    s, n = 2**31 - 1, 2 if op == "Conv2DBackpropInput" else 3
    rng = np.random.default_rng(0)
    w = rng.standard_normal((*[3] * n, 2, 4))
    dy = rng.standard_normal((1, *[1] * n, 4))
    sizes = [1, 4, 5, 3][:n + 1] + [2]
    out = getattr(jaxconv.raw_ops, op)(
        input_sizes=sizes, filter=w, out_backprop=dy, strides=[1, *[s] * n, 1],
        padding="SAME")
    want = reference.raw_backprop_input(sizes, w, dy, strides=[1, *[s] * n, 1],
                                        padding="SAME",
                                        data_format="NHWC" if n == 2 else "NDHWC")
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)


class ResourceTest(parameterized.TestCase):

  @parameterized.parameters(
      ([1, 2**31 - 1, 2**31 - 1, 1], [1, 2**31 - 1, 2**31 - 1, 1]),
      ([2**20, 2**20, 2**10, 1], [1, 2**20, 2**10, 1]),
  )
  def test_unallocatable_result_is_a_python_error(self, sizes, strides):
    filt = np.ones((1, 1, 1, 1), np.float32)
    dy = np.ones((sizes[0], 1, 1, 1), np.float32)
    with self.assertRaisesRegex(ValueError, "more than the device has"):
      jaxconv.raw_ops.Conv2DBackpropInput(
          input_sizes=sizes, filter=filt, out_backprop=dy, strides=strides,
          padding="VALID")


@pytest.mark.x64  # absl's parameterized methods drop a method's mark
class NonFiniteTest(parameterized.TestCase):
  """NaN and Inf propagate exactly as the sum over taps says."""

  @parameterized.product(where=["out_backprop", "filter"],
                         value=[np.nan, np.inf, -np.inf],
                         dtype=["float32", "float64", "bfloat16"])
  def test_propagation_matches_reference(self, where, value, dtype):
    rng = np.random.default_rng(5)
    cfg = dict(input_sizes=[2, 9, 8, 4], strides=[1, 2, 2, 1],
               dilations=[1, 1, 1, 1], padding="SAME", explicit_paddings=[],
               data_format="NHWC", dtype=dtype)
    w = rng.integers(-2, 3, (3, 3, 4, 5)).astype(np.float64)
    dy = rng.integers(-2, 3, (2, 5, 4, 5)).astype(np.float64)
    target = dy if where == "out_backprop" else w
    target.flat[rng.choice(target.size, 3, replace=False)] = value
    out = np.asarray(run_op(cfg, w, dy)).astype(np.float64)
    with np.errstate(invalid="ignore"):  # inf - inf in the reference is the point
      ref = run_reference(cfg, w, dy)
    np.testing.assert_array_equal(np.isnan(out), np.isnan(ref))
    np.testing.assert_array_equal(np.isposinf(out), np.isposinf(ref))
    np.testing.assert_array_equal(np.isneginf(out), np.isneginf(ref))
    finite = np.isfinite(ref)
    assert_close(out[finite], ref[finite], dtype)


@pytest.mark.x64  # absl's parameterized methods drop a method's mark
class DeterminismAndConcurrencyTest(parameterized.TestCase):

  @parameterized.parameters("float32", "float64", "bfloat16", "int32")
  def test_repeated_calls_are_bit_identical(self, dtype):
    cfg = dict(input_sizes=[4, 33, 31, 16], strides=[1, 2, 2, 1],
               dilations=[1, 1, 1, 1], padding="SAME", explicit_paddings=[],
               data_format="NHWC", dtype=dtype)
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 3, 16, 32)) * 4
    dy = rng.standard_normal((4, 17, 16, 32)) * 4
    f = jax.jit(lambda w, dy: run_op(cfg, w, dy))
    first = np.asarray(f(w, dy))
    for _ in range(5):
      np.testing.assert_array_equal(np.asarray(f(w, dy)), first)
    np.testing.assert_array_equal(np.asarray(run_op(cfg, w, dy)), first)

  def test_threads_with_different_shapes(self):
    cases = []
    for i in range(48):
      rng = np.random.default_rng(100 + i)
      cfg = configs.random_config(rng, dtype=("float32", "float64")[i % 2])
      cases.append((cfg, *configs.random_operands(rng, cfg)))
    jitted = {}

    def work(case):
      cfg, w, dy = case
      key = repr(cfg)
      f = jitted.setdefault(key, jax.jit(lambda w, dy, cfg=cfg: run_op(cfg, w, dy)))
      with jax.enable_x64(True):  # a thread-local setting: each thread's own
        out = f(w, dy)
      return assert_close(out, run_reference(cfg, w, dy), cfg["dtype"], cfg)

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
      futures = [pool.submit(work, c) for c in cases * 2]
      for fut in concurrent.futures.as_completed(futures, timeout=600):
        fut.result()


_FLAG_VALUES = st.sampled_from(["", "x", "-1", "0", "1,2", "1,2,3,4,5",
                                "99999999999", "1.5", "NHWC", "SAME", ",,", "N",
                                "cpu,gpu", "float8"])
_FLAGS = st.sampled_from(["--input-sizes", "--filter-sizes", "--strides",
                          "--padding", "--explicit-paddings", "--data-format",
                          "--dilations", "--dtype", "--batch", "--platforms",
                          "--format"])


@fast(80)
@given(st.lists(st.tuples(_FLAGS, _FLAG_VALUES), min_size=1, max_size=3))
def test_cli_never_shows_a_traceback(flags):
  import contextlib
  import io
  argv = ["export"] + [v for pair in flags for v in pair]
  err = io.StringIO()
  with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
    try:
      code = cli.main(argv)
    except SystemExit as e:
      code = e.code
  assert code in (0, 2), (argv, err.getvalue())
  assert "Traceback" not in err.getvalue()
  if code == 2:
    assert err.getvalue().strip().splitlines()[-1].startswith(
        ("jaxconv: error:", "jaxconv export: error:"))
