"""Side-by-side timing: interleaved repetitions in one process, medians."""
from __future__ import annotations

import os
import random
import statistics
import sys
import time
from typing import Callable

import jax


# glibc returns every freed buffer above its (adaptive) mmap threshold to
# the OS, so a process that allocates large fresh outputs per call (XLA CPU
# does) page-faults them in again on every call until the threshold has
# grown: measured here, a 16 MB-output layer ran 10-16 ms for the first
# minute of a process and 3.7 ms once steady.  Pinning the thresholds (and
# a short warm-up: the first seconds stay slow, for reasons not pinned down)
# lets every candidate (jaxconv, XLA, TF, PyTorch alike) run steady.
STEADY_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20),
                 "MALLOC_TRIM_THRESHOLD_": str(4 << 30)}


def steady_allocator() -> None:
  """Re-execute this process once with glibc's malloc thresholds pinned
  (STEADY_MALLOC); call in a benchmark's main() once its arguments parse."""
  if any(os.environ.get(k) != v for k, v in STEADY_MALLOC.items()):
    os.execve(sys.executable, [sys.executable, *sys.argv],
              {**os.environ, **STEADY_MALLOC})


def compile_seconds(fn, *args) -> tuple[Callable, float]:
  """Compile `fn` for `args`; return the compiled callable and seconds taken."""
  t = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  return compiled, time.perf_counter() - t


def interleaved_medians(calls: dict[str, Callable[[], object]], reps: int,
                        warmup: int = 2, budget_s: float = 20.0) -> dict[str, float]:
  """Median seconds per call, running each candidate in turn `reps` times.

  Interleaving (in a shuffled order each round) spreads machine noise and
  neighbours' after-effects (thread pools still spinning) evenly over the
  candidates; a time budget caps slow candidates (at least 3 rounds).
  """
  for _ in range(warmup):
    for f in calls.values():
      jax.block_until_ready(f())
  samples = {k: [] for k in calls}
  order = list(calls)
  shuffle = random.Random(0).shuffle
  start = time.perf_counter()
  for i in range(reps):
    shuffle(order)  # no candidate always follows the same neighbour
    for name in order:
      t = time.perf_counter()
      jax.block_until_ready(calls[name]())
      samples[name].append(time.perf_counter() - t)
    if i >= 2 and time.perf_counter() - start > budget_s:
      break
  return {k: statistics.median(v) for k, v in samples.items()}


def progress(msg: str) -> None:
  print(msg, file=sys.stderr, flush=True)
