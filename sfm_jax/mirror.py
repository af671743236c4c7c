"""Left-right mirroring of faces: the iBUG-68 landmark correspondence, a mesh's vertex mirror map,
and mirrored landmarks and meshes (numpy; data preparation, not differentiable).

A face mirrored left-right is another plausible face. Stage 2 can add the mirror image of every
training image (`data.mirror`): the pixels flipped horizontally, the landmarks flipped and
relabelled (the left eye's points become the right eye's), the 3D truth reflected through the
model's `x = 0` plane and re-indexed by the vertex mirror map so that it stays in the model's
topology (model space: x to the subject's left, `geometry`).

Annotations that are projections of the model's landmark vertices (rendered images) stay exact
under the flip only where those vertices are mirror partners of each other
(`landmark_mismatch` is 0): the face world's odd grids, whose midline is a vertex column, but not
its even ones, whose midline lies between two columns (a column apart: 3 mm at 48 x 48).
"""

from __future__ import annotations

import numpy as np

from sfm_jax.errors import InputError


def _ibug_mirror() -> np.ndarray:
  """`[68]`: the iBUG-68 point that lands on point i when the face is mirrored."""
  partner = np.arange(68)
  pairs = [(range(0, 8), range(16, 8, -1)),         # jaw line
           (range(17, 22), range(26, 21, -1)),      # eyebrows
           (range(31, 33), range(35, 33, -1)),      # nostrils (33 is the midline)
           ((36, 37, 38, 39, 40, 41), (45, 44, 43, 42, 47, 46)),  # eyes
           (range(48, 51), range(54, 51, -1)),      # upper outer lip (51 midline)
           ((55, 56), (59, 58)),                    # lower outer lip (57 midline)
           ((60, 61), (64, 63)),                    # upper inner lip (62 midline)
           ((65,), (67,))]                          # lower inner lip (66 midline)
  for left, right in pairs:
    for a, b in zip(left, right):
      partner[a], partner[b] = b, a
  return partner


IBUG_MIRROR = _ibug_mirror()
"""`[68]` int: the landmark that mirroring turns into landmark i (an involution; the 10 midline
points 8, 27-30, 33, 51, 57, 62, 66 map to themselves)."""


def landmarks_2d(points: np.ndarray, width: float) -> np.ndarray:
  """The landmarks `[..., 68, 2]` (pixels, x right, origin at the image's left edge) of the
  horizontally flipped image `width` pixels wide: `x -> width - x`, then relabelled by
  `IBUG_MIRROR`."""
  points = np.asarray(points)
  flipped = np.concatenate([width - points[..., :1], points[..., 1:]], -1).astype(points.dtype)
  return flipped[..., IBUG_MIRROR, :]


def vertex_map(vertices: np.ndarray, *, max_offset: float = 0.5) -> np.ndarray:
  """`[V]` int32: each vertex's left-right partner, the vertex nearest to its reflection
  `(-x, y, z)` (a face roughly symmetric about `x = 0`, e.g. a model's mean `[V, 3]`).

  `InputError` when the mesh is not that symmetric: the median distance from a reflected vertex
  to its partner above `max_offset` times the median spacing of neighbouring vertices.
  """
  from scipy.spatial import cKDTree
  vertices = np.asarray(vertices, np.float64).reshape(-1, 3)
  tree = cKDTree(vertices)
  offset, partner = tree.query(vertices * [-1.0, 1.0, 1.0])
  spacing = np.median(tree.query(vertices, k=2)[0][:, 1])
  if np.median(offset) > max_offset * spacing:
    raise InputError(f"mirroring needs a face symmetric about x = 0 in model space: reflected "
                     f"vertices lie {np.median(offset):.3g} from the nearest vertex at the median "
                     f"(vertex spacing {spacing:.3g})")
  return partner.astype(np.int32)


def model_vertex_map(model, *, check_landmarks: bool = True, hint: str = "") -> np.ndarray:
  """`vertex_map` of a `FaceModel`'s mean; with `check_landmarks`, also
  `check_landmarks_mirror` of its landmark vertices (`hint` appended to its error)."""
  mean = np.asarray(model.mean, np.float64).reshape(-1, 3)
  partner = vertex_map(mean)
  if check_landmarks:
    check_landmarks_mirror(np.asarray(model.landmarks), partner, mean, hint=hint)
  return partner


def vertices(points: np.ndarray, partner: np.ndarray) -> np.ndarray:
  """Mirrored meshes `[..., V, 3]` in the same topology: vertex i of the result is the reflection
  `(-x, y, z)` of vertex `partner[i]` (`vertex_map`)."""
  points = np.asarray(points)
  return (points[..., partner, :] * np.asarray([-1, 1, 1], points.dtype)).astype(points.dtype)


def landmark_mismatch(landmarks: np.ndarray, partner: np.ndarray, mesh: np.ndarray,
                      weights: np.ndarray | None = None) -> np.ndarray:
  """`[68]` how far a flipped annotation of a rendered image lands from the model's landmark on
  the mirrored face, in the units of `mesh` `[V, 3]` (0: exact; NaN where either landmark is
  undefined, -1).

  `landmarks`: `[68]` vertex indices, or `[68, P]` vertices whose `weights` `[68, P]` blend
  gives each point (`rendered_scans.landmark_blend`'s jaw points). Landmark i of the flipped
  image is the reflection of point `IBUG_MIRROR[i]`, i.e. on the mirrored face the blend of the
  partners of that point's vertices; the model's landmark i is the blend of its own vertices.
  """
  index = np.asarray(landmarks).reshape(68, -1)
  weights = np.ones(index.shape) if weights is None else np.asarray(weights).reshape(index.shape)
  mesh = np.asarray(mesh, np.float64)
  source = IBUG_MIRROR
  defined = np.all(index >= 0, axis=1)
  defined &= defined[source]
  reflected = vertices(mesh, partner)
  flipped = np.einsum("lp,lpc->lc", weights[source], reflected[partner[index[source]]])
  own = np.einsum("lp,lpc->lc", weights, reflected[np.maximum(index, 0)])
  return np.where(defined, np.linalg.norm(flipped - own, axis=-1), np.nan)


def check_landmarks_mirror(landmarks: np.ndarray, partner: np.ndarray, mesh: np.ndarray, *,
                           hint: str = "") -> None:
  """`InputError` (with `hint` appended) naming the landmarks whose vertices are not mirror
  partners (`landmark_mismatch` above 1e-6), so that flipped rendered landmarks would miss the
  model's; nothing when they all are."""
  mismatch = landmark_mismatch(landmarks, partner, mesh)
  if np.nanmax(mismatch, initial=0.0) > 1e-6:
    raise InputError(f"mirroring: the model's landmark vertices are not mirror partners, so "
                     f"flipped landmarks {np.flatnonzero(mismatch > 1e-6).tolist()} would lie "
                     f"up to {np.nanmax(mismatch):.3g} mm off the model's{hint}")
