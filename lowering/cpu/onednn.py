"""The native strategy: oneDNN's convolution kernels through XLA's FFI.

One typed FFI handler (native/onednn_conv.cc, built at install as
`_onednn`) runs the three primitives on the kernels TF's CPU ops use:
oneDNN's forward, backward-data and backward-weights convolutions, on
operands in TF's layouts, caching every primitive per configuration.  Each
float32 configuration is timed once, at its first call, both in oneDNN's own
(blocked) layouts with reorders from and to TF's and in TF's layouts for
the activations, and keeps the faster; `JAXCONV_ONEDNN_LAYOUTS=onednn` or
`=tf` pins one of the two for every configuration (half precision always
takes oneDNN's layouts: on TF's, oneDNN 3.2 gave wrong bfloat16 filter
gradients).  It is emitted only where a
custom call is safe (`lowering/_compat.custom_call_refusal`: never in an
export, never where XLA's SPMD partitioner would gather the operands), for
the dtypes oneDNN has a kernel for on this CPU (float32 everywhere;
bfloat16/float16 where the ISA has them), and where the extension loaded;
`JAXCONV_ONEDNN=0` turns it off.
"""
from __future__ import annotations

import contextlib
import contextvars
import ctypes
import functools
import importlib.metadata
import logging
import os
import sys

import jax
import numpy as np

from .. import index
from ..geometry import ConvSpec

__all__ = ["available", "backprop_filter", "backprop_input", "dtypes",
           "forward", "layout_tuning", "pinned_layouts", "refusal",
           "turned_off"]

TARGET = "jaxconv_onednn_conv"
_KINDS = {"forward": 0, "backprop_input": 1, "backprop_filter": 2}
_log = logging.getLogger("jaxconv")
_off: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "jaxconv_onednn_off", default=False)


@contextlib.contextmanager
def turned_off():
  """Inside: the native strategy is refused (XLA's strategies only)."""
  token = _off.set(True)
  try:
    yield
  finally:
    _off.reset(token)


def _preload_runtime():
  """Load libdnnl.so.3 from the onednn-cpu-gomp wheel (the extension's
  RPATH finds it in a plain environment; this covers the others)."""
  try:
    files = importlib.metadata.distribution("onednn-cpu-gomp").files or ()
  except importlib.metadata.PackageNotFoundError:
    return
  for file in files:
    if file.name == "libdnnl.so.3":
      ctypes.CDLL(str(file.locate()), mode=ctypes.RTLD_GLOBAL)
      return


LAYOUTS = ("onednn", "tf")


def _checked_layouts(policy: str, name: str) -> str:
  if policy not in ("", *LAYOUTS):
    raise ValueError(f"{name}={policy!r}: expected one of {LAYOUTS} "
                     "('' or unset: each configuration timed both ways)")
  return policy


@functools.cache
def _extension():
  """(module, "") once loaded and registered, else (None, why)."""
  layouts = _checked_layouts(os.environ.get("JAXCONV_ONEDNN_LAYOUTS", ""),
                             "JAXCONV_ONEDNN_LAYOUTS")
  if os.environ.get("JAXCONV_ONEDNN", "1") == "0":
    why = "turned off by JAXCONV_ONEDNN=0"
  elif not sys.platform.startswith("linux"):
    why = "built on Linux only"
  else:
    try:
      _preload_runtime()
      from . import _onednn
    except (ImportError, OSError) as error:
      why = f"the extension did not load ({error})"
    else:
      _onednn.set_layouts(layouts)
      jax.ffi.register_ffi_target(TARGET, _onednn.handler(), platform="cpu")
      return _onednn, ""
  _log.warning("jaxconv: oneDNN back end unavailable (%s); CPU lowerings use "
               "XLA's strategies", why)
  return None, why


def available() -> bool:
  """Whether the extension is built, loaded and registered."""
  return _extension()[0] is not None


@functools.cache
def dtypes() -> frozenset:
  """The dtypes oneDNN has a kernel (not its reference code) for on this
  CPU, for all three primitives."""
  native, _ = _extension()
  if native is None:
    return frozenset()
  return frozenset(
      np.dtype(name) for name in ("float32", "bfloat16", "float16")
      if all(not impl.startswith(("unsupported", "ref"))
             for impl in (native.implementation(name, kind)
                          for kind in _KINDS.values())))


@functools.cache
def avx512() -> bool:
  """Whether oneDNN's float32 kernels here are its AVX-512 (or AMX) ones."""
  native, _ = _extension()
  return native is not None and any(
      "avx512" in impl or "amx" in impl
      for impl in (native.implementation("float32", kind)
                   for kind in _KINDS.values()))


def layout_tuning() -> tuple[int, float]:
  """(configurations timed both ways, seconds those timings took) in this
  process so far; (0, 0.0) without the extension."""
  native, _ = _extension()
  if native is None:
    return 0, 0.0
  return native.layouts_tuned(), native.tuning_seconds()


@contextlib.contextmanager
def pinned_layouts(policy: str):
  """Run float32 calls inside this block on one layout policy, as
  JAXCONV_ONEDNN_LAYOUTS does for a process: "onednn" (blocked, with
  reorders), "tf" (TF's for the activations) or "" (each configuration
  timed both ways).  It acts when a call runs, not when it is lowered: a
  compiled function runs on the block's policy (primitives are cached per
  policy).  Process-wide; the policy before is restored at the end."""
  native, why = _extension()
  _checked_layouts(policy, "policy")
  if native is None:
    raise RuntimeError(f"the oneDNN back end is unavailable ({why})")
  before = native.layout_policy()
  native.set_layouts(policy)
  try:
    yield
  finally:
    native.set_layouts(before)


def refusal(dtype) -> str:
  """Why the native strategy cannot lower a call of `dtype` here ("" where
  it can)."""
  if _off.get():
    return "turned off in this block (xla_strategies)"
  _, why = _extension()
  if why:
    return f"the oneDNN back end is unavailable ({why})"
  if np.dtype(dtype) not in dtypes():
    return f"oneDNN has no kernel for {np.dtype(dtype)} on this CPU"
  return index.custom_call_refusal()


def _i64(values):
  return np.asarray(values, np.int64)


def _call(primitive, a, b, out_shape, spec: ConvSpec):
  """The handler on a, b with the result `out_shape` (a's dtype)."""
  out = jax.ShapeDtypeStruct(out_shape, a.dtype)
  if index.any_empty(a.shape, b.shape, out_shape):
    return jax.numpy.zeros(out_shape, a.dtype)
  return jax.ffi.ffi_call(TARGET, out)(
      a, b, kind=np.int64(_KINDS[primitive]), strides=_i64(spec.strides),
      dilations=_i64(spec.dilations),
      pad_l=_i64([lo for lo, _ in spec.padding]),
      pad_r=_i64([hi for _, hi in spec.padding]),
      groups=np.int64(spec.groups),
      channels_last=np.int64(spec.channels_last))


def backprop_input(filt, dy, *, spec: ConvSpec):
  """TF's backprop input: oneDNN's backward-data convolution."""
  shape = spec.activation_shape(dy.shape[0], filt.shape[-2] * spec.groups,
                                spec.input_spatial)
  return _call("backprop_input", filt, dy, shape, spec)


def backprop_filter(x, dy, *, spec: ConvSpec, kernel):
  """TF's backprop filter: oneDNN's backward-weights convolution."""
  shape = spec.filter_shape(kernel, x.shape[spec.feature_axis],
                            dy.shape[spec.feature_axis])
  return _call("backprop_filter", x, dy, shape, spec)


def forward(x, filt, *, spec: ConvSpec):
  """TF's forward convolution: oneDNN's forward convolution."""
  shape = spec.activation_shape(x.shape[0], filt.shape[-1],
                                spec.out_backprop_spatial(filt.shape[:spec.ndim]))
  return _call("forward", x, filt, shape, spec)
