"""`jaxconv.onnx`: the family converted by jax2onnx and run in ONNX Runtime,
against TF's golden data (tests/golden/) and the JAX result; symbolic
batch, dtypes, node counts, a training step, Keras's own ONNX export."""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import REQUIRE_EXTRAS, assert_close, require

require("jax2onnx", "onnxruntime", "onnx")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jax2onnx  # noqa: E402
import ml_dtypes  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402

import jaxconv  # noqa: E402
import jaxconv.onnx  # noqa: E402,F401
from tests import family  # noqa: E402
from tests import test_golden as golden  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _session(model):
  options = ort.SessionOptions()
  options.log_severity_level = 3
  return ort.InferenceSession(model.SerializeToString(), options,
                              providers=["CPUExecutionProvider"])


def run_onnx(f, *arrays, inputs=None):
  """f converted by jax2onnx (inputs: its specs, default the arrays'),
  run in ONNX Runtime on `arrays`: (outputs, model)."""
  model = jax2onnx.to_onnx(
      f, inputs or [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in arrays])
  session = _session(model)
  feeds = {}
  for spec, a in zip(session.get_inputs(), arrays):
    if a.dtype == ml_dtypes.bfloat16:  # ORT's numpy bridge lacks bfloat16
      a = ort.OrtValue.ortvalue_from_numpy_with_onnx_type(
          np.ascontiguousarray(a).view(np.uint16), onnx.TensorProto.BFLOAT16)
    feeds[spec.name] = a
  return session.run(None, feeds), model


def ops_of(model):
  return [n.op_type for n in model.graph.node]


# --- the golden replay ------------------------------------------------------


def _tensor_names(kwargs):
  return [v[1:] for v in kwargs.values()
          if isinstance(v, str) and v.startswith("$")]


def _golden_function(call):
  """f(*tensors) calling the call's jaxconv function, and the tensors."""
  names, arrays = _tensor_names(call["kwargs"]), None

  def f(*tensors):
    given = dict(zip(names, tensors))
    kwargs = {k: given.get(v[1:], v) if isinstance(v, str) else v
              for k, v in call["kwargs"].items()}
    return family.function(call["fn"])(
        **family.resolve(kwargs, {}, tensors[0].dtype))
  return f, names


def _crops(cfg) -> bool:
  """Explicit pads larger than the dilated kernel's reach (they crop)."""
  n, pads = len(cfg["strides"]) - 2, cfg["explicit_paddings"]
  if not pads:
    return False
  k = cfg["filter_shape"][:n]
  d = family.spatial(cfg["dilations"], cfg["data_format"])
  pairs = family.spatial([pads[2 * i:2 * i + 2] for i in range(n + 2)],
                         cfg["data_format"])
  return any(max(p) > (kk - 1) * dd for p, kk, dd in zip(pairs, k, d))


def _groups(cfg) -> int:
  sizes = cfg["input_sizes"]
  if len(sizes) != len(cfg["strides"]):
    return 1  # spatial-only sizes
  depth = sizes[-1] if cfg["data_format"][-1] == "C" else sizes[1]
  return depth // cfg["filter_shape"][-2] if cfg["filter_shape"][-2] else 1


def _empty(cfg) -> bool:
  return 0 in cfg["out_backprop_shape"] or 0 in cfg["input_sizes"]


def _selected():
  """A fifth of the float32 golden calls of every function, with every
  crop and empty case; one in 15 float16 ones."""
  chosen, seen = [], {}
  for i, call in enumerate(golden.CALLS):
    k = seen[call["fn"], call["dtype"]] = seen.get(
        (call["fn"], call["dtype"]), -1) + 1
    cfg = call["cfg"]
    if call["dtype"] == "float32" and (k % 5 == 0 or _crops(cfg)
                                       or _empty(cfg)):
      chosen.append(i)
    elif call["dtype"] == "float16" and k % 15 == 0:
      chosen.append(i)
  return chosen


SELECTED = _selected()


def test_the_replay_covers_the_family_broadly():
  calls = [golden.CALLS[i] for i in SELECTED]
  cfgs = [c["cfg"] for c in calls]
  assert len(calls) >= 60
  assert {c["fn"] for c in calls} == set(family.OPS)
  assert {c["padding"] for c in cfgs} == {"SAME", "VALID", "EXPLICIT"}
  assert any(_crops(c) for c in cfgs) and any(_empty(c) for c in cfgs)
  assert any(max(c["strides"]) > 1 for c in cfgs)
  assert any(max(c["dilations"]) > 1 for c in cfgs)
  assert {c["data_format"][-1] == "C" for c in cfgs} == {True, False}
  assert {len(c["strides"]) - 2 for c in cfgs} == {1, 2, 3}
  assert any("Depthwise" in c["fn"] or "depthwise" in c["fn"] for c in calls)
  # Odd sizes (TF's that lax.conv_transpose cannot give) and groups.
  assert any(s % 2 for c in cfgs for s in family.spatial(
      c["input_sizes"], c["data_format"]) if len(c["input_sizes"]) > 2)
  assert any(_groups(c) > 1 for c in cfgs)
  assert {c["dtype"] for c in calls} == {"float32", "float16"}


@pytest.mark.parametrize("i", SELECTED)
def test_onnx_runtime_matches_tensorflow_and_jax(i):
  call, arrays = golden.CALLS[i], golden._arrays(i)
  dtype = call["dtype"]
  f, names = _golden_function(call)
  tensors = [arrays[n].astype(dtype) for n in names]
  (out,), model = run_onnx(f, *tensors)
  context = (call["fn"], call["cfg"])
  assert str(out.dtype) == dtype, context
  assert_close(out, golden.GOLDEN[f"{i}.out"].astype(np.float64), dtype,
               context)
  assert_close(out, np.asarray(f(*tensors)).astype(np.float64), dtype,
               context)
  # One convolution node (an empty result: none, only zeros).
  convs = [op for op in ops_of(model) if op in ("Conv", "ConvTranspose")]
  assert len(convs) == (0 if _empty(call["cfg"]) else 1), ops_of(model)
