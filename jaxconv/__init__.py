"""jaxconv: TensorFlow's transposed-convolution family as JAX primitives.

    jaxconv.raw_ops.Conv2DBackpropInput(...)    # tf.raw_ops (10 ops: 2-D/3-D,
                                                #   depthwise, V2, filter grads)
    jaxconv.nn.conv2d_transpose(...)            # tf.nn
    jaxconv.compat.v1.nn.conv2d_transpose(...)  # tf.compat.v1.nn
    jaxconv.conv2d_backprop_input(...)          # = compat.v1.nn's
    jaxconv.conv2d_backprop_input_p             # the primitive (N-d)
    jaxconv.conv_backprop_filter_p              # its filter-gradient partner
    jaxconv.tf2jax.convert(...)                 # tf2jax, exact for the family
    jaxconv.flax.nnx.ConvTranspose(...)         # Flax layers (also linen),
                                                #   from_keras / from_torch

A call flows: signature layer (raw_ops / nn / compat.v1.nn, each op's row
of the op table in ops.py) -> core.py -> attrs.py (validation, one
ConvSpec) -> the primitive (primitives/: one module per primitive with
its rules) -> jaxconv.lowering (the back end, folder lowering/).
`jaxconv.tf2jax` and `jaxconv.flax` need their extras and are imported on
demand.
"""
from jaxconv import compat, nn, raw_ops
from jaxconv.compat.v1.nn import conv2d_backprop_input
from jaxconv.lowering import (CpuOnlyExportWarning, force_strategy, portable,
                              xla_strategies)
from jaxconv.primitives import (conv_backprop_filter_p, conv_backprop_input_p,
                                conv_forward_p)

conv2d_backprop_input_p = conv_backprop_input_p

__all__ = ["CpuOnlyExportWarning", "compat", "conv2d_backprop_input", "conv2d_backprop_input_p",
           "conv_backprop_filter_p", "conv_forward_p", "force_strategy", "nn",
           "portable", "raw_ops", "xla_strategies"]
__version__ = "0.1.0"
