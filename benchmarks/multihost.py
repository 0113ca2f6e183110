"""Multi-controller JAX on one machine: the model and the launcher that the
many-hosts tests (tests/multihost_main.py) and benchmark
(benchmarks/multihost_bench.py) share.

- `decoder`: a small U-Net-style decoder of jaxconv layers (two strided
  transposed convolutions, one with TF's odd output size, a stride-1
  head), its parameters, loss and SGD step.
- `launch`: starts N local JAX processes (coordinator on 127.0.0.1, a free
  port), each in its own process group, and waits a bounded time; the
  first process that fails (or the deadline) kills them all at once, so a
  failure never waits in a collective.
- `initialize`: what each process calls first (gloo CPU collectives);
  `global_array`: a value every process has, as a sharded global array.
- `collectives`: the collectives of a compiled step, counted.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import tempfile
import time

# (name, in channels, out channels, output spatial size, stride)
LAYERS = (("up1", 32, 16, 8, 2), ("up2", 16, 8, 15, 2), ("head", 8, 4, 15, 1))
LATENT = (4, 4, 32)


def init_params(seed: int = 0) -> dict:
  """Filters [3, 3, out, in] (tf.nn.conv2d_transpose's layout) and biases."""
  import numpy as np
  rng = np.random.default_rng(seed)
  return {name: {"w": (rng.standard_normal((3, 3, co, ci))
                       / np.sqrt(9 * ci)).astype(np.float32),
                 "b": np.zeros((co,), np.float32)}
          for name, ci, co, _, _ in LAYERS}


def batch(n: int, seed: int = 1):
  """A batch of latents [n, 4, 4, 32] and targets [n, 15, 15, 4]."""
  import numpy as np
  rng = np.random.default_rng(seed)
  z = rng.standard_normal((n, *LATENT)).astype(np.float32)
  y = rng.standard_normal((n, LAYERS[-1][3], LAYERS[-1][3],
                           LAYERS[-1][2])).astype(np.float32)
  return z, y


def global_array(mesh, spec, value):
  """`value` (the same on every process) as a global array sharded by
  `spec` over `mesh`: each process builds only its own shards."""
  import jax
  from jax.sharding import NamedSharding
  return jax.make_array_from_callback(value.shape, NamedSharding(mesh, spec),
                                      lambda index: value[index])


def decoder(params, z, out_shardings=None, reduce=None):
  """out_shardings: {layer: out_sharding} (explicit sharding); reduce:
  {layer: f(partial result)} (inside shard_map: the psum of a layer whose
  contracted channels are split)."""
  import jax
  import jaxconv
  h = z
  for name, _, _, size, stride in LAYERS:
    w, b = params[name]["w"], params[name]["b"]  # w: [3, 3, out, in]
    h = jaxconv.nn.conv2d_transpose(
        h, w, [h.shape[0], size, size, w.shape[2]], stride, "SAME",
        out_sharding=(out_shardings or {}).get(name))
    h = (reduce or {}).get(name, lambda v: v)(h) + b
    if name != LAYERS[-1][0]:
      h = jax.nn.relu(h)
  return h


def loss(params, z, y, **layers):
  import jax.numpy as jnp
  return jnp.mean((decoder(params, z, **layers) - y) ** 2)


def sgd_step(params, z, y, lr=0.1, **layers):
  """One SGD step: (new params, loss, gradients); `layers` as `decoder`."""
  import jax
  value, grads = jax.value_and_grad(loss)(params, z, y, **layers)
  return jax.tree.map(lambda p, g: p - lr * g, params, grads), value, grads


COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all",
               "collective-permute")


def collectives(compiled) -> dict:
  """{kind: count} of the collectives in a compiled (jax.stages) function."""
  text = compiled.as_text()
  counts = {c: len(re.findall(rf"\b{c}(?:-start)?\(", text))
            for c in COLLECTIVES}
  return {c: n for c, n in counts.items() if n}


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def initialize(coordinator: str, num_processes: int, process_id: int,
               timeout_s: int = 60) -> None:
  """jax.distributed on the CPU with gloo collectives; the coordinator
  listens on `coordinator` (127.0.0.1:PORT for local runs) only."""
  import jax
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(
      coordinator_address=coordinator, num_processes=num_processes,
      process_id=process_id, coordinator_bind_address=coordinator,
      initialization_timeout=timeout_s, heartbeat_timeout_seconds=timeout_s,
      shutdown_timeout_seconds=timeout_s)


def launch(argv, num_processes: int, devices_per_process: int,
           timeout_s: float = 300, env: dict | None = None) -> list[str]:
  """Run `argv(process_id, coordinator)` as `num_processes` local processes
  with `devices_per_process` CPU devices each; their stdouts, in order.

  Raises RuntimeError (with the failing process's stderr) as soon as one
  exits non-zero, or at the deadline; every process is killed then."""
  coordinator = f"127.0.0.1:{free_port()}"
  env = {**os.environ, **(env or {}), "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": f"--xla_force_host_platform_device_count="
                      f"{devices_per_process}"}
  with tempfile.TemporaryDirectory() as tmp:
    logs = [(open(f"{tmp}/{i}.out", "w+"), open(f"{tmp}/{i}.err", "w+"))
            for i in range(num_processes)]
    procs = [subprocess.Popen(argv(i, coordinator), env=env, text=True,
                              stdout=out, stderr=err, start_new_session=True)
             for i, (out, err) in enumerate(logs)]
    deadline = time.monotonic() + timeout_s
    try:
      while True:
        codes = [p.poll() for p in procs]
        failed = [i for i, c in enumerate(codes) if c not in (None, 0)]
        if failed or None not in codes or time.monotonic() > deadline:
          break
        time.sleep(0.1)
      if failed or None in codes:
        _kill(procs)
        if not failed:
          raise RuntimeError(f"no result within {timeout_s:.0f} s; process 0's "
                             f"stderr ends:\n{_read(logs[0][1])}")
        raise RuntimeError("\n".join(
            f"process {i} of {num_processes} exited with {codes[i]}; its "
            f"stderr ends:\n{_read(logs[i][1], 2000)}" for i in failed))
      return [_read(out, tail=None) for out, _ in logs]
    finally:
      _kill(procs)
      for files in logs:
        for f in files:
          f.close()


def _read(f, tail: int | None = 4000) -> str:
  f.flush()
  f.seek(0)
  text = f.read()
  return text if tail is None else text[-tail:]


def _kill(procs) -> None:
  """SIGKILL each process's group (it and anything it started)."""
  for p in procs:
    if p.poll() is None:
      try:
        os.killpg(p.pid, signal.SIGKILL)
      except ProcessLookupError:
        pass
  for p in procs:
    try:
      p.wait(timeout=10)
    except subprocess.TimeoutExpired:
      pass
