"""`InputError`: bad input from a user (a file, a key, a line, a config field).

Raised by the validators at the boundary (readers, loaders, data sources, config checks) with the
offending file, key or line in its message. It subclasses `ValueError`, so callers that catch
`ValueError` keep working; the command-line entry points (`experiments/cli.py`) print it as one
line and exit 1, while every other exception keeps its traceback.
"""


class InputError(ValueError):
  """Bad user input; the message names the file, key or line."""


class NonFiniteError(RuntimeError):
  """Training met a non-finite loss or gradient; the message names the step and the loss terms.
  The last good checkpoint is kept; nothing of the bad step was written."""


class NoFaceError(InputError):
  """A photo without landmarks in which detection found no face: the photo is skipped and
  counted (never fatal)."""
