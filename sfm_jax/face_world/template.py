"""The face world's template: a grid mesh mapped onto a face, its height field, iBUG-68
landmarks, mirror map and identity attributes; and `toy_model`, a small smooth random model.

Template construction: a square grid `(p, q) in [-1, 1]^2` is mapped onto the unit disk
(Fong's elliptical grid mapping, so every grid cell survives and the rim is smooth), the disk is
shaped into an egg-like face outline (narrower at the jaw), and a height field made of smooth
bumps (forehead dome, brows, eye sockets, nose, cheeks, lips, chin) gives the depth. Units are mm,
model space x to the subject's left, y up, z toward the camera; the face is about 150 mm wide
and 200 mm tall.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from sfm_jax.errors import InputError
from sfm_jax.metrics import NOW_LANDMARKS  # noqa: F401 (re-exported by face_world)
from sfm_jax.model import FaceModel

HALF_WIDTH_MM = 75.0
HALF_HEIGHT_MM = 100.0



@dataclasses.dataclass(frozen=True)
class FaceTemplate:
  """A template face mesh.

  Attributes:
    vertices: `[V, 3]` float32, mm.
    triangles: `[T, 3]` int32, counter-clockwise seen from the front (+z).
    landmarks: `[68]` int32 vertex index of each iBUG-68 landmark.
    mirror: `[V]` int32 index of each vertex's left-right mirror partner.
    uv: `[V, 2]` float32 normalised face coordinates (X, Y) in about [-1, 1] (X to the subject's
      left, Y up), the domain the height field and deformations are defined on.
    disk: `[V, 2]` float32 grid points on the unit disk before the face outline is applied
      (identities reshape the outline from here).
  """
  vertices: np.ndarray
  triangles: np.ndarray
  landmarks: np.ndarray
  mirror: np.ndarray
  uv: np.ndarray
  disk: np.ndarray


def _bump(x, y, cx, cy, sx, sy):
  return np.exp(-0.5 * (((x - cx) / sx) ** 2 + ((y - cy) / sy) ** 2))


# Identity attributes, each in (-1, 1); 0 is the template. Order matters (the identity map).
ATTRIBUTES = ("face_length", "face_width", "jaw_width", "eye_spacing", "brow_height",
              "nose_length", "nose_width", "nose_protrusion", "cheek_fullness", "chin",
              "lip_thickness", "eye_depth", "forehead_slope", "face_curvature", "mouth_width",
              "asymmetry")


def _attribute(attributes, name):
  """Column `name` of `[N, P]` attributes as `[N, 1]` (broadcasts against `[V]`), or 0."""
  if attributes is None:
    return 0.0
  return attributes[:, ATTRIBUTES.index(name)][:, None]


def face_height(x: np.ndarray, y: np.ndarray, attributes: np.ndarray | None = None) -> np.ndarray:
  """Depth z (mm) at template face coordinates (X, Y), for the template or for identities.

  Args:
    x, y: `[V]` normalised template coordinates (features stay attached to these).
    attributes: optional `[N, P]` identity attributes in (-1, 1) (see `ATTRIBUTES`).

  Returns:
    `[V]` (no attributes) or `[N, V]` depths.
  """
  a = lambda name: _attribute(attributes, name)
  ax = np.abs(x)
  dome = 55.0 * (1.0 + 0.15 * a("face_curvature")) * np.sqrt(
      np.clip(1.0 - (0.75 + 0.3 * a("face_curvature")) * x ** 2 - 0.3 * y ** 2, 0.02, None))
  forehead = -14.0 * a("forehead_slope") * np.clip(y - 0.2, 0.0, None) ** 2
  # Nose: a ridge from between the eyes to the tip, widening into the alae.
  t = np.clip((0.3 - y) / 0.45, 0.0, 1.0)  # 0 at the bridge top, 1 at the tip
  ridge_width = (0.07 + 0.06 * t ** 2) * (1.0 + 0.4 * a("nose_width"))
  ridge = ((6.0 + 20.0 * t ** 1.5) * (1.0 + 0.35 * a("nose_protrusion"))
           * np.exp(-0.5 * (x / ridge_width) ** 2))
  ridge = ridge / (1.0 + np.exp((-0.18 - y) / 0.025))  # ends under the tip
  ridge = ridge / (1.0 + np.exp((y - 0.3) / 0.04))  # and fades out above the bridge
  alae = 7.0 * _bump(ax, y, 0.11 * (1.0 + 0.4 * a("nose_width")), -0.14, 0.06, 0.05)
  eye_sockets = -11.0 * (1.0 + 0.45 * a("eye_depth")) * _bump(ax, y, 0.38, 0.2, 0.17, 0.1)
  eyeballs = 5.0 * _bump(ax, y, 0.38, 0.2, 0.09, 0.05)
  brows = 5.0 * _bump(ax, y, 0.38, 0.36, 0.2, 0.05)
  cheeks = 6.0 * (1.0 + 0.9 * a("cheek_fullness")) * _bump(ax, y, 0.45, -0.12, 0.18, 0.16)
  lips = 1.0 + 0.55 * a("lip_thickness")
  upper_lip = 5.0 * lips * _bump(x, y, 0.0, -0.42, 0.22, 0.05)
  lower_lip = 5.0 * lips * _bump(x, y, 0.0, -0.55, 0.19, 0.05)
  mouth_line = -2.5 * _bump(x, y, 0.0, -0.485, 0.24, 0.015)
  chin = 6.0 * (1.0 + 0.8 * a("chin")) * _bump(x, y, 0.0, -0.82, 0.22, 0.12)
  under_nose = -3.0 * _bump(x, y, 0.0, -0.3, 0.1, 0.05)
  lopsided = 3.0 * a("asymmetry") * x * _bump(x, y, 0.0, -0.1, 0.5, 0.4)
  return (dome + forehead + ridge + alae + eye_sockets + eyeballs + brows + cheeks + upper_lip
          + lower_lip + mouth_line + chin + under_nose + lopsided)


def _outline_scale(y: np.ndarray, jaw_width=0.0) -> np.ndarray:
  """Horizontal scale of the outline at height Y: an egg, narrower toward the jaw."""
  return 1.0 - (0.28 - 0.16 * jaw_width) * np.clip(-y, 0.0, 1.0) ** 2


def _landmark_points() -> np.ndarray:
  """The 68 iBUG landmarks `[68, 2]` in normalised (X, Y), before the outline scaling."""
  jaw_angles = np.deg2rad(np.linspace(168.0, 372.0, 17))
  jaw = np.stack([0.93 * np.cos(jaw_angles), 0.95 * np.sin(jaw_angles)], -1)
  right_brow = np.stack([np.linspace(-0.62, -0.16, 5), [0.34, 0.39, 0.41, 0.4, 0.37]], -1)
  left_brow = right_brow[::-1] * [-1.0, 1.0]
  bridge = np.stack([np.zeros(4), np.linspace(0.24, -0.1, 4)], -1)
  nostrils = np.stack([np.linspace(-0.12, 0.12, 5), [-0.2, -0.22, -0.23, -0.22, -0.2]], -1)
  # Right eye (subject's right, x < 0): outer corner, upper lid, inner corner, lower lid.
  right_eye = np.array([[-0.55, 0.2], [-0.47, 0.24], [-0.33, 0.24], [-0.23, 0.2],
                        [-0.33, 0.17], [-0.47, 0.17]])
  left_eye = np.array([[0.23, 0.2], [0.33, 0.24], [0.47, 0.24], [0.55, 0.2],
                       [0.47, 0.17], [0.33, 0.17]])
  outer_lip = np.array([[-0.26, -0.48], [-0.17, -0.43], [-0.07, -0.4], [0.0, -0.41], [0.07, -0.4],
                        [0.17, -0.43], [0.26, -0.48], [0.17, -0.56], [0.08, -0.59], [0.0, -0.6],
                        [-0.08, -0.59], [-0.17, -0.56]])
  inner_lip = np.array([[-0.2, -0.48], [-0.07, -0.465], [0.0, -0.465], [0.07, -0.465],
                        [0.2, -0.48], [0.07, -0.5], [0.0, -0.5], [-0.07, -0.5]])
  return np.concatenate([jaw, right_brow, left_brow, bridge, nostrils, right_eye, left_eye,
                         outer_lip, inner_lip])


def face_template(resolution: int = 64) -> FaceTemplate:
  """The neutral template face: a `resolution x resolution` vertex grid mapped onto a face.

  Args:
    resolution: grid side n (vertices V = n^2, triangles T = 2 (n - 1)^2). The default 64 gives
      4096 vertices; even n keeps the midline between grid columns, odd n puts one on it.
  """
  if resolution < 8:
    raise InputError(f"face_template: resolution must be >= 8, got {resolution}")
  n = resolution
  p, q = np.meshgrid(np.linspace(-1.0, 1.0, n), np.linspace(1.0, -1.0, n))  # row 0 at the top
  disk_x = p * np.sqrt(1.0 - q ** 2 / 2.0)
  disk_y = q * np.sqrt(1.0 - p ** 2 / 2.0)
  x_norm = disk_x * _outline_scale(disk_y)
  y_norm = disk_y
  vertices = np.stack([HALF_WIDTH_MM * x_norm, HALF_HEIGHT_MM * y_norm,
                       face_height(x_norm, y_norm)], -1).reshape(-1, 3)
  index = np.arange(n * n).reshape(n, n)
  top_left, top_right = index[:-1, :-1].ravel(), index[:-1, 1:].ravel()
  bottom_left, bottom_right = index[1:, :-1].ravel(), index[1:, 1:].ravel()
  # Rows go down (decreasing y) and columns right (increasing x): these windings face +z.
  triangles = np.concatenate([np.stack([top_left, bottom_left, bottom_right], -1),
                              np.stack([top_left, bottom_right, top_right], -1)])
  uv = np.stack([x_norm, y_norm], -1).reshape(-1, 2)
  points = _landmark_points()
  points = points * np.stack([_outline_scale(points[:, 1]), np.ones(68)], -1)
  landmarks = np.argmin(np.sum((uv[None] - points[:, None]) ** 2, -1), axis=1)
  mirror = index[:, ::-1].ravel()
  return FaceTemplate(vertices=vertices.astype(np.float32), triangles=triangles.astype(np.int32),
                      landmarks=landmarks.astype(np.int32), mirror=mirror.astype(np.int32),
                      uv=uv.astype(np.float32),
                      disk=np.stack([disk_x, disk_y], -1).reshape(-1, 2).astype(np.float32))


def _smooth_fields(rng: np.random.Generator, uv: np.ndarray, count: int, *, bumps: int,
                   width: float, centre_spread: float = 0.6) -> np.ndarray:
  """`count` smooth, left-right symmetric displacement fields `[count, V, 3]` of unit RMS."""
  fields = np.zeros((count, len(uv), 3))
  mirrored_uv = uv * [-1.0, 1.0]
  for k in range(count):
    for _ in range(bumps):
      centre = rng.uniform(-centre_spread, centre_spread, 2)
      direction = rng.normal(size=3) * [0.15, 0.15, 1.0]  # mostly depth: no folds
      weight = np.exp(-0.5 * np.sum((uv - centre) ** 2, -1) / width ** 2)
      weight_mirror = np.exp(-0.5 * np.sum((mirrored_uv - centre) ** 2, -1) / width ** 2)
      fields[k] += weight[:, None] * direction + weight_mirror[:, None] * direction * [-1, 1, 1]
    fields[k] /= np.sqrt(np.mean(np.sum(fields[k] ** 2, -1)))
  return fields


def toy_model(*, num_shape: int = 10, num_expr: int = 4, resolution: int = 64, seed: int = 0,
              shape_rms_mm: float = 1.5, expr_rms_mm: float = 1.5) -> FaceModel:
  """A small smooth random face model on the template (for demos and tests, not for science).

  Shape components are symmetric sums of smooth bumps scaled to `shape_rms_mm` RMS displacement
  per unit code; the sphere radius is `sqrt(K)`, so codes on it have about unit spread per
  dimension. Expression components are bumps around the mouth and brows.
  """
  template = face_template(resolution)
  rng = np.random.default_rng(seed)
  shape = _smooth_fields(rng, template.uv, num_shape, bumps=4, width=0.25) * shape_rms_mm
  expr = _smooth_fields(rng, template.uv, num_expr, bumps=2, width=0.15,
                        centre_spread=0.5) * expr_rms_mm
  return FaceModel(
      mean=template.vertices,
      shape_basis=shape.astype(np.float32),
      expr_basis=expr.astype(np.float32),
      radius=np.asarray(np.sqrt(num_shape), np.float32),
      triangles=template.triangles,
      landmarks=template.landmarks,
      code_kind="sphere",
  )

