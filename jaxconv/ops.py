"""The family's op table: what each TF op is, in one place.

Everything that needs to know an op's rank, whether it is a filter
gradient, takes sizes or a tensor for its result shape, is depthwise, and
which dtypes, paddings and formats it takes reads it here: the signature
layers (`jaxconv.raw_ops`, via `jaxconv.core`), the CLI, export, the
tf2jax converters and the tests.  No code sniffs op names.
"""
from __future__ import annotations

import dataclasses

import numpy as np

FLOATS = tuple(np.dtype(d) for d in ("float16", "bfloat16", "float32",
                                     "float64"))
WITH_INT32 = FLOATS + (np.dtype("int32"),)
PADDINGS = ("SAME", "VALID", "EXPLICIT")
STRING_PADDINGS = ("SAME", "VALID")
DATA_FORMATS = {1: ("NWC", "NCW"), 2: ("NHWC", "NCHW"), 3: ("NDHWC", "NCDHW")}


@dataclasses.dataclass(frozen=True)
class Op:
  """One TF op of the family (or a forward conv its gradients contain).

  kind: "backprop_input", "backprop_filter" or "forward".
  shape_from: the argument that gives the result's shape: "input_sizes" /
    "filter_sizes" (static int vectors), "input" / "filter" (a tensor
    whose shape is used: the V2 and v1 ops), or "" (forward).
  spatial_sizes: input_sizes may also be spatial only (`[H, W]`).
  counterpart: the op that takes sizes and computes the same (for the
    tensor-shaped ops, which TF cannot run).
  """
  name: str
  ndim: int
  kind: str
  shape_from: str = ""
  depthwise: bool = False
  dtypes: tuple = FLOATS
  paddings: tuple = PADDINGS
  formats: tuple = ()
  spatial_sizes: bool = False
  counterpart: str = ""
  use_cudnn_on_gpu: bool = False  # TF's no-op attribute of the 2-D ops

  def __post_init__(self):
    if not self.formats:
      object.__setattr__(self, "formats", DATA_FORMATS[self.ndim])

  @property
  def filter_gradient(self) -> bool:
    return self.kind == "backprop_filter"

  @property
  def sizes_argument(self) -> str:
    """"input_sizes"/"filter_sizes", or "" where a tensor gives the shape."""
    return self.shape_from if self.shape_from.endswith("_sizes") else ""

  @property
  def inputs(self) -> tuple[str, ...]:
    """TF's inputs, in its op definition's order."""
    if self.kind == "forward":
      return ("input", "filter")
    if self.kind == "backprop_input":
      return (self.shape_from, "filter", "out_backprop")
    return ("input", self.shape_from, "out_backprop")

  @property
  def operands(self) -> tuple[str, ...]:
    """The tensor arguments, in the signature's order."""
    return tuple(i for i in self.inputs if not i.endswith("_sizes"))

  @property
  def has_explicit_paddings(self) -> bool:
    return "EXPLICIT" in self.paddings

  @property
  def has_data_format(self) -> bool:
    return len(self.formats) > 1


def _ops(*ops: Op) -> dict[str, Op]:
  return {op.name: op for op in ops}


# TF's raw ops of the family (jaxconv.raw_ops), in tf.raw_ops order.
OPS = _ops(
    Op("Conv2DBackpropInput", 2, "backprop_input", "input_sizes",
       dtypes=WITH_INT32, spatial_sizes=True, use_cudnn_on_gpu=True),
    # Its op definition takes int32 too (TF has no kernel for it anywhere).
    Op("Conv2DBackpropInputV2", 2, "backprop_input", "input",
       dtypes=WITH_INT32, counterpart="Conv2DBackpropInput",
       use_cudnn_on_gpu=True),
    Op("Conv3DBackpropInput", 3, "backprop_input", "input",
       paddings=STRING_PADDINGS, formats=("NDHWC",),
       counterpart="Conv3DBackpropInputV2"),
    Op("Conv3DBackpropInputV2", 3, "backprop_input", "input_sizes",
       paddings=STRING_PADDINGS),
    Op("DepthwiseConv2dNativeBackpropInput", 2, "backprop_input",
       "input_sizes", depthwise=True),
    Op("Conv2DBackpropFilter", 2, "backprop_filter", "filter_sizes",
       use_cudnn_on_gpu=True),
    Op("Conv2DBackpropFilterV2", 2, "backprop_filter", "filter",
       counterpart="Conv2DBackpropFilter", use_cudnn_on_gpu=True),
    Op("Conv3DBackpropFilter", 3, "backprop_filter", "filter",
       paddings=STRING_PADDINGS, formats=("NDHWC",),
       counterpart="Conv3DBackpropFilterV2"),
    Op("Conv3DBackpropFilterV2", 3, "backprop_filter", "filter_sizes",
       paddings=STRING_PADDINGS),
    Op("DepthwiseConv2dNativeBackpropFilter", 2, "backprop_filter",
       "filter_sizes", depthwise=True),
)
# The forward convolutions TF's gradient graphs contain (tf2jax converters).
FORWARD_OPS = _ops(
    Op("Conv2D", 2, "forward", use_cudnn_on_gpu=True),
    Op("Conv3D", 3, "forward", paddings=STRING_PADDINGS),
    Op("DepthwiseConv2dNative", 2, "forward", depthwise=True),
)
# tf.nn.conv1d_transpose: TF runs Conv2DBackpropInput with a unit height.
CONV1D_TRANSPOSE = Op("conv1d_transpose", 1, "backprop_input", "input_sizes",
                      dtypes=WITH_INT32, paddings=STRING_PADDINGS)
