"""jaxconv.tf2jax against real TensorFlow (these tests run TF, no golden
files): Keras 3 models, TF gradient graphs of first and second order, a
SavedModel; the converted functions jit, grad and vmap."""
from tests.helpers import assert_matches_peer, randn, require

require("keras", "tensorflow", "tf2jax")

import jax
import jax.numpy as jnp
import keras
import numpy as np
import pytest
import tensorflow as tf
import tf2jax

import jaxconv.tf2jax as bridge
from jaxconv.tf2jax import _table


def _check(tf_fn, *args, reference=None):
  """Convert tf_fn, run it jitted, compare every output with TF's (with
  `reference`'s, a TF function of the same values, where given)."""
  want = tf.nest.flatten((reference or tf_fn)(*args))
  jax_fn, params = bridge.convert(tf_fn, *args)
  got, _ = jax.jit(jax_fn)(params, *args)
  got = jax.tree_util.tree_leaves(got)
  assert len(got) == len(want)
  for i, (g, w) in enumerate(zip(got, want)):
    assert_matches_peer(g, w, f"output {i}")
  return jax_fn, params


# --- Keras 3 models (TF backend) -----------------------------------------

_LAYERS = {1: keras.layers.Conv1DTranspose, 2: keras.layers.Conv2DTranspose,
           3: keras.layers.Conv3DTranspose}
_SPATIAL = {1: (11,), 2: (7, 6), 3: (5, 4, 6)}
KERAS_CASES = [
    # (rank, padding, strides, output_padding, dilation, data_format, kernel)
    (1, "valid", 2, 1, 1, "channels_last", 3),
    (1, "same", 3, None, 1, "channels_last", 4),
    (1, "same", 1, None, 2, "channels_first", 3),
    (1, "valid", 3, 2, 1, "channels_first", 2),
    (2, "valid", 2, 1, 1, "channels_last", 3),  # the issue's 16x16 -> 34x34 case
    (2, "same", 2, None, 1, "channels_last", 4),
    (2, "same", 3, 1, 1, "channels_last", 3),
    (2, "valid", 1, None, 2, "channels_last", 3),
    (2, "same", 1, None, 2, "channels_first", 3),
    (2, "valid", 3, None, 1, "channels_first", 5),
    (2, "same", 2, 0, 1, "channels_first", 3),
    (3, "same", 2, None, 1, "channels_last", 3),
    (3, "valid", 2, 1, 1, "channels_last", 2),
    (3, "same", 3, 2, 1, "channels_last", 3),
    (3, "valid", 1, None, 2, "channels_first", 3),
    (3, "same", 2, 1, 1, "channels_first", 3),
]


def _keras_model(rank, padding, strides, output_padding, dilation, data_format,
                 kernel, spatial=None, in_channels=3):
  spatial = spatial or _SPATIAL[rank]
  shape = (*spatial, in_channels) if data_format == "channels_last" else (
      in_channels, *spatial)
  inputs = keras.Input(shape)
  outputs = _LAYERS[rank](
      4, kernel, strides=strides, padding=padding,
      output_padding=output_padding, dilation_rate=dilation,
      data_format=data_format, bias_initializer="random_normal")(inputs)
  return keras.Model(inputs, outputs), shape


def _tf_reference(model, x):
  """A TF function computing `model`: itself, or where TF's CPU kernels
  cannot (channels first or dilations without oneDNN, which TF turns on for
  AVX-512 CPUs, not AVX2 ones), TF's XLA compilation of it."""
  try:
    model(x)
  except tf.errors.InvalidArgumentError:
    return tf.function(model, jit_compile=True)
  return model


@pytest.mark.parametrize("case", KERAS_CASES, ids=str)
def test_keras_transposed_conv_models(case):
  model, shape = _keras_model(*case)
  x = randn(2, *shape)
  reference = _tf_reference(model, x)
  jax_fn, params = _check(tf.function(model), x, reference=reference)
  # The converted function also differentiates and batches.
  want = _tf_input_gradient(reference, x)
  grad = jax.grad(lambda x: jnp.sum(jnp.sin(jax_fn(params, x)[0])))(x)
  assert_matches_peer(grad, want, "d/dx")
  xs = randn(3, 2, *shape)
  batched = jax.vmap(lambda x: jax_fn(params, x)[0])(xs)
  for i in range(3):
    assert_matches_peer(batched[i], reference(xs[i]), f"vmap {i}")


def _tf_input_gradient(model, x):
  x = tf.constant(x)
  with tf.GradientTape() as tape:
    tape.watch(x)
    loss = tf.reduce_sum(tf.sin(model(x)))
  return tape.gradient(loss, x)


def test_issue_example_and_override_restores_tf2jax():
  """The issue's model: tf2jax alone gives 33x33, jaxconv's converters 34x34;
  override() applies to tf2jax's own functions and is undone on exit."""
  model, shape = _keras_model(2, "valid", 2, 1, 1, "channels_last", 3,
                               (16, 16))
  x = randn(2, *shape)
  fn = tf.function(model)
  assert tuple(model(x).shape) == (2, 34, 34, 4)
  with bridge.override():
    jax_fn, params = tf2jax.convert(fn, x)
  assert jax_fn(params, x)[0].shape == (2, 34, 34, 4)
  plain_fn, params = tf2jax.convert(fn, x)  # tf2jax's own converter again
  assert plain_fn(params, x)[0].shape == (2, 33, 33, 4)


def test_keras_depthwise_gradient_graph():
  """A DepthwiseConv2D model's gradient graph (input and kernel)."""
  inputs = keras.Input((9, 8, 3))
  layer = keras.layers.DepthwiseConv2D(3, strides=2, padding="same",
                                       depth_multiplier=2)
  model = keras.Model(inputs, layer(inputs))
  x = randn(2, 9, 8, 3)

  @tf.function
  def grads(x):
    with tf.GradientTape() as tape:
      tape.watch(x)
      loss = tf.reduce_sum(tf.sin(model(x)))
    return tape.gradient(loss, [x, *model.trainable_variables])

  _check(grads, x)


# --- tf.function gradient graphs, first and second order -----------------

def _conv2d(x, w):
  # (TF's CPU kernels run neither dilated filter gradients nor NCHW.)
  return tf.nn.conv2d(x, w, strides=[1, 2, 1, 1],
                      padding=[[0, 0], [1, 2], [0, 1], [0, 0]])


def _conv2d_same(x, w):
  return tf.nn.conv2d(x, w, strides=2, padding="SAME")


def _conv3d(x, w):
  return tf.nn.conv3d(x, w, strides=[1, 2, 1, 2, 1], padding="SAME")


def _depthwise(x, w):
  return tf.nn.depthwise_conv2d(x, w, strides=[1, 2, 2, 1], padding="VALID")


def _conv2d_transpose(x, w):
  return tf.nn.conv2d_transpose(x, w, [2, 13, 11, 3], strides=2, padding="SAME")


def _conv3d_transpose(x, w):
  return tf.nn.conv3d_transpose(x, w, [2, 9, 7, 8, 3], strides=2, padding="VALID")


def _conv1d_transpose(x, w):
  return tf.nn.conv1d_transpose(x, w, [2, 20, 3], strides=3, padding="VALID")


GRAPHS = {  # name: (fn, x shape, w shape)
    "conv2d_explicit": (_conv2d, (2, 9, 8, 3), (3, 2, 3, 4)),
    "conv2d_same": (_conv2d_same, (2, 9, 8, 3), (3, 3, 3, 4)),
    "conv3d": (_conv3d, (2, 5, 4, 6, 3), (2, 3, 3, 3, 4)),
    "depthwise": (_depthwise, (2, 9, 8, 3), (3, 3, 3, 2)),
    "conv2d_transpose": (_conv2d_transpose, (2, 7, 6, 4), (3, 3, 3, 4)),
    "conv3d_transpose": (_conv3d_transpose, (2, 4, 3, 3, 4), (3, 3, 3, 3, 4)),
    "conv1d_transpose": (_conv1d_transpose, (2, 6, 4), (4, 3, 4)),
}


@pytest.mark.parametrize("name", GRAPHS)
def test_gradient_graphs_first_and_second_order(name):
  fn, x_shape, w_shape = GRAPHS[name]
  x, w = randn(*x_shape), randn(*w_shape)

  @tf.function
  def grads(x, w):
    with tf.GradientTape(persistent=True) as outer:
      outer.watch([x, w])
      with tf.GradientTape() as inner:
        inner.watch([x, w])
        loss = tf.reduce_sum(tf.sin(fn(x, w)))
      dx, dw = inner.gradient(loss, [x, w])
      second = tf.reduce_sum(dx * dx) + tf.reduce_sum(tf.cos(dw))
    return [dx, dw, *outer.gradient(second, [x, w])]

  jax_fn, params = _check(grads, x, w)
  ops = {node.op for node in grads.get_concrete_function(
      x, w).graph.as_graph_def().node}
  assert ops & set(bridge.converters.CONVERTERS) - {"ShapeN", "BiasAddGrad"}


def test_bias_add_grad_and_shape_n():
  x, w, b = randn(2, 6, 5, 3), randn(3, 3, 3, 4), randn(4)

  @tf.function
  def grads(x, w, b):
    with tf.GradientTape() as tape:
      tape.watch([x, w, b])
      y = tf.nn.bias_add(tf.nn.conv2d(x, w, 1, "SAME"), b)
      loss = tf.reduce_sum(tf.sin(y))
    return tape.gradient(loss, [x, w, b])

  ops = {node.op for node in grads.get_concrete_function(
      x, w, b).graph.as_graph_def().node}
  assert {"ShapeN", "BiasAddGrad"} <= ops
  _check(grads, x, w, b)


def test_converted_gradient_graph_jits_grads_and_vmaps():
  fn, x_shape, w_shape = GRAPHS["conv2d_transpose"]
  x, w = randn(*x_shape), randn(*w_shape)
  tf_fn = tf.function(lambda x, w: tf.reduce_sum(tf.sin(fn(x, w))))
  jax_fn = bridge.convert_functional(tf_fn, x, w)
  dx, dw = jax.jit(jax.grad(jax_fn, argnums=(0, 1)))(x, w)
  x_t, w_t = tf.constant(x), tf.constant(w)
  with tf.GradientTape() as tape:
    tape.watch([x_t, w_t])
    loss = tf_fn(x_t, w_t)
  want = tape.gradient(loss, [x_t, w_t])
  assert_matches_peer(dx, want[0], "dx")
  assert_matches_peer(dw, want[1], "dw")
  ws = randn(3, *w_shape)
  batched = jax.vmap(jax_fn, in_axes=(None, 0))(x, ws)
  assert_matches_peer(batched, [tf_fn(x, wi) for wi in ws], "vmap")


# --- SavedModel ----------------------------------------------------------

def test_saved_model_convert_from_restored(tmp_path):
  """A SavedModel (defaults stripped from its nodes) restored and converted."""
  class Decoder(tf.Module):
    def __init__(self):
      super().__init__()
      self.w = tf.Variable(randn(3, 3, 4, 6))
      self.w3 = tf.Variable(randn(2, 2, 2, 3, 4))

    @tf.function(input_signature=[tf.TensorSpec([2, 5, 5, 6], tf.float32)])
    def __call__(self, x):
      with tf.GradientTape() as tape:
        tape.watch(x)
        y = tf.nn.conv2d_transpose(x, self.w, [2, 10, 10, 4], 2, "SAME")
        z = tf.nn.conv3d_transpose(
            tf.reshape(y, [2, 10, 10, 1, 4]), self.w3, [2, 20, 20, 2, 3], 2,
            "VALID")
        loss = tf.reduce_sum(tf.sin(z))
      return z, tape.gradient(loss, x)

  module = Decoder()
  tf.saved_model.save(module, str(tmp_path))
  restored = tf.saved_model.load(str(tmp_path))
  x = randn(2, 5, 5, 6)
  want = restored(x)
  jax_fn, params = bridge.convert_from_restored(restored.__call__)
  got, _ = jax.jit(jax_fn)(params, x)
  assert_matches_peer(got[0], want[0], "z")
  assert_matches_peer(got[1], want[1], "dx")


# --- errors --------------------------------------------------------------

def test_data_dependent_size_names_the_node():
  w = randn(3, 3, 2, 4)

  @tf.function
  def fn(x, size):
    return tf.nn.conv2d_transpose(x, w, tf.concat([[2], size, [2]], 0), 2,
                                  "SAME")

  x, size = randn(2, 5, 5, 4), np.array([10, 10], np.int32)
  jax_fn, params = bridge.convert(fn, x, size)
  with pytest.raises(ValueError, match=r"Conv2DBackpropInput node .*input_sizes"
                     r" is data-dependent"):
    jax.jit(jax_fn)(params, x, size)


def test_bad_attributes_name_the_node():
  @tf.function
  def fn(x, w):
    return tf.nn.conv3d_transpose(x, w, [2, 9, 7, 8, 3], strides=2,
                                  padding="VALID")

  x, w = randn(2, 4, 3, 3, 4), randn(3, 3, 3, 3, 4)
  jax_fn, params = bridge.convert(fn, x, w)
  with tf2jax.override_config("strict_shape_check", False), pytest.raises(
      ValueError, match=r"Conv3DBackpropInputV2 node .*: Size of out_backprop "
      r"doesn't match computed: actual = 5, computed = 4"):
    jax_fn(params, randn(2, 5, 3, 3, 4), w)


def test_a_changed_tf2jax_table_fails_loudly(monkeypatch):
  from tf2jax._src import ops
  before = dict(ops._jax_ops)  # noqa: SLF001
  monkeypatch.setattr(ops, "get_parser", lambda name: before[name])
  with pytest.raises(RuntimeError, match=r"supports tf2jax >=0\.3\.8"):
    with bridge.override():
      pass
  assert ops._jax_ops == before  # noqa: SLF001  (nothing left behind)
  monkeypatch.delattr(ops, "_jax_ops")
  with pytest.raises(RuntimeError, match="converter table is gone"):
    _table.swap({})


# --- ops TF builds but cannot run, or no longer builds --------------------

def test_v2_ops_equal_their_counterparts_in_tf():
  """Conv2DBackpropInputV2/FilterV2 (TF has no kernel for them): converted,
  they equal TF's Conv2DBackpropInput/Filter on their tensors' shapes."""
  x, w, dy = randn(2, 9, 8, 3), randn(3, 3, 3, 4), randn(2, 5, 4, 4)
  window = dict(strides=[1, 2, 2, 1], padding="EXPLICIT",
                explicit_paddings=[0, 0, 1, 1, 0, 1, 0, 0])
  for v2, want in (
      (tf.raw_ops.Conv2DBackpropInputV2, tf.raw_ops.Conv2DBackpropInput(
          input_sizes=x.shape, filter=w, out_backprop=dy, **window)),
      (tf.raw_ops.Conv2DBackpropFilterV2, tf.raw_ops.Conv2DBackpropFilter(
          input=x, filter_sizes=w.shape, out_backprop=dy, **window))):
    fn = tf.function(_v2_call(v2, window))
    jax_fn, params = bridge.convert(fn, x, w, dy)
    assert_matches_peer(jax.jit(jax_fn)(params, x, w, dy)[0], want, v2.__name__)


def _v2_call(op, window):
  return lambda x, w, dy: op(input=x, filter=w, out_backprop=dy, **window)


def test_v1_3d_ops_from_their_node_defs():
  """Conv3DBackpropInput/Filter (v1) are gone from TF's graphs (GraphDef
  version 10); their converters, fed a NodeDef, equal the V2 ops in TF."""
  x, w, dy = randn(2, 5, 4, 6, 3), randn(2, 3, 3, 3, 4), randn(2, 3, 4, 3, 4)
  window = dict(strides=[1, 2, 1, 2, 1], padding="SAME")
  for op, want in (
      ("Conv3DBackpropInput", tf.raw_ops.Conv3DBackpropInputV2(
          input_sizes=x.shape, filter=w, out_backprop=dy, **window)),
      ("Conv3DBackpropFilter", tf.raw_ops.Conv3DBackpropFilterV2(
          input=x, filter_sizes=w.shape, out_backprop=dy, **window))):
    node = tf.compat.v1.NodeDef(name="legacy", op=op)
    node.attr["T"].type = tf.float32.as_datatype_enum
    node.attr["strides"].list.i.extend(window["strides"])
    node.attr["padding"].s = b"SAME"
    fn = bridge.converters.CONVERTERS[op](node)
    assert_matches_peer(fn(x, w, dy), want, op)
