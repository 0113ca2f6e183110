"""Agreement with golden data recorded from TensorFlow 2.21 (tests/golden/):
every raw op, tf.nn and tf.compat.v1.nn function of the family, replayed
through jaxconv (no TF here).  Re-record with tests/golden/record.py."""
import collections
import json
import pathlib

import numpy as np
import pytest

from tests import family
from tests.helpers import assert_close

GOLDEN = np.load(pathlib.Path(__file__).parent / "golden" / "tf_family.npz")
CALLS = [json.loads(str(GOLDEN[f"call_{i}"]))
         for i in range(sum(k.startswith("call_") for k in GOLDEN.files))]
BY_FN = collections.defaultdict(list)
for _call in CALLS:
  BY_FN[_call["fn"]].append(_call)

# At least 60 configurations for the 3-D, depthwise and filter-gradient
# ops, 20 for the others.
MANY = ("3D", "3d", "Depthwise", "depthwise", "Filter", "filter")
# The functions built on Conv2DBackpropInput, which alone takes int32.
INT32 = {"raw_ops.Conv2DBackpropInput", "nn.conv1d_transpose",
         "nn.conv2d_transpose", "nn.conv_transpose",
         "compat.v1.nn.conv2d_backprop_input", "compat.v1.nn.conv2d_transpose",
         "compat.v1.nn.conv1d_transpose", "compat.v1.nn.conv_transpose"}


def _arrays(i):
  prefix = f"{i}."
  return {k[len(prefix):]: GOLDEN[k] for k in GOLDEN.files
          if k.startswith(prefix) and k != f"{i}.out"}


@pytest.mark.parametrize("name", sorted(family.OPS))
def test_every_function_is_recorded_broadly(name):
  calls = BY_FN[name]
  assert len(calls) >= (60 if any(m in name for m in MANY) else 20)
  dtypes = {c["dtype"] for c in calls}
  assert dtypes == set(family.ALL if name in INT32 else family.FLOATS), dtypes
  assert {c["values"] for c in calls} == {"exact", "generic"}
  assert {c["cfg"]["padding"] for c in calls} >= {"SAME", "VALID"}
  if "data_format" in family.function(name).__code__.co_varnames:
    assert {c["cfg"]["data_format"][-1] == "C" for c in calls} == {True,
                                                                  False}
  if "atrous" not in name:  # stride 1 by definition
    assert any(max(c["cfg"]["strides"]) > 1 for c in calls)
  assert any(max(c["cfg"]["dilations"]) > 1 for c in calls)


def test_attribute_classes_across_the_family():
  cfgs = [c["cfg"] for c in CALLS]
  assert any(c["padding"] == "EXPLICIT" for c in cfgs)
  assert any(0 in c["out_backprop_shape"] for c in cfgs)  # empty
  assert any(0 in c["input_sizes"] for c in cfgs)
  assert any(len(c["input_sizes"]) == 2 for c in cfgs)  # spatial-only sizes
  assert {c["path"] for c in CALLS} >= {"core", "xla", "counterpart:core",
                                        "counterpart:xla"}


def test_explicit_pads_that_crop_are_recorded():
  crop_fns = {c["fn"] for c in CALLS if family.crops(c["cfg"])}
  assert {"raw_ops.Conv2DBackpropInput", "raw_ops.Conv2DBackpropFilter",
          "raw_ops.DepthwiseConv2dNativeBackpropInput"} <= crop_fns


# The replay runs in groups: one jax.jit of GROUP calls of one dtype, one
# XLA compile for all of them (a compile costs about as much as the rest of a
# call), on one xdist worker; each call is still its own test.  A group whose
# jit fails replays each call in a jit of its own, so the failure is the
# call's own.
GROUP = 32
GROUPS = []
for _dtype in sorted({c["dtype"] for c in CALLS}):
  _ids = [i for i, c in enumerate(CALLS) if c["dtype"] == _dtype]
  GROUPS += [_ids[k:k + GROUP] for k in range(0, len(_ids), GROUP)]
GROUP_OF = {i: g for g, ids in enumerate(GROUPS) for i in ids}
_REPLAYED = {}


def _replayed(i):
  """Call i through jaxconv, inside its group's one jit."""
  g = GROUP_OF[i]
  if g not in _REPLAYED:
    ids = GROUPS[g]
    try:
      outs = family.run_jitted([(CALLS[j]["fn"], CALLS[j]["kwargs"],
                                 _arrays(j), CALLS[j]["dtype"]) for j in ids])
      _REPLAYED[g] = dict(zip(ids, outs))
    except Exception:  # noqa: BLE001 (each call then fails on its own)
      _REPLAYED[g] = {}
  if i in _REPLAYED[g]:
    return _REPLAYED[g][i]
  call = CALLS[i]
  out, = family.run_jitted([(call["fn"], call["kwargs"], _arrays(i),
                             call["dtype"])])
  return out


@pytest.mark.parametrize("i", [
    pytest.param(i, marks=[pytest.mark.xdist_group(f"golden{GROUP_OF[i]}"),
                           *([pytest.mark.x64] if c["dtype"] == "float64"
                             else [])])
    for i, c in enumerate(CALLS)])
def test_matches_tensorflow(i):
  call = CALLS[i]
  dtype = call["dtype"]
  out = _replayed(i)
  assert str(out.dtype) == dtype
  tf_out = GOLDEN[f"{i}.out"].astype(np.int32 if dtype == "int32"
                                     else np.float64)
  assert_close(out, tf_out, dtype, (call["fn"], call["path"], call["cfg"]))
