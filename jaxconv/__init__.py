"""jaxconv: TensorFlow's Conv2DBackpropInput as a JAX primitive.

    jaxconv.conv2d_backprop_input(...)          # tf.compat.v1.nn.conv2d_backprop_input
    jaxconv.raw_ops.Conv2DBackpropInput(...)    # tf.raw_ops.Conv2DBackpropInput
    jaxconv.conv2d_backprop_input_p             # the primitive (N-d capable)
"""
from jaxconv import raw_ops, rules  # noqa: F401  (rules registers transforms)
from jaxconv.api import conv2d_backprop_input
from jaxconv.primitive import conv_backprop_input_p

conv2d_backprop_input_p = conv_backprop_input_p

__all__ = ["conv2d_backprop_input", "conv2d_backprop_input_p", "raw_ops"]
__version__ = "0.1.0"
