"""Sharded execution on 8 simulated CPU devices, in child processes (the
device-count flag must be set before JAX starts; the rest of the suite keeps
one device).  The checks themselves live in tests/sharding_main.py (Auto
mode, shard_map) and tests/explicit_main.py (explicit sharding)."""
import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
# The module's fixtures run children once per worker that needs them: the
# whole module on one worker (loadgroup, pyproject.toml) runs them once.
pytestmark = pytest.mark.xdist_group("sharding")


def _summary_of(module: str) -> dict:
  """Run `python -m module` on 8 simulated devices; its JSON summary."""
  env = {**os.environ, "PYTHONPATH": str(ROOT),
         "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  proc = subprocess.run([sys.executable, "-m", module], capture_output=True,
                        text=True, cwd=ROOT, env=env, timeout=900)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def _native():
  from jaxconv.lowering.cpu import onednn
  return onednn.available()


@pytest.fixture(scope="module")
def summary():
  return _summary_of("tests.sharding_main")


STRATEGIES = ("canonical", "gemm_col2im", "subpixel",
              "subpixel_fused", "grouped", "depthwise", "onednn")
KEYS = [f"{d}/{s}" for d in ("float32", "float64") for s in STRATEGIES]


def test_every_cpu_strategy_and_dtype_was_checked(summary):
  from jaxconv import lowering
  assert set(STRATEGIES) == set(lowering.cpu.STRATEGIES["backprop_input"])
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
  # The native kernels (where they load) run inside shard_map, whose shard
  # is what they see, with no collective added; XLA partitions the jit
  # over 8 devices, so there every lowering stays a StableHLO form.
  native = "onednn" if key.startswith("float32") and _native() else None
  mapped = s["shard_map"]["lowered"]
  assert (mapped["backprop_input"] == ["onednn"]) == (
      native is not None and key.endswith("onednn")), mapped
  assert "onednn" not in str(s["data_parallel_grads"]["lowered"])
  if key.endswith(("grouped", "depthwise")):
    return  # the channel patterns below need a dense filter
  # Filter sharded on its input channels: channel-sharded out, no collective.
  assert s["filter_in_channels"]["collectives"] == {}
  assert s["filter_in_channels"]["out_spec"] == "P(None, None, None, 'data')"
  # Contracted channels sharded: one all-reduce of partial sums.
  assert s["filter_out_channels_with_dy_channels"]["collectives"] == {"all-reduce": 1}
  assert s["2d_data_and_channels"]["collectives"] == {"all-reduce": 1}
  assert s["2d_data_and_channels"]["out_spec"] == "P('data',)"


# --- explicit sharding mode (tests/explicit_main.py) ----------------------

@pytest.fixture(scope="module")
def explicit():
  return _summary_of("tests.explicit_main")


DATA, REP = "P('data', None, None, None)", "P(None, None, None, None)"
# pattern: (result types, collectives), as README's table says
EXPLICIT = {
    "data_parallel": ([DATA], {}),
    "mixed_explicit_data_auto_model": ([DATA], {}),
    "grads": ([REP, DATA], {"all-reduce": 1}),
    "second_order": ([REP], {"all-reduce": 1}),
    "vmap_filters": (["P(None, 'data', None, None, None)"], {}),
    "vmap_out_backprop": (["P(None, 'data', None, None, None)"], {}),
    "vmap_of_grad": (["P(None, None, None, None, None)"], {"all-reduce": 1}),
    "grad_of_vmap": (["P(None, None, None, None, None)"], {"all-reduce": 1}),
}
EXPLICIT_DENSE = {
    "filter_in_channels": (["P(None, None, None, 'data')"], {}),
    "contracted_channels": ([REP], {"all-reduce": 1}),
    "2d_data_and_channels": ([DATA], {"all-reduce": 1}),
}


@pytest.mark.parametrize("strategy", ("chosen", *STRATEGIES))
def test_explicit_mode_patterns(explicit, strategy):
  s = explicit[strategy]
  if strategy == "onednn":  # one device's calls native; XLA partitions the rest
    assert set(s["lowered"]) - {"onednn"} and (
        "onednn" in s["lowered"]) == _native(), s["lowered"]
  elif strategy != "chosen":  # the forced strategy is what lowered
    assert s["lowered"] == [strategy]
  expected = dict(EXPLICIT)
  if strategy not in ("grouped", "depthwise"):
    expected.update(EXPLICIT_DENSE)
  assert set(s) - {"lowered"} == set(expected)
  for name, (types, counts) in expected.items():
    assert s[name]["type"] == types, (name, s[name])
    assert s[name]["collectives"] == counts, (name, s[name])


def test_explicit_mode_every_op_of_the_family(explicit):
  import jaxconv
  family = explicit["family"]
  assert set(family) == set(jaxconv.raw_ops.__all__)
  for name, s in family.items():
    rank = 5 if "3D" in name else 4
    data = "P('data'" + ", None" * (rank - 1) + ")"
    rep = "P(" + ", ".join(["None"] * rank) + ")"
    if "Filter" in name:  # contracted batch: reduced to the out_sharding given
      assert (s["type"], s["collectives"]) == (rep, {"all-reduce": 1}), name
      assert s["grad_types"] == [data, data], name
      assert s["vmap_type"] == "P(None" + ", None" * rank + ")", name
      assert s["vmap_collectives"] == {"all-reduce": 1}, name
    else:
      assert (s["type"], s["collectives"]) == (data, {}), name
      assert s["grad_types"] == [rep, data], name
      assert s["vmap_type"] == "P(None, 'data'" + ", None" * (rank - 1) + ")"
      assert s["vmap_collectives"] == {}, name
    assert s["grad_collectives"] == {"all-reduce": 1}, name


def test_explicit_mode_export_and_errors(explicit):
  assert explicit["export"] == {"out_type": "float32[16@data,16,16,8]",
                                "platforms": ["cuda", "tpu"],
                                "sharded_result": True, "convolutions": 1}
  errors = explicit["errors"]
  assert "spatial dims are sharded" in errors["spatial"]
  assert "window dims are sharded" in errors["filter_window"]
  assert "contracted channels" in errors["contracted_channels"]
  assert "contracted batch" in errors["filter_grad_batch"]
  for message in errors.values():
    assert "out_sharding=" in message and "jax.sharding.reshard" in message
