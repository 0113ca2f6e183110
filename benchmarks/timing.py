"""Side-by-side timing: interleaved repetitions in one process, medians."""
from __future__ import annotations

import random
import statistics
import sys
import time
from typing import Callable

import jax


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
