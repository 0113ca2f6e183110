"""The one place that touches jax2onnx's internals: its plugin registry and
graph builder.

jax2onnx has no public API for a third-party primitive: its own lowerings
subclass `PrimitiveLeafPlugin`, register with `register_primitive` and emit
nodes through the lowering context's `builder`.  Checked with jax2onnx
0.17 (the range pyproject.toml's `onnx` extra declares); if any name used
here moves, importing `jaxconv.onnx` raises instead of leaving the family
without ONNX lowerings.
"""
from __future__ import annotations

import importlib.metadata
import types

import jax.extend.core
import numpy as np

SUPPORTED = ">=0.17,<0.18"


def _broken(what: str) -> ImportError:
  try:
    version = importlib.metadata.version("jax2onnx")
  except importlib.metadata.PackageNotFoundError:
    version = "(not installed)"
  return ImportError(
      f"jaxconv.onnx cannot register its lowerings with jax2onnx {version}: "
      f"{what}.  jaxconv.onnx supports jax2onnx {SUPPORTED} "
      "(pip install 'jaxconv[onnx]').")


try:
  import onnx_ir as ir
  from jax2onnx.plugins._ir_shapes import _stamp_type_and_shape
  from jax2onnx.plugins.plugin_system import (PLUGIN_REGISTRY,
                                              PrimitiveLeafPlugin,
                                              register_primitive)
except ImportError as e:
  raise _broken(f"an internal module is gone ({e})") from e


def _mend_jit_plugin() -> None:
  """jax2onnx 0.17's `jit` plugin names `jax._src.core.ClosedJaxpr`, which
  JAX merged into `Jaxpr` (0.12 has no such name there; the public alias
  `jax.extend.core.ClosedJaxpr` stays): without it every function holding
  a nested jit (`jnp.where`, an inner `jax.jit`) fails to convert.  The
  plugin gets its own copy of that module with the alias added."""
  try:
    from jax2onnx.plugins.jax.core import jit
    core = jit.jcore
  except (ImportError, AttributeError) as e:
    raise _broken(f"its jit plugin moved ({e})") from e
  if hasattr(core, "ClosedJaxpr"):
    return
  mended = types.ModuleType(core.__name__, core.__doc__)
  mended.__dict__.update(vars(core))
  mended.ClosedJaxpr = jax.extend.core.ClosedJaxpr
  jit.jcore = mended


_mend_jit_plugin()


def register(primitive_name: str, lower) -> None:
  """Register `lower(graph, eqn)` as the ONNX lowering of a primitive."""
  plugin = type(f"Jaxconv_{primitive_name}", (PrimitiveLeafPlugin,), {
      "lower": lambda self, ctx, eqn: lower(Graph(ctx), eqn)})
  register_primitive(jaxpr_primitive=primitive_name, context="jaxconv",
                     component=primitive_name, since="jaxconv")(plugin)
  if PLUGIN_REGISTRY.get(primitive_name) is None:
    raise _broken("register_primitive no longer fills PLUGIN_REGISTRY")


def registered(primitive_name: str) -> bool:
  return primitive_name in PLUGIN_REGISTRY


class Graph:
  """The few things a lowering needs from jax2onnx's context: operands by
  jaxpr variable, nodes with typed and shaped results, int64 constants."""

  def __init__(self, ctx):
    self._ctx = ctx

  def input(self, var):
    return self._ctx.get_value_for_var(
        var, name_hint=self._ctx.fresh_name("jaxconv_in"))

  def output_name(self, var) -> str:
    spec = self._ctx.get_value_for_var(
        var, name_hint=self._ctx.fresh_name("jaxconv_out"))
    return getattr(spec, "name", None) or self._ctx.fresh_name("jaxconv_out")

  def bind(self, var, value) -> None:
    self._ctx.bind_value_for_var(var, value)

  def node(self, op: str, *inputs, shape, dtype, name: str | None = None,
           **attributes):
    """One node `op(*inputs, **attributes)` with a result of `shape`
    (ints, or jax's symbolic dims) and `dtype` (a NumPy dtype)."""
    out = getattr(self._ctx.builder, op)(
        *inputs, _outputs=[name or self._ctx.fresh_name(f"jaxconv_{op}")],
        **attributes)
    out.type = ir.TensorType(ir.DataType.from_numpy(np.dtype(dtype)))
    _stamp_type_and_shape(out, tuple(shape))
    return out

  def zeros(self, shape_value, *, shape, dtype, name: str | None = None):
    """Zeros of `dtype` shaped by the int64 vector `shape_value`."""
    return self.node("ConstantOfShape", shape_value, shape=shape, dtype=dtype,
                     name=name, value=ir.tensor(np.zeros(1, dtype)))

  def cast(self, value, *, shape, dtype, name: str | None = None):
    return self.node("Cast", value, shape=shape, dtype=dtype, name=name,
                     to=ir.DataType.from_numpy(np.dtype(dtype)))

  def int64(self, values):
    """An int64 initializer."""
    return self._ctx.builder.add_initializer_from_array(
        name=self._ctx.fresh_name("jaxconv_i64"),
        array=np.asarray(values, dtype=np.int64))
