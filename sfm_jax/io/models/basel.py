"""Basel Face Model 2009 (`.mat`) and 2017/2019 (statismo `.h5`)."""

from __future__ import annotations

import os

import numpy as np

from sfm_jax.errors import InputError
from sfm_jax.io.models.common import (
  _check_counts,
  _columns_to_basis,
  _gaussian_model,
  _require,
)
from sfm_jax.model import FaceModel


def load_basel2009(path: str | os.PathLike, *, num_shape: int | None = None,
                   with_albedo: bool = True) -> FaceModel:
  """Basel Face Model 2009 (`01_MorphableModel.mat`).

  Keys: `shapeMU [3V, 1]`, `shapePC [3V, K]`, `shapeEV [K, 1]` (standard deviations), `tl [T, 3]`
  (1-based), optional `texMU`, `texPC`, `texEV` (0-255). Coordinates are micrometres; returned in
  mm. No expression basis (E = 0).
  """
  import scipy.io  # scipy ships with jax

  path = os.fspath(path)
  try:
    mat = scipy.io.loadmat(path)
  except Exception as e:  # scipy raises several types for non-.mat input
    raise InputError(f"{path}: not a readable .mat file ({e})") from None
  _require(mat, ("shapeMU", "shapePC", "shapeEV", "tl"), path)
  mean = np.asarray(mat["shapeMU"], np.float64).reshape(-1)
  columns = np.asarray(mat["shapePC"], np.float64)
  std = np.asarray(mat["shapeEV"], np.float64).reshape(-1)
  _check_counts(path, "shapePC", columns, mean.size)
  if std.size != columns.shape[1]:
    raise InputError(f"{path}: key 'shapeEV': {std.size} values for {columns.shape[1]} components")
  k = columns.shape[1] if num_shape is None else min(num_shape, columns.shape[1])
  triangles = np.asarray(mat["tl"], np.int64) - 1
  albedo_mean = albedo_basis = None
  if with_albedo and all(key in mat for key in ("texMU", "texPC", "texEV")):
    tex_columns = np.asarray(mat["texPC"], np.float64)
    _check_counts(path, "texPC", tex_columns, mean.size)
    albedo_mean = np.asarray(mat["texMU"], np.float64).reshape(-1, 3) / 255.0
    albedo_basis = _columns_to_basis(tex_columns,
                                     np.asarray(mat["texEV"], np.float64).reshape(-1)) / 255.0
  micrometres = 1e-3
  return _gaussian_model(path, mean.reshape(-1, 3) * micrometres,
                         _columns_to_basis(columns[:, :k], std[:k]) * micrometres, None,
                         triangles, albedo_mean=albedo_mean, albedo_basis=albedo_basis)


# ---------------------------------------------------------------------------------------------
# Basel Face Model 2017 / 2019 (statismo .h5).


def _statismo_part(h5, group: str, path: str, k: int | None):
  """(mean [V, 3], basis [K, V, 3] scaled by std) of a statismo model group."""
  try:
    mean = np.asarray(h5[f"{group}/model/mean"], np.float64).reshape(-1)
    columns = np.asarray(h5[f"{group}/model/pcaBasis"], np.float64)
    variance = np.asarray(h5[f"{group}/model/pcaVariance"], np.float64).reshape(-1)
  except KeyError as e:
    raise InputError(f"{path}: key '{group}/model': missing ({e})") from None
  _check_counts(path, f"{group}/model/pcaBasis", columns, mean.size)
  if variance.size != columns.shape[1]:
    raise InputError(f"{path}: key '{group}/model/pcaVariance': {variance.size} values for "
                     f"{columns.shape[1]} components")
  if np.any(variance < 0):
    raise InputError(f"{path}: key '{group}/model/pcaVariance': negative variances")
  k = columns.shape[1] if k is None else min(k, columns.shape[1])
  return mean.reshape(-1, 3), _columns_to_basis(columns[:, :k], np.sqrt(variance[:k]))


def load_basel2017(path: str | os.PathLike, *, num_shape: int | None = None,
                   num_expr: int | None = None, with_albedo: bool = True) -> FaceModel:
  """Basel Face Model 2017/2019 in the statismo HDF5 layout (needs `h5py`, extra `data`).

  Groups `shape`, optional `expression` and `color`, each with `model/mean [3V]`,
  `model/pcaBasis [3V, K]` (orthonormal columns) and `model/pcaVariance [K]` (variances);
  triangles in `shape/representer/cells [3, T]` (0-based). Coordinates are mm. The expression
  model's mean (about zero) is added to the shape mean.
  """
  try:
    import h5py
  except ImportError as e:  # pragma: no cover - h5py is in the `data` extra
    raise ImportError("load_basel2017 needs h5py: pip install -e '.[data]'") from e
  path = os.fspath(path)
  try:
    h5 = h5py.File(path, "r")
  except OSError as e:
    raise InputError(f"{path}: not a readable HDF5 file ({e})") from None
  with h5:
    mean, shape_basis = _statismo_part(h5, "shape", path, num_shape)
    if "shape/representer/cells" not in h5:
      raise InputError(f"{path}: key 'shape/representer/cells': missing")
    cells = np.asarray(h5["shape/representer/cells"], np.int64)
    # Statismo stores cells as [3, T]; accept [T, 3] only when it cannot be that layout.
    triangles = cells.T if cells.shape[0] == 3 else cells
    expr_basis = None
    if "expression" in h5:
      expr_mean, expr_basis = _statismo_part(h5, "expression", path, num_expr)
      if expr_mean.shape != mean.shape:
        raise InputError(f"{path}: key 'expression/model/mean': {expr_mean.shape[0]} vertices, "
                         f"shape has {mean.shape[0]}")
      mean = mean + expr_mean
    albedo_mean = albedo_basis = None
    if with_albedo and "color" in h5:
      albedo_mean, albedo_basis = _statismo_part(h5, "color", path, None)
  return _gaussian_model(path, mean, shape_basis, expr_basis, triangles,
                         albedo_mean=albedo_mean, albedo_basis=albedo_basis)
