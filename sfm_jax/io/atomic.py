"""Atomic file writes: a reader sees either the old file or the complete new one, never a part.

Every writer in `sfm_jax` goes through `atomic_write`: the content goes to a temporary file in the
destination's folder (same file system, so the final `os.replace` is atomic), is flushed and
fsynced, then renamed over the destination. On any exception the temporary file is removed and the
destination is left as it was.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import IO, Iterator

from sfm_jax.errors import InputError


def _current_umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
  """Opens a temporary file beside `path`; on clean exit renames it to `path`.

  Args:
    path: destination file. Its folder must exist.
    mode: "wb" (bytes) or "w" (text, UTF-8, '\\n' newlines).

  Yields:
    The open temporary file.
  """
  if mode not in ("w", "wb"):
    raise InputError(f"atomic_write: mode must be 'w' or 'wb', got {mode!r}")
  path = os.fspath(path)
  folder = os.path.dirname(os.path.abspath(path))
  fd, tmp_path = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
  try:
    os.chmod(tmp_path, 0o666 & ~_current_umask())  # mkstemp makes 0600; match a plain open()
    kwargs = {"encoding": "utf-8", "newline": "\n"} if mode == "w" else {}
    with os.fdopen(fd, mode, **kwargs) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp_path, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp_path)
    raise
