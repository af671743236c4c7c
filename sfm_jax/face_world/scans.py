"""Face-world scans: identities with expressions through a scanner (noise, rigid misalignment,
sliding of vertices along the surface), with the ground-truth neutral shape of each scan."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from sfm_jax import geometry
from sfm_jax.errors import InputError
from sfm_jax.face_world.expressions import (
  EXPRESSIONS,
  apply_expressions,
  sample_expression_weights,
)
from sfm_jax.face_world.identities import FaceWorld
from sfm_jax.face_world.template import FaceTemplate


@dataclasses.dataclass(frozen=True)
class Scans:
  """Registered 3D scans from the face world (all in correspondence with the template).

  Attributes:
    vertices: `[N, V, 3]` float32 scanned faces, mm (expression, noise, misalignment included).
    identity: `[N]` int32 identity label in [0, num_identities).
    expression: `[N, X]` float32 expression weights in [0, 1] (`EXPRESSIONS` order).
    neutral: `[N, V, 3]` float32 ground-truth neutral shape of the scan's identity.
    identity_directions: `[num_identities, D]` float32 identity directions on the sphere.
    triangles, landmarks, mirror: the template's topology, iBUG-68 vertices and mirror map.
  """
  vertices: np.ndarray
  identity: np.ndarray
  expression: np.ndarray
  neutral: np.ndarray
  identity_directions: np.ndarray
  triangles: np.ndarray
  landmarks: np.ndarray
  mirror: np.ndarray


def _random_rotations(rng: np.random.Generator, count: int, max_degrees: float) -> np.ndarray:
  axes = rng.normal(size=(count, 3))
  axes /= np.linalg.norm(axes, axis=1, keepdims=True)
  angles = np.deg2rad(rng.uniform(-max_degrees, max_degrees, size=count))
  k = np.zeros((count, 3, 3))
  k[:, 0, 1], k[:, 0, 2], k[:, 1, 2] = -axes[:, 2], axes[:, 1], -axes[:, 0]
  k = k - np.swapaxes(k, 1, 2)
  eye = np.eye(3)[None]
  return (eye + np.sin(angles)[:, None, None] * k
          + (1 - np.cos(angles))[:, None, None] * (k @ k))  # Rodrigues


def _sliding_noise(rng: np.random.Generator, template: FaceTemplate, faces: np.ndarray,
                   sliding: np.ndarray, magnitude_mm: float) -> np.ndarray:
  """Smooth displacements tangent to the surface (correspondence drift) of the faces `[N, V, 3]`
  where `sliding` `[N]` is true, `[count, V, 3]`. Normals are computed for every face: a shape
  that does not depend on how many slide, so the normals compile once per chunk size."""
  count = int(sliding.sum())
  centres = rng.uniform(-0.8, 0.8, size=(count, 4, 2))
  vectors = rng.normal(size=(count, 4, 3))
  distances = np.sum((template.uv[None, None] - centres[:, :, None]) ** 2, -1)  # [N, 4, V]
  field = np.einsum("nbv,nbc->nvc", np.exp(-0.5 * distances / 0.3 ** 2), vectors)
  field *= magnitude_mm / np.sqrt(np.mean(np.sum(field ** 2, -1), axis=1))[:, None, None]
  normals = np.asarray(geometry.vertex_normals(jnp.asarray(faces, jnp.float32),
                                               jnp.asarray(template.triangles)),
                       np.float64)[sliding]
  return field - np.sum(field * normals, -1, keepdims=True) * normals


def scanner_motions(rng: np.random.Generator, count: int, *, misalignment_degrees: float,
                    misalignment_mm: float) -> tuple[np.ndarray, np.ndarray]:
  """The scanner's small rigid motion of each of `count` faces: rotations `[N, 3, 3]` (uniform
  angle up to `misalignment_degrees` about a random axis) and shifts `[N, 3]` (up to
  `misalignment_mm` per axis)."""
  rotations = _random_rotations(rng, count, misalignment_degrees)
  return rotations, rng.uniform(-misalignment_mm, misalignment_mm, size=(count, 3))


def scan_faces(rng: np.random.Generator, faces: np.ndarray, rotations: np.ndarray,
               shifts: np.ndarray, *, noise_mm: float) -> np.ndarray:
  """Faces `[n, V, 3]` moved by their `scanner_motions` about each face's centre, then i.i.d.
  Gaussian noise of `noise_mm` per coordinate drawn from `rng`."""
  centre = faces.mean(axis=1, keepdims=True)
  faces = np.einsum("nij,nvj->nvi", rotations, faces - centre) + centre + shifts[:, None]
  return faces + rng.normal(scale=noise_mm, size=faces.shape)


def apply_scanner(rng: np.random.Generator, faces: np.ndarray, *, noise_mm: float,
                  misalignment_degrees: float, misalignment_mm: float) -> np.ndarray:
  """A scanner's view of faces `[N, V, 3]`: `scanner_motions`, then `scan_faces`."""
  rotations, shifts = scanner_motions(rng, faces.shape[0],
                                      misalignment_degrees=misalignment_degrees,
                                      misalignment_mm=misalignment_mm)
  return scan_faces(rng, faces, rotations, shifts, noise_mm=noise_mm)


def make_scans(num_identities: int, scans_per_identity: int, seed: int, *,
               world: FaceWorld = FaceWorld(), noise_mm: float = 0.3,
               misalignment_degrees: float = 1.0, misalignment_mm: float = 1.0,
               sliding_fraction: float = 0.2, sliding_mm: float = 1.0,
               neutral_fraction: float = 0.2, max_active_expressions: int = 3,
               identity_offset: int = 0) -> Scans:
  """Registered scans of `num_identities` random identities, `scans_per_identity` each.

  Each scan: the identity's neutral face, a random expression (with probability
  `neutral_fraction` none; otherwise 1 to `max_active_expressions` blendshapes and the jaw with
  weights in [0, 1]), a small rigid misalignment about the face centre, per-vertex Gaussian noise,
  and for a fraction of scans a smooth sliding of vertices along the surface.

  Args:
    num_identities: identities drawn uniformly on the identity sphere.
    scans_per_identity: scans of each identity.
    seed: data seed; the same seed (and world) gives bit-identical scans.
    world: the face world's fixed rules.
    noise_mm, misalignment_degrees, misalignment_mm, sliding_fraction, sliding_mm: scanner.
    neutral_fraction, max_active_expressions: expression mixing.
    identity_offset: added to the identity labels (to build disjoint label ranges).
  """
  if num_identities < 1 or scans_per_identity < 1:
    raise InputError("make_scans: num_identities and scans_per_identity must be >= 1")
  rng = np.random.default_rng(seed)
  template = world.template
  directions = world.sample_identities(rng, num_identities)
  neutral_ids = world.neutral_shapes(directions)  # [I, V, 3]
  identity = np.repeat(np.arange(num_identities), scans_per_identity)
  count = len(identity)
  neutral = neutral_ids[identity]
  weights = sample_expression_weights(rng, count, len(EXPRESSIONS),
                                      neutral_fraction=neutral_fraction,
                                      max_active=max_active_expressions)
  faces = apply_expressions(template, neutral, weights)
  sliding = rng.uniform(size=count) < sliding_fraction
  if sliding.any() and sliding_mm > 0:
    faces[sliding] += _sliding_noise(rng, template, faces, sliding, sliding_mm)
  faces = apply_scanner(rng, faces, noise_mm=noise_mm, misalignment_degrees=misalignment_degrees,
                        misalignment_mm=misalignment_mm)
  return Scans(vertices=faces.astype(np.float32),
               identity=(identity + identity_offset).astype(np.int32),
               expression=weights.astype(np.float32), neutral=neutral.astype(np.float32),
               identity_directions=directions.astype(np.float32), triangles=template.triangles,
               landmarks=template.landmarks, mirror=template.mirror)


