"""Test helpers, in one module: run a TF-style config through jaxconv and
the reference, compare results, require the optional extras."""
from __future__ import annotations

import importlib
import os
import re

import jax
import jax.numpy as jnp
import numpy as np

import jaxconv
from jaxconv import reference

# Max abs error allowed relative to the result's scale, per dtype.
RTOL = {"float64": 1e-12, "float32": 2e-6, "float16": 2e-3, "bfloat16": 1.6e-2,
        "int32": 0}


def spatial(values, data_format):
  return list(values[1:-1]) if data_format.endswith("C") else list(values[2:])


# CI sets this: a missing optional extra is then an error, not a skip.
REQUIRE_EXTRAS = os.environ.get("JAXCONV_REQUIRE_EXTRAS") == "1"
RNG = np.random.default_rng(0)


def require(*modules: str):
  """Import the optional extras a test module needs; skip the module (with
  the reason) where one is missing, unless REQUIRE_EXTRAS."""
  for name in modules:
    if REQUIRE_EXTRAS:
      importlib.import_module(name)
    else:
      import pytest
      pytest.importorskip(name, reason=f"the optional extra providing "
                          f"{name!r} is not installed (pip install -e "
                          "'.[test]')")


def randn(*shape):
  return RNG.standard_normal(shape).astype(np.float32)


def run_op(cfg, filt, dy):
  dtype = jnp.dtype(cfg["dtype"])
  return jaxconv.raw_ops.Conv2DBackpropInput(
      input_sizes=cfg["input_sizes"], filter=jnp.asarray(filt, dtype),
      out_backprop=jnp.asarray(dy, dtype), strides=cfg["strides"],
      padding=cfg["padding"], explicit_paddings=cfg["explicit_paddings"],
      data_format=cfg["data_format"], dilations=cfg["dilations"])


def run_reference(cfg, filt, dy, **kw):
  """Float64 (or wrapped int32) reference of the op for a config."""
  return reference.raw_backprop_input(
      cfg["input_sizes"], filt, dy, strides=cfg["strides"],
      padding=cfg["padding"], explicit_paddings=cfg["explicit_paddings"],
      data_format=cfg["data_format"], dilations=cfg["dilations"], **kw)


def assert_close(actual, expected, dtype: str, context="", rtol=None):
  """Max error within RTOL[dtype] (or `rtol`) times the expected result's
  scale."""
  actual = np.asarray(actual)
  assert actual.shape == expected.shape, (actual.shape, expected.shape, context)
  if dtype == "int32":
    np.testing.assert_array_equal(actual, expected, err_msg=str(context))
    return 0.0
  err = float(np.max(np.abs(actual.astype(np.float64) - expected), initial=0))
  scale = max(1.0, float(np.max(np.abs(expected), initial=0)))
  assert err <= (RTOL[dtype] if rtol is None else rtol) * scale, (
      err, scale, context)
  return err


def assert_matches_peer(got, want, what=""):
  """Against another library's float32 result (TF, Keras, PyTorch): same
  shape, values within float32 tolerance of the result's scale."""
  got, want = np.asarray(got), np.asarray(want)
  assert got.shape == want.shape, (what, got.shape, want.shape)
  scale = max(1.0, float(np.abs(want).max(initial=0)))
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=3e-5 * scale,
                             err_msg=what)


def convolutions(text):
  """The lines of StableHLO text that are convolutions."""
  return [line for line in text.splitlines() if "stablehlo.convolution" in line]


def negative_conv_pads(text):
  """Negative padding amounts of every convolution in a module."""
  pads = []
  for conv in convolutions(text):
    m = re.search(r"pad = \[((?:\[-?\d+, -?\d+\](?:, )?)+)\]", conv)
    if m:
      pads += [int(v) for v in re.findall(r"-?\d+", m.group(1)) if int(v) < 0]
  return pads


def reference_for_spec(filt, dy, spec, **kw):
  """The reference for a ConvSpec built by a test with its own (explicit)
  pads: nothing comes from the code under test."""
  return reference.backprop_input(
      filt, dy, input_spatial=spec.input_spatial, strides=spec.strides,
      dilations=spec.dilations, padding="EXPLICIT", explicit=spec.padding,
      groups=spec.groups, channels_last=spec.channels_last, **kw)


def assert_filter_gradient_matches(fn, spec, kernel, x, dy):
  """fn(x, dy, spec=, kernel=) in float32 against the standard
  filter-gradient convolution in float64, within 1e-5 of its scale."""
  from jaxconv.lowering import partners
  got = jax.jit(lambda a, b: fn(a, b, spec=spec, kernel=kernel))(x, dy)
  want = partners.backprop_filter(x.astype(np.float64), dy.astype(np.float64),
                                  spec=spec, kernel=kernel)
  assert got.shape == want.shape and got.dtype == np.float32
  scale = max(1.0, float(np.max(np.abs(want))))
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * scale)


def filter_gradient_route(spec, kernel, x, dy):
  """(the CPU strategies the filter-gradient partner lowers x, dy with, the
  StableHLO text)."""
  from jaxconv.lowering import cpu
  with cpu.force_strategy() as lowered:
    text = jax.jit(lambda x, dy: cpu.backprop_filter(
        x, dy, spec=spec, kernel=kernel)).lower(x, dy).as_text()
  return lowered.backprop_filter, text
