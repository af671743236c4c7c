"""Face-world identities: a direction on S^(D-1) -> attributes in (-1, 1) through a fixed random
map and `tanh` -> smooth local warps of the template and bump sizes (a nonlinear, non-Gaussian
shape distribution); and each identity's skin albedo."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from sfm_jax.face_world.template import (
  ATTRIBUTES,
  HALF_HEIGHT_MM,
  HALF_WIDTH_MM,
  FaceTemplate,
  _attribute,
  _bump,
  _outline_scale,
  face_height,
  face_template,
)


@dataclasses.dataclass(frozen=True)
class FaceWorld:
  """The fixed rules of the face world (identical for every data seed with the same world_seed).

  Attributes:
    resolution: template grid side (V = resolution^2).
    identity_dim: D, identities are directions on S^(D-1).
    attribute_gain: gain before the `tanh` (about 1: attributes spread over (-1, 1)).
    world_seed: seed of the identity -> attribute map.
  """
  resolution: int = 64
  identity_dim: int = 16
  attribute_gain: float = 3.0
  world_seed: int = 0

  @property
  def template(self) -> FaceTemplate:
    return _cached_template(self.resolution)

  @property
  def attribute_map(self) -> np.ndarray:
    """`[P, D]` random matrix with unit rows (P = len(ATTRIBUTES))."""
    rng = np.random.default_rng(self.world_seed + 7919)
    matrix = rng.normal(size=(len(ATTRIBUTES), self.identity_dim))
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)

  def sample_identities(self, rng: np.random.Generator, count: int) -> np.ndarray:
    """`[count, D]` identity directions, uniform on the sphere."""
    x = rng.normal(size=(count, self.identity_dim))
    return x / np.linalg.norm(x, axis=1, keepdims=True)

  def attributes(self, directions: np.ndarray) -> np.ndarray:
    """`[N, D]` identity directions -> `[N, P]` attributes in (-1, 1)."""
    return np.tanh(self.attribute_gain * np.asarray(directions) @ self.attribute_map.T)

  def neutral_shapes(self, directions: np.ndarray) -> np.ndarray:
    """`[N, D]` identity directions -> `[N, V, 3]` neutral faces (float64, mm)."""
    return identity_shapes(self.template, self.attributes(directions))



@functools.lru_cache(maxsize=16)
def _cached_template(resolution: int) -> FaceTemplate:
  return face_template(resolution)

def identity_shapes(template: FaceTemplate, attributes: np.ndarray) -> np.ndarray:
  """Neutral faces `[N, V, 3]` (mm) of identities with attributes `[N, P]` (0 = the template)."""
  attributes = np.atleast_2d(attributes)
  a = lambda name: _attribute(attributes, name)
  ux, uy = template.uv[:, 0].astype(np.float64), template.uv[:, 1].astype(np.float64)
  dx, dy = template.disk[:, 0].astype(np.float64), template.disk[:, 1].astype(np.float64)
  aux = np.abs(ux)
  # Local warps of the disk domain, located by template coordinates (features move with them).
  # Warp gradients stay well below 1, so the grid never folds.
  xw = (dx + 0.06 * a("eye_spacing") * np.sign(ux) * _bump(aux, uy, 0.38, 0.2, 0.2, 0.15)
        + 0.08 * a("mouth_width") * ux * _bump(ux, uy, 0.0, -0.49, 0.3, 0.1)
        + 0.02 * a("asymmetry") * _bump(ux, uy, 0.0, -0.1, 0.1, 0.2))
  yw = (dy + 0.045 * a("brow_height") * _bump(aux, uy, 0.38, 0.36, 0.25, 0.08)
        - 0.06 * a("nose_length") * _bump(ux, uy, 0.0, -0.12, 0.12, 0.12))
  yw = yw + 0.1 * a("face_length") * np.minimum(yw, 0.0)  # longer or shorter lower face
  x = HALF_WIDTH_MM * (1.0 + 0.09 * a("face_width")) * xw * _outline_scale(yw, a("jaw_width"))
  y = HALF_HEIGHT_MM * yw
  z = face_height(ux, uy, attributes)
  return np.stack(np.broadcast_arrays(x, y, z), -1)



def identity_albedo(template: FaceTemplate, rng: np.random.Generator, count: int) -> np.ndarray:
  """Per-vertex albedo `[count, V, 3]` in [0, 1]: a skin tone per identity, smooth blotches,
  darker brows, redder lips, and dark eyes."""
  ux, uy = template.uv[:, 0].astype(np.float64), template.uv[:, 1].astype(np.float64)
  aux = np.abs(ux)
  tone = rng.uniform(0.25, 1.0, size=(count, 1, 1))  # darker .. lighter skin
  base = np.array([0.45, 0.28, 0.2]) + tone * np.array([0.45, 0.42, 0.38])
  blotches = np.zeros((count, len(ux)))
  for _ in range(4):
    centre = rng.uniform(-0.8, 0.8, size=(count, 2))
    blotches += rng.normal(scale=0.05, size=(count, 1)) * np.exp(
        -0.5 * ((ux[None] - centre[:, :1]) ** 2 + (uy[None] - centre[:, 1:]) ** 2) / 0.2 ** 2)
  albedo = base * (1.0 + blotches[..., None])
  brows = _bump(aux, uy, 0.38, 0.37, 0.18, 0.03)[None, :, None]
  lips = (_bump(ux, uy, 0.0, -0.42, 0.2, 0.035) + _bump(ux, uy, 0.0, -0.55, 0.17, 0.04))
  eyes = _bump(aux, uy, 0.38, 0.2, 0.07, 0.03)[None, :, None]
  albedo = albedo * (1.0 - 0.55 * brows) * (1.0 - 0.7 * eyes)
  albedo = albedo * (1.0 - 0.25 * lips[None, :, None]) + 0.15 * lips[None, :, None] * np.array(
      [0.6, 0.1, 0.1])
  return np.clip(albedo, 0.0, 1.0)

