"""float64 through the canonical form on CPU, where XLA CPU can run it.

    python -m tests.canonical_f64 --cases 40

jaxconv never lowers float64 to a CPU convolution (XLA CPU's algebraic
simplifier aborts the process on some lhs-dilated ones), so a worker
process registers the canonical form for CPU and checks random 1-3-D cases
against the float64 reference, one after another.  This supervisor restarts
a worker after the case that killed it and ends with the line
'canonical float64: N agree, M aborted (cases ...)'; a wrong value fails.
"""
from __future__ import annotations

import argparse
import subprocess
import sys


def _cases(count):
  """The case tests/fuzz.py found aborting XLA CPU, then random 1-3-D ones."""
  import numpy as np
  from jaxconv.lowering.geometry import ConvSpec
  from tests import configs
  rng = np.random.default_rng(64)
  found = (ConvSpec(input_spatial=(2, 3), strides=(2, 2), dilations=(1, 3),
                    padding=((2, 3), (1, 0)), groups=2, channels_last=False),
           rng.standard_normal((2, 2, 3, 2)), rng.standard_normal((2, 2, 3, 1)))
  return [found] + [configs.random_nd_case(rng, 1 + i % 3)
                    for i in range(count - 1)]


def worker(start: int, count: int) -> None:
  import functools

  import jax
  from jax.interpreters import mlir
  jax.config.update("jax_enable_x64", True)
  import jaxconv
  from jaxconv.lowering import canonical
  from tests.helpers import assert_close, reference_for_spec
  mlir.register_lowering(
      jaxconv.conv2d_backprop_input_p,
      functools.partial(canonical.lower, accumulate_f32=True), platform="cpu")
  for i, (spec, w, dy) in enumerate(_cases(count)):
    if i < start:
      continue
    print(f"start {i}", flush=True)
    lowered = jax.jit(lambda w, dy, spec=spec: jaxconv.conv2d_backprop_input_p
                      .bind(w, dy, spec=spec)).lower(w, dy)
    text = lowered.as_text()
    out = lowered.compile()(w, dy)
    assert "stablehlo.convolution" in text and "xf64>" in text, text
    assert_close(out, reference_for_spec(w, dy, spec), "float64", spec)
    print(f"ok {i}", flush=True)


def supervise(count: int) -> int:
  agree, aborted, start = 0, [], 0
  while start < count:
    proc = subprocess.run(
        [sys.executable, "-m", "tests.canonical_f64", "--cases", str(count),
         "--worker-from", str(start)], capture_output=True, text=True)
    agree += proc.stdout.count("ok ")
    if proc.returncode == 0:
      break
    last = int(proc.stdout.split("start ")[-1].split()[0])  # the case it died on
    if proc.returncode > 0:  # a Python error (a wrong value): fail loudly
      print(proc.stdout[-2000:], proc.stderr[-3000:])
      return 1
    aborted.append(last)
    print(f"case {last}: XLA CPU killed the process (signal "
          f"{-proc.returncode})", flush=True)
    start = last + 1
  print(f"canonical float64: {agree} agree, {len(aborted)} aborted (cases "
        f"{aborted})")
  return 0


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--cases", type=int, default=40)
  parser.add_argument("--worker-from", type=int, default=None,
                      help="(internal) run as a worker from this case on")
  args = parser.parse_args()
  if args.worker_from is not None:
    worker(args.worker_from, args.cases)
    return 0
  return supervise(args.cases)


if __name__ == "__main__":
  sys.exit(main())
