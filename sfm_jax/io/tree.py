"""Nested dicts of arrays (network variables) as one `.npz`, plus JSON metadata.

Keys are the `/`-joined paths of the leaves (`params/Backbone_0/Conv_0/kernel`); the metadata
dict is stored as JSON under `__metadata__`. Writes are atomic; reading checks every entry.
"""

from __future__ import annotations

import io
import json
import os

import numpy as np

from sfm_jax.errors import InputError
from sfm_jax.io.npz import read_npz
from sfm_jax.io.atomic import atomic_write

_METADATA = "__metadata__"


def _flatten(tree, prefix: str, out: dict) -> None:
  for key, value in tree.items():
    if not isinstance(key, str) or "/" in key or not key:
      raise InputError(f"save_tree: key {key!r} under {prefix or '/'!r} must be a non-empty "
                       "string without '/'")
    path = f"{prefix}/{key}" if prefix else key
    if isinstance(value, dict) or hasattr(value, "items"):
      _flatten(dict(value), path, out)
    else:
      out[path] = np.asarray(value)


def save_tree(path: str | os.PathLike, tree: dict, metadata: dict | None = None) -> None:
  """Writes the nested dict `tree` (leaves: arrays) and JSON-able `metadata` to `path`."""
  arrays: dict = {}
  _flatten(dict(tree), "", arrays)
  arrays[_METADATA] = np.asarray(json.dumps(metadata or {}))
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  with atomic_write(path, "wb") as f:
    f.write(buffer.getvalue())


def load_tree(path: str | os.PathLike) -> tuple[dict, dict]:
  """(nested dict of numpy arrays, metadata) from a `save_tree` file; `ValueError` naming the
  file for anything else."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise InputError(f"{path}: no such file")
  arrays = read_npz(path)
  if _METADATA not in arrays:
    raise InputError(f"{path}: key '{_METADATA}' missing (not written by save_tree)")
  try:
    metadata = json.loads(str(arrays.pop(_METADATA)))
  except json.JSONDecodeError as e:
    raise InputError(f"{path}: key '{_METADATA}': invalid JSON ({e})") from None
  tree: dict = {}
  for key, value in arrays.items():
    node = tree
    *parents, leaf = key.split("/")
    for part in parents:
      node = node.setdefault(part, {})
      if not isinstance(node, dict):
        raise InputError(f"{path}: key '{key}' collides with a leaf")
    node[leaf] = value
  return tree, metadata
