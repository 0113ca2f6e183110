"""Sharded execution on 8 simulated CPU devices, in a child process (the
device-count flag must be set before JAX starts; the rest of the suite keeps
one device).  The checks themselves live in tests/sharding_main.py."""
import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def summary():
  env = {**os.environ, "PYTHONPATH": str(ROOT),
         "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  proc = subprocess.run([sys.executable, "-m", "tests.sharding_main"],
                        capture_output=True, text=True, cwd=ROOT, env=env,
                        timeout=900)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


STRATEGIES = ("canonical", "gemm_col2im", "subpixel",
              "subpixel_fused", "grouped", "depthwise")
KEYS = [f"{d}/{s}" for d in ("float32", "float64") for s in STRATEGIES]


def test_every_cpu_strategy_and_dtype_was_checked(summary):
  import lowering
  assert set(STRATEGIES) == set(lowering.cpu.STRATEGIES)
  assert set(summary) == set(KEYS)


@pytest.mark.parametrize("key", KEYS)
def test_patterns(summary, key):
  s = summary[key]
  # Data parallel: no communication at all, batch-sharded out.
  assert s["data_parallel"]["collectives"] == {}
  assert s["data_parallel"]["out_spec"] == "P('data',)"
  assert s["shard_map"]["collectives"] == {}
  # A data-parallel training step: the filter gradient is one all-reduce.
  assert s["data_parallel_grads"]["d_out_backprop_spec"] == "P('data',)"
  assert s["data_parallel_grads"]["collectives"] == {"all-reduce": 1}
  if key.endswith(("grouped", "depthwise")):
    return  # the channel patterns below need a dense filter
  # Filter sharded on its input channels: channel-sharded out, no collective.
  assert s["filter_in_channels"]["collectives"] == {}
  assert s["filter_in_channels"]["out_spec"] == "P(None, None, None, 'data')"
  # Contracted channels sharded: one all-reduce of partial sums.
  assert s["filter_out_channels_with_dy_channels"]["collectives"] == {"all-reduce": 1}
  assert s["2d_data_and_channels"]["collectives"] == {"all-reduce": 1}
  assert s["2d_data_and_channels"]["out_spec"] == "P('data',)"
