"""Data parallelism: one mesh axis `data`, batch sharded, state replicated, same step on 1 or many
devices and hosts. All parallelism of the project lives here, including the split of one
device's batch into groups that XLA runs side by side (`split_groups`, `join_groups`: the
renderer's and the encoder's groups on a multi-core CPU).

The default path jits the shared `train_step` with `NamedSharding`s: the loss is written for the
global batch, so XLA inserts the cross-device reductions itself and the math (gradient averages,
batch statistics such as the isotropy term's) does not depend on the device count.

The `pmap` path (for users who ask for it) runs `train_step(..., axis_name="data")` per device:
gradients and metrics are averaged with `pmean`, and loss functions built with `axis_name`
gather the few per-sample quantities that couple samples (codes and labels for the identity and
isotropy terms) with `all_gather`, so both paths give the same numbers. It is single-process.

Multi-host: call `initialize_distributed` first; every process runs the same program, builds the
mesh over all devices, feeds its own contiguous slice of each global batch (`process_slice`,
`shard_batch`), and the jitted step sees one global batch.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from sfm_jax.train_state import STEP_COMPILER_OPTIONS

DATA_AXIS = "data"


def initialize_distributed(*, coordinator_address: str = "", num_processes: int = 0,
                           process_id: int = -1, cpu_collectives: str = "gloo") -> None:
  """`jax.distributed.initialize`, from arguments or the standard environment variables.

  Empty / non-positive arguments fall back to `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES` and
  `JAX_PROCESS_ID`, and otherwise to JAX's own cluster detection (SLURM, Open MPI, TPU pods).
  On CPU, cross-process collectives use `cpu_collectives` (gloo).
  """
  # Only CPU backends read this; asking which backend is in use would start it too early.
  jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
  kwargs = {}
  address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS", "")
  count = num_processes if num_processes > 0 else int(os.environ.get("JAX_NUM_PROCESSES", "0"))
  index = process_id if process_id >= 0 else int(os.environ.get("JAX_PROCESS_ID", "-1"))
  if address:
    kwargs["coordinator_address"] = address
  if count > 0:
    kwargs["num_processes"] = count
  if index >= 0:
    kwargs["process_id"] = index
  jax.distributed.initialize(**kwargs)


def sync_processes(name: str) -> None:
  """Waits until every process has reached this point (a no-op in a single process); e.g. until
  process 0 has written a file the others read."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def chief_first(build, *, name: str, enabled: bool = True):
  """`build()` in every process, process 0's first: with `enabled` (e.g. `build` writes files
  that it reads back when they exist), the other processes wait at `sync_processes(name)` until
  process 0's `build` has returned, then run theirs; without, all build at once (e.g. the same
  deterministic data in memory). Returns this process's `build()`."""
  chief = jax.process_index() == 0
  if enabled and not chief:
    sync_processes(name)
  built = build()
  if enabled and chief:
    sync_processes(name)
  return built


def split_groups(x: jax.Array, groups: int) -> list[jax.Array]:
  """`x [B, ...]` as `groups` arrays `[B / groups, ...]`, row b in group b mod `groups` (so a
  batch sharded along B over devices splits into groups on each device without moving data);
  `[x]` when `groups` is 1 or does not divide B. `join_groups` is the inverse.

  Work on the groups is independent, so XLA can run it side by side: on a CPU, one group per
  core keeps every core busy through chains of operations that each use one thread."""
  batch = x.shape[0]
  if groups <= 1 or batch % groups:
    return [x]
  rows = x.reshape((batch // groups, groups) + x.shape[1:])
  return [rows[:, group] for group in range(groups)]


def join_groups(parts: list[jax.Array]) -> jax.Array:
  """The batch `[B, ...]` whose groups (`split_groups`) are `parts`."""
  if len(parts) == 1:
    return parts[0]
  return jnp.stack(parts, 1).reshape((-1,) + parts[0].shape[1:])


def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh over `devices` (default: every device of every process) with axis `data`."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.array(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over `data`, the rest whole."""
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def check_global_batch(global_batch_size: int, mesh: Mesh) -> None:
  """Raises `ValueError` unless the global batch splits evenly over devices."""
  devices = mesh.devices.size
  if global_batch_size % devices:
    raise ValueError(f"train.global_batch_size={global_batch_size} does not divide by the "
                     f"{devices} devices of the mesh; use a multiple of {devices}")


def process_slice(global_batch_size: int, mesh: Mesh) -> slice:
  """This process's contiguous part of every global batch (its devices' rows, in mesh order)."""
  devices = list(mesh.devices.flat)
  per_device = global_batch_size // len(devices)
  mine = [i for i, d in enumerate(devices) if d.process_index == jax.process_index()]
  if mine != list(range(mine[0], mine[-1] + 1)):
    raise ValueError("this process's devices are not contiguous in the mesh")
  return slice(mine[0] * per_device, (mine[-1] + 1) * per_device)


def shard_batch(local_batch: Any, mesh: Mesh) -> Any:
  """Global batch arrays from each process's local rows (`process_slice` of the global batch)."""
  sharding = batch_sharding(mesh)
  return jax.tree_util.tree_map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Every array of `tree` replicated on the mesh (identical host values on every process)."""
  sharding = replicated_sharding(mesh)

  def put(x):
    host = np.asarray(jax.device_get(x) if isinstance(x, jax.Array) and x.is_fully_addressable
                      else x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

  return jax.tree_util.tree_map(put, tree)


def to_host(tree: Any) -> Any:
  """Numpy copies of replicated (or local) arrays, on any process."""
  def get(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return np.asarray(x.addressable_data(0))
    return np.asarray(x)
  return jax.tree_util.tree_map(get, tree)


def data_parallel_step(step_fn: Callable, mesh: Mesh) -> Callable:
  """`step_fn(state, batch) -> (state, metrics)` jitted over the mesh: state replicated and
  donated, batch sharded along `data`, metrics replicated; compiled with the donated step's
  options (`train_state.STEP_COMPILER_OPTIONS`)."""
  replicated = replicated_sharding(mesh)
  return jax.jit(step_fn, in_shardings=(replicated, batch_sharding(mesh)),
                 out_shardings=(replicated, replicated), donate_argnums=0,
                 compiler_options=STEP_COMPILER_OPTIONS)


# ---------------------------------------------------------------------------------------------
# The pmap variant.


def pmap_step(step_fn: Callable, devices=None) -> Callable:
  """`step_fn(state, batch, axis_name=...)` mapped over local devices with `jax.pmap`.

  Inputs and outputs carry a leading device axis (`pmap_replicate`, `pmap_split`).
  """
  return jax.pmap(functools.partial(step_fn, axis_name=DATA_AXIS), axis_name=DATA_AXIS,
                  devices=devices, donate_argnums=0)


def pmap_replicate(tree: Any, num_devices: int) -> Any:
  """A leading device axis of size `num_devices` on every array (host copies)."""
  return jax.tree_util.tree_map(
      lambda x: np.repeat(np.asarray(x)[None], num_devices, axis=0), tree)


def pmap_split(batch: Any, num_devices: int) -> Any:
  """`[B, ...]` -> `[D, B / D, ...]`."""
  return jax.tree_util.tree_map(
      lambda x: np.asarray(x).reshape(num_devices, -1, *np.shape(x)[1:]), batch)


def pmap_unreplicate(tree: Any) -> Any:
  """The first device's copy of every array, read from that device's own shard.

  Indexing a pmap output (`x[0]`) would instead run a program on every device, with an
  all-reduce, once per array, queued beside the train steps still in flight; on a loaded 2-core
  CI machine with 8 fake devices one such rendezvous missed XLA's 40 s limit and aborted the run.
  """
  def first(x):
    if not isinstance(x, jax.Array):
      return np.asarray(x)[0]
    shard = min(x.addressable_shards, key=lambda s: s.index[0].start or 0)
    return shard.data.reshape(shard.data.shape[1:])
  return jax.tree_util.tree_map(first, tree)
