"""What every third-party model loader shares: building the Gaussian `FaceModel`, column bases,
required keys and counts (errors name the file and the key)."""

from __future__ import annotations

import numpy as np

from sfm_jax.errors import InputError
from sfm_jax.model import FaceModel, validate_model_arrays

NUM_LANDMARKS = 68


def _gaussian_model(path: str, mean, shape_basis, expr_basis, triangles, landmarks=None,
                    albedo_mean=None, albedo_basis=None, contour=None) -> FaceModel:
  """Assembles and validates a Gaussian `FaceModel` (arrays already in mm, `[K, V, 3]` bases)."""
  num_vertices = mean.shape[0]
  if expr_basis is None:
    expr_basis = np.zeros((0, num_vertices, 3), np.float32)
  if landmarks is None:
    landmarks = -np.ones(NUM_LANDMARKS, np.int32)
  arrays = dict(mean=np.asarray(mean, np.float32), shape_basis=np.asarray(shape_basis, np.float32),
                expr_basis=np.asarray(expr_basis, np.float32),
                radius=np.asarray(np.sqrt(shape_basis.shape[0]), np.float32),
                triangles=np.asarray(triangles, np.int32), landmarks=np.asarray(landmarks, np.int32),
                format_version=np.asarray(1), code_kind=np.asarray("gaussian"))
  if albedo_mean is not None:
    arrays.update(albedo_mean=np.asarray(albedo_mean, np.float32),
                  albedo_basis=np.asarray(albedo_basis, np.float32))
  if contour is not None:
    arrays["contour"] = np.asarray(contour, np.int32)
  validate_model_arrays(arrays, source=path)
  return FaceModel(mean=arrays["mean"], shape_basis=arrays["shape_basis"],
                   expr_basis=arrays["expr_basis"], radius=arrays["radius"],
                   triangles=arrays["triangles"], landmarks=arrays["landmarks"],
                   albedo_mean=arrays.get("albedo_mean"), albedo_basis=arrays.get("albedo_basis"),
                   contour=arrays.get("contour"), code_kind="gaussian")


def _columns_to_basis(columns: np.ndarray, scale: np.ndarray) -> np.ndarray:
  """`[3V, K]` vertex-interleaved columns times per-column scale -> `[K, V, 3]`."""
  return (columns * scale[None, :]).T.reshape(columns.shape[1], -1, 3)


def _require(arrays, keys, path):
  for key in keys:
    if key not in arrays:
      raise InputError(f"{path}: key '{key}': missing")


def _check_counts(path, key, array, rows):
  if array.shape[0] != rows:
    raise InputError(f"{path}: key '{key}': expected {rows} rows, got shape {array.shape}")
