"""FLAME (`.pkl`, metres) through a restricted unpickler: only arrays, no chumpy."""

from __future__ import annotations

import os
import pickle

import numpy as np

from sfm_jax.errors import InputError
from sfm_jax.io.models.common import _gaussian_model, _require
from sfm_jax.model import FaceModel


class _ChumpyArray:
  """Stands in for `chumpy.ch.Ch` while unpickling: keeps the pickled state, exposes its array."""

  def __init__(self, *args, **kwargs):
    self.state = {}

  def __setstate__(self, state):
    self.state = state if isinstance(state, dict) else {"x": state}

  def __array__(self, dtype=None, copy=None):
    value = self.state.get("x", self.state.get("a"))
    return np.asarray(value, dtype)


# Harmless constructors that protocol-2 pickles (Python 2 and 3) of numpy/scipy data refer to.
_SAFE_GLOBALS = {(module, name) for module in ("builtins", "__builtin__")
                 for name in ("object", "set", "frozenset", "list", "dict", "tuple", "slice")}
_SAFE_GLOBALS |= {("copy_reg", "_reconstructor"), ("copyreg", "_reconstructor"),
                  ("_codecs", "encode")}
_NUMPY_NAMES = {"_reconstruct", "scalar", "ndarray", "dtype"}  # array reconstruction only


class _FlameUnpickler(pickle.Unpickler):
  """Allows only numpy array reconstruction, scipy.sparse matrices and chumpy (mapped to
  `_ChumpyArray`): a pickle naming anything else is refused, not executed."""

  def find_class(self, module, name):
    if module.startswith("chumpy"):
      return _ChumpyArray
    numpy_array = module.split(".")[0] == "numpy" and name in _NUMPY_NAMES
    sparse_matrix = module.startswith("scipy.sparse") and name[0].isalpha() and "matrix" in name
    if numpy_array or sparse_matrix or (module, name) in _SAFE_GLOBALS:
      return super().find_class(module, name)
    raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a FLAME file")


def load_flame(path: str | os.PathLike, *, num_shape: int = 300,
               num_expr: int | None = None) -> FaceModel:
  """FLAME model pickle (`generic_model.pkl`, `flame2023.pkl`), loaded without chumpy.

  Keys used: `v_template [V, 3]`, `shapedirs [V, 3, K + E]` (identity components first, then
  expression; already in units of one standard deviation), `f [T, 3]` (0-based). Metres -> mm.
  Only numpy arrays, scipy sparse matrices and chumpy objects are unpickled (anything else is
  refused).
  """
  path = os.fspath(path)
  try:
    with open(path, "rb") as f:
      data = _FlameUnpickler(f, encoding="latin1").load()
  except (pickle.UnpicklingError, EOFError, AttributeError, ValueError, TypeError) as e:
    raise InputError(f"{path}: not a readable FLAME pickle ({e})") from None
  if not isinstance(data, dict):
    raise InputError(f"{path}: expected a dict of arrays, got {type(data).__name__}")
  _require(data, ("v_template", "shapedirs", "f"), path)
  template = np.asarray(data["v_template"], np.float64)
  directions = np.asarray(data["shapedirs"], np.float64)
  if template.ndim != 2 or template.shape[1] != 3:
    raise InputError(f"{path}: key 'v_template': expected [V, 3], got {template.shape}")
  if directions.ndim != 3 or directions.shape[:2] != template.shape:
    raise InputError(f"{path}: key 'shapedirs': expected [{template.shape[0]}, 3, K], got "
                     f"{directions.shape}")
  k = min(num_shape, directions.shape[2])
  e_total = directions.shape[2] - k
  e = e_total if num_expr is None else min(num_expr, e_total)
  metres = 1e3
  basis = np.moveaxis(directions, 2, 0) * metres  # [K + E, V, 3]
  return _gaussian_model(path, template * metres, basis[:k], basis[k:k + e],
                         np.asarray(data["f"], np.int64))
