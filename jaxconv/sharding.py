"""Sharding under JAX's explicit sharding mode: what the primitives' rules share.

With `AxisType.Explicit` mesh axes, shardings are part of the types
(`jax.typeof(x)` shows `float32[8@data,16,16,8]`) and each primitive says
how its result is sharded (its `_sharding_rule`, jaxconv/primitives/).
The rules, per activation layout `[N, *S, C]`
(or `[N, C, *S]`) and filter `[*K, C_in / groups, C_out]`:

  op      (filter, dy) -> result [N, *S, C_in]
  forward (x, filter)  -> dy     [N, *S', C_out]
  filter  (x, dy)      -> filter [*K, C_in / groups, C_out]

* the batch follows the batched operand's batch;
* the channels that survive follow the operand that carries them (the
  op's result channels the filter's in-depth, the forward's the filter's
  out-depth, the filter gradient's both), a grouped in-depth only if
  unsharded (its channels interleave with the groups);
* a sharded contracted dimension (the op's and forward's channels, the
  filter gradient's batch) needs `out_sharding`, as
  `jax.lax.conv_general_dilated` asks for it: the result is then reduced
  and sharded as given;
* spatial dimensions and filter windows must not be sharded.

Anything else is a `ShardingTypeError` saying what to do.  Only explicit
axes appear in types: in Auto mode and inside `shard_map` every rule
returns None (the result is typed as before).
"""
from __future__ import annotations

import jax
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxconv.lowering.geometry import ConvSpec

class ShardingTypeError(ValueError):
  """An operand sharding the rules cannot type (JAX's own is not public)."""


def _spec(aval) -> tuple:
  """aval's partition spec, one entry per dim (None: not sharded)."""
  sharding = getattr(aval, "sharding", None)
  spec = tuple(sharding.spec) if isinstance(sharding, NamedSharding) else ()
  return spec + (None,) * (len(aval.shape) - len(spec))


def is_sharded(aval, dim: int) -> bool:
  """Whether dim `dim` of aval is sharded in its type."""
  return dim < len(aval.shape) and bool(_spec(aval)[dim])


def _mesh(*avals):
  """The abstract mesh of the first aval with an explicitly sharded dim."""
  for aval in avals:
    if any(_spec(aval)):
      return aval.sharding.mesh
  return None


def as_named(out_sharding):
  """out_sharding as a NamedSharding (a PartitionSpec: on the current mesh)."""
  if out_sharding is None or isinstance(out_sharding, NamedSharding):
    return out_sharding
  if isinstance(out_sharding, P):
    return NamedSharding(jax.sharding.get_abstract_mesh(), out_sharding)
  raise TypeError(f"out_sharding must be a PartitionSpec or NamedSharding, got "
                  f"{out_sharding!r}")


def fail(what: str, operands: str) -> None:
  raise ShardingTypeError(
      f"{what} ({operands}); pass out_sharding= (a PartitionSpec or "
      "NamedSharding for the result) to have the result reduced and sharded "
      "as given, or reshard the operands (jax.sharding.reshard)")


def check_free(spec: ConvSpec, filter_spec, act_specs, names) -> None:
  """Spatial dims of activations and windows of filters stay unsharded."""
  if filter_spec is not None and any(filter_spec[:spec.ndim]):
    fail("the filter's window dims are sharded", names)
  for act in act_specs:
    if any(act[a] for a in spec.spatial_axes):
      fail("spatial dims are sharded", names)


def layout(spec: ConvSpec, batch, channels) -> P:
  out = [None] * (spec.ndim + 2)
  out[0], out[spec.feature_axis] = batch, channels
  used = [a for e in out if e for a in ((e,) if isinstance(e, str) else e)]
  if len(used) != len(set(used)):
    raise ShardingTypeError(
        f"the result would shard two dims over the same mesh axis ({P(*out)}); "
        "pass out_sharding= or reshard the operands (jax.sharding.reshard)")
  return P(*out)


def result(avals, names, out_sharding, rule):
  """The result's sharding: out_sharding where given, None where no operand
  has explicit axes, else rule(*operand specs, description of the
  operands named `names`)."""
  out_sharding = as_named(out_sharding)
  if out_sharding is not None:
    return out_sharding
  mesh = _mesh(*avals)
  if mesh is None:
    return None
  described = ", ".join(
      f"{n} {jax.core.ShapedArray(a.shape, a.dtype).str_short()} sharded "
      f"{P(*_spec(a))}" for n, a in zip(names, avals))
  return NamedSharding(mesh, rule(*map(_spec, avals), described))


def batched(rule, avals, dims, **params) -> NamedSharding:
  """The sharding of a batched result (vmapped dim first): `rule` on the
  operands without their vmapped dims, that dim's sharding in front."""
  leads, unbatched = set(), []
  for aval, dim in zip(avals, dims):
    spec = list(_spec(aval))
    shape = list(aval.shape)
    if dim is not None:
      leads.add(spec.pop(dim))
      del shape[dim]
    mesh = aval.sharding.mesh
    unbatched.append(aval.update(shape=tuple(shape),
                                 sharding=NamedSharding(mesh, P(*spec))))
  if len(leads) > 1:
    raise ShardingTypeError(
        f"the vmapped dims of the operands are sharded differently "
        f"({' and '.join(map(str, leads))}); reshard them alike "
        "(jax.sharding.reshard)")
  inner = rule(*unbatched, **params) or NamedSharding(mesh, P())
  rank = params["spec"].ndim + 2  # every result is an activation or filter
  return NamedSharding(inner.mesh, P(
      *leads, *inner.spec, *(None,) * (rank - len(inner.spec))))


def of(aval):
  """aval's sharding where sharding is in types (a transpose's
  out_sharding: a cotangent is typed like its primal), else None."""
  sharding = getattr(aval, "sharding", None)
  if isinstance(sharding, NamedSharding) and sharding.mesh.explicit_axes:
    return sharding
  return None
