"""Everything the back end takes from outside JAX's stable surface, in one place.

JAX exposes no public StableHLO op builders; jaxlib ships the MLIR Python
bindings of the StableHLO dialect, which JAX itself uses.  Checked with
jax/jaxlib 0.10.x (the range pyproject.toml declares).
"""
from jax.extend.mlir import lower_with_sharding_in_types
from jax.interpreters import mlir
from jaxlib.mlir.dialects import stablehlo as hlo

__all__ = ["hlo", "ir_type", "finish"]


def ir_type(ctx, aval):
  """The MLIR tensor type of `aval` (symbolic dims become dynamic)."""
  return mlir.aval_to_ir_type(ctx.module_context, aval)


def finish(ctx, value, aval):
  """Attach the output sharding JAX expects when sharding is in types."""
  return lower_with_sharding_in_types(ctx, value, aval)
