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
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import export as jax_export

from jaxconv import attrs, lowering, ops, raw_ops
from jaxconv.lowering import cpu

OPS = tuple(ops.OPS)
# CPU strategies that are custom calls (jax.jit only, never exported).
NATIVE = ("onednn",)


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
  def info(self) -> ops.Op:
    """The op's row of the op table."""
    return ops.OPS[self.op]

  @property
  def ndim(self) -> int:
    return self.info.ndim

  @property
  def filter_gradient(self) -> bool:
    return self.info.filter_gradient

  @property
  def depthwise(self) -> bool:
    return self.info.depthwise

  @property
  def primitive(self) -> str:
    """The primitive the op binds ("backprop_input" or "backprop_filter")."""
    return self.info.kind

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
    return attrs.make_spec(
        self.info, list(self.input_sizes), list(self.hwio_filter_sizes),
        self.batch, list(self.strides), self.padding,
        list(self.explicit_paddings), self.data_format, list(self.dilations))

  def out_backprop_shape(self):
    spec = self.spec()
    out = self.filter_sizes[-1] * (self.filter_sizes[-2] if self.depthwise
                                   else 1)
    return spec.activation_shape(
        self.batch, out, spec.out_backprop_spatial(self.filter_sizes[:self.ndim]))

  def operand_names(self) -> tuple[str, ...]:
    """The op's tensor arguments, in its signature's order."""
    return self.info.operands

  def operand_shapes(self, batch=None) -> dict:
    batch = self.batch if batch is None else batch
    dy = list(self.out_backprop_shape())
    dy[0] = batch
    x = list(self.input_sizes)
    if len(x) == self.ndim + 2:
      x[0] = batch
    return {"input": tuple(x), "filter": tuple(self.filter_sizes),
            "out_backprop": tuple(dy)}

  def cpu_strategy(self, symbolic_batch: bool = False, *,
                   for_export: bool = False) -> tuple[str, str]:
    """(name, reason) of the CPU strategy jax.jit picks for this layer's
    primitive (`self.primitive`; with a symbolic batch it counts one
    image); for_export: the one an export bakes in (never the native
    strategy, whose custom call an artifact cannot carry)."""
    return cpu.choose(self.spec(), self.hwio_filter_sizes, self.dtype,
                      1 if symbolic_batch else self.batch,
                      primitive=self.primitive, native=not for_export)

  def op_fn(self, batch=None):
    """f(*operands) calling the raw op, operands in `operand_names()` order;
    with `batch` (a symbolic dim) the sizes' batch entry becomes it."""
    sizes = list(self.input_sizes)
    if batch is not None and len(sizes) == self.ndim + 2:
      sizes[0] = batch
    info = self.info
    kwargs = dict(strides=list(self.strides), padding=self.padding,
                  dilations=list(self.dilations))
    if info.has_explicit_paddings:
      kwargs["explicit_paddings"] = list(self.explicit_paddings)
    elif self.explicit_paddings:
      raise ValueError(f"{self.op} has no explicit_paddings")
    if info.has_data_format:
      kwargs["data_format"] = self.data_format
    elif self.data_format not in info.formats:
      raise ValueError(f"{self.op} takes {info.formats[0]} only, got "
                       f"{self.data_format}")
    if info.sizes_argument == "input_sizes":
      kwargs["input_sizes"] = sizes
    elif info.sizes_argument == "filter_sizes":
      kwargs["filter_sizes"] = list(self.filter_sizes)
    names, fn = self.operand_names(), getattr(raw_ops, self.op)

    def op(*operands):
      return fn(**kwargs, **dict(zip(names, operands)))
    op.__name__ = self.op
    return op


def export_layer(config: LayerConfig, *, batch: str | None = None,
                 platforms: Sequence[str] | None = None, grad: bool = False,
                 cpu_strategy: str | None = None,
                 filter_values=None) -> jax_export.Exported:
  """Export the op for `config`.

  batch: name of a symbolic batch dimension (e.g. "N"), or None for static.
  platforms: e.g. ["cpu", "cuda", "rocm", "tpu"]; default: this machine's.
  grad: export f(*operands, ct) -> (result, *d_operands), the op and its
    VJP, instead of the op alone.
  cpu_strategy: None for the portable form on every platform; "auto" for
    the XLA CPU strategies jax.jit would pick, or the name of one of the op's
    primitive (`config.primitive`) to force it (where it applies) in the
    `cpu` lowering (never the native one: an export stays StableHLO).
  filter_values: the filter, baked in as a constant (see `layer_function`).
  """
  if cpu_strategy in NATIVE:
    raise ValueError(f"cpu_strategy: {cpu_strategy!r} is a custom call, which "
                     "an exported artifact cannot carry; choose 'auto' or an "
                     "XLA strategy")
  fn, args = layer_function(config, batch=batch, grad=grad,
                            filter_values=filter_values)
  if cpu_strategy is None:
    form = lowering.portable()
  elif cpu_strategy == "auto":
    form = contextlib.nullcontext()
  else:
    form = lowering.force_strategy(**{config.primitive: cpu_strategy})
  with form:
    return jax_export.export(jax.jit(fn), platforms=platforms)(*args)


def layer_function(config: LayerConfig, *, batch: str | None = None,
                   grad: bool = False, filter_values=None):
  """(f, argument specs) of what an export holds: the op, or with `grad`
  f(*operands, ct) -> (result, *d_operands); `batch` names a symbolic
  batch dimension; `filter_values` (an array of the filter's shape) is
  baked in as a constant, f then taking the other operands."""
  dtype = jnp.dtype(config.dtype)
  b = None
  if batch is not None:
    b, = jax_export.symbolic_shape(batch)
  shapes = config.operand_shapes(b)
  args = [jax.ShapeDtypeStruct(shapes[n], dtype)
          for n in config.operand_names()]
  op = config.op_fn(b)
  if filter_values is not None:
    op, args = _constant_filter(config, op, args, filter_values)
  if not grad:
    return op, args

  def op_and_vjp(*operands_and_ct):
    *operands, ct = operands_and_ct
    out, vjp = jax.vjp(op, *operands)
    return (out, *vjp(ct))
  op_and_vjp.__name__ = f"{config.op}_and_vjp"
  return op_and_vjp, [*args, jax.eval_shape(op, *args)]


def _constant_filter(config: LayerConfig, op, args, values):
  """(f, specs) of `op` with its filter operand fixed to `values`."""
  names = config.operand_names()
  if "filter" not in names:
    raise ValueError(f"filter_values: {config.op} takes no filter tensor "
                     f"(its operands: {', '.join(names)})")
  values = np.asarray(values)
  if values.shape != tuple(config.filter_sizes):
    raise ValueError(f"filter_values: shape {list(values.shape)} is not the "
                     f"filter's {list(config.filter_sizes)}")
  k = names.index("filter")
  filt = jnp.asarray(values, config.dtype)

  def op_with_filter(*operands):
    return op(*operands[:k], filt, *operands[k:])
  op_with_filter.__name__ = op.__name__
  return op_with_filter, [*args[:k], *args[k + 1:]]
