"""Face-world expressions: 8 blendshape-like displacement fields and a jaw rotation
(`EXPRESSIONS`), and the one sampler of random expression weights every data source uses."""

from __future__ import annotations

import numpy as np

from sfm_jax.face_world.template import HALF_WIDTH_MM, FaceTemplate, _bump

EXPRESSIONS = ("smile", "sad", "brow_raise", "brow_furrow", "pucker", "mouth_stretch", "squint",
               "cheek_puff", "jaw_open")


def expression_fields(template: FaceTemplate) -> np.ndarray:
  """Displacements `[X - 1, V, 3]` (mm at weight 1) of the blendshape-like expressions.

  The last expression, `jaw_open`, is a rotation of the lower face (see `apply_expressions`), not a
  field, so it is not included here.
  """
  ux, uy = template.uv[:, 0].astype(np.float64), template.uv[:, 1].astype(np.float64)
  aux, side = np.abs(ux), np.sign(ux)
  corners = _bump(aux, uy, 0.26, -0.48, 0.1, 0.08)
  cheeks = _bump(aux, uy, 0.4, -0.2, 0.15, 0.12)
  lips = _bump(ux, uy, 0.0, -0.49, 0.25, 0.09)
  brows = _bump(aux, uy, 0.38, 0.36, 0.22, 0.08)
  inner_brows = _bump(aux, uy, 0.2, 0.34, 0.1, 0.08)
  upper_lids = _bump(aux, uy, 0.38, 0.24, 0.12, 0.04)
  lower_lids = _bump(aux, uy, 0.38, 0.16, 0.12, 0.04)
  puff = _bump(aux, uy, 0.35, -0.35, 0.14, 0.14)
  forehead = np.clip((uy - 0.3) / 0.5, 0.0, 1.0) ** 0.5
  zero = np.zeros_like(ux)
  fields = [
      # smile: corners up, out and back; cheeks up and forward.
      np.stack([4.0 * side * corners, 6.0 * corners + 3.0 * cheeks, -3.0 * corners + 2.0 * cheeks],
               -1),
      # sad: corners down, inner brows up.
      np.stack([zero, -5.0 * corners + 3.0 * inner_brows, -1.0 * corners], -1),
      # brow raise: brows and forehead up.
      np.stack([zero, 6.0 * brows + 3.0 * forehead, 1.0 * brows], -1),
      # brow furrow: inner brows down and together.
      np.stack([-3.0 * side * inner_brows, -4.0 * inner_brows, 1.0 * inner_brows], -1),
      # pucker: lips forward and narrower.
      np.stack([-0.35 * HALF_WIDTH_MM * ux * lips, zero, 7.0 * lips], -1),
      # mouth stretch: corners outward, lips flatter.
      np.stack([5.0 * side * corners, -1.0 * corners, -2.0 * lips], -1),
      # squint: upper lids down, lower lids and cheeks up.
      np.stack([zero, -3.0 * upper_lids + 1.5 * lower_lids + 1.0 * cheeks, zero], -1),
      # cheek puff: cheeks forward and out.
      np.stack([2.0 * side * puff, zero, 6.0 * puff], -1),
  ]
  return np.stack(fields)


JAW_MAX_DEGREES = 12.0  # about 30 mm of chin drop with the hinge ~150 mm away


def apply_expressions(template: FaceTemplate, neutral: np.ndarray, weights: np.ndarray,
                      fields: np.ndarray | None = None) -> np.ndarray:
  """Faces `[N, V, 3]` with expression `weights` `[N, X]` (in [0, 1]) applied to `neutral`.

  Blendshape-like fields are added, then `jaw_open` rotates everything below the mouth line about
  a hinge behind the face (up to `JAW_MAX_DEGREES`), blended smoothly across the lips.
  """
  fields = expression_fields(template) if fields is None else fields
  faces = neutral + np.einsum("nx,xvc->nvc", weights[:, :-1], fields)
  angle = np.deg2rad(JAW_MAX_DEGREES) * weights[:, -1]  # [N]
  uy = template.uv[:, 1].astype(np.float64)
  lower = 1.0 / (1.0 + np.exp((uy + 0.49) / 0.04))  # 1 below the mouth line, 0 above
  pivot = np.array([0.0, -5.0, -85.0])
  rel = faces - pivot
  theta = angle[:, None] * lower[None, :]  # [N, V]
  cos, sin = np.cos(theta), np.sin(theta)
  # Rotation about x that swings the chin down and back (for the chin, rel = (0, -, +)).
  y_new = cos * rel[..., 1] - sin * rel[..., 2]
  z_new = sin * rel[..., 1] + cos * rel[..., 2]
  return np.stack([faces[..., 0], y_new + pivot[1], z_new + pivot[2]], -1)



def sample_expression_weights(rng: np.random.Generator, count: int, num_expressions: int, *,
                              neutral_fraction: float, max_active: int) -> np.ndarray:
  """`[count, num_expressions]` random expression weights: with probability `neutral_fraction`
  none, else 1 to `max_active` components with weights uniform in [0.2, 1] (blendshapes at
  partial strength). The face world's scans and images and the scans sampled from a model all
  draw their expressions here."""
  weights = np.zeros((count, num_expressions))
  for n in range(count):
    if rng.uniform() < neutral_fraction or not num_expressions:
      continue
    active = rng.choice(num_expressions, size=rng.integers(1, max_active + 1), replace=False)
    weights[n, active] = rng.uniform(0.2, 1.0, size=len(active))
  return weights
