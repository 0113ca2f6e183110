"""Every validation rule: bad input gets ValueError/TypeError naming the argument.

Cases marked "TF crash" abort or kill TensorFlow 2.21's process (see
../shared/notes/tf-semantics.md); here they must be clean Python errors.
"""
import re

import jax
import numpy as np
import pytest
from absl.testing import parameterized

import jaxconv
from jaxconv import lowering

GOOD = dict(input_sizes=[2, 8, 8, 3], filter=np.ones((3, 3, 3, 4), np.float32),
            out_backprop=np.ones((2, 4, 4, 4), np.float32), strides=[1, 2, 2, 1],
            padding="SAME", explicit_paddings=[], data_format="NHWC",
            dilations=[1, 1, 1, 1])


def raw(**overrides):
  return jaxconv.raw_ops.Conv2DBackpropInput(**{**GOOD, **overrides})


class RawOpValidationTest(parameterized.TestCase):

  def test_good_call_works(self):
    self.assertEqual(raw().shape, (2, 8, 8, 3))

  @parameterized.named_parameters(
      # input_sizes
      ("input_sizes_3_entries_tf_crash", dict(input_sizes=[2, 8, 8]),
       ValueError, r"input_sizes must have 4 or 2 entries, got 3"),
      ("input_sizes_negative_tf_crash", dict(input_sizes=[2, -8, 8, 3]),
       ValueError, r"input_sizes entries must be in \[0, 2147483647\].*-8"),
      ("input_sizes_beyond_int32", dict(input_sizes=[2, 2**31, 8, 3]),
       ValueError, r"input_sizes.*2147483648"),
      ("input_sizes_2d", dict(input_sizes=np.ones((2, 2), np.int32)),
       ValueError, r"input_sizes shape must be rank 1 but is rank 2 "
       r"\(shape \(2, 2\)\)"),
      ("input_sizes_float", dict(input_sizes=[2, 8.0, 8, 3]),
       TypeError, r"input_sizes must contain integers, got 8.0"),
      ("input_sizes_string", dict(input_sizes="2,8,8,3"),
       TypeError, r"input_sizes"),
      ("input_sizes_batch_mismatch", dict(input_sizes=[3, 8, 8, 3]),
       ValueError, r"input and out_backprop must have the same batch size, input "
                   r"batch: 3 outbackprop batch: 2 batch_dim: 0 \(input_sizes "
                   r"\[3, 8, 8, 3\]\)$"),
      # strides
      ("strides_3_entries_tf_crash", dict(strides=[1, 2, 2]),
       ValueError, r"strides must have 4 entries.*got 3: \[1, 2, 2\]"),
      ("strides_zero_tf_crash", dict(strides=[1, 0, 2, 1]),
       ValueError, r"strides must be >= 1.*\[1, 0, 2, 1\]"),
      ("strides_negative", dict(strides=[1, -1, 2, 1]),
       ValueError, r"strides must be >= 1"),
      ("strides_batch", dict(strides=[2, 2, 2, 1]),
       ValueError, r"strides.*batch and depth.*\[2, 2, 2, 1\]"),
      ("strides_depth", dict(strides=[1, 2, 2, 2]),
       ValueError, r"strides.*batch and depth"),
      ("strides_float", dict(strides=[1, 2.0, 2, 1]),
       TypeError, r"strides must contain integers, got 2.0"),
      ("strides_not_a_list", dict(strides=2),
       TypeError, r"strides must be a list of integers, got 2"),
      ("strides_bool", dict(strides=[1, True, 2, 1]),
       TypeError, r"strides must contain integers, got True"),
      ("strides_string_entry", dict(strides=[1, "2", 2, 1]),
       TypeError, r"strides must contain integers, got '2' \(str\)$"),
      ("strides_2d_array", dict(strides=np.ones((2, 2), np.int64)),
       ValueError, r"strides must be 1-dimensional, got shape \(2, 2\)$"),
      # dilations
      ("dilations_length", dict(dilations=[1, 1]),
       ValueError, r"dilations must have 4 entries"),
      ("dilations_zero", dict(dilations=[1, 0, 1, 1]),
       ValueError, r"dilations must be >= 1"),
      ("dilations_depth", dict(dilations=[1, 1, 1, 2]),
       ValueError, r"dilations.*batch and depth"),
      # padding
      ("padding_unknown", dict(padding="FULL"),
       ValueError, r"padding must be one of .*'FULL'"),
      ("padding_not_string", dict(padding=3),
       ValueError, r"padding must be one of"),
      ("explicit_paddings_without_explicit", dict(explicit_paddings=[0] * 8),
       ValueError, r"explicit_paddings attribute must be empty"),
      ("explicit_paddings_length",
       dict(padding="EXPLICIT", explicit_paddings=[0, 0, 1, 1]),
       ValueError, r"explicit_paddings attribute must contain 8 values, but got: 4"),
      ("explicit_paddings_not_ints",
       dict(padding="EXPLICIT", explicit_paddings=["0"] * 8),
       TypeError, r"explicit_paddings must contain integers, got '0'"),
      ("explicit_paddings_negative",
       dict(padding="EXPLICIT", explicit_paddings=[0, 0, -1, 1, 1, 1, 0, 0]),
       ValueError, r"All elements of explicit_paddings must be nonnegative"),
      ("explicit_paddings_batch",
       dict(padding="EXPLICIT", explicit_paddings=[1, 0, 1, 1, 1, 1, 0, 0]),
       ValueError, r"Nonzero explicit padding in the batch or depth"),
      ("explicit_paddings_depth",
       dict(padding="EXPLICIT", explicit_paddings=[0, 0, 1, 1, 1, 1, 0, 1]),
       ValueError, r"Nonzero explicit padding in the batch or depth"),
      # data_format
      ("data_format_unknown", dict(data_format="NWHC"),
       ValueError, r"data_format must be one of \('NHWC', 'NCHW'\), got 'NWHC'"),
      # operands
      ("filter_rank", dict(filter=np.ones((3, 3, 3), np.float32)),
       ValueError, r"filter must be 4-dimensional, got shape \(3, 3, 3\)"),
      ("out_backprop_rank", dict(out_backprop=np.ones((2, 4, 4), np.float32)),
       ValueError, r"out_backprop must be 4-dimensional"),
      ("dtype_mismatch", dict(out_backprop=np.ones((2, 4, 4, 4), np.float64)),
       TypeError, r"filter and out_backprop must have the same dtype, got float32 and "
                   r"float64"),
      ("dtype_unsupported", dict(filter=np.ones((3, 3, 3, 4), np.complex64)),
       TypeError, r"filter has dtype complex64"),
      ("dtype_int64", dict(filter=np.ones((3, 3, 3, 4), np.int64),
                           out_backprop=np.ones((2, 4, 4, 4), np.int64)),
       TypeError, r"filter has dtype int64"),
      ("dtype_bool", dict(filter=np.ones((3, 3, 3, 4), bool)),
       TypeError, r"filter has dtype bool"),
      ("operand_strings", dict(filter=[["a"]]),
       TypeError, r"filter has dtype <U1"),
      ("filter_depth_zero_tf_crash", dict(filter=np.ones((3, 3, 0, 4), np.float32)),
       ValueError, r"filter in_depth.*must be positive"),
      ("depth_not_divisible", dict(filter=np.ones((3, 3, 2, 4), np.float32)),
       ValueError, r"input depth must be evenly divisible by filter depth: "
                   r"input depth 3, filter depth 2"),
      ("out_depth_mismatch", dict(filter=np.ones((3, 3, 3, 5), np.float32)),
       ValueError, r"filter and out_backprop must have the same out_depth: filter "
                   r"out_depth 5, out_backprop depth 4"),
      ("out_depth_not_divisible_by_groups",
       dict(input_sizes=[2, 8, 8, 3], filter=np.ones((3, 3, 1, 4), np.float32)),
       ValueError, r"filter out_depth 4 must be divisible by the number of "
                   r"groups 3"),
      ("negative_output_size",
       dict(input_sizes=[2, 2, 8, 3], padding="VALID",
            filter=np.ones((5, 3, 3, 4), np.float32), strides=[1, 1, 2, 1]),
       ValueError, r"Computed output size would be negative: -2 \[input_size: "
                   r"2, effective_filter_size: 5, stride: 1\]"),
      ("out_backprop_size_mismatch",
       dict(out_backprop=np.ones((2, 5, 4, 4), np.float32)),
       ValueError, r"Size of out_backprop doesn't match computed: actual = 5, "
                   r"computed = 4 spatial_dim: 1 input: 8 filter: 3 output: 5 "
                   r"stride: 2 dilation: 1"),
      ("use_cudnn_not_bool", dict(use_cudnn_on_gpu="yes"),
       TypeError, r"use_cudnn_on_gpu must be a bool"),
  )
  def test_rejects(self, overrides, error, pattern):
    with self.assertRaises(error) as caught:
      raw(**overrides)
    # From the message's first word: the wording is TF's (or says the fix).
    self.assertRegex(str(caught.exception), "^" + pattern)

  def test_symbolic_batch_mismatch_says_what_to_do(self):
    b, = jax.export.symbolic_shape("b")
    with self.assertRaisesRegex(ValueError, "^" + re.escape(
        "input and out_backprop must have the same batch size, input batch: 2 "
        "outbackprop batch: b batch_dim: 0 (input_sizes [2, 8, 8, 3]) (with a "
        "symbolic batch, put the same dimension in input_sizes[0] or give "
        "2-entry input_sizes)") + "$"):
      jax.export.export(jax.jit(lambda dy: raw(out_backprop=dy)))(
          jax.ShapeDtypeStruct((b, 4, 4, 4), np.float32))
    # The symbolic batch in the sizes (a V2 op's input), dy's concrete.
    with self.assertRaisesRegex(ValueError, re.escape(
        "outbackprop batch: 2 batch_dim: 0 (input.shape [b, 8, 8, 3]) (with a "
        "symbolic batch") + ".*input.shape"):
      jax.export.export(jax.jit(lambda x: jaxconv.raw_ops.Conv2DBackpropFilter(
          input=x, filter_sizes=[3, 3, 3, 4], out_backprop=GOOD["out_backprop"],
          strides=GOOD["strides"], padding="SAME")))(
              jax.ShapeDtypeStruct((b, 8, 8, 3), np.float32))

  def test_window_attributes_as_arrays(self):
    # TF takes strides/dilations/explicit_paddings as 1-D arrays too.
    out = raw(strides=np.array([1, 2, 2, 1]), dilations=np.ones(4, np.int32),
              padding="EXPLICIT", explicit_paddings=np.array([0, 0, 0, 1, 0, 1,
                                                              0, 0]))
    np.testing.assert_array_equal(out, raw())  # SAME's pads, as lists

  def test_traced_input_sizes_explains_why(self):
    f = jax.jit(lambda sizes: raw(input_sizes=sizes))
    with self.assertRaisesRegex(TypeError, "^" + re.escape(
        "input_sizes must be static (a list, tuple, NumPy array or concrete "
        "array): XLA needs the result shape at compile time, but got a traced "
        "value ") + ".*" + re.escape(
            ". Pass it as a Python list, or mark it static (e.g. "
            "jax.jit(..., static_argnames=...)).") + "$"):
      f(np.array([2, 8, 8, 3]))

  def test_concrete_jax_array_input_sizes_is_fine(self):
    self.assertEqual(raw(input_sizes=jax.numpy.array([2, 8, 8, 3])).shape,
                     (2, 8, 8, 3))

  def test_stride_zero_under_jit_tf_crash(self):
    # TF kills the process with a division by zero inside tf.function.
    with self.assertRaisesRegex(ValueError, r"strides must be >= 1"):
      jax.jit(lambda w, dy: raw(filter=w, out_backprop=dy, strides=[1, 0, 0, 1])
              )(GOOD["filter"], GOOD["out_backprop"])


class CompatWrapperValidationTest(parameterized.TestCase):

  def call(self, **overrides):
    args = dict(input_sizes=GOOD["input_sizes"], filter=GOOD["filter"],
                out_backprop=GOOD["out_backprop"], strides=GOOD["strides"],
                padding="SAME")
    args.update(overrides)
    return jaxconv.conv2d_backprop_input(**args)

  def test_explicit_string_rejected_as_tf_does(self):
    with self.assertRaisesRegex(ValueError, "^" + re.escape(  # TF's words
        "'EXPLICIT' is not a valid value for `padding`. To use explicit "
        "padding, `padding` must be a list.") + "$"):
      self.call(padding="EXPLICIT")

  def test_pairs_mean_explicit(self):
    out = self.call(padding=[[0, 0], [0, 1], [0, 1], [0, 0]])  # SAME's pads
    np.testing.assert_array_equal(out, self.call(padding="SAME"))

  @parameterized.parameters(
      ([[0, 0], [1, 1, 1], [1, 1], [0, 0]],
       "When `padding` is a list, each element of `padding` must be a "
       "list/tuple of size 2. Received: padding=[[0, 0], [1, 1, 1], [1, 1], "
       "[0, 0]] with element at index 1: [1, 1, 1]"),
      ([[0, 0], 1, [1, 1], [0, 0]],
       "When `padding` is a list, each element of `padding` must be a "
       "list/tuple of size 2. Received: padding=[[0, 0], 1, [1, 1], [0, 0]] "
       "with element at index 1: 1"),
      ([[0, 0], [1, 1], [1, 1]],
       "When padding is a list, it must be of size 4. Received: padding="
       "[[0, 0], [1, 1], [1, 1]] of size 3"))
  def test_malformed_pairs(self, padding, message):
    with self.assertRaisesRegex(ValueError, "^" + re.escape(message) + "$"):
      self.call(padding=padding)

  def test_both_filter_and_filters(self):
    with self.assertRaisesRegex(ValueError, "^" + re.escape(
        "Cannot specify both 'filters' and 'filter': give exactly one of "
        "filter and filters (an alias), got both") + "$"):
      self.call(filters=GOOD["filter"])

  def test_neither_filter_nor_filters(self):
    with self.assertRaisesRegex(ValueError, "^" + re.escape(
        "give exactly one of filter and filters (an alias), got neither") + "$"):
      self.call(filter=None)

  def test_missing_strides(self):
    with self.assertRaisesRegex(ValueError, r"missing required argument\(s\): strides"):
      self.call(strides=None)


@pytest.mark.parametrize("fields", [
    dict(input_spatial=(), strides=(), dilations=(), padding=()),
    dict(input_spatial=(4,) * 4, strides=(1,) * 4, dilations=(1,) * 4,
         padding=((0, 0),) * 4),
    dict(input_spatial=(4, 4), strides=(1,), dilations=(1,), padding=((0, 0),)),
    dict(input_spatial=(4,), strides=(1,), dilations=(1, 1), padding=((0, 0),)),
    dict(input_spatial=(4,), strides=(1,), dilations=(1,), padding=()),
])
def test_conv_spec_rejects_inconsistent_ranks(fields):
  with pytest.raises(ValueError, match="inconsistent spatial ranks"):
    lowering.ConvSpec(**fields)


# --- TF's API, as its own gradient functions and tools call it -------------


def _dense_call(**overrides):
  rng = np.random.default_rng(0)
  kw = dict(input_sizes=[2, 7, 7, 4], filter=rng.standard_normal(
      (3, 3, 4, 6)).astype(np.float32), out_backprop=rng.standard_normal(
          (2, 4, 4, 6)).astype(np.float32), strides=[1, 2, 2, 1],
            padding="SAME", data_format="NHWC")
  kw.update(overrides)
  return jaxconv.raw_ops.Conv2DBackpropInput(**kw)


def test_string_attributes_may_be_bytes():
  """TF's gradient functions and tf.raw_ops pass `padding=b"VALID"`."""
  for padding, size in (("SAME", 4), ("VALID", 3)):  # 7 -> 4 or 3, s2 k3
    dy = np.random.default_rng(2).standard_normal(
        (2, size, size, 6)).astype(np.float32)
    want = _dense_call(padding=padding, out_backprop=dy)
    got = _dense_call(padding=padding.encode(), data_format=b"NHWC",
                      out_backprop=dy)
    np.testing.assert_array_equal(got, want)
  x, dy = np.ones((2, 7, 7, 4), np.float32), np.ones((2, 4, 4, 6), np.float32)
  np.testing.assert_array_equal(
      jaxconv.compat.v1.nn.conv2d_backprop_filter(
          x, [3, 3, 4, 6], dy, [1, 2, 2, 1], b"SAME", data_format=b"NHWC"),
      jaxconv.compat.v1.nn.conv2d_backprop_filter(
          x, [3, 3, 4, 6], dy, [1, 2, 2, 1], "SAME"))
  with pytest.raises(ValueError, match=r"padding must be one of .*b?'same'"):
    _dense_call(padding=b"same")
  with pytest.raises(ValueError, match=r"padding must be an ASCII string"):
    _dense_call(padding=b"\xff")


@pytest.mark.parametrize("sizes, rank", [(np.int32(3), 0),
                                         (np.ones((1, 4), np.int32), 2)])
def test_sizes_of_the_wrong_rank_in_tf_wording(sizes, rank):
  with pytest.raises(ValueError, match=rf"\Afilter_sizes shape must be rank 1 "
                     rf"but is rank {rank} "):
    jaxconv.raw_ops.Conv2DBackpropFilter(
        input=np.ones((1, 4, 4, 2), np.float32), filter_sizes=sizes,
        out_backprop=np.ones((1, 4, 4, 2), np.float32), strides=[1] * 4,
        padding="SAME")


def test_conv2d_backprop_input_v2_takes_int32():
  """Its op definition lists int32, as Conv2DBackpropInput's does."""
  rng = np.random.default_rng(1)
  w = rng.integers(-4, 5, (3, 3, 4, 6)).astype(np.int32)
  dy = rng.integers(-4, 5, (2, 4, 4, 6)).astype(np.int32)
  got = jaxconv.raw_ops.Conv2DBackpropInputV2(
      input=np.zeros((2, 7, 7, 4), np.int32), filter=w, out_backprop=dy,
      strides=[1, 2, 2, 1], padding="SAME")
  assert got.dtype == np.int32
  np.testing.assert_array_equal(got, _dense_call(filter=w, out_backprop=dy))
  with pytest.raises(TypeError, match="input has dtype int32"):  # floats
    jaxconv.raw_ops.Conv2DBackpropFilterV2(
        input=np.zeros((2, 7, 7, 4), np.int32), filter=w, out_backprop=dy,
        strides=[1, 2, 2, 1], padding="SAME")
