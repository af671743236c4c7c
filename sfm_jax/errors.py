"""`InputError`: bad input from a user (a file, a key, a line, a config field).

Raised by the validators at the boundary (readers, loaders, data sources, config checks) with the
offending file, key or line in its message. It subclasses `ValueError`, so callers that catch
`ValueError` keep working; the command-line entry points (`experiments/cli.py`) print it as one
line and exit 1, while every other exception keeps its traceback.
"""

import struct
import zipfile
import zlib

# What a damaged `.npz` can raise while numpy reads it (a zip member flagged encrypted or with an
# unknown compression, a corrupt deflate stream, a bad header): readers turn these into
# `InputError`s naming the file.
NPZ_ERRORS = (OSError, ValueError, EOFError, KeyError, RuntimeError, NotImplementedError,
              zipfile.BadZipFile, zlib.error, struct.error)


class InputError(ValueError):
  """Bad user input; the message names the file, key or line."""


class NonFiniteError(RuntimeError):
  """Training met more non-finite steps than allowed (`train.skip_nonfinite`); the message names
  the step and the loss terms. The last good checkpoint is kept; nothing else was written."""
