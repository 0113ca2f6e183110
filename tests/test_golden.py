"""Agreement with golden data recorded from TensorFlow 2.21 (tests/golden/)."""
import json
import pathlib

import numpy as np
import pytest

from tests.helpers import assert_close, run_op

GOLDEN = np.load(pathlib.Path(__file__).parent / "golden" /
                 "tf_conv2d_backprop_input.npz")
COUNT = sum(k.startswith("cfg_") for k in GOLDEN.files)


def test_golden_set_is_broad():
  cfgs = [json.loads(str(GOLDEN[f"cfg_{i}"])) for i in range(COUNT)]
  assert COUNT >= 200
  assert {c["dtype"] for c in cfgs} == {"float16", "bfloat16", "float32",
                                        "float64", "int32"}
  assert {c["padding"] for c in cfgs} == {"SAME", "VALID", "EXPLICIT"}
  assert {c["data_format"] for c in cfgs} == {"NHWC", "NCHW"}
  assert any(len(c["input_sizes"]) == 2 for c in cfgs)
  assert any(0 in c["out_backprop_shape"] for c in cfgs)
  assert any(len(c["input_sizes"]) == 4 and c["filter_shape"][2] !=
             c["input_sizes"][3 if c["data_format"] == "NHWC" else 1]
             for c in cfgs)  # grouped / depthwise


@pytest.mark.parametrize("i", range(COUNT))
def test_matches_tensorflow(i):
  cfg = json.loads(str(GOLDEN[f"cfg_{i}"]))
  tf_out = GOLDEN[f"out_{i}"].astype(np.float64 if cfg["dtype"] != "int32"
                                     else np.int32)
  out = run_op(cfg, GOLDEN[f"filter_{i}"], GOLDEN[f"dy_{i}"])
  assert str(out.dtype) == cfg["dtype"]
  assert_close(out, tf_out, cfg["dtype"], (cfg, str(GOLDEN[f"path_{i}"])))
