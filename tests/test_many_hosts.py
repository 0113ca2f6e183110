"""Multi-controller JAX on this machine: 2 and 4 local processes
(jax.distributed, gloo collectives, coordinator on 127.0.0.1, a free port,
bounded time, killed when a test ends or fails) run the decoder's training
step in every sharding pattern of tests/multihost_main.py, against the
single-process run of the same program on as many devices; and results
larger than this machine, traced and exported for the devices that will
hold them."""
import json
import pathlib
import re
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxconv
from benchmarks import multihost
from jaxconv.lowering import cpu
from tests import multihost_main

# One xdist worker runs them all: the runs below happen once (--dist
# loadgroup, pyproject.toml), not once per worker.
pytestmark = pytest.mark.xdist_group("many_hosts")
DEVICES = 4  # in all, in every layout: the same global program
TIMEOUT_S = 300


def _run(processes: int, patterns, argv_extra=lambda i: ()):
  def argv(i, coordinator):
    distributed = (("--coordinator", coordinator, "--num-processes",
                    str(processes), "--process-id", str(i))
                   if processes > 1 else ())
    return [sys.executable, "-m", "tests.multihost_main", *distributed,
            "--patterns", ",".join(patterns), *argv_extra(i)]
  outs = multihost.launch(argv, processes, DEVICES // processes, TIMEOUT_S)
  return [json.loads(out.strip().splitlines()[-1]) for out in outs]


ALL = tuple(multihost_main.PATTERNS)
TRAINING = ("data_parallel_auto", "data_parallel_explicit",
            "data_parallel_shard_map", "channel_parallel_auto",
            "channel_parallel_explicit", "channel_parallel_shard_map")


@pytest.fixture(scope="module")
def single():
  summary, = _run(1, ALL)
  assert summary["processes"] == 1 and summary["devices"] == DEVICES
  return summary


@pytest.fixture(scope="module")
def two():
  return _run(2, ALL)


@pytest.fixture(scope="module")
def four():
  return _run(4, TRAINING)


def _assert_same_training(got, want, pattern):
  np.testing.assert_allclose(got["losses"], want["losses"], rtol=1e-5,
                             err_msg=pattern)
  for key in ("params", "grads"):
    for layer in want[key]:
      for name in want[key][layer]:
        np.testing.assert_allclose(
            got[key][layer][name], want[key][layer][name], rtol=1e-4,
            atol=1e-6, err_msg=f"{pattern}: {key} of {layer}/{name}")
  # No collective added by running across processes.
  assert got["collectives"] == want["collectives"], pattern


@pytest.mark.parametrize("pattern", TRAINING)
def test_two_processes_train_as_one(two, single, pattern):
  for summary in two:
    assert summary["processes"] == 2 and summary["devices"] == DEVICES
    _assert_same_training(summary[pattern], single[pattern], pattern)


@pytest.mark.parametrize("pattern", TRAINING)
def test_four_processes_train_as_one(four, single, pattern):
  for summary in four:
    assert summary["processes"] == 4 and summary["devices"] == DEVICES
    _assert_same_training(summary[pattern], single[pattern], pattern)


def test_each_process_holds_exactly_its_shards(two, four):
  batch = multihost_main.BATCH_PER_DEVICE * DEVICES
  for run in (two, four):
    share = batch // len(run)
    for summary in run:
      i = summary["process"]
      rows = list(range(i * share, (i + 1) * share))
      auto = summary["data_parallel_auto"]
      assert auto["rows_z"] == rows and auto["rows_out"] == rows
      assert summary["data_parallel_explicit"]["rows_out"] == rows
      assert "data" in summary["data_parallel_explicit"]["out_type"]
  # Channel parallel on a 2 x 2 mesh whose "model" axis spans the
  # processes: each holds its own half of the first layer's output channels.
  for run, column in ((two, lambda i: i), (four, lambda i: i // 2)):
    for summary in run:
      for mode in ("auto", "explicit", "shard_map"):
        held, = summary[f"channel_parallel_{mode}"]["up1_channels_held"]
        j = column(summary["process"])
        assert held == [[8 * j, 8 * j + 8, 1]], (summary["process"], held)


def test_every_process_chooses_the_same_strategies(two, four, single):
  want = single["data_parallel_auto"]["strategies"]
  assert want["backprop_input"] and want["backprop_filter"]
  for summary in (*two, *four):
    assert summary["data_parallel_auto"]["strategies"] == want


def test_vmap_and_export_across_processes(two, single):
  want = single["vmap_and_export"]
  for summary in two:
    got = summary["vmap_and_export"]
    np.testing.assert_allclose(got["ensemble_out_sum"],
                               want["ensemble_out_sum"], rtol=1e-5)
    np.testing.assert_allclose(got["exported_loss"],
                               single["data_parallel_auto"]["losses"][0],
                               rtol=1e-6)
    for layer, leaves in want["exported_params"].items():
      for name, value in leaves.items():
        np.testing.assert_allclose(got["exported_params"][layer][name], value,
                                   rtol=1e-4, atol=1e-6)


def test_every_function_and_its_gradient_across_processes(two, single):
  from tests import family
  want = single["every_function"]
  assert set(want) == set(family.OPS)
  for summary in two:
    for name, result in summary["every_function"].items():
      np.testing.assert_allclose(result["value"], want[name]["value"],
                                 rtol=1e-5, atol=1e-6, err_msg=name)
      for got, expected in zip(result["grads"], want[name]["grads"]):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6,
                                   err_msg=name)


def test_shard_map_gradients_are_summed_over_the_devices(single):
  """A replicated filter inside shard_map varies with the per-device
  out_backprop: its gradient is the sum over devices, as for lax's own
  convolutions (the same step as in Auto mode)."""
  _assert_same_training(single["data_parallel_shard_map"],
                        single["data_parallel_auto"] | {
                            "collectives": single["data_parallel_shard_map"]
                            ["collectives"]}, "shard_map vs Auto")


def test_eager_memory_check_is_per_shard_on_each_process(two, single):
  for summary in (*two, single):
    check = summary["eager_memory_check"]
    assert check["sharded"] == {"bytes": 4 << 20, "shard_bytes": 1 << 20}
    assert "needs 4,194,304 bytes, more than the device has (1,048,576" in \
        check["replicated"]["error"]


def test_a_failing_process_fails_the_run_at_once():
  start = time.monotonic()
  with pytest.raises(RuntimeError, match=r"process \d of 2 exited") as error:
    _run(2, ("data_parallel_auto",),
         argv_extra=lambda i: ("--patterns", "no_such_pattern") if i else ())
  assert "KeyError: 'no_such_pattern'" in str(error.value)
  # Process 0 would wait for process 1 in a collective until its timeout.
  assert time.monotonic() - start < 60


# --- results larger than this machine, for the devices that will hold them --

FORTY_GIB = [40, 512, 512, 1024]  # float32: 42,949,672,960 bytes


def _forty_gib_layer():
  w = jax.ShapeDtypeStruct((3, 3, 1024, 64), jnp.float32)
  dy = jax.ShapeDtypeStruct((40, 256, 256, 64), jnp.float32)
  f = jax.jit(lambda w, dy: jaxconv.conv2d_backprop_input(
      FORTY_GIB, w, dy, [1, 2, 2, 1], "SAME"))
  return f, w, dy


def test_a_40_gib_result_traces_and_exports_for_accelerators():
  f, w, dy = _forty_gib_layer()
  out = jax.eval_shape(f, w, dy)
  assert out.shape == tuple(FORTY_GIB) and out.size * 4 == 40 << 30
  for platform in ("cuda", "tpu"):
    exported = jax.export.export(f, platforms=[platform])(w, dy)
    assert exported.out_avals[0].shape == tuple(FORTY_GIB)
    assert "stablehlo.convolution" in exported.mlir_module()
    assert "custom_call" not in exported.mlir_module()
  grads = jax.eval_shape(jax.grad(lambda w, dy: f(w, dy).sum(), (0, 1)), w,
                         dy)
  assert [g.shape for g in grads] == [w.shape, dy.shape]


def test_a_result_no_buffer_can_describe_is_refused_at_trace_time():
  w = jax.ShapeDtypeStruct((1, 1, 1, 1), jnp.float32)
  dy = jax.ShapeDtypeStruct((1, 1, 1, 1), jnp.float32)
  with pytest.raises(ValueError, match="more than any device has"):
    jax.eval_shape(lambda w, dy: jaxconv.conv2d_backprop_input(
        [1, 2**31 - 1, 2**31 - 1, 1], w, dy, [1, 2**31 - 1, 2**31 - 1, 1],
        "VALID"), w, dy)


def test_cpu_strategies_are_chosen_for_one_devices_shard(single, two):
  """A batch of 16 over 4 devices lowers as a batch of 4 (the strategies
  weigh one device's work), in Auto and Explicit mode and in shard_map, and
  the same on every process; a replicated batch as 16."""
  for summary in (single, *two):
    chosen = summary["strategy_per_device"]
    assert chosen["unsharded 4"] != chosen["unsharded 16"]  # the premise
    for key in ("auto 16 over 4", "shard_map 16 over 4",
                "explicit 16 over 4"):
      assert chosen[key] == chosen["unsharded 4"], key
    assert chosen["explicit 16 replicated"] == chosen["unsharded 16"]
    if cpu.onednn.available():
      # The native kernels run where a device's shard is what they see.
      native = chosen["native"]
      onednn = {p: ["onednn"] * len(names)
                for p, names in chosen["unsharded 4"].items()}
      assert native["unsharded 4"] == native["shard_map 16 over 4"] == onednn
      for key in ("auto 16 over 4", "explicit 16 over 4",
                  "explicit 16 replicated"):
        assert "onednn" not in str(native[key]), key


def test_readme_two_process_example_runs(tmp_path):
  text = (pathlib.Path(__file__).resolve().parents[1] / "README.md"
          ).read_text()
  block, = re.findall(r"```python\n(# many_hosts.py.*?)```", text, re.S)
  script = tmp_path / "many_hosts.py"
  script.write_text(block)
  outs = multihost.launch(
      lambda i, coordinator: [sys.executable, str(script), coordinator,
                              str(i)], 2, 4, TIMEOUT_S)
  lines = [out.strip().splitlines()[-1].split() for out in outs]
  assert [line[0] for line in lines] == ["0", "1"]
  assert lines[0][1] == lines[1][1]  # the same loss on both processes
  rng = np.random.default_rng(0)  # the example's operands, on one device
  w = rng.standard_normal((3, 3, 64, 128)).astype(np.float32)
  dy = rng.standard_normal((16, 32, 32, 128)).astype(np.float32)
  x = jaxconv.conv2d_backprop_input([16, 64, 64, 64], w, dy, [1, 2, 2, 1],
                                    "SAME")
  want = np.mean(np.asarray(x, np.float64) ** 2)  # float32 sums of 4M terms
  np.testing.assert_allclose(float(lines[0][1]), want, rtol=2e-4)
  assert all(line[2:] == ["(3,", "3,", "64,", "128)", "4"] for line in lines)
