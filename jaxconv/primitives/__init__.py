"""The family's three primitives, one module each (the same sections in
each: bind, shape/dtype/sharding rules, abstract eval, transposes,
batching, lowering, registration).  They share one `ConvSpec` and are
each other's transposes:

  op(w, dy)    = conv_backprop_input   T_w: backprop_filter(ct, dy)  T_dy: forward(ct, w)
  forward(x, w)                        T_x: op(w, ct)                T_w:  backprop_filter(x, ct)
  backprop_filter(x, dy)               T_x: op(ct, dy)               T_dy: forward(x, ct)
"""
from jaxconv.primitives.backprop_filter import (conv_backprop_filter,
                                                conv_backprop_filter_p)
from jaxconv.primitives.backprop_input import (check_out_backprop,
                                               conv_backprop_input,
                                               conv_backprop_input_p)
from jaxconv.primitives.forward import conv_forward, conv_forward_p

__all__ = ["check_out_backprop", "conv_backprop_filter",
           "conv_backprop_filter_p", "conv_backprop_input",
           "conv_backprop_input_p", "conv_forward", "conv_forward_p"]
