"""The scan store of streamed stage 1: registered scans `[N, V, 3]` float32 with their identity
labels in a row store (`io.row_store`: one flat file plus `<file>.json`, rows read on demand).

Stage 1 with `data.stream` keeps its training scans here instead of in host memory: the store is
written once, chunk by chunk (`write_scan_store`, never more than one chunk in memory), and each
training step reads only the rows of its batch (`ScanStore[index]`, positioned reads, no memory
map), so a process's memory does not grow with the number of scans and a process of a
multi-host run reads only its own slice of every batch. `open_scan_store(path, key)` returns
None for a missing store, a store of other data (the key: a caller's fingerprint of its data
config and seed), or an incomplete one, and the caller writes it again.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from sfm_jax.errors import InputError
from sfm_jax.io.row_store import RowStore, RowStoreWriter, open_row_store

DTYPE = np.dtype("<f4")
ScanStore = RowStore  # a row store of `[N, V, 3]` float32 scans with `identity` labels


def open_scan_store(path: str, key: str) -> ScanStore | None:
  """The store at `path` if it holds the data `key` names and is complete, else None."""
  store = open_row_store(path, key, dtype=DTYPE)
  if store is None or store.ndim != 3 or store.shape[2] != 3 or store.identity is None:
    return None
  return store


def write_scan_store(path: str, chunks: Iterable[tuple[np.ndarray, np.ndarray]], *,
                     key: str) -> ScanStore:
  """Writes `chunks` (pairs of scans `[n, V, 3]` and labels `[n]`, in order) as the store `path`
  for data `key`, one chunk in memory at a time; returns it opened. Non-finite values are
  refused (`InputError` naming the row)."""
  count, num_vertices = 0, None
  with RowStoreWriter(path, key=key, dtype=DTYPE, labels=True) as writer:
    for chunk, identity in chunks:
      chunk = np.asarray(chunk)
      if chunk.ndim != 3 or chunk.shape[2] != 3 or (num_vertices not in (None, chunk.shape[1])):
        raise InputError(f"{path}: chunk of shape {chunk.shape} after rows of "
                         f"{num_vertices} vertices; scans must be [n, V, 3] with one V")
      bad = ~np.isfinite(chunk).all(axis=(1, 2))
      if bad.any():
        raise InputError(f"{path}: scan {count + int(np.argmax(bad))} has non-finite coordinates")
      writer.append(chunk, identity)  # (refuses a label count other than the chunk's)
      num_vertices, count = chunk.shape[1], count + len(chunk)
  return writer.store
