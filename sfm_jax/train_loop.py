"""The training loop both stages share: resume, step, log, checkpoint.

`run(name, state, batch_for_step, ...)` trains one model: it restores the latest checkpoint in
`WORKDIR/checkpoints/<name>/` (if any), drops `metrics.jsonl` rows written after it, then steps
the shared `train_step` on every device of `mesh` (jit with sharded batches, or pmap) until
`train.num_steps` (or `train.stop_after_steps`), printing progress with an ETA, appending logged
metrics, and checkpointing every `train.checkpoint_every` steps and at the end.

Steps are dispatched asynchronously, at most `MAX_STEPS_AHEAD` unfinished at a time, so the host
holds that many batches (not as many as it can read) while the device catches up.

Non-finite steps: every log and checkpoint looks at the `finite` flag of each step since the
previous look (one host sync). By default the first non-finite step stops the run before
anything is saved (`NonFiniteError`, naming the step and the terms). With
`train.skip_nonfinite = N > 0` such a step changes nothing (`train_step(skip_nonfinite=True)`),
is reported, and the run goes on; the (N+1)-th in one invocation stops it as above.

`train.stop_after_steps = N > 0` stops a run (after a checkpoint) once it has taken N steps
counted over its phases in order: `steps_before` is the number of steps of the phases that come
before this one (e.g. stage 1's baseline runs after `num_steps` SFM steps), so a time-sliced job
reaches any phase and a rerun with the same N does nothing new.

`batch_for_step(step, rows)` returns this process's rows of the global batch of `step` as numpy
arrays; it must depend on `step` only, so a resumed run sees exactly the batches an uninterrupted
one would.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import json
import os
import time
from typing import Callable, Sequence

import jax
import numpy as np

from sfm_jax import checkpoint, parallel
from sfm_jax.errors import NonFiniteError
from sfm_jax.io import atomic_write
from sfm_jax.progress import Progress
from sfm_jax.train_state import TrainState, train_step

# Steps dispatched but not finished, at most. jax dispatches asynchronously, so without a bound
# the host reads batches far ahead of the device whenever reading is faster than a step, up to
# the next log or save: on the 2-core CPU at paper shapes (82 MB per batch, each held until its
# step runs) the reduced `:paper` stage 1 peaked at 3.9 to 4.2 GiB, and at 3.3 to 3.4 GiB with
# the bound (its training phases at 2.6 to 2.8 and 3.2 GiB), in the same time. Waiting for a
# step two behind keeps the device's queue from running dry.
MAX_STEPS_AHEAD = 2


class MetricsLog:
  """`metrics.jsonl`: appended per logged step; on resume, rows past the restored step of that
  model (written after the last checkpoint) and any torn last line are dropped first."""

  def __init__(self, path: str):
    self.path = path

  def rows(self) -> list:
    if not os.path.exists(self.path):
      return []
    rows = []
    with open(self.path, encoding="utf-8") as f:
      for line in f:
        try:
          rows.append(json.loads(line))
        except json.JSONDecodeError:
          break  # a line torn by a kill: everything after it is suspect
    return rows

  def series(self, model: str, key: str) -> tuple[list, list]:
    """(steps, values) of one metric of one model."""
    rows = [r for r in self.rows() if r["model"] == model and key in r]
    return [r["step"] for r in rows], [r[key] for r in rows]

  def truncate(self, model: str, step: int) -> None:
    rows = [r for r in self.rows() if r["model"] != model or r["step"] <= step]
    with atomic_write(self.path, "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in rows)

  def append(self, row: dict) -> None:
    with open(self.path, "a", encoding="utf-8") as f:
      f.write(json.dumps(row) + "\n")
      f.flush()


def is_chief() -> bool:
  """Only process 0 writes logs, models, reports and pictures."""
  return jax.process_index() == 0


def checksum(tree) -> str:
  """A short SHA-256 of every leaf's bytes (equal on every process = replicas agree)."""
  digest = hashlib.sha256()
  for leaf in jax.tree_util.tree_leaves(tree):
    digest.update(np.ascontiguousarray(leaf).tobytes())
  return digest.hexdigest()[:16]


def host_step(state: TrainState) -> int:
  return int(parallel.to_host(state.step).reshape(-1)[0])


def run(name: str, state: TrainState, batch_for_step: Callable[[int, slice], dict], *,
        train_config, parallel_config, workdir: str, log: MetricsLog, mesh,
        summary: Callable[[dict], str], steps_before: int = 0,
        earlier_layouts: Sequence[checkpoint.EarlierLayout] = ()) -> TrainState:
  """Trains `state` (fresh, on host) as model `name`; returns the final state (on devices).

  `summary(metrics)` formats the stage-specific part of a progress line; `steps_before` is the
  number of steps of the run's earlier phases (for `train.stop_after_steps`);
  `earlier_layouts` read checkpoints of older versions (`checkpoint.restore`).
  """
  use_pmap = parallel_config.mode == "pmap"
  if not use_pmap:
    state = parallel.replicate(state, mesh)
  manager, restored = checkpoint.restore_latest_good(
      lambda: checkpoint.make_manager(os.path.join(workdir, "checkpoints", name),
                                      max_to_keep=train_config.max_to_keep,
                                      save_interval_steps=train_config.checkpoint_every,
                                      async_save=async_checkpoints(train_config)),
      state, report=lambda line: print(f"[{name}] {line}", flush=True),
      earlier_layouts=earlier_layouts)
  if restored is not None:
    state = restored
    if is_chief():
      print(f"[{name}] resumed from the checkpoint at step {host_step(state)}", flush=True)
  if is_chief():
    log.truncate(name, host_step(state))
  num_devices = mesh.devices.size
  allowed_bad = train_config.get("skip_nonfinite", 0)
  step_function = functools.partial(train_step, skip_nonfinite=allowed_bad > 0)
  if use_pmap:
    step_fn = parallel.pmap_step(step_function, devices=list(mesh.devices.flat))
    state = parallel.pmap_replicate(state, num_devices)
    rows = slice(None)
  else:
    step_fn = parallel.data_parallel_step(step_function, mesh)
    rows = parallel.process_slice(train_config.global_batch_size, mesh)
  step = host_step(state)
  progress = Progress(f"[{name}]", total=train_config.num_steps, unit="steps", start=step,
                      enabled=is_chief())
  stop = _stop_step(train_config, steps_before)
  unchecked = []  # (step, metrics) on device since the last finiteness check
  in_flight = collections.deque()  # a value of each dispatched step, oldest first
  skipped = []  # non-finite steps skipped in this invocation (train.skip_nonfinite)
  while step < stop:
    batch = batch_for_step(step, rows)
    if use_pmap:
      state, metrics = step_fn(state, parallel.pmap_split(batch, num_devices))
    else:
      state, metrics = step_fn(state, parallel.shard_batch(batch, mesh))
    step += 1
    unchecked.append((step, metrics))
    in_flight.append(metrics["finite"])
    while len(in_flight) > MAX_STEPS_AHEAD:  # wait for an older step, not for this one
      jax.block_until_ready(in_flight.popleft())
    if train_config.sleep_per_step:
      time.sleep(train_config.sleep_per_step)
    final = step == stop
    logging = step % train_config.log_every == 0 or step == train_config.num_steps
    saving = final or manager.should_save(step)
    if logging or saving:
      # One host sync per log or save (not per step, which would stall the device queue): the
      # first non-finite step since the last check stops the run before anything is saved.
      _check_finite(name, unchecked, manager, use_pmap, skipped=skipped, allowed=allowed_bad)
      unchecked = []
    if is_chief() and logging:
      metrics = parallel.to_host(parallel.pmap_unreplicate(metrics) if use_pmap else metrics)
      metrics = {k: float(v) for k, v in metrics.items()}
      rate = progress.update(step, f"loss {metrics['loss']:.4f}  {summary(metrics)}")
      log.append({"model": name, "step": step, **metrics, "step_time_s": 1.0 / max(rate, 1e-9)})
    if saving:
      checkpoint.save(manager, parallel.pmap_unreplicate(state) if use_pmap else state,
                      force=final)
  checkpoint.wait(manager)
  manager.close()
  return parallel.pmap_unreplicate(state) if use_pmap else state


def async_checkpoints(train_config) -> bool:
  """Whether saves run in the background (`train.async_checkpoints`): "on", "off", or "auto" =
  on accelerators only. On a CPU the device memory is host memory, and a background save holds
  a snapshot of the whole state while training goes on (measured at paper shapes: 0.8 GiB more
  at the peak), so there it waits for each save instead."""
  mode = train_config.get("async_checkpoints", "auto")
  return mode == "on" or (mode == "auto" and jax.default_backend() != "cpu")


def _stop_step(train_config, steps_before: int) -> int:
  """The step of this phase at which the run stops (`train.stop_after_steps`, see above)."""
  stop = train_config.num_steps
  if train_config.stop_after_steps > 0:
    stop = min(stop, max(train_config.stop_after_steps - steps_before, 0))
  return stop


def _check_finite(name: str, unchecked: list, manager, use_pmap: bool, *, skipped: list,
                  allowed: int) -> None:
  """Looks at the `finite` flag of each `(step, metrics)`: a non-finite step is reported and
  appended to `skipped` while fewer than `allowed` were; otherwise raises `NonFiniteError`
  (after letting pending saves finish: the newest checkpoint is the last good one)."""
  flags = parallel.to_host([metrics["finite"] for _, metrics in unchecked])
  for (step, metrics), finite in zip(unchecked, flags):
    if not float(np.asarray(finite).reshape(-1)[0]):
      message = _nonfinite_message(name, step, parallel.to_host(
          parallel.pmap_unreplicate(metrics) if use_pmap else metrics))
      if len(skipped) < allowed:
        skipped.append(step)
        if is_chief():
          print(f"{message}; skipped, its update not applied ({len(skipped)} of "
                f"train.skip_nonfinite={allowed})", flush=True)
        continue
      if allowed:
        message += f"; {allowed} non-finite step(s) already skipped (train.skip_nonfinite)"
      checkpoint.wait(manager)
      last = checkpoint.latest_step(manager)
      manager.close()
      raise NonFiniteError(f"{message}; stopped. The last good checkpoint is step {last}; "
                           "nothing from this step on was written")


def _nonfinite_message(name: str, step: int, metrics: dict) -> str:
  """`[name] step N: non-finite loss (terms a=nan, b=inf)`: the terms that went bad."""
  values = {key: float(np.asarray(value).reshape(-1)[0]) for key, value in metrics.items()}
  bad = [f"{key}={value}" for key, value in values.items()
         if key not in ("finite",) and not np.isfinite(value)]
  return (f"[{name}] step {step}: non-finite loss or gradient ("
          f"{', '.join(bad) if bad else 'every term finite, the gradient is not'})")


def report_stop(name: str, state: TrainState, train_config) -> bool:
  """Prints the parameter checksum (every process); True when `stop_after_steps` ended the run
  in this phase (the caller then exits without exporting)."""
  params = parallel.to_host(state.params)
  step = host_step(state)
  print(f"[{name}] process {jax.process_index()}: parameter checksum {checksum(params)} at step "
        f"{step}", flush=True)
  stopped = step < train_config.num_steps
  if stopped and is_chief():
    print(f"[{name}] stopped at step {step} of {train_config.num_steps} (train.stop_after_steps="
          f"{train_config.stop_after_steps}, counted over the phases); rerun without it to "
          "continue", flush=True)
  return stopped
