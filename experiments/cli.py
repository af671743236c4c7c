"""What every command-line entry point shares.

- `run(main)`: `absl.app.run`, where bad input (`sfm_jax.errors.InputError`, raised by the
  validators with the file, key or line) or a training stopped by non-finite steps
  (`NonFiniteError`, naming the step and terms) ends the program with that one message on stderr
  and exit status 1. So do the config flags' own mistakes: an override `--config.PATH=VALUE`
  naming no field of the config (with ml_collections' "did you mean"), a config file that does
  not exist, and an unknown variant. Every other exception keeps its traceback.
- `run_stage(train_and_evaluate, ...)`: the `main` of a stage: `--config` and `--workdir` flags,
  multi-host start-up and quiet orbax logs, then `train_and_evaluate(config, workdir)`.
"""

from __future__ import annotations

import os
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


def _fail(message: str):
  program = sys.argv[0].rsplit("/", 1)[-1]
  print(f"{program}: error: {message}", file=sys.stderr, flush=True)
  sys.exit(1)


def unknown_config_field(args: list[str], error: Exception) -> str | None:
  """The message for a config override that names no field, or None if `error` is not that.

  ml_collections raises a `KeyError` (wrapped in an `AttributeError`) whose text is the missing
  key in quotes, then, when a field's name is close, a line "Did you mean ...". The override is
  the argument `--config.A.B=VALUE` (or `-config...`, or `--config.A.B VALUE`) whose dotted path
  holds that key; without one, the error is something else and None is returned.
  """
  inner = error
  while isinstance(inner, (AttributeError, KeyError)) and inner.args and isinstance(
      inner.args[0], BaseException):
    inner = inner.args[0]
  text = str(inner.args[0]) if inner.args else ""
  if not text:
    return None
  first, *hint = text.splitlines()
  key = first.strip("'\"")
  for arg in args:
    name, _, _ = arg.lstrip("-").partition("=")
    head, dot, path = name.partition(".")
    parts = path.split(".")
    if dot and key in parts:
      parent = ".".join([head, *parts[:parts.index(key)]])
      return " ".join([f"--{name}: {parent} has no field {key!r}.", *hint]).strip()
  return None


def define_config(default: str | None, help_string: str):
  """`config_flags.DEFINE_config_file("config", default, help_string)`. ml_collections applies
  the command line's overrides to the default config as the flag is defined, so an override
  naming no field fails here first: reported as one line, like the rest."""
  from ml_collections import config_flags

  try:
    return config_flags.DEFINE_config_file("config", default, help_string)
  except (AttributeError, KeyError) as error:
    message = unknown_config_field(sys.argv[1:], error)
    if message is None:
      raise
    _fail(message)


def _missing_config_file() -> str | None:
  """The message for a config flag whose file does not exist (ml_collections defers that error
  to the first use of the config, as a traceback), or None."""
  for name in list(flags.FLAGS):
    try:
      filename = flags.FLAGS[name].config_filename
    except (AttributeError, flags.Error):  # not a config file's flag, or not parsed
      continue
    if not filename:  # a config flag without a default, not given
      continue
    path = filename.split(":", 1)[0]
    if not os.path.isfile(path):
      return (f"--{name}={filename}: no config file {path!r} (relative paths start at "
              f"{os.getcwd()}; run from the repository root or give the file's path)")
  return None


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with the config flags' mistakes as one line (see the module doc)."""
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as error:
    message = unknown_config_field(argv[1:], error)
    if message is None:
      raise
    _fail(message)
  except flags.Error as error:
    cause = error.__cause__ or error.__context__
    if isinstance(cause, InputError):  # a config's get_config refused its variant
      _fail(str(cause).strip().splitlines()[-1].split("InputError: ", 1)[-1])
    print(f"FATAL Flags parsing error: {error}\nPass --helpshort or --helpfull to see help on "
          "flags.", file=sys.stderr, flush=True)
    sys.exit(1)


def run(main) -> None:
  def guarded(argv):
    if not flags.FLAGS["verbosity"].present:  # no INFO lines from jax / orbax unless asked
      logging.set_verbosity(logging.WARNING)
    try:
      missing = _missing_config_file()
      if missing:
        raise InputError(missing)
      return main(argv)
    except (InputError, NonFiniteError) as e:
      _fail(str(e))
  app.run(guarded, flags_parser=_parse_flags)


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
  config_flag = define_config(default_config, "Config file and variant (`path:variant`).")
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
