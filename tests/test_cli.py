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
