"""Export any raw op of the family (optionally with its VJP) as StableHLO.

The artifact is pure StableHLO (no custom calls): `jax.export.deserialize`
runs it in a process that never imported jaxconv.  By default every
platform gets the portable form (`stablehlo.convolution` with lhs dilation
and the reversed kernel; a filter gradient as the convolution that takes
out_backprop as its window); `cpu_strategy` bakes XLA CPU's tuned form into
the `cpu` lowering instead.
"""
from __future__ import annotations

import contextlib
import dataclasses
import inspect
from typing import Sequence

import jax
import jax.numpy as jnp
from jax import export as jax_export

from jaxconv import lowering
from jaxconv import attrs, raw_ops
from jaxconv.lowering import cpu

OPS = tuple(raw_ops.__all__)


@dataclasses.dataclass(frozen=True)
class LayerConfig:
  """One configuration of a raw op in TF's terms (default: the U-Net decoder
  layer through Conv2DBackpropInput).

  input_sizes: the conv input's shape (the op's `input_sizes`, or the shape
  of its `input` tensor); filter_sizes: the filter's (its `filter_sizes`,
  or its `filter` tensor's; depthwise `[kh, kw, C, M]`).
  """
  input_sizes: Sequence[int] = (8, 64, 64, 64)
  filter_sizes: Sequence[int] = (3, 3, 64, 128)
  strides: Sequence[int] = (1, 2, 2, 1)
  padding: str = "SAME"
  explicit_paddings: Sequence[int] = ()
  data_format: str = "NHWC"
  dilations: Sequence[int] = (1, 1, 1, 1)
  dtype: str = "float32"
  op: str = "Conv2DBackpropInput"

  def __post_init__(self):
    if self.op not in OPS:
      raise ValueError(f"op must be one of {', '.join(OPS)}, got {self.op!r}")

  @property
  def ndim(self) -> int:
    return 3 if "3D" in self.op else 2

  @property
  def filter_gradient(self) -> bool:
    return "Filter" in self.op

  @property
  def depthwise(self) -> bool:
    return self.op.startswith("Depthwise")

  @property
  def parameters(self):
    return inspect.signature(getattr(raw_ops, self.op)).parameters

  @property
  def batch(self) -> int:
    """The batch (1 for Conv2DBackpropInput's spatial-only input_sizes)."""
    return self.input_sizes[0] if len(self.input_sizes) == self.ndim + 2 else 1

  @property
  def hwio_filter_sizes(self) -> tuple:
    """The filter shape as the primitive sees it: `[*K, C/groups, C_out]`
    (a depthwise `[KH, KW, C, M]` is `[KH, KW, 1, C*M]`)."""
    filt = tuple(self.filter_sizes)
    if self.depthwise and len(filt) == 4:
      return (*filt[:2], 1, filt[2] * filt[3])
    return filt

  def spec(self):
    """The validated ConvSpec (ValueError/TypeError on a bad config)."""
    filt = list(self.hwio_filter_sizes)
    return attrs.make_spec(
        self.ndim, list(self.input_sizes), filt, self.batch, list(self.strides),
        self.padding, list(self.explicit_paddings), self.data_format,
        list(self.dilations), spatial_sizes=self.op == "Conv2DBackpropInput",
        paddings=attrs.PADDINGS if "explicit_paddings" in self.parameters
        else ("SAME", "VALID"))

  def out_backprop_shape(self):
    spec = self.spec()
    out = self.filter_sizes[-1] * (self.filter_sizes[-2] if self.depthwise
                                   else 1)
    return spec.activation_shape(
        self.batch, out, spec.out_backprop_spatial(self.filter_sizes[:self.ndim]))

  def operand_names(self) -> tuple[str, ...]:
    """The op's tensor arguments, in its signature's order."""
    return tuple(k for k in ("input", "filter", "out_backprop")
                 if k in self.parameters)

  def operand_shapes(self, batch=None) -> dict:
    batch = self.batch if batch is None else batch
    dy = list(self.out_backprop_shape())
    dy[0] = batch
    x = list(self.input_sizes)
    if len(x) == self.ndim + 2:
      x[0] = batch
    return {"input": tuple(x), "filter": tuple(self.filter_sizes),
            "out_backprop": tuple(dy)}

  def cpu_strategy(self, symbolic_batch: bool = False) -> tuple[str, str]:
    """(name, measured reason) of the CPU strategy jax.jit picks for this
    layer's backprop-input op (with a symbolic batch it counts one image)."""
    return cpu.choose(self.spec(), self.hwio_filter_sizes, self.dtype,
                      1 if symbolic_batch else self.batch)

  def op_fn(self, batch=None):
    """f(*operands) calling the raw op, operands in `operand_names()` order;
    with `batch` (a symbolic dim) the sizes' batch entry becomes it."""
    sizes = list(self.input_sizes)
    if batch is not None and len(sizes) == self.ndim + 2:
      sizes[0] = batch
    kwargs = dict(strides=list(self.strides), padding=self.padding,
                  dilations=list(self.dilations))
    if "explicit_paddings" in self.parameters:
      kwargs["explicit_paddings"] = list(self.explicit_paddings)
    elif self.explicit_paddings:
      raise ValueError(f"{self.op} has no explicit_paddings")
    if "data_format" in self.parameters:
      kwargs["data_format"] = self.data_format
    elif self.data_format != "NDHWC":
      raise ValueError(f"{self.op} takes NDHWC only, got {self.data_format}")
    if "input_sizes" in self.parameters:
      kwargs["input_sizes"] = sizes
    if "filter_sizes" in self.parameters:
      kwargs["filter_sizes"] = list(self.filter_sizes)
    names, fn = self.operand_names(), getattr(raw_ops, self.op)

    def op(*operands):
      return fn(**kwargs, **dict(zip(names, operands)))
    op.__name__ = self.op
    return op


def export_layer(config: LayerConfig, *, batch: str | None = None,
                 platforms: Sequence[str] | None = None, grad: bool = False,
                 cpu_strategy: str | None = None) -> jax_export.Exported:
  """Export the op for `config`.

  batch: name of a symbolic batch dimension (e.g. "N"), or None for static.
  platforms: e.g. ["cpu", "cuda", "rocm", "tpu"]; default: this machine's.
  grad: export f(*operands, ct) -> (result, *d_operands), the op and its
    VJP, instead of the op alone.
  cpu_strategy: None for the portable form on every platform; "auto" for
    the CPU strategy jax.jit would pick, or a strategy's name to force it
    (where it applies) in the `cpu` lowering.
  """
  dtype = jnp.dtype(config.dtype)
  b = None
  if batch is not None:
    b, = jax_export.symbolic_shape(batch)
  shapes = config.operand_shapes(b)
  args = [jax.ShapeDtypeStruct(shapes[n], dtype)
          for n in config.operand_names()]
  op = config.op_fn(b)
  if cpu_strategy is None:
    form = lowering.portable()
  elif cpu_strategy == "auto":
    form = contextlib.nullcontext()
  else:
    form = lowering.force_strategy(cpu_strategy)
  with form:
    if not grad:
      return jax_export.export(jax.jit(op), platforms=platforms)(*args)

    def op_and_vjp(*operands_and_ct):
      *operands, ct = operands_and_ct
      out, vjp = jax.vjp(op, *operands)
      return (out, *vjp(ct))
    return jax_export.export(jax.jit(op_and_vjp), platforms=platforms)(
        *args, jax.eval_shape(op, *args))
