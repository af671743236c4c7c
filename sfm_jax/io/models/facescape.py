"""FaceScape bilinear model (`.npz`), linearised at the neutral expression."""

from __future__ import annotations

import os

import numpy as np

from sfm_jax.errors import InputError
from sfm_jax.io.npz import read_npz
from sfm_jax.io.models.common import (
  NUM_LANDMARKS,
  _columns_to_basis,
  _gaussian_model,
  _require,
)
from sfm_jax.model import FaceModel


def load_facescape(path: str | os.PathLike, *, num_shape: int | None = None,
                   front_only: bool = False) -> FaceModel:
  """FaceScape bilinear model (`facescape_bm_v1.6_*.npz`), linearised at the neutral expression.

  Keys: `shape_bm_core [3V, I, X]` (vertices = core . id . exp), `id_mean [I]`, `id_var [I]`,
  `fv_indices [T, 3]` (1-based in the releases; 0-based accepted), optional `lm_list_v16` (68
  landmark vertices). The neutral expression is `exp = e_0`; expression j >= 1 is taken as an
  offset blendshape, so the expression basis is `core . id_mean . e_j`, j = 1..X-1, at the mean
  identity. Identity components are scaled by `sqrt(id_var)` around `core . id_mean . e_0`.
  `front_only` keeps the frontal face region (`v_indices_front`, `fv_indices_front`).
  """
  path = os.fspath(path)
  data = read_npz(path)
  _require(data, ("shape_bm_core", "id_mean", "id_var", "fv_indices"), path)
  core = np.asarray(data["shape_bm_core"], np.float64)
  id_mean = np.asarray(data["id_mean"], np.float64).reshape(-1)
  id_var = np.asarray(data["id_var"], np.float64).reshape(-1)
  if core.ndim != 3 or core.shape[0] % 3 or core.shape[1] != id_mean.size:
    raise InputError(f"{path}: key 'shape_bm_core': expected [3V, {id_mean.size}, X], got "
                     f"{core.shape}")
  if id_var.shape != id_mean.shape or np.any(id_var < 0):
    raise InputError(f"{path}: key 'id_var': expected {id_mean.size} non-negative variances")
  neutral_core = core[:, :, 0]  # [3V, I]
  mean = neutral_core @ id_mean
  k = id_mean.size if num_shape is None else min(num_shape, id_mean.size)
  order = np.argsort(-id_var)[:k]  # strongest identity directions first
  shape_basis = _columns_to_basis(neutral_core[:, order], np.sqrt(id_var[order]))
  expr_at_mean = np.einsum("vie,i->ve", core, id_mean)  # [3V, X]
  expr_basis = expr_at_mean[:, 1:].T.reshape(core.shape[2] - 1, -1, 3)
  faces = np.asarray(data["fv_indices"], np.int64)
  if faces.ndim != 2 or faces.shape[1] != 3:
    raise InputError(f"{path}: key 'fv_indices': expected [T, 3] triangles, got {faces.shape}")
  num_vertices = core.shape[0] // 3
  one_based = faces.min() >= 1 and faces.max() <= num_vertices
  triangles = faces - 1 if one_based else faces
  landmarks = (np.asarray(data["lm_list_v16"], np.int64).reshape(-1)
               if "lm_list_v16" in data else None)
  if landmarks is not None and landmarks.size != NUM_LANDMARKS:
    landmarks = None
  mean = mean.reshape(-1, 3)
  if front_only:
    _require(data, ("v_indices_front", "fv_indices_front"), path)
    keep = np.asarray(data["v_indices_front"], np.int64).reshape(-1)
    keep = keep - 1 if keep.min() >= 1 and keep.max() <= num_vertices else keep
    remap = -np.ones(num_vertices, np.int64)
    remap[keep] = np.arange(keep.size)
    front = np.asarray(data["fv_indices_front"], np.int64)
    front = front - 1 if one_based else front
    triangles = remap[front]
    if landmarks is not None:
      landmarks = np.where(landmarks >= 0, remap[np.clip(landmarks, 0, None)], -1)
    mean, shape_basis, expr_basis = mean[keep], shape_basis[:, keep], expr_basis[:, keep]
  return _gaussian_model(path, mean, shape_basis, expr_basis, triangles, landmarks)
