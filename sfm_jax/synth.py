"""The procedural face world (embedded default data): faces generated in code, no downloads.

- `face_template`: the neutral template mesh with iBUG-68 landmarks and a mirror map.
- `FaceWorld`: identities, expressions and a scanner. An identity is a direction on a sphere
  S^(D-1); a fixed random matrix and `tanh` turn it into attributes in (-1, 1) (nose length and
  width, jaw width, eye spacing, brow height, cheek fullness, face length, ... see `ATTRIBUTES`),
  which act through smooth local warps of the face domain (vertices move with their features, so
  correspondence holds) and through the size and width of the height field's bumps. Shapes are
  therefore a nonlinear function of the identity, not a Gaussian in a linear basis.
- `make_scans`: registered scans with expressions, scanner noise, rigid misalignment and sliding
  (correspondence) noise, plus the ground-truth neutral shape of each scan.
- `toy_model`: a small smooth random linear model for demos and tests.

Template construction: a square grid `(p, q) in [-1, 1]^2` is mapped onto the unit disk
(Fong's elliptical grid mapping, so every grid cell survives and the rim is smooth), the disk is
shaped into an egg-like face outline (narrower at the jaw), and a height field made of smooth
bumps (forehead dome, brows, eye sockets, nose, cheeks, lips, chin) gives the depth. Units are mm,
model space x to the subject's left, y up, z toward the camera; the face is about 150 mm wide
and 200 mm tall.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from sfm_jax.model import FaceModel

HALF_WIDTH_MM = 75.0
HALF_HEIGHT_MM = 100.0

# The 7 NoW evaluation landmarks as 0-based iBUG-68 indices: eye corners, nose tip, mouth corners.
NOW_LANDMARKS = (36, 39, 42, 45, 33, 48, 54)


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
    raise ValueError(f"face_template: resolution must be >= 8, got {resolution}")
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


# ---------------------------------------------------------------------------------------------
# Identities.


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


_TEMPLATE_CACHE: dict = {}


def _cached_template(resolution: int) -> FaceTemplate:
  if resolution not in _TEMPLATE_CACHE:
    _TEMPLATE_CACHE[resolution] = face_template(resolution)
  return _TEMPLATE_CACHE[resolution]


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


# ---------------------------------------------------------------------------------------------
# Expressions.

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


# ---------------------------------------------------------------------------------------------
# Scans.


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
                   magnitude_mm: float) -> np.ndarray:
  """Smooth displacements tangent to each face's surface (correspondence drift), `[N, V, 3]`."""
  count = faces.shape[0]
  centres = rng.uniform(-0.8, 0.8, size=(count, 4, 2))
  vectors = rng.normal(size=(count, 4, 3))
  distances = np.sum((template.uv[None, None] - centres[:, :, None]) ** 2, -1)  # [N, 4, V]
  field = np.einsum("nbv,nbc->nvc", np.exp(-0.5 * distances / 0.3 ** 2), vectors)
  field *= magnitude_mm / np.sqrt(np.mean(np.sum(field ** 2, -1), axis=1))[:, None, None]
  v0, v1, v2 = (faces[:, template.triangles[:, k]] for k in range(3))
  face_normal = np.cross(v1 - v0, v2 - v0)
  normals = np.zeros_like(faces)
  for k in range(3):
    np.add.at(normals, (slice(None), template.triangles[:, k]), face_normal)
  normals /= np.maximum(np.linalg.norm(normals, axis=-1, keepdims=True), 1e-12)
  return field - np.sum(field * normals, -1, keepdims=True) * normals


def apply_scanner(rng: np.random.Generator, faces: np.ndarray, *, noise_mm: float,
                  misalignment_degrees: float, misalignment_mm: float) -> np.ndarray:
  """A scanner's view of faces `[N, V, 3]`: a small random rigid motion about each face's centre
  (uniform angle up to `misalignment_degrees` about a random axis, shift up to `misalignment_mm`
  per axis), then i.i.d. Gaussian noise of `noise_mm` per coordinate."""
  count = faces.shape[0]
  rotations = _random_rotations(rng, count, misalignment_degrees)
  shifts = rng.uniform(-misalignment_mm, misalignment_mm, size=(count, 3))
  centre = faces.mean(axis=1, keepdims=True)
  faces = np.einsum("nij,nvj->nvi", rotations, faces - centre) + centre + shifts[:, None]
  return faces + rng.normal(scale=noise_mm, size=faces.shape)


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
    raise ValueError("make_scans: num_identities and scans_per_identity must be >= 1")
  rng = np.random.default_rng(seed)
  template = world.template
  directions = world.sample_identities(rng, num_identities)
  neutral_ids = world.neutral_shapes(directions)  # [I, V, 3]
  identity = np.repeat(np.arange(num_identities), scans_per_identity)
  count = len(identity)
  neutral = neutral_ids[identity]
  num_expr = len(EXPRESSIONS)
  weights = np.zeros((count, num_expr))
  for n in range(count):
    if rng.uniform() < neutral_fraction:
      continue
    active = rng.choice(num_expr, size=rng.integers(1, max_active_expressions + 1), replace=False)
    weights[n, active] = rng.uniform(0.2, 1.0, size=len(active))
  faces = apply_expressions(template, neutral, weights)
  sliding = rng.uniform(size=count) < sliding_fraction
  if sliding.any() and sliding_mm > 0:
    faces[sliding] += _sliding_noise(rng, template, faces[sliding], sliding_mm)
  faces = apply_scanner(rng, faces, noise_mm=noise_mm, misalignment_degrees=misalignment_degrees,
                        misalignment_mm=misalignment_mm)
  return Scans(vertices=faces.astype(np.float32),
               identity=(identity + identity_offset).astype(np.int32),
               expression=weights.astype(np.float32), neutral=neutral.astype(np.float32),
               identity_directions=directions.astype(np.float32), triangles=template.triangles,
               landmarks=template.landmarks, mirror=template.mirror)


# ---------------------------------------------------------------------------------------------
# The 2D face world: rendered images with landmarks and identities.


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


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
  """Clutter: a smooth colour gradient plus random rectangles and discs."""
  ys, xs = np.meshgrid(np.linspace(0, 1, size), np.linspace(0, 1, size), indexing="ij")
  c0, c1 = rng.uniform(0.1, 0.9, 3), rng.uniform(0.1, 0.9, 3)
  angle = rng.uniform(0, 2 * np.pi)
  t = np.clip(0.5 + (np.cos(angle) * (xs - 0.5) + np.sin(angle) * (ys - 0.5)), 0, 1)[..., None]
  image = c0 * (1 - t) + c1 * t
  for _ in range(rng.integers(3, 9)):
    colour = rng.uniform(0, 1, 3)
    x0, y0 = rng.uniform(-0.1, 1.0, 2)
    w, h = rng.uniform(0.05, 0.4, 2)
    if rng.uniform() < 0.5:
      inside = (xs > x0) & (xs < x0 + w) & (ys > y0) & (ys < y0 + h)
    else:
      inside = (xs - x0) ** 2 + (ys - y0) ** 2 < (w / 2) ** 2
    image[inside] = colour
  return image + rng.normal(scale=0.02, size=image.shape)


@dataclasses.dataclass(frozen=True)
class Images:
  """Rendered face-world images with annotations and ground truth.

  Attributes:
    images: `[N, S, S, 3]` float32 RGB in [0, 1].
    landmarks: `[N, 68, 2]` float32 iBUG landmarks in pixels (x right, y down).
    visible: `[N, 68]` bool, not self-occluded and not under an occluder.
    identity: `[N]` int32 label, -1 for unlabelled images.
    true_identity: `[N]` int32 identity even where the label is hidden (evaluation only).
    identity_directions: `[I, D]` identity codes (ground truth).
    neutral: `[N, V, 3]` neutral mesh of each image's identity (mm).
    expression: `[N, X]` expression weights.
    rotation: `[N, 3]` (pitch, yaw, roll) radians; scale `[N]` pixels per mm; translation `[N, 2]`.
    light: `[N, 9, 3]` SH lighting.
    mask: `[N, S, S]` face coverage (before occluders).
  """
  images: np.ndarray
  landmarks: np.ndarray
  visible: np.ndarray
  identity: np.ndarray
  true_identity: np.ndarray
  identity_directions: np.ndarray
  neutral: np.ndarray
  expression: np.ndarray
  rotation: np.ndarray
  scale: np.ndarray
  translation: np.ndarray
  light: np.ndarray
  mask: np.ndarray


@functools.lru_cache(maxsize=8)
def _batch_renderer(size: int, window: int | None):
  """One jitted renderer per image size and rasteriser (cached: batches reuse the compilation)."""
  import jax

  from sfm_jax import render as render_lib

  def one(v, triangles, a, n, l):
    image, mask, fragments = render_lib.render(v, triangles, a, n, l, height=size, width=size,
                                               window=window)
    visible = render_lib.vertex_visibility(v, fragments, tolerance=2.0)
    return image, mask, visible, fragments.overflow

  return jax.jit(jax.vmap(one, in_axes=(0, None, 0, 0, 0)))


def _render_batch(vertices_px, triangles, albedo, normals, light, size):
  """The fast window rasteriser; a batch where any triangle fits neither of its paths
  (`overflow`) is redone with the exact one, so the images are always the exact renders."""
  image, mask, visible, overflow = _batch_renderer(size, 4)(vertices_px, triangles, albedo,
                                                            normals, light)
  if np.any(np.asarray(overflow)):
    image, mask, visible, _ = _batch_renderer(size, None)(vertices_px, triangles, albedo,
                                                          normals, light)
  return image, mask, visible


def make_images(num_identities: int, images_per_identity: int, seed: int, *,
                world: FaceWorld = FaceWorld(resolution=48), image_size: int = 96,
                unlabelled_fraction: float = 0.1, occluder_probability: float = 0.2,
                max_yaw_degrees: float = 70.0, max_pitch_roll_degrees: float = 25.0,
                identity_offset: int = 0, batch_size: int = 32) -> Images:
  """Renders `images_per_identity` images of each of `num_identities` random identities.

  Every image: a random expression (as in `make_scans`), a pose with yaw up to
  `max_yaw_degrees` and pitch/roll up to `max_pitch_roll_degrees`, random SH lighting and
  identity albedo, a weak-perspective camera with scale and translation jitter, a cluttered
  background and, with `occluder_probability`, an occluding patch. A fraction
  `unlabelled_fraction` of images get identity -1 (like a landmark-only data set).
  """
  import jax.numpy as jnp

  from sfm_jax import geometry

  rng = np.random.default_rng(seed)
  template = world.template
  directions = world.sample_identities(rng, num_identities)
  neutral_ids = world.neutral_shapes(directions)
  albedo_ids = identity_albedo(template, rng, num_identities)
  true_identity = np.repeat(np.arange(num_identities), images_per_identity)
  count = len(true_identity)
  weights = np.zeros((count, len(EXPRESSIONS)))
  for n in range(count):
    if rng.uniform() < 0.3:
      continue
    active = rng.choice(len(EXPRESSIONS), size=rng.integers(1, 3), replace=False)
    weights[n, active] = rng.uniform(0.2, 1.0, size=len(active))
  neutral = neutral_ids[true_identity]
  faces = apply_expressions(template, neutral, weights)
  rotation = np.deg2rad(np.stack([rng.uniform(-max_pitch_roll_degrees, max_pitch_roll_degrees,
                                              count),
                                  rng.uniform(-max_yaw_degrees, max_yaw_degrees, count),
                                  rng.uniform(-max_pitch_roll_degrees, max_pitch_roll_degrees,
                                              count)], -1))
  scale = 0.75 * image_size / (2 * HALF_HEIGHT_MM) * rng.uniform(0.85, 1.15, count)
  translation = image_size * (0.5 + rng.uniform(-0.06, 0.06, (count, 2)))
  light = np.zeros((count, 9, 3))
  light[:, 0] = rng.uniform(0.75, 1.1, (count, 1)) / (0.282095 * np.pi) * rng.uniform(
      0.9, 1.1, (count, 3))
  light[:, 1:4] = rng.normal(scale=0.25, size=(count, 3, 1)) / (0.488603 * 2 * np.pi / 3)
  light[:, 4:] = rng.normal(scale=0.05, size=(count, 5, 1)) / (np.pi / 4)
  rotations = np.asarray(geometry.euler_to_matrix(jnp.asarray(rotation)), np.float64)
  centred = faces - faces.mean(axis=1, keepdims=True)
  camera = np.einsum("nij,nvj->nvi", rotations, centred)  # x right, y up, z toward camera
  vertices_px = np.stack([scale[:, None] * camera[..., 0] + translation[:, :1],
                          -scale[:, None] * camera[..., 1] + translation[:, 1:],
                          -camera[..., 2]], -1)
  normals = np.asarray(geometry.vertex_normals(jnp.asarray(camera, jnp.float32),
                                               jnp.asarray(template.triangles)))
  albedo = albedo_ids[true_identity]
  images = np.zeros((count, image_size, image_size, 3), np.float32)
  masks = np.zeros((count, image_size, image_size), np.float32)
  vertex_visible = np.zeros((count, template.vertices.shape[0]), bool)
  for start in range(0, count, batch_size):
    sl = slice(start, start + batch_size)
    rendered, mask, visible = _render_batch(
        jnp.asarray(vertices_px[sl], jnp.float32), jnp.asarray(template.triangles),
        jnp.asarray(albedo[sl], jnp.float32), jnp.asarray(normals[sl]),
        jnp.asarray(light[sl], jnp.float32), image_size)
    images[sl], masks[sl], vertex_visible[sl] = rendered, mask, visible
  landmarks = vertices_px[:, template.landmarks, :2]
  visible = vertex_visible[:, template.landmarks]
  for n in range(count):
    background = _background(rng, image_size)
    mask = masks[n][..., None]
    images[n] = np.clip(images[n] * mask + background * (1 - mask), 0, 1)
    if rng.uniform() < occluder_probability:
      w, h = rng.integers(image_size // 6, image_size // 3, 2)
      x0, y0 = (translation[n] + rng.uniform(-0.25, 0.25, 2) * image_size).astype(int)
      x0, y0 = np.clip([x0 - w // 2, y0 - h // 2], 0, image_size - 1)
      images[n, y0:y0 + h, x0:x0 + w] = rng.uniform(0, 1, 3)
      inside = ((landmarks[n, :, 0] >= x0) & (landmarks[n, :, 0] < x0 + w)
                & (landmarks[n, :, 1] >= y0) & (landmarks[n, :, 1] < y0 + h))
      visible[n] &= ~inside
  identity = (true_identity + identity_offset).astype(np.int32)
  identity = np.where(rng.uniform(size=count) < unlabelled_fraction, -1, identity)
  return Images(images=images, landmarks=landmarks.astype(np.float32), visible=visible,
                identity=identity.astype(np.int32),
                true_identity=(true_identity + identity_offset).astype(np.int32),
                identity_directions=directions.astype(np.float32),
                neutral=neutral.astype(np.float32), expression=weights.astype(np.float32),
                rotation=rotation.astype(np.float32), scale=scale.astype(np.float32),
                translation=translation.astype(np.float32), light=light.astype(np.float32),
                mask=masks)
