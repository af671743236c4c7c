"""Shared test helpers. Tests run on CPU; float64 is enabled per test with `jax.enable_x64`.

Compiled programs are kept in a persistent XLA cache for the session (one temporary folder,
shared by the xdist workers and the subprocesses they start, removed at the end). Many tests
compile the same tiny training step again (each run, stop and resume of an entry point); with
the cache they load the compiled executable instead of recompiling it. A cache the caller set up
(`JAX_COMPILATION_CACHE_DIR`) is used as it is and kept.

Tests check values, not speed, and at their tiny shapes compiling costs more than running, so
they compile with XLA's backend optimisation off (`--xla_backend_optimization_level=0`) and
without XLA CPU's newer fusion emitters (`--xla_cpu_use_fusion_emitters=false`: fusions are
emitted the older, simpler way), both added to `XLA_FLAGS` unless the caller's flags already set
a level. Measured: the render and stage-2 objective tests 118 s -> 81 s with the first; the tiny
stage-2 train step compiles in 3.1 s instead of 5.8 s with the second added (the same loss, to
the last digit), and the whole suite went from 541 to 415 s. The programs compute the same
functions (results agree to float rounding; the benchmarks and every entry point keep XLA's
defaults). `SFM_JAX_TEST_XLA_OPTIMISE=1` keeps XLA's defaults. JAX reads these settings from the
environment when it is imported, so they are set here, before any test imports it;
subprocesses inherit them.
"""

import os
import shutil
import tempfile

import numpy as np
import pytest

SURREY_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "surrey")

_OWNED_CACHE = "SFM_JAX_TEST_CACHE_OWNER"
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:  # the first process of the session (xdist's
  # controller, or the only one): workers inherit its environment, so they share the folder
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="sfm_jax_xla_cache_")
  os.environ[_OWNED_CACHE] = str(os.getpid())
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
_flags = os.environ.get("XLA_FLAGS", "")
if (os.environ.get("SFM_JAX_TEST_XLA_OPTIMISE") != "1"
    and "xla_backend_optimization_level" not in _flags):
  os.environ["XLA_FLAGS"] = (f"{_flags} --xla_backend_optimization_level=0"
                             " --xla_cpu_use_fusion_emitters=false").strip()


def with_devices(env: dict, count: int) -> dict:
  """`env` with `count` fake host devices added to its `XLA_FLAGS` (for a subprocess)."""
  return {**env, "XLA_FLAGS": f"{env.get('XLA_FLAGS', '')} "
                              f"--xla_force_host_platform_device_count={count}".strip()}


def pytest_unconfigure(config):
  if os.environ.get(_OWNED_CACHE) == str(os.getpid()):
    shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


@pytest.fixture
def rng():
  return np.random.default_rng(0)


@pytest.fixture
def x64():
  import jax
  with jax.enable_x64(True):
    yield
