"""Every function of the family (raw ops, tf.nn, tf.compat.v1.nn) against
the float64 reference and JAX's own conv VJPs, through jit, grad of order
2, vmap and a symbolic-batch export loaded in a fresh process."""
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export
from jax.test_util import check_grads

from jaxconv import reference
from tests import family
from tests.helpers import assert_close

ROOT = pathlib.Path(__file__).resolve().parents[1]
NAMES = sorted(family.OPS)


def _cases(name, count, seed, dtype=None, nonempty=False, batch=None):
  """count drawn calls of `name` (dtype overridden: values are kept)."""
  rng = np.random.default_rng(seed)
  draw = family.OPS[name][1]
  out = []
  while len(out) < count:
    case = draw(rng)
    cfg = case.cfg
    shapes = [a.shape for a in case.arrays.values()]
    if nonempty and 0 in (*cfg["out_backprop_shape"], *cfg["input_sizes"],
                          *cfg["filter_shape"]):
      continue
    if batch and (len(cfg["input_sizes"]) != len(cfg["strides"])
                  or cfg["out_backprop_shape"][0] < 1 or not shapes):
      continue
    if dtype:
      cfg["dtype"] = dtype
      case.arrays = {k: v.astype(dtype) for k, v in case.arrays.items()}
    out.append(case)
  return out


@pytest.mark.x64
@pytest.mark.parametrize("name", NAMES)
def test_matches_reference(name):
  cases = _cases(name, 12, seed=NAMES.index(name))
  outs = family.run_jitted([(c.fn, c.kwargs, c.arrays, c.cfg["dtype"])
                            for c in cases])
  for case, out in zip(cases, outs):
    dtype = case.cfg["dtype"]
    assert str(out.dtype) == dtype
    want = family.reference_result(case.cfg, case.kwargs, case.arrays)
    assert_close(out, want, dtype, (name, case.cfg))


def _lax_dimension_numbers(fmt):
  n = len(fmt) - 2
  return (fmt, "DHW"[3 - n:] + "IO", fmt)


@pytest.mark.x64
@pytest.mark.parametrize("name", NAMES)
def test_matches_jax_conv_vjp(name):
  # The VJP of lax.conv_general_dilated w.r.t. its input or its filter.
  for case in _cases(name, 4, seed=100 + NAMES.index(name), dtype="float64",
                     nonempty=True):
    cfg = case.cfg
    fmt, n = cfg["data_format"], len(cfg["strides"]) - 2
    geometry = reference.tf_geometry(fmt, cfg["strides"], cfg["padding"],
                                     cfg["explicit_paddings"],
                                     cfg["dilations"])
    x_shape = family.full_input_shape(cfg)
    hwio = cfg["filter_shape"]
    pads = [reference.pads(cfg["padding"], i, k, s, d, e) for i, k, s, d, e
            in zip(family.spatial(x_shape, fmt), hwio[:n], geometry["strides"],
                   geometry["dilations"],
                   geometry["explicit"] or [(0, 0)] * n)]
    groups = x_shape[-1 if fmt[-1] == "C" else 1] // hwio[-2]

    def conv(x, w):
      return jax.lax.conv_general_dilated(
          x, w, geometry["strides"], pads, rhs_dilation=geometry["dilations"],
          dimension_numbers=_lax_dimension_numbers(fmt),
          feature_group_count=groups)
    if "filter" in case.arrays:
      w = np.reshape(case.arrays["filter"], hwio)
      primal, operand = (lambda x: conv(x, w)), np.zeros(x_shape)
    else:
      x = case.arrays["input"]
      primal, operand = (lambda w: conv(x, w)), np.zeros(hwio)
    # One jit: JAX's VJP of the convolution (eager, each of its primitives
    # would compile apart, the forward convolution too).
    want, = jax.jit(lambda a, ct: jax.vjp(primal, a)[1](ct))(
        operand, case.arrays["dy"])
    out = family.run(case.fn, case.kwargs, case.arrays, "float64")
    np.testing.assert_allclose(out, np.reshape(want, out.shape), rtol=1e-11,
                               atol=1e-11)


@pytest.mark.x64
@pytest.mark.parametrize("name", NAMES)
def test_check_grads_order_2(name):
  for case in _cases(name, 2, seed=200 + NAMES.index(name), dtype="float64",
                     nonempty=True):
    f, tensors = family.as_function(case)
    check_grads(f, tensors, order=2, modes=["fwd", "rev"])


@pytest.mark.x64
@pytest.mark.parametrize("in_axes", [(0, None), (None, 0), (0, 0)])
@pytest.mark.parametrize("name", NAMES)
def test_vmap_matches_loop(name, in_axes):
  case, = _cases(name, 1, seed=300 + NAMES.index(name), dtype="float64",
                 nonempty=True)
  f, tensors = family.as_function(case)
  rng = np.random.default_rng(1)
  stacked = [np.stack([t + rng.standard_normal(t.shape) for _ in range(3)])
             if ax == 0 else t for t, ax in zip(tensors, in_axes)]
  got = jax.jit(jax.vmap(f, in_axes=in_axes))(*stacked)  # one compile
  for i in range(3):
    args = [s[i] if ax == 0 else s for s, ax in zip(stacked, in_axes)]
    np.testing.assert_allclose(got[i], f(*args), rtol=1e-12, atol=1e-12)


def _symbolic_batch_function(case, b):
  """(f, abstract args, arrays (3 images), which args are batched) for a
  case with batch `b`."""
  names = family.tensor_names(case)
  zeros = {k: v["$zeros"] for k, v in case.kwargs.items()
           if isinstance(v, dict)}

  def f(*tensors):
    batch = tensors[names.index("dy")].shape[0]  # symbolic when exported
    kw = {k: (tensors[names.index(v[1:])] if isinstance(v, str) and
              v.startswith("$") else v) for k, v in case.kwargs.items()}
    for key in ("input_sizes", "output_shape"):
      if key in kw:
        kw[key] = [batch, *kw[key][1:]]
    for k, shape in zeros.items():  # a V2/v1 op's shape-only tensor
      shape = (batch, *shape[1:]) if k == "input" else shape
      kw[k] = jnp.zeros(shape, tensors[0].dtype)
    return family.function(case.fn)(**kw)
  batched = {"dy", "input"}
  rng = np.random.default_rng(0)
  args, arrays = [], []
  for n in names:
    a = case.arrays[n].astype(np.float32)
    if n in batched:
      a = rng.standard_normal((3, *a.shape[1:])).astype(np.float32)
      args.append(jax.ShapeDtypeStruct((b, *a.shape[1:]), np.float32))
    else:
      args.append(jax.ShapeDtypeStruct(a.shape, np.float32))
    arrays.append(a)
  return f, args, arrays, [n in batched for n in names]


def test_symbolic_batch_export_round_trip_in_a_fresh_process(tmp_path):
  b, = export.symbolic_shape("b")
  manifest = {}
  for name in NAMES:
    case, = _cases(name, 1, seed=400 + NAMES.index(name), nonempty=True,
                   batch=True)
    f, args, arrays, flags = _symbolic_batch_function(case, b)
    exp = export.export(jax.jit(f), platforms=["cpu"])(*args)
    assert str(exp.in_avals[family.tensor_names(case).index("dy")].shape[0]) == "b"
    path = tmp_path / f"{name}.bin"
    path.write_bytes(exp.serialize())
    inputs = {f"arg{i}": a for i, a in enumerate(arrays)}
    np.savez(tmp_path / f"{name}.npz", batched=np.array(flags), **inputs)
    want = {n: np.asarray(f(*[a[:n] if batched else a
                              for a, batched in zip(arrays, flags)]))
            for n in (1, 3)}
    manifest[name] = {str(n): w.tolist() for n, w in want.items()}
  script = (
      "import json, sys, numpy as np\n"
      "from jax import export\n"
      "root, names = sys.argv[1], json.loads(sys.argv[2])\n"
      "for name in names:\n"
      "  exp = export.deserialize(open(f'{root}/{name}.bin', 'rb').read())\n"
      "  inputs = np.load(f'{root}/{name}.npz')\n"
      "  flags = inputs['batched']\n"
      "  arrays = [inputs[f'arg{i}'] for i in range(len(flags))]\n"
      "  for n in (1, 3):\n"
      "    args = [a[:n] if batched else a for a, batched in zip(arrays, flags)]\n"
      "    np.save(f'{root}/{name}.{n}.npy', np.asarray(exp.call(*args)))\n"
      "assert 'jaxconv' not in sys.modules\n"
      "print('loaded', len(names))\n")
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  proc = subprocess.run([sys.executable, "-c", script, str(tmp_path),
                         json.dumps(NAMES)], capture_output=True, text=True,
                        cwd=tmp_path, env=env, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f"loaded {len(NAMES)}" in proc.stdout
  for name in NAMES:
    for n in (1, 3):
      got = np.load(tmp_path / f"{name}.{n}.npy")
      np.testing.assert_allclose(got, manifest[name][str(n)], rtol=1e-5,
                                 atol=1e-5, err_msg=name)


FAMILY = {"conv_backprop_input", "conv_forward", "conv_backprop_filter"}


def _primitives(jaxpr):
  """Names of every primitive in a (closed) jaxpr, sub-jaxprs included (a
  param holding a jaxpr or a sequence of them: cond's branches, pjit's)."""
  names = set()
  for eqn in jaxpr.eqns:
    names.add(eqn.primitive.name)
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        if hasattr(sub, "eqns"):
          names |= _primitives(sub)
  return names


@pytest.mark.parametrize("name", NAMES)
def test_gradients_stay_in_the_family(name):
  # First- and second-order gradients are the op's partner convolutions
  # (and the op): JAX never transposes a lax convolution, which XLA would
  # turn into a slow window-reversed one.
  case, = _cases(name, 1, seed=500 + NAMES.index(name), dtype="float32",
                 nonempty=True)
  f, tensors = family.as_function(case)
  argnums = tuple(range(len(tensors)))
  g1 = jax.grad(lambda *t: jnp.sum(jnp.sin(f(*t))), argnums=argnums)
  g2 = jax.grad(lambda *t: sum(jnp.sum(g ** 2) for g in g1(*t)),
                argnums=argnums)
  for g in (g1, g2):
    prims = _primitives(jax.make_jaxpr(g)(*tensors).jaxpr)
    assert "conv_general_dilated" not in prims
    assert FAMILY <= prims, prims


F32 = np.float32
C3BI = dict(input_sizes=[1, 4, 4, 4, 2], filter=np.ones((2, 2, 2, 2, 3), F32),
            out_backprop=np.ones((1, 4, 4, 4, 3), F32),
            strides=[1, 1, 1, 1, 1], padding="SAME")
C2BF = dict(input=np.ones((1, 4, 4, 2), F32), filter_sizes=[2, 2, 2, 3],
            out_backprop=np.ones((1, 4, 4, 3), F32), strides=[1, 1, 1, 1],
            padding="SAME")
DWBI = dict(input_sizes=[1, 4, 4, 2], filter=np.ones((2, 2, 2, 3), F32),
            out_backprop=np.ones((1, 4, 4, 6), F32), strides=[1, 1, 1, 1],
            padding="SAME")
DWBF = dict(input=np.ones((1, 4, 4, 2), F32), filter_sizes=[2, 2, 2, 3],
            out_backprop=np.ones((1, 4, 4, 6), F32), strides=[1, 1, 1, 1],
            padding="SAME")


def _op(name, base, **overrides):
  return lambda: family.function(name)(**{**base, **overrides})


@pytest.mark.parametrize("call, error, message", [
    # Only Conv2DBackpropInput (and what is built on it) takes int32.
    (_op("raw_ops.Conv3DBackpropInputV2", C3BI,
         filter=np.ones((2, 2, 2, 2, 3), np.int32),
         out_backprop=np.ones((1, 4, 4, 4, 3), np.int32)),
     TypeError, "filter has dtype int32; expected one of"),
    (_op("raw_ops.Conv2DBackpropFilter", C2BF,
         input=np.ones((1, 4, 4, 2), np.int32)),
     TypeError, "input has dtype int32"),
    # The 3-D ops have no EXPLICIT padding (and no explicit_paddings).
    (_op("raw_ops.Conv3DBackpropInputV2", C3BI, padding="EXPLICIT"),
     ValueError, r"padding must be one of \('SAME', 'VALID'\)"),
    (_op("raw_ops.Conv3DBackpropInputV2", C3BI, explicit_paddings=[0] * 10),
     TypeError, "explicit_paddings"),
    (_op("raw_ops.Conv3DBackpropInputV2", C3BI, strides=[1, 1, 1, 1]),
     ValueError, "strides must have 5 entries"),
    (_op("raw_ops.Conv3DBackpropInputV2", C3BI, input_sizes=[4, 4, 4]),
     ValueError, "input_sizes must have 5 entries"),
    # TF's depthwise checks.
    (_op("raw_ops.DepthwiseConv2dNativeBackpropInput", DWBI,
         input_sizes=[1, 4, 4, 3]),
     ValueError, "input and filter must have the same in_depth"),
    (_op("raw_ops.DepthwiseConv2dNativeBackpropInput", DWBI,
         out_backprop=np.ones((1, 4, 4, 5), F32)),
     ValueError, r"depth_multiplier \* in_depth not equal to out_depth"),
    (_op("raw_ops.DepthwiseConv2dNativeBackpropFilter", DWBF,
         filter_sizes=[2, 2, 3, 2]),
     ValueError, "input and filter must have the same in_depth"),
    # Filter gradients: filter_sizes against input and out_backprop.
    (_op("raw_ops.Conv2DBackpropFilter", C2BF, filter_sizes=[2, 2, 2, 4]),
     ValueError, "filter and out_backprop must have the same out_depth"),
    (_op("raw_ops.Conv2DBackpropFilter", C2BF, filter_sizes=[2, 2, 3, 3]),
     ValueError, "input depth must be evenly divisible by filter depth"),
    (_op("raw_ops.Conv2DBackpropFilter", C2BF, filter_sizes=[2, 2, 2]),
     ValueError, "filter_sizes must have 4 entries"),
    (_op("raw_ops.Conv2DBackpropFilter", C2BF,
         out_backprop=np.ones((2, 4, 4, 3), F32)),
     ValueError, "same batch size"),
    (_op("raw_ops.Conv2DBackpropFilter", C2BF,
         out_backprop=np.ones((1, 3, 4, 3), F32)),
     ValueError, "Size of out_backprop doesn't match computed"),
    # V2/v1: the shape tensor's dtype must match.
    (_op("raw_ops.Conv2DBackpropFilterV2", {
        k: v for k, v in C2BF.items() if k != "filter_sizes"},
        filter=np.zeros((2, 2, 2, 3), np.float64)),
     TypeError, "Input 'filter' has type float64 that does not match"),
    (_op("raw_ops.Conv3DBackpropInput", {
        k: v for k, v in C3BI.items() if k != "input_sizes"},
        input=np.zeros((1, 4, 4, 4, 2), F32), data_format="NCDHW"),
     TypeError, "data_format"),
    # tf.nn / compat.v1 wrappers.
    (lambda: family.function("nn.conv2d_transpose")(
        np.ones((1, 4, 4, 3), F32), np.ones((2, 2, 2, 3), F32), [1, 4, 4, 2],
        [1, 1, 1]), ValueError, "strides should be of length 1, 2 or 4"),
    (lambda: family.function("nn.conv2d_transpose")(
        np.ones((1, 4, 4, 3), F32), np.ones((2, 2, 2, 3), F32), [1, 4, 4, 2],
        1, padding="EXPLICIT"), ValueError, "'EXPLICIT' is not a valid value"),
    (lambda: family.function("nn.conv2d_transpose")(
        np.ones((1, 4, 4, 3), F32), np.ones((2, 2, 2, 3), F32), [1, 4, 4, 2],
        1, padding=[[0, 0], [1, 1], [1, 1]]),
     ValueError, "it must be of size 4"),
    (lambda: family.function("nn.conv_transpose")(
        np.ones((1, 4, 4, 3), F32), np.ones((2, 2, 2, 3), F32),
        [1, 4, 4, 4, 4, 2], 1), ValueError, "must be of length 3, 4 or 5"),
    (lambda: family.function("nn.conv1d_transpose")(
        np.ones((1, 4, 3), F32), np.ones((2, 2, 3), F32), [1, 4, 2], 1,
        data_format="NHWC"), ValueError, "must be 'NWC' or 'NCW'"),
    (lambda: family.function("nn.conv3d_transpose")(
        np.ones((1, 4, 4, 4, 3), F32), np.ones((2, 2, 2, 2, 3), F32),
        [1, 4, 4, 4, 2], 1, padding=[[0, 0]] * 5),
     ValueError, "padding must be one of"),
    (lambda: family.function("nn.atrous_conv2d_transpose")(
        np.ones((1, 4, 4, 3), F32), np.ones((2, 2, 2, 3), F32), [1, 4, 4, 2],
        0, "SAME"), ValueError, "`rate` cannot be less than one"),
    (lambda: family.function("nn.atrous_conv2d_transpose")(
        np.ones((1, 4, 4, 3), F32), np.ones((2, 2, 2, 3), F32), [1, 4, 4, 2],
        2, "FULL"), ValueError, "`padding` must be either 'VALID' or 'SAME'"),
    (lambda: family.function("compat.v1.nn.conv2d_transpose")(
        np.ones((1, 4, 4, 3), F32), np.ones((2, 2, 2, 3), F32), [1, 4, 4, 2],
        input=np.ones((1, 4, 4, 3), F32)),
     ValueError, "Cannot specify both 'input' and 'value'"),
    (lambda: family.function("compat.v1.nn.conv3d_transpose")(
        np.ones((1, 4, 4, 4, 3), F32), np.ones((2, 2, 2, 2, 3), F32),
        [1, 4, 4, 4, 2], 1, filters=np.ones((2, 2, 2, 2, 3), F32)),
     ValueError, "Cannot specify both 'filters' and 'filter'"),
    # Static sizes: a traced filter_sizes is refused with the fix.
    (lambda: jax.jit(lambda s: family.function("raw_ops.Conv2DBackpropFilter")(
        **{**C2BF, "filter_sizes": s}))(np.array([2, 2, 2, 3])),
     TypeError, "filter_sizes must be static"),
])
def test_tf_checks(call, error, message):
  with pytest.raises(error, match=message):
    call()


def test_shape_tensors_may_be_traced():
  # V2/v1 ops read only the shape of their input/filter tensor.
  f = jax.jit(lambda x, dy: family.function("raw_ops.Conv2DBackpropFilterV2")(
      input=x, filter=jnp.zeros((2, 2, 2, 3), x.dtype), out_backprop=dy,
      strides=[1, 1, 1, 1], padding="SAME"))
  g = jax.jit(lambda x: family.function("raw_ops.Conv3DBackpropInput")(
      input=x, filter=C3BI["filter"], out_backprop=C3BI["out_backprop"],
      strides=[1, 1, 1, 1, 1], padding="SAME"))
  np.testing.assert_allclose(
      f(C2BF["input"], C2BF["out_backprop"]),
      family.function("raw_ops.Conv2DBackpropFilter")(**C2BF))
  np.testing.assert_allclose(
      g(jnp.zeros((1, 4, 4, 4, 2), F32)),
      family.function("raw_ops.Conv3DBackpropInputV2")(**C3BI))
