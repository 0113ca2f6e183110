"""A raw op's layer as an ONNX model or a TFLite flatbuffer (the CLI's
`export --format onnx|tflite`).

ONNX goes through jax2onnx with `jaxconv.onnx`'s lowerings (the `onnx`
extra).  TFLite goes through jax2tf and TF's converter: TFLite's
TRANSPOSE_CONV gives wrong values or fails for some of TF's sizes, so each
CPU form of the op's primitive is tried in turn, run in the TFLite
interpreter on random data, and the first whose values match jaxconv's is
kept (`tflite` returns its name and error).
"""
from __future__ import annotations

import warnings
from typing import Callable

import jax
import numpy as np

from jaxconv import lowering
from jaxconv.export import LayerConfig, layer_function
from jaxconv.lowering.cpu import STRATEGIES, applies

# The forms tried for TFLite, first to last: those it was seen to convert
# right (dots, matmuls, stride-1 convolutions; the portable forms' lhs
# dilation it refuses or miscomputes) first, then every other XLA strategy.
_TFLITE_FIRST = {"backprop_input": ("subpixel", "subpixel_fused",
                                    "gemm_col2im"),
                 "backprop_filter": ("standard", "depthwise", "grouped"),
                 "forward": ("standard",)}
# Max error allowed, relative to the result's scale.
TFLITE_RTOL = 1e-4


def onnx(config: LayerConfig, *, batch: str | None = None,
         grad: bool = False, filter_values=None):
  """The layer (with `grad`: and its VJP) as an onnx.ModelProto; with
  `filter_values` the filter is a constant (an initializer)."""
  import jax2onnx
  import jaxconv.onnx  # noqa: F401  (registers the lowerings)
  fn, args = layer_function(config, batch=batch, grad=grad,
                            filter_values=filter_values)
  return jax2onnx.to_onnx(fn, args, model_name=fn.__name__)


def tflite_candidates(config: LayerConfig) -> tuple[str, ...]:
  """The XLA CPU forms of the layer's primitive that apply to it, in the
  order TFLite is tried with them."""
  primitive = config.primitive
  first = _TFLITE_FIRST[primitive]
  names = (*first, *(n for n in STRATEGIES[primitive] if n not in first))
  return tuple(n for n in names if n != "onednn" and applies(
      n, config.spec(), config.hwio_filter_sizes, np.dtype(config.dtype),
      primitive=primitive))


def tflite(config: LayerConfig, log: Callable[[str], None] = lambda m: None,
           *, filter_values=None) -> tuple[bytes, str, float]:
  """(flatbuffer, form, max relative error) of the first CPU form of the
  layer that TFLite converts and computes right (with `filter_values`
  the filter a constant, which TFLite converts differently); ValueError
  if none."""
  import tensorflow as tf
  if config.dtype != "float32":
    raise TypeError(f"--format tflite: float32 only, got {config.dtype}")
  fn, args = layer_function(config, filter_values=filter_values)
  rng = np.random.default_rng(0)
  operands = [rng.standard_normal(a.shape).astype(np.float32) for a in args]
  want = np.asarray(jax.jit(fn)(*operands), np.float64)
  scale = max(1.0, float(np.max(np.abs(want), initial=0)))
  failures = []
  for form in tflite_candidates(config):
    try:
      model = _convert(tf, fn, args, config.primitive, form)
      got = _interpret(tf, model, operands)
    except Exception as e:  # noqa: BLE001 - the next form is tried
      failures.append(f"{form}: {type(e).__name__}: "
                      f"{str(e).strip().splitlines()[-1][:200] if str(e) else ''}")
      log(f"tflite: {form}: does not convert ({failures[-1]})")
      continue
    if got.shape != want.shape:
      failures.append(f"{form}: shape {got.shape}, not {want.shape}")
    else:
      err = float(np.max(np.abs(got - want), initial=0)) / scale
      if err <= TFLITE_RTOL:
        return model, form, err
      failures.append(f"{form}: max relative error {err:.3g}")
    log(f"tflite: {form}: wrong in TFLite ({failures[-1]})")
  raise ValueError(f"--format tflite: no CPU form of {config.op} converts "
                   f"right: {'; '.join(failures)}")


def _convert(tf, fn, args, primitive, form) -> bytes:
  from jax.experimental import jax2tf
  with lowering.force_strategy(strict=True, **{primitive: form}):
    converted = jax2tf.convert(jax.jit(fn),
                               native_serialization_platforms=("cpu",))
    signature = [tf.TensorSpec(a.shape, tf.float32) for a in args]
    concrete = tf.function(converted, autograph=False).get_concrete_function(
        *signature)
    return tf.lite.TFLiteConverter.from_concrete_functions(
        [concrete]).convert()


def _interpret(tf, model: bytes, operands) -> np.ndarray:
  with warnings.catch_warnings():  # its move to ai_edge_litert, announced
    warnings.simplefilter("ignore")
    interpreter = tf.lite.Interpreter(model_content=model)
  interpreter.allocate_tensors()
  for detail, a in zip(interpreter.get_input_details(), operands):
    interpreter.set_tensor(detail["index"], a)
  interpreter.invoke()
  out, = interpreter.get_output_details()
  return interpreter.get_tensor(out["index"]).astype(np.float64)
