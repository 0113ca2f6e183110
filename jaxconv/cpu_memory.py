"""glibc's allocator held steady for CPU training: `keep_freed_memory()`.

XLA CPU allocates each run's intermediates as one temporary buffer
(38.5 MB for the decoder step of `benchmarks/model_bench.py`).  glibc
serves a block over 32 MB (the highest mmap threshold it allows) with
fresh pages from the kernel and unmaps them when freed, and its per-thread
arenas unmap heaps that empty, so every step faults in and zeroes its
buffer again (figures: benchmarks/README.md, "The allocator").  TF
allocates per tensor, under the threshold, and does not pay it.  Opt in by
calling `keep_freed_memory()` at startup, or run with the equivalent
`MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1073741824 MALLOC_ARENA_MAX=1`.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging

__all__ = ["keep_freed_memory"]

_log = logging.getLogger("jaxconv")
# mallopt's parameters (glibc's malloc.h) and the values set.
_SETTINGS = {"M_MMAP_MAX": (-4, 0), "M_TRIM_THRESHOLD": (-1, 1 << 30),
             "M_ARENA_MAX": (-8, 1)}


def keep_freed_memory() -> bool:
  """From now on glibc keeps freed memory for reuse: no mmap for large
  blocks, no trimming, one arena for new threads.

  Call it before JAX's first computation: threads that have allocated
  already (XLA's, once JAX has run anything) keep their own arenas.  The
  process's resident memory then stays at its peak, and threads share one
  arena's lock.  Returns whether it applied (not where the C library is
  not glibc).
  """
  name = ctypes.util.find_library("c")
  try:
    libc = ctypes.CDLL(name)
    mallopt = libc.mallopt
  except (OSError, AttributeError, TypeError):
    _log.warning("jaxconv: keep_freed_memory: no glibc mallopt here (%s)",
                 name)
    return False
  for param, (code, value) in _SETTINGS.items():
    if mallopt(code, value) != 1:
      _log.warning("jaxconv: keep_freed_memory: mallopt(%s, %d) refused",
                   param, value)
      return False
  return True
