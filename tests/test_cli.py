"""`experiments.cli.run`: bad input is one line and exit status 1; any other error keeps its
traceback (it is a bug to report, not a message to the user)."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROGRAM = """
from experiments import cli
from sfm_jax.errors import InputError

def main(argv):
  raise {error}("meta.csv: line 3: expected 2 columns, got 5")

cli.run(main)
"""


@pytest.mark.parametrize("error,one_line", [("InputError", True), ("ValueError", False),
                                            ("KeyError", False)])
def test_only_input_errors_are_shortened(error, one_line):
  result = subprocess.run([sys.executable, "-c", PROGRAM.format(error=error)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 1
  assert "meta.csv: line 3: expected 2 columns, got 5" in result.stderr
  assert ("Traceback" in result.stderr) is not one_line
  if one_line:
    assert result.stderr.strip().count("\n") == 0 and ": error: meta.csv: line 3" in result.stderr


def test_input_error_is_a_value_error():
  from sfm_jax.errors import InputError
  assert issubclass(InputError, ValueError)


@pytest.mark.parametrize("variant", ["stage1", "stage2"])
@pytest.mark.parametrize("key,value,message", [
    ("num_steps", 0, "train.num_steps must be >= 1"),
    ("global_batch_size", 1, "train.global_batch_size must be >= 2"),
    ("stop_after_steps", -1, "train.stop_after_steps must be >= 0"),
    ("skip_nonfinite", -2, "train.skip_nonfinite must be >= 0 (0 = off), got -2"),
])
def test_shared_train_fields_are_checked_for_both_stages(variant, key, value, message):
  import importlib

  from experiments import cli
  from sfm_jax.errors import InputError
  config = importlib.import_module(f"experiments.configs.{variant}").get_config("tiny")
  cli.check_train_config(config.train)  # the defaults pass
  config.train[key] = value
  with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
    cli.check_train_config(config.train)


CONFIG_PROGRAM = """
from experiments import cli

config = cli.define_config({default!r}, "a config")

def main(argv):
  print("steps", None if config.value is None else config.value.train.num_steps)

cli.run(main)
"""


def _run_config_program(*args, default="experiments/configs/stage1.py:tiny"):
  return subprocess.run([sys.executable, "-c", CONFIG_PROGRAM.format(default=default), *args],
                        cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args,message", [
    # an override naming no field, at the top and nested, with ml_collections' suggestion
    (["--config.init_dir=x"], "error: --config.init_dir: config has no field 'init_dir'."),
    (["--config.train.num_step=5"], "error: --config.train.num_step: config.train has no field "
                                    "'num_step'. Did you mean \"num_steps\" instead of \"num_step\"?"),
    # the same with the config named on the command line (then ml_collections parses twice)
    (["--config=experiments/configs/stage1.py:demo", "--config.data.nope", "3"],
     "error: --config.data.nope: config.data has no field 'nope'."),
    (["--config=nothere.py:demo"], "error: --config=nothere.py:demo: no config file 'nothere.py' "
                                   f"(relative paths start at {ROOT};"),
    (["--config=experiments/configs/stage1.py:nope"],
     "error: unknown stage-1 config variant 'nope'; choose one of"),
])
def test_config_flag_mistakes_are_one_line(args, message):
  result = _run_config_program(*args)
  assert result.returncode == 1 and result.stdout == ""
  assert message in result.stderr and "Traceback" not in result.stderr, result.stderr
  assert result.stderr.strip().count("\n") == 0


def test_config_flag_overrides_still_apply_and_other_flag_errors_keep_absl_message():
  from experiments.configs import stage1
  default_steps = stage1.get_config("tiny").train.num_steps
  assert _run_config_program().stdout.split() == ["steps", str(default_steps)]
  assert _run_config_program("--config.train.num_steps=7").stdout.split() == ["steps", "7"]
  assert _run_config_program(default=None).stdout.split() == ["steps", "None"]  # no config
  result = _run_config_program("--config.train.num_steps=abc")
  assert result.returncode == 1 and "Traceback" not in result.stderr
  assert ("FATAL Flags parsing error: flag --config.train.num_steps=abc: invalid literal for "
          "int()" in result.stderr)


def test_unknown_config_field_ignores_other_errors():
  from experiments import cli
  missing = KeyError("'train'")
  assert cli.unknown_config_field(["--config.model.shape_dim=3"], AttributeError(missing)) is None
  assert cli.unknown_config_field(["--workdir=train"], AttributeError(missing)) is None
  assert cli.unknown_config_field(["--config.train=3"], AttributeError(missing)) == (
      "--config.train: config has no field 'train'.")
