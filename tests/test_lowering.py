"""Structure of the emitted StableHLO: the canonical form on GPU/TPU, no
negative convolution padding anywhere, explicit float32 accumulation on CPU."""
import re

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import parameterized
from jax import export

import jaxconv
from jaxconv import lowering
from tests.helpers import (assert_close, convolutions, negative_conv_pads,
                           run_op, run_reference)


def exported_text(platform, dtype=np.float32, fmt="NHWC", strides=(2, 2),
                  dilations=(1, 1), groups=1, pads=None):
  """The StableHLO module exported for one platform and configuration."""
  ci, co, size, k = 2 * groups, 3 * groups, (9, 8), (3, 2)
  def in_format(b, c, spatial):
    return [b, *spatial, c] if fmt == "NHWC" else [b, c, *spatial]
  padding, explicit = "SAME", []
  if pads is not None:
    padding = "EXPLICIT"
    explicit = [v for p in in_format((0, 0), (0, 0), pads) for v in p]
  sizes = in_format(1, ci, size)

  def f(w, dy):
    return jaxconv.raw_ops.Conv2DBackpropInput(
        input_sizes=sizes, filter=w, out_backprop=dy,
        strides=in_format(1, 1, strides), padding=padding,
        explicit_paddings=explicit, data_format=fmt,
        dilations=in_format(1, 1, dilations))

  w = jax.ShapeDtypeStruct((*k, ci // groups, co), dtype)
  dy = jax.eval_shape(
      lambda x, w: jax.lax.conv_general_dilated(
          x, w, strides, pads or "SAME", rhs_dilation=dilations,
          dimension_numbers=(fmt, "HWIO", fmt), feature_group_count=groups),
      jax.ShapeDtypeStruct(tuple(sizes), dtype), w)
  return export.export(jax.jit(f), platforms=[platform])(w, dy).mlir_module()


class CanonicalFormTest(parameterized.TestCase):

  @parameterized.product(
      platform=["cuda", "rocm", "tpu"], fmt=["NHWC", "NCHW"],
      strides=[(1, 1), (2, 3)], dilations=[(1, 1), (2, 1)], groups=[1, 2],
      dtype=[np.float32, jnp.bfloat16])
  def test_gpu_tpu_emit_exactly_the_canonical_form(self, platform, fmt, strides,
                                                   dilations, groups, dtype):
    text = exported_text(platform, dtype, fmt, strides, dilations, groups)
    self.assertNotIn("stablehlo.custom_call", text)
    conv, = convolutions(text)
    # dy and result in the data format; filter [*spatial, o, i] (in/out swapped).
    act = "[b, 0, 1, f]" if fmt == "NHWC" else "[b, f, 0, 1]"
    self.assertIn(f"dim_numbers = {act}x[0, 1, o, i]->{act}", conv)
    # The conv's rhs is produced by a reverse over the spatial dims, directly.
    rhs = re.search(r"stablehlo\.convolution\(%\w+, (%\w+)\)", conv).group(1)
    rev = re.search(rf"{rhs} = stablehlo\.(\w+) .*", text)
    self.assertEqual(rev.group(1), "reverse")
    self.assertIn("dims = [0, 1]", rev.group(0))
    # Window stride 1 (printed only when not all ones), lhs dilation =
    # strides, rhs dilation = dilations, no window reversal.
    self.assertNotIn("stride =", conv)
    self.assertNotIn("reverse = [true", conv)
    if strides != (1, 1):
      self.assertIn(f"lhs_dilate = [{strides[0]}, {strides[1]}]", conv)
    if dilations != (1, 1):
      self.assertIn(f"rhs_dilate = [{dilations[0]}, {dilations[1]}]", conv)
    self.assertIn(f"feature_group_count = {groups} ", conv)
    # Same-dtype convolution: the hardware accumulates in float32.
    dt = "bf16" if dtype == jnp.bfloat16 else "f32"
    self.assertRegex(conv, rf"-> tensor<[0-9x]+x{dt}>")

  @parameterized.parameters("cpu", "cuda", "tpu")
  def test_large_explicit_pads_never_reach_the_convolution(self, platform):
    # pads (5, 4) and (0, 6) exceed ek - 1 = 2 and 1: a crop, as a negative
    # edge pad after the convolution (CPU: its canonical strategy, forced).
    with lowering.force_strategy("canonical"):
      text = exported_text(platform, pads=[(5, 4), (0, 6)])
    conv, = convolutions(text)
    self.assertEqual(negative_conv_pads(text), [])
    self.assertRegex(text, r"stablehlo\.pad .*low = \[0, -\d+, 0, 0\]")

  def test_cpu_accumulates_half_precision_in_float32(self):
    text = exported_text("cpu", jnp.bfloat16)  # GEMM + col2im on CPU
    self.assertEqual(convolutions(text), [])
    self.assertRegex(text, r"stablehlo\.dot_general .*-> tensor<[0-9x]+xf32>")
    self.assertRegex(text, r"stablehlo\.convert .*f32>\) -> tensor<[0-9x]+xbf16>")
    with lowering.force_strategy("canonical"):
      conv, = convolutions(exported_text("cpu", jnp.bfloat16))
    self.assertRegex(conv, r"xbf16>\) -> tensor<[0-9x]+xf32>")

  def test_large_explicit_pads_values(self):
    # The crop path agrees with the reference, float32, several channels.
    rng = np.random.default_rng(3)
    cfg = dict(input_sizes=[2, 9, 8, 6], strides=[1, 2, 1, 1], padding="EXPLICIT",
               explicit_paddings=[0, 0, 5, 4, 0, 6, 0, 0], data_format="NHWC",
               dilations=[1, 1, 1, 1], dtype="float32")
    w = rng.standard_normal((3, 2, 6, 5)).astype(np.float32)
    dy = rng.standard_normal((2, 8, 13, 5)).astype(np.float32)
    assert_close(run_op(cfg, w, dy), run_reference(cfg, w, dy), "float32")

  @parameterized.parameters("cuda", "tpu")
  def test_empty_operands_export_zeros(self, platform):
    # The canonical lowering's own zeros path (CPU takes another): no
    # convolution, a zero result of the right shape.
    def f(w, dy):
      return jaxconv.conv2d_backprop_input([2, 5, 0, 3], w, dy, [1, 1, 1, 1],
                                           "SAME")
    w = jax.ShapeDtypeStruct((3, 3, 3, 4), np.float32)
    dy = jax.ShapeDtypeStruct((2, 5, 0, 4), np.float32)
    text = export.export(jax.jit(f), platforms=[platform])(w, dy).mlir_module()
    self.assertEqual(convolutions(text), [])
    self.assertRegex(text, r"stablehlo.constant dense<0.000000e\+00>")
    self.assertIn("-> (tensor<2x5x0x3xf32>", text)

