"""Everything the back end takes from outside JAX's stable surface, in one place.

JAX exposes no public StableHLO op builders; jaxlib ships the MLIR Python
bindings of the StableHLO dialect, which JAX itself uses.  Lowering under
explicit sharding (sharding in types) needs the rule context's avals
rewritten and the result's sharding attached, as JAX's own rules do.
Each difference between the supported JAX releases (pyproject.toml's range,
tested at both ends) is absorbed here, next to the release that needs it.
"""
import contextlib
import inspect
import re

import jaxlib
from jax.extend.mlir import lower_with_sharding_in_types
from jax.interpreters import mlir
from jax.sharding import (AxisType, NamedSharding, PartitionSpec,
                          use_abstract_mesh)
from jaxlib.mlir.dialects import stablehlo as hlo

from . import index

__all__ = ["hlo", "ir_type", "finish", "lower_fun", "varying_axes",
           "batch_split", "custom_call_refusal", "placement",
           "XLA_CPU_YNN_CONVOLUTIONS"]

_JAXLIB = tuple(int(v) for v in re.findall(r"\d+", jaxlib.__version__)[:3])

# jaxlib < 0.10.1: XLA CPU runs every convolution on Eigen; since, it hands
# wide float32 2-D ones to YNNPACK (lowering/cpu/eigen_conv.py steers them
# back where Eigen is faster).
XLA_CPU_YNN_CONVOLUTIONS = _JAXLIB >= (0, 10, 1)


# jax < 0.10.1: aval_to_ir_type(aval); since: aval_to_ir_type(module_ctx, aval).
_IR_TYPE_TAKES_CONTEXT = len(
    inspect.signature(mlir.aval_to_ir_type).parameters) == 2


def varying_axes(aval) -> frozenset:
  """The manual (shard_map) axes a value varies over."""
  # jax 0.9.x: aval.vma; 0.10.1 on: aval.mat.varying (its manual axis
  # type); told apart by the attribute, so 0.10.0 takes whichever it has.
  mat = getattr(aval, "mat", None)
  return mat.varying if mat is not None else aval.vma


def batch_split(ctx) -> int:
  """How many ways a rule's batch (dim 0 of its activations) is split over
  devices, as far as lowering can know: by the operands' explicit axes
  where sharding is in their types; else, under jit over n devices (Auto
  axes: XLA partitions after lowering), n ways, the data-parallel case;
  inside shard_map, 1 (its avals are one device's already)."""
  typed = [a for a in ctx.avals_in
           if isinstance(getattr(a, "sharding", None), NamedSharding)
           and a.sharding.mesh.explicit_axes]
  if typed:
    return max(a.shape[0] // a.sharding.shard_shape(a.shape)[0]
               if a.shape and index.is_static(a.shape[0]) and a.shape[0]
               else 1 for a in typed)
  # jit: a ShardingContext with num_devices; shard_map: SPMDAxisContext
  # (none). The same on jax 0.9.1 to 0.12.
  return getattr(ctx.module_context.axis_context, "num_devices", 1)


def custom_call_refusal(ctx) -> str:
  """Why a custom call must not be emitted by this rule ("" where it may):
  an export (its artifact must run where jaxconv is not installed), or a
  module XLA's SPMD partitioner splits over devices (it would gather a
  custom call's operands); inside a shard_map manual over every mesh axis
  each device's shard is what a kernel sees."""
  module = ctx.module_context
  # LoweringParameters.for_export and the axis contexts: the same on jax
  # 0.9.1 to 0.12.
  if module.lowering_parameters.for_export:
    return "an export stays portable StableHLO"
  axes = module.axis_context
  if getattr(axes, "num_devices", 1) > 1:
    return "XLA's SPMD partitioner would gather a custom call's operands"
  mesh = getattr(axes, "mesh", None)
  if mesh is not None and any(
      size > 1 for name, size in mesh.shape.items()
      if name not in axes.manual_axes):
    return ("a shard_map not manual over every mesh axis is partitioned by "
            "XLA, which would gather a custom call's operands")
  return ""


@contextlib.contextmanager
def placement(ctx):
  """A block where the CPU rules know this rule's batch split, whether it
  may emit custom calls (see `batch_split`, `custom_call_refusal`) and the
  platforms of the export it is lowered for, if any."""
  module = ctx.module_context
  # ModuleContext.platforms: the same on jax 0.9.1 to 0.12.
  export = (tuple(module.platforms)
            if module.lowering_parameters.for_export else None)
  with index.batch_split(batch_split(ctx)), index.custom_calls(
      custom_call_refusal(ctx)), index.exporting(export):
    yield


def ir_type(ctx, aval):
  """The MLIR tensor type of `aval` (symbolic dims become dynamic)."""
  if _IR_TYPE_TAKES_CONTEXT:
    return mlir.aval_to_ir_type(ctx.module_context, aval)
  return mlir.aval_to_ir_type(aval)


def finish(ctx, value, aval):
  """Attach the output sharding JAX expects when sharding is in types."""
  return lower_with_sharding_in_types(ctx, value, aval)


def lower_fun(fn):
  """`mlir.lower_fun(fn)` for a one-result rule; under explicit sharding,
  fn is traced with its operands' and result's explicit axes made Auto (its
  reshapes and convolutions stay unannotated: XLA partitions them) and the
  result's sharding is attached at the end."""
  lowered = mlir.lower_fun(fn, multiple_results=False)

  def rule(ctx, *args, **params):
    mesh = next((a.sharding.mesh for a in (*ctx.avals_in, *ctx.avals_out)
                 if isinstance(getattr(a, "sharding", None), NamedSharding)
                 and a.sharding.mesh.explicit_axes), None)
    with placement(ctx):
      if mesh is None:
        return lowered(ctx, *args, **params)
      auto = mesh.update_axis_types(
          {a: AxisType.Auto for a in mesh.explicit_axes})
      untyped = NamedSharding(auto, PartitionSpec())
      inner = ctx.replace(
          avals_in=[a.update(sharding=untyped) for a in ctx.avals_in],
          avals_out=[a.update(sharding=untyped) for a in ctx.avals_out])
      with use_abstract_mesh(auto):
        out, = lowered(inner, *args, **params)
      return [finish(ctx, out, ctx.avals_out[0])]
  return rule
