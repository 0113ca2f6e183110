"""Export the op (optionally with its VJP) as a portable StableHLO artifact.

The artifact is pure StableHLO (no custom calls): `jax.export.deserialize`
runs it in a process that never imported jaxconv.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
from jax import export as jax_export

from jaxconv import attrs
from jaxconv.raw_ops import Conv2DBackpropInput


@dataclasses.dataclass(frozen=True)
class LayerConfig:
  """One Conv2DBackpropInput configuration in TF's terms (default: U-Net up)."""
  input_sizes: Sequence[int] = (8, 64, 64, 64)
  filter_sizes: Sequence[int] = (3, 3, 64, 128)
  strides: Sequence[int] = (1, 2, 2, 1)
  padding: str = "SAME"
  explicit_paddings: Sequence[int] = ()
  data_format: str = "NHWC"
  dilations: Sequence[int] = (1, 1, 1, 1)
  dtype: str = "float32"

  @property
  def batch(self) -> int:
    """input_sizes' batch (1 for 2-entry, spatial-only input_sizes)."""
    return self.input_sizes[0] if len(self.input_sizes) == 4 else 1

  def spec(self):
    """The validated ConvSpec (ValueError/TypeError on a bad config)."""
    return attrs.make_spec(2, list(self.input_sizes), self.filter_sizes,
                           self.batch,
                           list(self.strides), self.padding,
                           list(self.explicit_paddings), self.data_format,
                           list(self.dilations), spatial_sizes=True)

  def out_backprop_shape(self):
    spec = self.spec()
    return spec.activation_shape(
        self.batch, self.filter_sizes[-1],
        spec.out_backprop_spatial(self.filter_sizes[:2]))

  def cpu_strategy(self, symbolic_batch: bool = False) -> tuple[str, str]:
    """(name, measured reason) of the CPU lowering strategy for this layer
    (exported with a symbolic batch, the lowering counts one image)."""
    from lowering import cpu
    return cpu.choose(self.spec(), self.filter_sizes, self.dtype,
                      1 if symbolic_batch else self.batch)

  def op(self, batch=None):
    """f(filter, out_backprop); with `batch` (a symbolic dim), the input_sizes
    batch entry becomes that dim."""
    sizes = list(self.input_sizes)
    if batch is not None and len(sizes) == 4:
      sizes[0] = batch

    def conv2d_backprop_input(filter, out_backprop):  # noqa: A002
      return Conv2DBackpropInput(
          input_sizes=sizes, filter=filter, out_backprop=out_backprop,
          strides=list(self.strides), padding=self.padding,
          explicit_paddings=list(self.explicit_paddings),
          data_format=self.data_format, dilations=list(self.dilations))
    return conv2d_backprop_input


def export_layer(config: LayerConfig, *, batch: str | None = None,
                 platforms: Sequence[str] | None = None,
                 grad: bool = False) -> jax_export.Exported:
  """Export the op for `config`.

  batch: name of a symbolic batch dimension (e.g. "N"), or None for static.
  platforms: e.g. ["cpu", "cuda", "rocm", "tpu"]; default: this machine's.
  grad: export f(filter, out_backprop, ct) -> (result, d_filter,
    d_out_backprop), the op and its VJP, instead of the op alone.
  """
  dtype = jnp.dtype(config.dtype)
  dy_shape = list(config.out_backprop_shape())
  b = None
  if batch is not None:
    b, = jax_export.symbolic_shape(batch)
    dy_shape[0] = b
  op = config.op(b)
  w = jax.ShapeDtypeStruct(tuple(config.filter_sizes), dtype)
  dy = jax.ShapeDtypeStruct(tuple(dy_shape), dtype)
  if not grad:
    return jax_export.export(jax.jit(op), platforms=platforms)(w, dy)

  def op_and_vjp(filter, out_backprop, ct):  # noqa: A002
    out, vjp = jax.vjp(op, filter, out_backprop)
    return (out, *vjp(ct))
  return jax_export.export(jax.jit(op_and_vjp), platforms=platforms)(
      w, dy, jax.eval_shape(op, w, dy))
