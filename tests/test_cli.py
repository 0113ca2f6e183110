"""The `jaxconv` command line: default job, flags, --help, errors, artifacts."""
import re
import subprocess
import sys

import numpy as np
import pytest
from jax import export

from jaxconv import cli, lowering, reference


def run(capsys, *argv):
  try:
    code = cli.main(list(argv))
  except SystemExit as e:
    code = e.code
  out, err = capsys.readouterr()
  return code, out, err


def test_default_job_as_a_module():
  # The README's first command: no flags at all.
  proc = subprocess.run([sys.executable, "-m", "jaxconv"], capture_output=True,
                        text=True, timeout=300, check=True)
  assert proc.stdout.startswith("#loc") and "func.func public @main" in proc.stdout
  # The U-Net decoder layer, in the portable form (also for this CPU).
  assert "-> (tensor<8x64x64x64xf32>" in proc.stdout
  assert "exported form: portable" in proc.stderr
  assert "lhs_dilate = [2, 2]" in proc.stdout
  assert "stablehlo.dot_general" not in proc.stdout


def test_printed_strategy_is_the_one_lowered(capsys):
  # 16 images of 64x64 64<-128: 36 MiB of GEMM columns -> sub-pixel
  # convolutions; with a symbolic batch the lowering counts one image.
  layer = ("export", "--input-sizes", "16,64,64,64", "--filter-sizes",
           "3,3,64,128", "--strides", "1,2,2,1", "--cpu-strategy", "auto")
  for extra, name, emitted in (((), "subpixel", "stablehlo.convolution"),
                               (("--batch", "b"), "gemm_col2im",
                                "stablehlo.dot_general")):
    with lowering.force_strategy() as lowered:
      code, out, err = run(capsys, *layer, *extra)
    assert code == 0
    assert f"cpu lowering strategy (backprop_input): {name} (" in err
    assert lowered.backprop_input == [name] and emitted in out


@pytest.mark.parametrize("op, args, name", [
    ("Conv2DBackpropFilter", (), "shift_gemm"),  # the U-Net layer, s2 k3
    ("Conv2DBackpropFilter", ("--strides", "1,1,1,1", "--input-sizes",
                              "2,14,14,64", "--filter-sizes", "3,3,64,64"),
     "eigen_rows"),
    ("Conv3DBackpropFilterV2", ("--strides", "1,1,1,1,1"), "depth_taps"),
    ("DepthwiseConv2dNativeBackpropFilter", (), "depthwise"),
])
def test_filter_gradients_report_their_strategy(capsys, op, args, name):
  """The filter-gradient ops' CPU strategies are named, printed and forced
  like the op's."""
  with lowering.force_strategy() as lowered:
    code, _, err = run(capsys, "export", "--op", op, "--cpu-strategy", "auto",
                       *args)
  assert code == 0
  assert f"cpu lowering strategy (backprop_filter): {name} (" in err
  assert lowered.backprop_filter == [name]
  code, _, err = run(capsys, "export", "--op", op, "--cpu-strategy",
                     "standard", *args)
  assert code == 0 and "backprop_filter): standard (forced" in err
  code, _, err = run(capsys, "export", "--op", op, "--cpu-strategy",
                     "subpixel")
  assert code == 2 and "is not a CPU strategy of " + op in err


@pytest.mark.parametrize("dtype, short", [("float16", "f16"),
                                          ("bfloat16", "bf16")])
def test_portable_half_accumulates_in_float32(capsys, dtype, short):
  """The portable artifact states its float32 accumulation: the convolution
  returns float32, rounded once to the operands' dtype."""
  code, out, err = run(capsys, "export", "--dtype", dtype)
  assert code == 0 and "exported form: portable" in err
  conv, = [line for line in out.splitlines() if "stablehlo.convolution" in line]
  assert re.search(r"-> tensor<8x64x64x64xf32>", conv)
  assert re.search(rf"stablehlo.convert %\w+ : \(tensor<8x64x64x64xf32>\) "
                   rf"-> tensor<8x64x64x64x{short}>", out)


@pytest.mark.parametrize("op", cli.OPS)
def test_every_op_exports_the_portable_form(capsys, op):
  code, out, err = run(capsys, "export", "--op", op)
  assert code == 0, err
  assert "exported form: portable" in err and "custom_call" not in out
  conv, = [line for line in out.splitlines() if "stablehlo.convolution" in line]
  args = re.search(r"func.func public @main\((.*?)\) ->", out).group(1)
  names = re.findall(r"(%arg\d+): tensor", args)
  # out_backprop is the op's last tensor argument (a V2/v1 op's shape-only
  # tensor is unused, so the module drops it).
  lhs, rhs = re.search(r"convolution\((%\w+), (%\w+)\)", conv).groups()
  if "Filter" in op:  # out_backprop (the last operand) is the window
    assert rhs == names[-1] and "lhs_dilate" not in conv
  else:  # the reversed kernel over the lhs-dilated out_backprop
    assert lhs == names[-1] and "lhs_dilate = [2, 2" in conv
    assert re.search(rf"{rhs} = stablehlo.reverse", out)


def test_cpu_strategy_is_baked_in_on_request(capsys):
  prefix = "cpu lowering strategy (backprop_input): "
  code, out, err = run(capsys, "export", "--cpu-strategy", "auto")
  assert code == 0 and prefix + "gemm_col2im" in err
  assert "stablehlo.dot_general" in out and "lhs_dilate" not in out
  code, out, err = run(capsys, "export", "--cpu-strategy", "subpixel")
  assert code == 0 and prefix + "subpixel (forced" in err
  assert "lhs_dilate" not in out and "stablehlo.convolution" in out


def test_gpu_export_is_the_canonical_form(capsys):
  code, out, err = run(capsys, "export", "--platforms", "cuda")
  assert code == 0 and "cpu lowering strategy" not in err
  assert "stablehlo.reverse" in out and "lhs_dilate = [2, 2]" in out


def test_flags_named_after_tf_attributes(capsys):
  code, out, _ = run(capsys, "export", "--input-sizes", "2,4,7,7",
                     "--filter-sizes", "3,3,4,6", "--strides", "1,1,2,2",
                     "--padding", "EXPLICIT", "--explicit-paddings",
                     "0,0,0,0,4,1,1,1", "--data-format", "NCHW", "--dilations",
                     "1,1,1,1", "--dtype", "float64", "--platforms", "tpu")
  assert code == 0
  assert "-> (tensor<2x4x7x7xf64>" in out
  assert "[b, f, 0, 1]x[0, 1, o, i]->[b, f, 0, 1]" in out


def test_check_reports_max_error(capsys):
  code, _, err = run(capsys, "export", "--input-sizes", "1,7,7,8",
                     "--filter-sizes", "3,3,8,16", "--check")
  assert code == 0
  err_value = float(err.split("max abs error ")[1].split()[0])
  assert err_value < 1e-4


def test_help_documents_every_flag(capsys):
  code, out, _ = run(capsys, "export", "--help")
  assert code == 0
  for op in cli.OPS:
    assert op in out
  for flag in ("--op", "--cpu-strategy", "--input-sizes", "--filter-sizes",
               "--strides", "--padding",
               "--explicit-paddings", "--data-format", "--dilations", "--dtype",
               "--batch", "--platforms", "--grad", "--format", "--output",
               "--check", "examples:"):
    assert flag in out


@pytest.mark.parametrize("argv, fragment", [
    (["--strides", "1,0,2,1"], "--strides: strides must be >= 1"),
    (["--strides", "x"], "expected comma-separated integers"),
    (["--padding", "FULL"], "--padding: padding must be one of"),
    (["--data-format", "NWHC"], "--data-format: data_format must be one of"),
    (["--input-sizes", "8,64,64"], "--input-sizes: input_sizes must have 4 or 2"),
    (["--filter-sizes", "3,3,64"], "--filter-sizes must have 4 entries"),
    (["--dtype", "complex64"], "--dtype must be one of"),
    (["--platforms", "cpu,gpu"], "--platforms: unknown platform(s) ['gpu']"),
    (["--format", "serialized"], "needs -o/--output"),
    (["--grad", "--dtype", "int32"], "--grad: int32 has no gradient"),
    (["--op", "Conv3DBackpropInputV2", "--dtype", "int32"], "--dtype must be"),
    (["--op", "Conv3DBackpropInputV2", "--strides", "1,2,2,1"],
     "--strides: strides must have 5 entries"),
    (["--op", "Conv2DBackpropFilter", "--filter-sizes", "3,3,0,128"],
     "in_depth"),
    (["--op", "Conv3DBackpropFilterV2", "--padding", "EXPLICIT"],
     "--padding: padding must be one of ('SAME', 'VALID')"),
    (["--op", "Conv2DTranspose"], "invalid choice"),
    (["--bogus"], "unrecognized arguments: --bogus"),
])
def test_bad_flags_give_one_line_errors(capsys, argv, fragment):
  code, out, err = run(capsys, "export", *argv)
  assert code == 2
  lines = [l for l in err.splitlines() if not l.startswith("exporting")]
  assert len(lines) == 1 and fragment in lines[0], err
  assert "Traceback" not in err


def test_serialized_artifact_with_batch_platforms_and_grad(capsys, tmp_path):
  path = tmp_path / "up.bin"
  code, _, _ = run(capsys, "export", "--input-sizes", "16,16", "--filter-sizes",
                   "3,3,4,8", "--batch", "N", "--platforms", "cpu,cuda,rocm,tpu",
                   "--grad", "--format", "serialized", "-o", str(path))
  assert code == 0
  exp = export.deserialize(path.read_bytes())
  assert exp.platforms == ("cpu", "cuda", "rocm", "tpu")
  assert str(exp.in_avals[1].shape[0]) == "N"
  rng = np.random.default_rng(0)
  w, dy, ct = (rng.standard_normal(s).astype(np.float32) for s in
               ((3, 3, 4, 8), (5, 8, 8, 8), (5, 16, 16, 4)))
  out, d_w, d_dy = exp.call(w, dy, ct)
  # Values (the default strides 1,2,2,1, SAME) against the reference.
  geometry = reference.tf_geometry("NHWC", [1, 2, 2, 1], "SAME")
  for got, want in (
      (out, reference.raw_backprop_input([16, 16], w, dy,
                                         strides=[1, 2, 2, 1], padding="SAME")),
      (d_w, reference.backprop_filter(ct, dy, kernel=(3, 3), **geometry)),
      (d_dy, reference.forward(ct, w, **geometry))):
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_text_to_file(capsys, tmp_path):
  path = tmp_path / "up.mlir"
  code, out, err = run(capsys, "export", "-o", str(path))
  assert code == 0 and out == "" and f"wrote {path}" in err
  assert "func.func public @main" in path.read_text()
