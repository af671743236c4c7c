"""A row store: an array `[N, ...]` of one dtype in one flat file on disk, rows read on demand.

Data sets larger than host memory live in row stores: stage 1's streamed scans (`io.scan_store`)
and stage 2's streamed face-world images with their 3D truth (`sources.images`, `data.stream`).
A store is written once, a chunk of rows at a time (`RowStoreWriter`, never more than one chunk
in memory), and read a batch at a time (`RowStore[index]`, positioned reads, no memory map), so
a process's memory does not grow with the number of rows.

Layout: `<path>` holds the rows, C order, little-endian, `prod(row shape) * itemsize` bytes
each; `<path>.json` holds `{"shape": [N, ...], "dtype": "<f4", "key": ..., "identity": [N]
labels or null}`. The key says which data the rows are (a caller's fingerprint of its data
config and seed): `open_row_store(path, key)` returns None for a missing store, a store of other
data, or one whose file size disagrees with its shape, and the caller writes it again. Both
files are written under temporary names and renamed, the rows first, so a killed build leaves
no store that opens.
"""

from __future__ import annotations

import contextlib
import json
import math
import os

import numpy as np

from sfm_jax.errors import InputError
from sfm_jax.io.atomic import atomic_write


class RowStore:
  """Read-only rows of a store file; indexes like an `[N, ...]` array along its first axis.

  `np.asarray(store)` reads every row (for the small splits code that wants a whole array);
  training and evaluation index it a batch at a time.
  """

  ndim = property(lambda self: len(self.shape))

  def __init__(self, path: str, shape: tuple, dtype, key: str, identity: np.ndarray | None = None):
    self.path, self.key = path, key
    self.shape = tuple(int(s) for s in shape)
    self.dtype = np.dtype(dtype).newbyteorder("<")
    self.identity = None if identity is None else np.asarray(identity, np.int32)  # [N] labels
    self._row_bytes = math.prod(self.shape[1:]) * self.dtype.itemsize

  def __len__(self) -> int:
    return self.shape[0]

  def __getitem__(self, index) -> np.ndarray:
    """Rows `index` (an int, a slice, or an integer array, in its order) as a new array."""
    if isinstance(index, (int, np.integer)):
      return self.rows(np.array([index]))[0]
    if isinstance(index, slice):
      return self.rows(np.arange(*index.indices(len(self))))
    if isinstance(index, tuple):
      raise IndexError(f"{self.path}: a row store indexes rows only (got {index!r}); "
                       "read the rows first")
    return self.rows(np.asarray(index))

  def __array__(self, dtype=None, copy=None) -> np.ndarray:
    whole = self.rows(np.arange(len(self)))
    return whole if dtype is None else whole.astype(dtype)

  def rows(self, index: np.ndarray) -> np.ndarray:
    """`[len(index), ...]`: the rows `index` (negative counts from the end), in native byte
    order. Runs of consecutive rows are read with one call each."""
    index = np.asarray(index, np.int64).reshape(-1)
    if index.size and (index.min() < -len(self) or index.max() >= len(self)):
      raise IndexError(f"{self.path}: row index out of range [0, {len(self)})")
    index = np.where(index < 0, index + len(self), index)
    out = np.empty((len(index),) + self.shape[1:], self.dtype)
    order = np.argsort(index, kind="stable")
    sorted_rows = index[order]
    start = 0
    with open(self.path, "rb", buffering=0) as f:
      while start < len(order):  # one read per run of consecutive rows (in sorted order)
        stop = start + 1
        while stop < len(order) and sorted_rows[stop] == sorted_rows[stop - 1] + 1:
          stop += 1
        block = np.empty((stop - start,) + self.shape[1:], self.dtype)
        self._read_into(f.fileno(), block, int(sorted_rows[start]))
        out[order[start:stop]] = block
        start = stop
    return out.astype(self.dtype.newbyteorder("="), copy=False)

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
    return f"RowStore({self.path!r}, shape={self.shape}, dtype={self.dtype.name})"


def open_row_store(path: str, key: str, *, dtype=None) -> RowStore | None:
  """The store at `path` if it holds the data `key` names (of `dtype`, when given) and is
  complete, else None."""
  try:
    with open(path + ".json", encoding="utf-8") as f:
      meta = json.load(f)
    shape = tuple(int(s) for s in meta["shape"])
    stored = np.dtype(meta["dtype"])
    identity = None if meta.get("identity") is None else np.asarray(meta["identity"], np.int32)
    if meta["key"] != key or not shape or (dtype is not None and stored != np.dtype(dtype)):
      return None
    if identity is not None and identity.shape != shape[:1]:
      return None
    if os.path.getsize(path) != math.prod(shape) * stored.itemsize:
      return None
  except (OSError, ValueError, KeyError, TypeError):
    return None
  return RowStore(path, shape, stored, key, identity)


class RowStoreWriter:
  """Writes the row store `path` for data `key`, chunk by chunk:

      with RowStoreWriter(path, key=key, dtype=np.float32) as writer:
        for rows in chunks:
          writer.append(rows)
      store = writer.store  # opened

  Every chunk must have the first chunk's row shape. With `labels=True` each `append` takes the
  chunk's `[n]` identity labels too (`RowStore.identity`). On an exception nothing is left: no
  rows file, no `.json`, no temporary file.
  """

  def __init__(self, path: str, *, key: str, dtype, labels: bool = False):
    self.path, self.key, self.dtype = path, key, np.dtype(dtype).newbyteorder("<")
    self._labels = [] if labels else None
    self._row_shape, self._count, self._stack = None, 0, contextlib.ExitStack()
    self.store: RowStore | None = None

  def __enter__(self) -> RowStoreWriter:
    os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
      os.remove(self.path + ".json")  # an old key must never describe new rows
    self._file = self._stack.enter_context(atomic_write(self.path, "wb"))
    return self

  def append(self, rows: np.ndarray, labels=None) -> None:
    rows = np.asarray(rows)
    if self._row_shape not in (None, rows.shape[1:]):
      raise InputError(f"{self.path}: a chunk of rows {rows.shape[1:]} after rows "
                       f"{self._row_shape}; every row has one shape")
    if self._labels is not None:
      labels = np.asarray(labels).reshape(-1)
      if len(labels) != len(rows):
        raise InputError(f"{self.path}: {len(labels)} labels for a chunk of {len(rows)} rows")
      self._labels.append(labels.astype(np.int32))
    self._row_shape = rows.shape[1:]
    self._file.write(np.ascontiguousarray(rows, self.dtype).tobytes())
    self._count += len(rows)

  def __exit__(self, kind, value, traceback) -> None:
    if kind is None and self._row_shape is None:
      error = InputError(f"{self.path}: no rows to store")
      self._stack.__exit__(InputError, error, None)  # removes the temporary rows file
      raise error
    self._stack.__exit__(kind, value, traceback)  # renames the rows file, or removes it
    if kind is not None:
      return
    shape = (self._count,) + tuple(self._row_shape)
    identity = None if self._labels is None else np.concatenate(self._labels)
    with atomic_write(self.path + ".json", "w") as f:
      json.dump({"shape": list(shape), "dtype": self.dtype.str, "key": self.key,
                 "identity": None if identity is None else identity.tolist()}, f)
    self.store = RowStore(self.path, shape, self.dtype, self.key, identity)
