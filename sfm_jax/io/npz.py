"""Reading an `.npz` whole, with every way a damaged one can fail turned into one `InputError`
naming the file (the model file, encoder files and third-party `.npz` models all read through
this)."""

from __future__ import annotations

import os
import struct
import zipfile
import zlib

import numpy as np

from sfm_jax.errors import InputError

# What a damaged `.npz` can raise while numpy reads it: a zip member flagged encrypted or with an
# unknown compression, a corrupt deflate stream, a bad header, a truncated archive.
NPZ_ERRORS = (OSError, ValueError, EOFError, KeyError, RuntimeError, NotImplementedError,
              zipfile.BadZipFile, zlib.error, struct.error)


def read_npz(path: str | os.PathLike, *, what: str = ".npz file") -> dict:
  """`{key: array}` of every entry (no pickles); `InputError` "`path`: not a readable `what`"."""
  path = os.fspath(path)
  try:
    with np.load(path, allow_pickle=False) as npz:
      return {key: npz[key] for key in npz.files}
  except NPZ_ERRORS as e:
    raise InputError(f"{path}: not a readable {what} ({type(e).__name__}: {e})") from None
