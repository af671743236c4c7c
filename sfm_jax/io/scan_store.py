"""A scan store: registered scans `[N, V, 3]` float32 in one flat file, rows read on demand.

Stage 1 with `data.stream` keeps its training scans here instead of in host memory: the store is
written once, chunk by chunk (`write_scan_store`, never more than one chunk in memory), and each
training step reads only the rows of its batch (`ScanStore[index]`, positioned reads, no memory
map), so a process's memory does not grow with the number of scans and a process of a
multi-host run reads only its own slice of every batch.

Layout: `<path>` holds the rows, C order, little-endian float32, `V * 3 * 4` bytes each;
`<path>.json` holds `{"shape": [N, V, 3], "identity": [N labels], "key": ...}`. The key says
which data the rows are (a caller's fingerprint of its data config and seed): `open_scan_store(path, key)` returns None
for a missing store, a store of other data, or one whose file size disagrees with its shape, and
the caller writes it again. Both files are written under temporary names and renamed, the rows
first, so a killed build leaves no store that opens.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable

import numpy as np

from sfm_jax.errors import InputError
from sfm_jax.io.atomic import atomic_write

DTYPE = np.dtype("<f4")


class ScanStore:
  """Read-only rows of a store file; indexes like a `[N, V, 3]` float32 array along rows."""

  def __init__(self, path: str, shape: tuple[int, int, int], identity: np.ndarray, key: str):
    self.path, self.key = path, key
    self.shape = tuple(int(s) for s in shape)
    self.identity = np.asarray(identity, np.int32)  # [N] each row's label
    self._row_bytes = self.shape[1] * 3 * DTYPE.itemsize

  dtype = DTYPE
  ndim = 3

  def __len__(self) -> int:
    return self.shape[0]

  def __getitem__(self, index) -> np.ndarray:
    """Rows `index` (an int, a slice, or an integer array, in its order) as a new array."""
    if isinstance(index, (int, np.integer)):
      return self.rows(np.array([index]))[0]
    if isinstance(index, slice):
      return self.rows(np.arange(*index.indices(len(self))))
    return self.rows(np.asarray(index))

  def rows(self, index: np.ndarray) -> np.ndarray:
    """`[len(index), V, 3]` float32: the rows `index` (negative counts from the end). Runs of
    consecutive rows are read with one call each."""
    index = np.asarray(index, np.int64).reshape(-1)
    if index.size and (index.min() < -len(self) or index.max() >= len(self)):
      raise IndexError(f"{self.path}: row index out of range [0, {len(self)})")
    index = np.where(index < 0, index + len(self), index)
    out = np.empty((len(index),) + self.shape[1:], DTYPE)
    order = np.argsort(index, kind="stable")
    sorted_rows = index[order]
    start = 0
    with open(self.path, "rb", buffering=0) as f:
      while start < len(order):  # one read per run of consecutive rows (in sorted order)
        stop = start + 1
        while stop < len(order) and sorted_rows[stop] == sorted_rows[stop - 1] + 1:
          stop += 1
        block = np.empty((stop - start,) + self.shape[1:], DTYPE)
        self._read_into(f.fileno(), block, int(sorted_rows[start]))
        out[order[start:stop]] = block
        start = stop
    return out

  def _read_into(self, fd: int, block: np.ndarray, row: int) -> None:
    view, offset = memoryview(block).cast("B"), row * self._row_bytes
    done = 0
    while done < len(view):
      count = os.preadv(fd, [view[done:]], offset + done)
      if count == 0:
        raise InputError(f"{self.path}: ends before row {row + done // self._row_bytes} "
                         "(truncated store; delete it to rebuild)")
      done += count

  def __repr__(self) -> str:
    return f"ScanStore({self.path!r}, shape={self.shape})"


def open_scan_store(path: str, key: str) -> ScanStore | None:
  """The store at `path` if it holds the data `key` names and is complete, else None."""
  try:
    with open(path + ".json", encoding="utf-8") as f:
      meta = json.load(f)
    shape = tuple(int(s) for s in meta["shape"])
    identity = np.asarray(meta["identity"], np.int32)
    if meta["key"] != key or len(shape) != 3 or shape[2] != 3 or identity.shape != shape[:1]:
      return None
    if os.path.getsize(path) != shape[0] * shape[1] * 3 * DTYPE.itemsize:
      return None
  except (OSError, ValueError, KeyError, TypeError):
    return None
  return ScanStore(path, shape, identity, key)


def write_scan_store(path: str, chunks: Iterable[tuple[np.ndarray, np.ndarray]], *,
                     key: str) -> ScanStore:
  """Writes `chunks` (pairs of scans `[n, V, 3]` and labels `[n]`, in order) as the store `path`
  for data `key`, one chunk in memory at a time; returns it opened. Non-finite values are
  refused (`InputError` naming the row)."""
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  with contextlib.suppress(FileNotFoundError):
    os.remove(path + ".json")  # an old key must never describe new rows
  count, num_vertices, labels = 0, None, []
  with atomic_write(path, "wb") as f:
    for chunk, identity in chunks:
      chunk, identity = np.asarray(chunk), np.asarray(identity).reshape(-1)
      if len(identity) != len(chunk):
        raise InputError(f"{path}: {len(identity)} labels for a chunk of {len(chunk)} scans")
      if chunk.ndim != 3 or chunk.shape[2] != 3 or (num_vertices not in (None, chunk.shape[1])):
        raise InputError(f"{path}: chunk of shape {chunk.shape} after rows of "
                         f"{num_vertices} vertices; scans must be [n, V, 3] with one V")
      bad = ~np.isfinite(chunk).all(axis=(1, 2))
      if bad.any():
        raise InputError(f"{path}: scan {count + int(np.argmax(bad))} has non-finite coordinates")
      num_vertices = chunk.shape[1]
      f.write(np.ascontiguousarray(chunk, DTYPE).tobytes())
      labels.append(identity.astype(np.int32))
      count += len(chunk)
  if num_vertices is None:
    os.remove(path)
    raise InputError(f"{path}: no scans to store")
  shape, identity = (count, num_vertices, 3), np.concatenate(labels)
  with atomic_write(path + ".json", "w") as f:
    json.dump({"shape": list(shape), "identity": identity.tolist(), "key": key}, f)
  return ScanStore(path, shape, identity, key)
