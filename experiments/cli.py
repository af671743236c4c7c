"""What every command-line entry point shares.

- `run(main)`: `absl.app.run`, where bad input (`sfm_jax.errors.InputError`, raised by the
  validators with the file, key or line) or a training stopped by non-finite steps
  (`NonFiniteError`, naming the step and terms) ends the program with that one message on stderr
  and exit status 1. Every other exception keeps its traceback.
- `run_stage(train_and_evaluate, ...)`: the `main` of a stage: `--config` and `--workdir` flags,
  multi-host start-up and quiet orbax logs, then `train_and_evaluate(config, workdir)`.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging

from sfm_jax import parallel
from sfm_jax.errors import InputError, NonFiniteError
from sfm_jax.io import atomic_write


def print_table(table: str, out: str | None = None) -> None:
  """Prints a study's markdown table and, with `out`, also writes it there (atomically)."""
  print(table)
  if out:
    with atomic_write(out, "w") as f:
      f.write(table + "\n")


def run(main) -> None:
  def guarded(argv):
    if not flags.FLAGS["verbosity"].present:  # no INFO lines from jax / orbax unless asked
      logging.set_verbosity(logging.WARNING)
    try:
      return main(argv)
    except (InputError, NonFiniteError) as e:
      program = sys.argv[0].rsplit("/", 1)[-1]
      print(f"{program}: error: {e}", file=sys.stderr, flush=True)
      sys.exit(1)
  app.run(guarded)


def setup(parallel_config) -> None:
  """Start of a stage: joins the multi-host job when `parallel.distributed` (before any other
  JAX call) and keeps orbax's per-save INFO lines out of the progress output (an explicit
  `--verbosity` still wins)."""
  if parallel_config.distributed:
    parallel.initialize_distributed(coordinator_address=parallel_config.coordinator_address,
                                    num_processes=parallel_config.num_processes,
                                    process_id=parallel_config.process_id)
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)


def check_train_config(train) -> None:
  """The `train` fields both stages share: clear errors before anything is built."""
  if train.num_steps < 1:
    raise InputError("train.num_steps must be >= 1")
  if train.global_batch_size < 2:
    raise InputError("train.global_batch_size must be >= 2 (both stages use batch statistics)")
  for key in ("stop_after_steps", "skip_nonfinite"):
    if train[key] < 0:
      raise InputError(f"train.{key} must be >= 0 (0 = off), got {train[key]}")
  if train.get("async_checkpoints", "auto") not in ("auto", "on", "off"):
    raise InputError(f"train.async_checkpoints must be 'auto', 'on' or 'off', got "
                     f"{train.async_checkpoints!r}")


def run_stage(train_and_evaluate, *, default_config: str, default_workdir: str) -> None:
  """Defines `--config` (`path:variant`, fields overridable as `--config.FIELD=VALUE`) and
  `--workdir`, then runs `train_and_evaluate(config, workdir)` under `run`."""
  from ml_collections import config_flags

  config_flag = config_flags.DEFINE_config_file(
      "config", default_config, "Config file and variant (`path:variant`).")
  workdir_flag = flags.DEFINE_string("workdir", default_workdir,
                                     "Output folder; rerunning the command resumes there.")

  def main(argv):
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    setup(config_flag.value.parallel)
    train_and_evaluate(config_flag.value, workdir_flag.value)

  run(main)


def end_phase(phases, name: str) -> None:
  """Ends phase `name` of a `progress.Phases` and prints its line (process 0 only)."""
  import jax

  row = phases.mark(name)
  if jax.process_index() == 0:
    print(phases.line(row), flush=True)


def phase_table(phases) -> list:
  """Markdown lines: the phases of this invocation, their time and host memory, and the host
  memory setting they ran under (`experiments.host`: huge pages change CPU step times by
  10-50%)."""
  from experiments import host
  from sfm_jax.progress import format_seconds

  return ["Phases of this invocation (wall time; the process's host memory at the end of each, "
          "and its peak so far):", "",
          "| phase | time | memory (GiB) | peak so far (GiB) |", "|---|---|---|---|",
          *(f"| {row['phase']} | {format_seconds(row['seconds'])} | {row['memory_gb']:.2f} | "
            f"{row['peak_memory_gb']:.2f} |" for row in phases.rows), "",
          f"Ran with {host.describe_memory_settings()}.", ""]
