"""Sizes and pads of lowering/geometry.py against independent counts: the
forward conv's windows counted one by one, PyTorch's and Keras's own
transposed-conv layers."""
import itertools

import pytest

from jaxconv.lowering import geometry


def _window_starts(size, k, stride, dilation, pad):
  """The forward conv's window starts over the padded input, counted."""
  span, padded = (k - 1) * dilation + 1, size + pad[0] + pad[1]
  return [start for start in range(0, padded, stride)
          if start + span <= padded]


@pytest.mark.parametrize("size, k, stride, dilation, pad, want", [
    (5, 3, 100, 1, (0, 0), 3),         # one window, 2 positions to spare
    (5, 3, 3, 1, (0, 0), 3),
    (5, 3, 2, 1, (0, 0), 2),           # two windows: unchanged
    (5, 3, 10, 1, (1, 2), 6),          # the pads add to the slack
    (5, 3, 2**31 - 1, 2, (0, 0), 1),   # the dilated kernel spans the input
    (9, 2, 4, 3, (2, 0), 4),           # two windows: unchanged
])
def test_equivalent_stride_is_the_smallest_with_the_same_windows(
    size, k, stride, dilation, pad, want):
  """Huge strides become the smallest with the same windows (the sub-pixel
  strategies loop over stride phases)."""
  got = geometry.equivalent_stride(size, k, stride, dilation, pad)
  assert got == want
  windows = _window_starts(size, k, stride, dilation, pad)
  assert _window_starts(size, k, got, dilation, pad) == windows
  assert all(_window_starts(size, k, s, dilation, pad) != windows
             for s in range(1, got))


def _windows(n, k, stride, dilation, before, after):
  return len(_window_starts(n, k, stride, dilation, (before, after)))


GRID = list(itertools.product((1, 2, 5), (1, 2, 3), (1, 2, 3), (1, 2)))


@pytest.mark.parametrize("padding", ["SAME", "VALID"])
def test_transposed_output_size_is_keras_s(padding):
  import keras
  for size, k, stride, dilation in GRID:
    for output_padding in (None, *range(stride)):
      if dilation > 1 and stride > 1:
        continue  # Keras refuses the two together
      layer = keras.layers.Conv1DTranspose(
          1, k, strides=stride, padding=padding.lower(),
          output_padding=output_padding, dilation_rate=dilation)
      want = layer.compute_output_shape((1, size, 1))[1]
      got = geometry.transposed_output_size(size, k, stride, dilation,
                                            padding, output_padding)
      assert got == want, (size, k, stride, dilation, output_padding)


def test_transposed_output_size_is_pytorch_s():
  import torch
  for size, k, stride, dilation in GRID:
    for pad, output_padding in itertools.product(
        range(k * dilation), range(max(stride, dilation))):
      layer = torch.nn.ConvTranspose1d(1, 1, k, stride, pad, output_padding,
                                       dilation=dilation)
      try:
        want = layer(torch.zeros(1, 1, size)).shape[-1]
      except RuntimeError:  # PyTorch: no positions left
        continue
      got = geometry.transposed_output_size(size, k, stride, dilation,
                                            (pad, pad), output_padding)
      assert got == want, (size, k, stride, dilation, pad, output_padding)


def test_fitting_padding_is_the_smallest_after_pad_tf_accepts():
  """For the output sizes PyTorch's layers accept (low + [0, max(stride,
  dilation))): the smallest after pad with which the forward conv over
  the computed positions has `size` windows; where even 0 gives too many
  over `out_size`, only the first positions are computed."""
  checked = set()
  for (size, k, stride, dilation), before, after in itertools.product(
      GRID, range(3), range(3)):
    low = (size - 1) * stride + (k - 1) * dilation + 1 - before - after
    for out_size in range(max(low, 1), low + max(stride, dilation)):
      fit, computed = geometry.fitting_padding(out_size, size, k, stride,
                                               dilation, before)
      assert fit >= 0 and 0 <= computed <= out_size  # 0: no taps at all
      assert _windows(computed, k, stride, dilation, before, fit) == size
      if fit:
        assert _windows(computed, k, stride, dilation, before,
                        fit - 1) != size
      if computed < out_size:
        assert fit == 0 and _windows(computed + 1, k, stride, dilation,
                                     before, 0) > size
      checked.add((fit > 0, computed < out_size))
  assert checked == {(True, False), (False, False), (False, True)}


def test_a_spec_with_equivalent_strides_keeps_the_rest():
  spec = geometry.ConvSpec(input_spatial=(5, 4), strides=(2**31 - 1, 2),
                           dilations=(1, 1), padding=((0, 0), (0, 1)),
                           groups=2, channels_last=False)
  got = spec.with_equivalent_strides((3, 2))
  assert got.strides == (3, 2)  # one window in the first dim, two in the second
  assert got == geometry.ConvSpec((5, 4), (3, 2), (1, 1), ((0, 0), (0, 1)),
                                  2, False)
