"""The Surrey Face Model: its binary shape model, blendshapes and iBUG landmark map."""

from __future__ import annotations

import os
import re
import struct

import numpy as np

from sfm_jax.errors import InputError
from sfm_jax.io.models.common import NUM_LANDMARKS, _columns_to_basis, _gaussian_model
from sfm_jax.model import FaceModel


class _Reader:
  """Little-endian reader over bytes that names the file and offset when data runs out."""

  def __init__(self, data: bytes, path: str):
    self.data, self.pos, self.path = data, 0, path

  def take(self, size: int, what: str) -> bytes:
    if self.pos + size > len(self.data):
      raise InputError(f"{self.path}: truncated while reading {what} at byte {self.pos} "
                       f"(needs {size} bytes, {len(self.data) - self.pos} left)")
    chunk = self.data[self.pos:self.pos + size]
    self.pos += size
    return chunk

  def unpack(self, fmt: str, what: str):
    return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), what))

  def matrix(self, what: str) -> np.ndarray:
    rows, cols = self.unpack("ii", what)
    if rows < 0 or cols < 0:
      raise InputError(f"{self.path}: {what}: negative matrix size {rows} x {cols}")
    values = np.frombuffer(self.take(4 * rows * cols, what), "<f4")
    return values.reshape(cols, rows).T  # column-major on disk

  def string(self, what: str) -> str:
    (length,) = self.unpack("Q", what)
    return self.take(length, what).decode("utf-8", errors="replace")


def read_surrey_shape(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                         np.ndarray]:
  """Raw arrays of `sfm_shape_*.bin`: mean `[3V]`, orthonormal basis `[3V, K]`, eigenvalues
  (variances) `[K]`, triangles `[T, 3]` (0-based)."""
  path = os.fspath(path)
  with open(path, "rb") as f:
    reader = _Reader(f.read(), path)
  (version,) = reader.unpack("I", "class version")
  if version > 10:
    raise InputError(f"{path}: class version {version} is not a Surrey morphable model file")
  mean = reader.matrix("mean").reshape(-1)
  basis = reader.matrix("orthonormal basis")
  eigenvalues = reader.matrix("eigenvalues").reshape(-1)
  (count,) = reader.unpack("Q", "triangle count")
  triangles = np.frombuffer(reader.take(12 * count, "triangles"), "<i4").reshape(count, 3)
  if basis.shape[0] != mean.size or eigenvalues.size != basis.shape[1]:
    raise InputError(f"{path}: inconsistent sizes: mean {mean.size}, basis {basis.shape}, "
                     f"eigenvalues {eigenvalues.size}")
  if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(basis))
          and np.all(np.isfinite(eigenvalues))):
    raise InputError(f"{path}: non-finite values in the shape model")
  return mean, basis, eigenvalues, triangles.astype(np.int64)


def read_surrey_blendshapes(path: str | os.PathLike) -> tuple[list, np.ndarray]:
  """`expression_blendshapes_*.bin`: names and offsets `[X, 3V]` from the neutral mean."""
  path = os.fspath(path)
  with open(path, "rb") as f:
    reader = _Reader(f.read(), path)
  (count,) = reader.unpack("Q", "blendshape count")
  names, offsets = [], []
  for i in range(count):
    names.append(reader.string(f"blendshape {i} name"))
    offsets.append(reader.matrix(f"blendshape {i} ({names[-1]})").reshape(-1))
  if reader.pos != len(reader.data):
    raise InputError(f"{path}: {len(reader.data) - reader.pos} unexpected bytes after "
                     f"{count} blendshapes")
  return names, np.stack(offsets) if offsets else np.zeros((0, 0), np.float32)


def read_surrey_landmarks(path: str | os.PathLike, num_vertices: int) -> np.ndarray:
  """`ibug_to_sfm.txt` -> `[68]` vertex indices (-1 unset).

  Reads the TOML table `[landmark_mappings]` (`landmark = vertex`, landmarks 1-based, vertices
  0-based); other tables (contours) are skipped.
  """
  path = os.fspath(path)
  landmarks = -np.ones(NUM_LANDMARKS, np.int32)
  section = None
  with open(path, encoding="utf-8") as f:
    for line_no, line in enumerate(f, start=1):
      content = line.split("#")[0].strip()
      if content.startswith("[") and content.endswith("]") and "=" not in content:
        section = content.strip("[] ")
        continue
      if not content or section != "landmark_mappings":
        continue
      match = re.fullmatch(r"(\d+)\s*=\s*(\d+)", content)
      if not match:
        raise InputError(f"{path}: line {line_no}: expected 'landmark = vertex', got {content!r}")
      number, vertex = int(match.group(1)), int(match.group(2))
      if not 1 <= number <= NUM_LANDMARKS or vertex >= num_vertices:
        raise InputError(f"{path}: line {line_no}: landmark {number} -> vertex {vertex} out of "
                         f"range (landmarks 1-68, vertices < {num_vertices})")
      landmarks[number - 1] = vertex
  return landmarks


def read_surrey_contours(path: str | os.PathLike, num_vertices: int) -> np.ndarray:
  """`sfm_model_contours.json` (`{"model_contour": {"right_contour": [...], "left_contour":
  [...]}}`, vertex indices along each jaw line) -> the `[2, C, 1]` `FaceModel.contour` (one
  candidate per position: the fitter slides each image contour landmark along the line)."""
  import json
  path = os.fspath(path)
  try:
    with open(path, encoding="utf-8") as f:
      contours = json.load(f)["model_contour"]
    sides = [np.asarray(contours[key], np.int64) for key in ("right_contour", "left_contour")]
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise InputError(f"{path}: not a Surrey contour file ({type(e).__name__}: {e}); expected "
                     "model_contour.right_contour / left_contour vertex lists") from None
  for key, side in zip(("right_contour", "left_contour"), sides):
    if side.ndim != 1 or side.size == 0 or side.min() < 0 or side.max() >= num_vertices:
      raise InputError(f"{path}: model_contour.{key}: expected a non-empty list of vertex indices "
                       f"below {num_vertices}")
  width = max(len(side) for side in sides)
  contour = -np.ones((2, width, 1), np.int32)
  for k, side in enumerate(sides):
    contour[k, :len(side), 0] = side
    contour[k, len(side):, 0] = side[-1]  # repeat the last: every row names a vertex
  return contour


def load_surrey(path: str | os.PathLike, *, blendshapes: str | os.PathLike | None = "auto",
                landmarks: str | os.PathLike | None = "auto",
                contours: str | os.PathLike | None = "auto",
                num_shape: int | None = None) -> FaceModel:
  """The Surrey Face Model (`sfm_shape_3448.bin`) with its expression blendshapes and iBUG map.

  Args:
    path: the shape model `.bin` (or the folder holding it).
    blendshapes: `expression_blendshapes_<V>.bin`; "auto" looks beside the model, None skips.
    landmarks: `ibug_to_sfm.txt`; "auto" looks beside the model, None skips.
    contours: `sfm_model_contours.json` (the jaw lines, `FaceModel.contour`); "auto" looks
      beside the model, None skips.
    num_shape: keep the first K components.
  """
  path = os.fspath(path)
  if os.path.isdir(path):
    candidates = sorted(n for n in os.listdir(path) if re.fullmatch(r"sfm_shape_\d+\.bin", n))
    if not candidates:
      raise InputError(f"{path}: no sfm_shape_<V>.bin in this folder")
    path = os.path.join(path, candidates[0])
  folder = os.path.dirname(path)
  mean, basis, eigenvalues, triangles = read_surrey_shape(path)
  num_vertices = mean.size // 3
  k = basis.shape[1] if num_shape is None else min(num_shape, basis.shape[1])
  shape_basis = _columns_to_basis(basis[:, :k].astype(np.float64),
                                  np.sqrt(np.clip(eigenvalues[:k], 0, None)))
  if blendshapes == "auto":
    auto = os.path.join(folder, f"expression_blendshapes_{num_vertices}.bin")
    blendshapes = auto if os.path.isfile(auto) else None
  expr_basis = None
  if blendshapes is not None:
    _, offsets = read_surrey_blendshapes(blendshapes)
    if offsets.shape[1] != mean.size:
      raise InputError(f"{os.fspath(blendshapes)}: blendshapes have {offsets.shape[1] // 3} "
                       f"vertices, the model {num_vertices}")
    expr_basis = offsets.reshape(len(offsets), -1, 3)
  if landmarks == "auto":
    auto = os.path.join(folder, "ibug_to_sfm.txt")
    landmarks = auto if os.path.isfile(auto) else None
  landmark_map = read_surrey_landmarks(landmarks, num_vertices) if landmarks else None
  if contours == "auto":
    auto = os.path.join(folder, "sfm_model_contours.json")
    contours = auto if os.path.isfile(auto) else None
  contour = read_surrey_contours(contours, num_vertices) if contours else None
  return _gaussian_model(path, mean.reshape(-1, 3), shape_basis, expr_basis, triangles,
                         landmark_map, contour=contour)
