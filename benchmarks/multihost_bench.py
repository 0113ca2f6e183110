"""Weak scaling of a data-parallel training step across JAX processes.

The step is benchmarks/multihost.py's decoder (three jaxconv layers, loss,
gradients, SGD), its batch sharded over every device of every process, the
batch per process fixed.  Prints time per step and the collectives of the
compiled step.

On this machine (informative: the processes share its cores):
    python benchmarks/multihost_bench.py                  # 1, 2, 4 processes

On a real cluster, run one process per host (all with the same flags but
--process-id), process 0's host being the coordinator:
    python benchmarks/multihost_bench.py --coordinator HOST0:PORT \\
        --num-processes N --process-id I
(JAX picks each host's accelerators; on CPU hosts set
jax_cpu_collectives_implementation=gloo, as multihost.initialize does.)
"""
from __future__ import annotations

import argparse
import functools
import json
import pathlib
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks import multihost  # noqa: E402
from benchmarks.timing import progress  # noqa: E402


def worker(args) -> dict:
  if args.coordinator:
    multihost.initialize(args.coordinator, args.num_processes,
                         args.process_id)
  import jax
  import numpy as np
  from jax.sharding import Mesh, PartitionSpec as P
  mesh = Mesh(np.array(jax.devices()), ("data",))
  n = args.batch_per_process * jax.process_count()
  z0, y0 = multihost.batch(n)
  place = functools.partial(multihost.global_array, mesh)
  z, y = place(P("data"), z0), place(P("data"), y0)
  params = jax.tree.map(lambda v: place(P(), v), multihost.init_params())
  step = jax.jit(multihost.sgd_step)
  start = time.perf_counter()
  compiled = step.lower(params, z, y).compile()
  compile_s = time.perf_counter() - start
  times = []
  for i in range(args.steps + 2):
    start = time.perf_counter()
    jax.block_until_ready(compiled(params, z, y))
    if i >= 2:
      times.append(time.perf_counter() - start)
  return {"processes": jax.process_count(), "devices": jax.device_count(),
          "batch": n, "ms": statistics.median(times) * 1e3,
          "compile_s": compile_s,
          "collectives": multihost.collectives(compiled)}


def main():
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--coordinator",
                      help="HOST:PORT of process 0 (one process of a cluster)")
  parser.add_argument("--num-processes", type=int, default=1)
  parser.add_argument("--process-id", type=int, default=0)
  parser.add_argument("--batch-per-process", type=int, default=8)
  parser.add_argument("--steps", type=int, default=10,
                      help="timed steps (median), after 2 warm-up steps")
  parser.add_argument("--processes", default="1,2,4",
                      help="local runs: the process counts to try")
  parser.add_argument("--worker", action="store_true",
                      help=argparse.SUPPRESS)  # one process of a local run
  args = parser.parse_args()
  if args.worker or args.coordinator:
    result = worker(args)
    if args.process_id == 0:
      print(json.dumps(result), flush=True)
    return
  rows = []
  for count in map(int, args.processes.split(",")):
    progress(f"{count} process(es) ...")

    def argv(i, coordinator, count=count):
      distributed = (["--coordinator", coordinator, "--num-processes",
                      str(count), "--process-id", str(i)] if count > 1 else [])
      return [sys.executable, __file__, "--worker", *distributed,
              "--batch-per-process", str(args.batch_per_process),
              "--steps", str(args.steps)]
    out = multihost.launch(argv, count, devices_per_process=1, timeout_s=600)
    rows.append(json.loads(out[0].strip().splitlines()[-1]))
  base = rows[0]["ms"]
  print(f"{'processes':>9} {'batch':>6} {'ms/step':>9} {'efficiency':>11} "
        f"{'compile s':>10}  collectives")
  for r in rows:
    print(f"{r['processes']:9d} {r['batch']:6d} {r['ms']:9.2f} "
          f"{base / r['ms']:10.2f}x {r['compile_s']:10.2f}  "
          f"{r['collectives'] or 'none'}")


if __name__ == "__main__":
  main()
