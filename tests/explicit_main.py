"""Explicit sharding mode (shardings in types) on 8 simulated CPU devices.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m tests.explicit_main

tests/test_sharding.py runs this in a child process and reads the JSON
summary it prints last.  For every CPU strategy (forced, and the chosen
one) and every op of the family: each result equals the one-device result,
`jax.typeof` shows the sharding jaxconv/sharding.py promises, and the
compiled programs' collectives are counted.
"""
from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import AxisType, PartitionSpec as P  # noqa: E402

import jaxconv  # noqa: E402
from jaxconv import lowering  # noqa: E402
from jaxconv.sharding import ShardingTypeError  # noqa: E402
from tests.sharding_main import LAYERS, collectives, layer_of  # noqa: E402

E, A = AxisType.Explicit, AxisType.Auto
RNG = np.random.default_rng(0)


def randn(*shape):
  # NumPy: device_put of a host array onto a sharding transfers its shards;
  # that of a jax.Array compiles a slicing program each time.
  return RNG.standard_normal(shape).astype(np.float32)


def spec_of(x) -> str:
  return str(jax.typeof(x).sharding.spec)


def run(mesh, fn, *pairs):
  """fn jitted on (array, spec) pairs under `mesh`: (out, its collectives)."""
  with jax.set_mesh(mesh):
    args = [jax.device_put(a, spec) for a, spec in pairs]
    f = jax.jit(fn)
    out = f(*args)
    return out, collectives(f.lower(*args).compile().as_text())


def close(got, want, what):
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=2e-5,
                               atol=2e-5 * max(1, float(np.abs(w).max())),
                               err_msg=what)


def meshes():
  return {"data": jax.make_mesh((8,), ("data",), axis_types=(E,)),
          "grid": jax.make_mesh((4, 2), ("data", "model"), axis_types=(E, E)),
          "mixed": jax.make_mesh((4, 2), ("data", "model"), axis_types=(E, A))}


def check_strategy(strategy) -> dict:
  """The pattern table for one CPU strategy (None: the chosen one)."""
  sizes, filter_shape = LAYERS[layer_of(strategy or "dense")]
  dense = layer_of(strategy or "dense") == "dense"

  def op(w, dy, out_sharding=None):
    return jaxconv.conv2d_backprop_input(sizes, w, dy, [1, 2, 2, 1], "SAME",
                                         out_sharding=out_sharding)

  w, dy = randn(*filter_shape), randn(16, 8, 8, 16)
  ct, v = randn(*sizes), randn(*filter_shape)
  ms, out = meshes(), {}

  def record(name, got, want, counts, spec=None):
    close(got, want, name)
    out[name] = {"collectives": counts,
                 "type": [spec_of(g) for g in jax.tree.leaves(got)]}

  # The one-device values, each one jit (an eager transform would compile
  # each of its primitives apart).
  want = jax.jit(op)(w, dy)
  got, c = run(ms["data"], op, (w, P()), (dy, P("data")))
  record("data_parallel", got, want, c)
  w_auto = P(None, None, "model", None) if dense else P()  # in-depth, Auto
  got, c = run(ms["mixed"], op, (w, w_auto), (dy, P("data")))
  record("mixed_explicit_data_auto_model", got, want, c)

  def loss(w, dy):
    return jnp.vdot(jnp.sin(op(w, dy)), ct)
  grads = jax.grad(loss, argnums=(0, 1))
  got, c = run(ms["data"], grads, (w, P()), (dy, P("data")))
  record("grads", got, jax.jit(grads)(w, dy), c)

  def hvp(w, dy):  # second order: d/dw <d loss/dw, v>
    return jax.grad(lambda w: jnp.vdot(jax.grad(loss)(w, dy), v))(w)
  got, c = run(ms["data"], hvp, (w, P()), (dy, P("data")))
  record("second_order", got, jax.jit(hvp)(w, dy), c)

  ws = np.stack([w, 2 * w])
  batched = jax.vmap(op, in_axes=(0, None))
  got, c = run(ms["data"], batched, (ws, P()), (dy, P("data")))
  record("vmap_filters", got, jax.jit(batched)(ws, dy), c)
  dys = np.stack([dy, -dy])
  batched = jax.vmap(op, in_axes=(None, 0))
  got, c = run(ms["data"], batched, (w, P()), (dys, P(None, "data")))
  record("vmap_out_backprop", got, jax.jit(batched)(w, dys), c)
  vmap_grad = jax.vmap(jax.grad(loss), in_axes=(0, None))
  got, c = run(ms["data"], vmap_grad, (ws, P()), (dy, P("data")))
  record("vmap_of_grad", got, jax.jit(vmap_grad)(ws, dy), c)
  grad_vmap = jax.grad(lambda ws, dy: jnp.sum(jax.vmap(
      op, in_axes=(0, None))(ws, dy) ** 2))
  got, c = run(ms["data"], grad_vmap, (ws, P()), (dy, P("data")))
  record("grad_of_vmap", got, jax.jit(grad_vmap)(ws, dy), c)

  if dense:  # channel patterns need a filter in-depth the mesh divides
    got, c = run(ms["data"], op, (w, P(None, None, "data", None)), (dy, P()))
    record("filter_in_channels", got, want, c)
    with jax.set_mesh(ms["data"]):
      try:
        jax.jit(op)(jax.device_put(w, P(None, None, None, "data")),
                    jax.device_put(dy, P(None, None, None, "data")))
        raise AssertionError("contracted channels typed without out_sharding")
      except ShardingTypeError as e:
        assert "out_sharding" in str(e), e
    contracted = lambda w, dy: op(w, dy, out_sharding=P())
    got, c = run(ms["data"], contracted, (w, P(None, None, None, "data")),
                 (dy, P(None, None, None, "data")))
    record("contracted_channels", got, want, c)
    two_d = lambda w, dy: op(w, dy, out_sharding=P("data"))
    got, c = run(ms["grid"], two_d, (w, P(None, None, None, "model")),
                 (dy, P("data", None, None, "model")))
    record("2d_data_and_channels", got, want, c)
  return out


def family_calls():
  """Every op of the family, data parallel (batch 8): (name, fn, args, specs)."""
  x2, w2, dy2 = randn(8, 9, 8, 4), randn(3, 3, 4, 6), randn(8, 5, 4, 6)
  x3, w3, dy3 = randn(8, 5, 4, 6, 3), randn(2, 3, 3, 3, 4), randn(8, 3, 4, 3, 4)
  wd, dyd = randn(3, 3, 4, 2), randn(8, 5, 4, 8)
  s2 = dict(strides=[1, 2, 2, 1], padding="SAME")
  s3 = dict(strides=[1, 2, 1, 2, 1], padding="SAME")
  r, data, rep = jaxconv.raw_ops, P("data"), P()
  return [
      ("Conv2DBackpropInput", lambda w, dy: r.Conv2DBackpropInput(
          input_sizes=x2.shape, filter=w, out_backprop=dy, **s2), (w2, dy2)),
      ("Conv2DBackpropInputV2", lambda w, dy: r.Conv2DBackpropInputV2(
          input=x2, filter=w, out_backprop=dy, **s2), (w2, dy2)),
      ("Conv3DBackpropInputV2", lambda w, dy: r.Conv3DBackpropInputV2(
          input_sizes=x3.shape, filter=w, out_backprop=dy, **s3), (w3, dy3)),
      ("Conv3DBackpropInput", lambda w, dy: r.Conv3DBackpropInput(
          input=x3, filter=w, out_backprop=dy, **s3), (w3, dy3)),
      ("DepthwiseConv2dNativeBackpropInput",
       lambda w, dy: r.DepthwiseConv2dNativeBackpropInput(
           input_sizes=x2.shape, filter=w, out_backprop=dy, **s2), (wd, dyd)),
      ("Conv2DBackpropFilter", lambda x, dy: r.Conv2DBackpropFilter(
          input=x, filter_sizes=w2.shape, out_backprop=dy, **s2,
          out_sharding=rep), (x2, dy2)),
      ("Conv2DBackpropFilterV2", lambda x, dy: r.Conv2DBackpropFilterV2(
          input=x, filter=w2, out_backprop=dy, **s2, out_sharding=rep),
       (x2, dy2)),
      ("Conv3DBackpropFilterV2", lambda x, dy: r.Conv3DBackpropFilterV2(
          input=x, filter_sizes=w3.shape, out_backprop=dy, **s3,
          out_sharding=rep), (x3, dy3)),
      ("Conv3DBackpropFilter", lambda x, dy: r.Conv3DBackpropFilter(
          input=x, filter=w3, out_backprop=dy, **s3, out_sharding=rep),
       (x3, dy3)),
      ("DepthwiseConv2dNativeBackpropFilter",
       lambda x, dy: r.DepthwiseConv2dNativeBackpropFilter(
           input=x, filter_sizes=wd.shape, out_backprop=dy, **s2,
           out_sharding=rep), (x2, dyd)),
  ], data


def check_family() -> dict:
  calls, data = family_calls()
  mesh, out = meshes()["data"], {}
  for name, fn, (a, dy) in calls:
    filter_op = "Filter" in name
    a_spec = data if filter_op else P()
    want = jax.jit(fn)(a, dy)
    got, c = run(mesh, fn, (a, a_spec), (dy, data))
    close(got, want, name)
    grads = jax.grad(lambda a, dy: jnp.sum(jnp.sin(fn(a, dy))), argnums=(0, 1))
    got_g, c_g = run(mesh, grads, (a, a_spec), (dy, data))
    close(got_g, jax.jit(grads)(a, dy), name + " grads")
    batched = jax.vmap(fn, in_axes=(None, 0))  # vmap over out_backprop
    dys = np.stack([dy, -dy])
    got_v, c_v = run(mesh, batched, (a, a_spec), (dys, P(None, "data")))
    close(got_v, jax.jit(batched)(a, dys), name + " vmap")
    out[name] = {"type": spec_of(got), "collectives": c,
                 "grad_types": [spec_of(g) for g in got_g],
                 "grad_collectives": c_g, "vmap_type": spec_of(got_v),
                 "vmap_collectives": c_v}
  return out


def check_export() -> dict:
  """The canonical form exported for cuda and tpu under explicit sharding."""
  sizes, filter_shape = LAYERS["dense"]
  mesh = meshes()["data"]
  op = lambda w, dy: jaxconv.conv2d_backprop_input(sizes, w, dy, [1, 2, 2, 1],
                                                   "SAME")
  with jax.set_mesh(mesh):
    w = jax.device_put(randn(*filter_shape), P())
    dy = jax.device_put(randn(16, 8, 8, 16), P("data"))
    exported = jax.export.export(jax.jit(op), platforms=("cuda", "tpu"))(w, dy)
  text = exported.mlir_module()
  return {"out_type": str(exported.out_avals[0].str_short()),
          "platforms": list(exported.platforms),
          "sharded_result": "sdy.sharding" in text or "mhlo.sharding" in text,
          "convolutions": text.count("stablehlo.convolution")}


def check_errors() -> dict:
  """Shardings the rules cannot type: a ShardingTypeError saying what to do."""
  sizes, filter_shape = LAYERS["dense"]
  w, dy, x = randn(*filter_shape), randn(16, 8, 8, 16), randn(*sizes)
  op = lambda w, dy: jaxconv.conv2d_backprop_input(sizes, w, dy, [1, 2, 2, 1],
                                                   "SAME")
  flt = lambda x, dy: jaxconv.raw_ops.Conv2DBackpropFilter(
      input=x, filter_sizes=filter_shape, out_backprop=dy,
      strides=[1, 2, 2, 1], padding="SAME")
  cases = {
      "spatial": (op, (w, P()), (dy, P(None, "data"))),
      "filter_window": (op, (randn(8, 3, 8, 16), P("data")), (dy, P())),
      "contracted_channels": (op, (w, P(None, None, None, "data")), (dy, P())),
      "filter_grad_batch": (flt, (x, P("data")), (dy, P("data"))),
  }
  out = {}
  with jax.set_mesh(meshes()["data"]):
    for name, (fn, *pairs) in cases.items():
      args = [jax.device_put(a, spec) for a, spec in pairs]
      try:
        jax.jit(fn)(*args)
        out[name] = "no error"
      except ShardingTypeError as e:
        out[name] = str(e)
  return out


def main() -> int:
  assert jax.device_count() == 8, jax.devices()
  summary = {}
  for strategy in (None, *lowering.cpu.STRATEGIES["backprop_input"]):  # chosen, then each
    jax.clear_caches()
    key = strategy or "chosen"
    print(f"checking {key} ...", file=sys.stderr, flush=True)
    with lowering.force_strategy(strategy) as lowered:
      summary[key] = check_strategy(strategy)
    summary[key]["lowered"] = sorted(set(lowered.backprop_input))
  print("checking the family ...", file=sys.stderr, flush=True)
  summary["family"] = check_family()
  summary["export"] = check_export()
  summary["errors"] = check_errors()
  print(json.dumps(summary))
  return 0


if __name__ == "__main__":
  sys.exit(main())
