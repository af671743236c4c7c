"""Timing and roofline helpers shared by the benchmarks (no assertions: numbers are printed)."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np


def time_calls(run, sync, *, repeats: int, calls_per_repeat: int = 1) -> tuple[float, float]:
  """(first call seconds minus a steady call, median steady seconds per call).

  `run()` launches one call and returns what `sync(result)` waits for. Steady calls go in groups
  of `calls_per_repeat` launched back to back (dispatch overlaps device work, as in training),
  synchronised once per group; the median over `repeats` groups is returned.
  """
  start = time.perf_counter()
  sync(run())
  first = time.perf_counter() - start
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    results = [run() for _ in range(calls_per_repeat)]
    sync(results[-1])
    times.append((time.perf_counter() - start) / calls_per_repeat)
  steady = float(np.median(times))
  return max(first - steady, 0.0), steady


def time_jax(fn, *args, repeats: int, calls_per_repeat: int = 1) -> tuple[float, float]:
  return time_calls(lambda: fn(*args), jax.block_until_ready, repeats=repeats,
                    calls_per_repeat=calls_per_repeat)


def roofline(repeats: int = 10) -> dict:
  """The device's measured copy bandwidth (bytes/s, read + write) and matmul rates (FLOP/s) for
  float32 at HIGHEST precision and for bfloat16."""
  on_cpu = jax.default_backend() == "cpu"
  x = jnp.ones(((64 if on_cpu else 256) * 1024 * 1024 // 4,), jnp.float32)
  _, copy_s = time_jax(jax.jit(lambda x: x * 1.0001), x, repeats=repeats, calls_per_repeat=5)
  rates = {}
  n = 1024 if on_cpu else 8192
  for dtype in (jnp.float32, jnp.bfloat16):
    a = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)), dtype)
    mm = jax.jit(lambda a: jnp.matmul(a, a, precision=jax.lax.Precision.HIGHEST))
    _, mm_s = time_jax(mm, a, repeats=max(repeats // 2, 2), calls_per_repeat=3)
    rates[jnp.dtype(dtype).name] = 2 * n ** 3 / mm_s
  return {"bandwidth": 2 * x.nbytes / copy_s, "matmul": rates}


def against_roofline(step_s: float, bytes_moved: float, flops: float, machine: dict,
                     peak: str = "float32") -> dict:
  """A timed workload against `roofline()`'s `machine`: its step in ms, achieved GB/s and
  GFLOP/s, their fractions of the measured bandwidth and of the `peak` dtype's matmul rate, and
  the roofline time (the larger of bytes over bandwidth and FLOPs over rate) in ms."""
  rate, bandwidth = machine["matmul"][peak], machine["bandwidth"]
  return dict(step_ms=step_s * 1e3, gb_per_s=bytes_moved / step_s / 1e9,
              bandwidth_fraction=bytes_moved / step_s / bandwidth,
              gflop_per_s=flops / step_s / 1e9, matmul_fraction=flops / step_s / rate,
              roofline_ms=1e3 * max(bytes_moved / bandwidth, flops / rate))


def random_stage1_problem(*, vertices: int, shape_dim: int, expr_dim: int, num_scans: int,
                          classes: int, seed: int):
  """A stage-1 initialisation and identity labels of the given shapes with random values (step
  time does not depend on the values): (`stage1.PCAInit`, `[N]` int32 identities)."""
  from sfm_jax import stage1

  rng = np.random.default_rng(seed)
  v, k, e, n = vertices, shape_dim, expr_dim, num_scans
  init = stage1.PCAInit(mean=rng.normal(size=(v, 3)) * 50, shape_basis=rng.normal(size=(k, v, 3)),
                        expr_basis=rng.normal(size=(e, v, 3)), shape_codes=rng.normal(size=(n, k)),
                        expr_codes=rng.normal(size=(n, e)), radius=float(np.sqrt(k)),
                        shape_std=np.ones(k), expr_std=np.ones(e))
  return init, rng.integers(0, classes, n).astype(np.int32)


def write_json(path: str, results: dict) -> None:
  """Writes benchmark results as JSON atomically (creating the folder), with the host memory
  settings they ran under (`host_memory`: huge pages change CPU step times by 10-50%)."""
  import json
  import os

  from experiments import host
  from sfm_jax.io import atomic_write

  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with atomic_write(path, "w") as f:
    json.dump({**results, "host_memory": host.memory_settings()}, f, indent=1)
