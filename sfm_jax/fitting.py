"""Fitting a frozen model to scans: the one routine every evaluation uses for every model.

For scans `[N, V, 3]` in correspondence with a `FaceModel`:
1. a least-squares start on the scans as given: `[s; e]` solving `decode(s, e) ~ scan` (tiny
   ridge);
2. refinement with Adam under the model's code space: sphere models optimise free vectors `z`
   with `s = project(z, R)`; Gaussian models optimise `s` with a Tikhonov prior. Expression codes
   have a Tikhonov prior in both;
3. for each further round (`rounds` in all): rigid alignment of each scan to its current
   reconstruction (Procrustes, no scale), then refinement from the current codes. The loss is
the mean squared per-vertex distance (mm^2) plus the priors; every scan is fitted independently
(all parameters are per scan, so batching does not couple them).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sfm_jax import camera, geometry, losses, metrics, sphere
from sfm_jax.model import CONTOUR_LANDMARKS, FaceModel, decode
from sfm_jax.sources.splits import padded_batches
from sfm_jax.train_state import minimize


@dataclasses.dataclass(frozen=True)
class Fit:
  """Result of `fit_scans` (numpy arrays).

  Attributes:
    shape_codes: `[N, K]` codes (on the sphere for sphere models).
    expr_codes: `[N, E]`.
    reconstruction: `[N, V, 3]` decoded fits, in the aligned scans' frame (None unless
      `keep_meshes`).
    aligned: `[N, V, 3]` the scans rigidly aligned to their reconstruction (None unless
      `keep_meshes`).
    errors: `[N, V]` per-vertex distance between the two (mm; computed in float64, kept in
      float32).
  """
  shape_codes: np.ndarray
  expr_codes: np.ndarray
  reconstruction: np.ndarray | None
  aligned: np.ndarray | None
  errors: np.ndarray


def _align_rigid(scans: jax.Array, targets: jax.Array) -> jax.Array:
  """Each scan rigidly moved onto its target (least squares), `[N, V, 3]`."""
  def one(scan, target):
    scale, rotation, translation = geometry.similarity_procrustes(scan, target, with_scale=False)
    return geometry.apply_similarity(scan, scale, rotation, translation)
  return jax.vmap(one)(scans, targets)


def _least_squares_codes(model: FaceModel, offsets: jax.Array, ridge: float) -> jax.Array:
  """`[N, K + E]` codes minimising `||codes @ B - offsets||^2 + ridge ||codes||^2`."""
  basis = jnp.concatenate([model.shape_basis, model.expr_basis]).reshape(
      model.shape_dim + model.expr_dim, -1)
  gram = jnp.matmul(basis, basis.T, precision=geometry.HIGHEST)
  rhs = jnp.matmul(offsets.reshape(offsets.shape[0], -1), basis.T, precision=geometry.HIGHEST)
  return jnp.linalg.solve(gram + ridge * jnp.eye(gram.shape[0], dtype=gram.dtype), rhs.T).T


@functools.partial(jax.jit, static_argnames=("steps",))
def _refine(model: FaceModel, aligned: jax.Array, shape_init: jax.Array, expr_init: jax.Array, *,
            steps: int, learning_rate: float, shape_prior: float, expr_prior: float):
  """Adam refinement of the codes; returns (shape codes, expr codes)."""
  sphere_codes = model.code_kind == "sphere"

  def codes_of(params):
    return sphere.shape_codes(params["z"], model.code_kind, model.radius), params["e"]

  def loss_fn(params):
    s, e = codes_of(params)
    residual = decode(model, s, e) - aligned
    data = jnp.mean(jnp.sum(jnp.square(residual), -1))
    prior = expr_prior * jnp.mean(jnp.sum(jnp.square(e), -1))
    if not sphere_codes:
      prior = prior + shape_prior * jnp.mean(jnp.sum(jnp.square(s), -1))
    return (data + prior) * aligned.shape[0]  # per-scan objectives summed: independent fits

  params = minimize(loss_fn, {"z": shape_init, "e": expr_init}, steps=steps,
                    learning_rate=learning_rate)
  return codes_of(params)


def fit_scans(model: FaceModel, scans: Any, *, steps: int = 200, rounds: int = 3,
              learning_rate: float = 0.02, shape_prior: float = 1e-4, expr_prior: float = 1e-4,
              ridge: float = 1e-6, align: bool = True, batch_size: int = 256,
              keep_meshes: bool = True) -> Fit:
  """Fits codes (and a rigid pose) of `model` to each scan; see the module docstring.

  Args:
    model: the frozen model (`code_kind` picks the code space).
    scans: `[N, V, 3]` scans in correspondence with the model, mm: an array, or anything that
      slices like one (an `io.scan_store.ScanStore`: read a batch at a time).
    steps: Adam steps per round.
    rounds: alignment + refinement rounds.
    learning_rate: Adam learning rate on the codes.
    shape_prior, expr_prior: Tikhonov weights (mm^2 per unit code^2) on Gaussian shape codes and
      on expression codes.
    ridge: regulariser of the least-squares start.
    align: rigidly align scans to the reconstruction (else keep them as given).
    batch_size: scans fitted at a time (memory).
    keep_meshes: return the reconstructions and aligned scans (else only their distances, so
      memory does not hold two copies of every scan).

  Returns:
    A `Fit`.
  """
  if not hasattr(scans, "shape"):
    scans = np.asarray(scans, np.float32)
  if len(scans.shape) != 3 or tuple(scans.shape[1:]) != (model.num_vertices, 3):
    raise ValueError(f"fit_scans: scans must be [N, {model.num_vertices}, 3], got {scans.shape}")
  model = jax.tree_util.tree_map(jnp.asarray, model)
  outputs = []
  for start in range(0, len(scans), batch_size):
    batch = jnp.asarray(np.asarray(scans[start:start + batch_size], np.float32))
    s = e = target = None
    for round_index in range(rounds):
      # Round 0 fits the scans as given (they arrive roughly registered); later rounds first
      # align each scan to its current reconstruction.
      aligned = _align_rigid(batch, target) if align and round_index > 0 else batch
      if round_index == 0:
        codes = _least_squares_codes(model, aligned - model.mean, ridge)
        s, e = codes[:, :model.shape_dim], codes[:, model.shape_dim:]
      s, e = _refine(model, aligned, s, e, steps=steps, learning_rate=learning_rate,
                     shape_prior=shape_prior, expr_prior=expr_prior)
      target = decode(model, s, e)
    target, aligned = np.asarray(target), np.asarray(aligned)
    errors = metrics.vertex_distances(target, aligned).astype(np.float32)
    outputs.append((s, e, errors) + ((target, aligned) if keep_meshes else ()))
  gather = lambda i: np.concatenate([np.asarray(o[i]) for o in outputs])
  return Fit(shape_codes=gather(0), expr_codes=gather(1), errors=gather(2),
             reconstruction=gather(3) if keep_meshes else None,
             aligned=gather(4) if keep_meshes else None)


@dataclasses.dataclass(frozen=True)
class LandmarkFit:
  """Result of `fit_landmarks` (numpy). Camera: `camera.face_camera` with each photo's size.

  Attributes:
    shape_codes `[N, K]`, expr_codes `[N, E]`, rotation `[N, 6]` (6D), translation `[N, 2]`
    (fraction of the image size, around its centre), scale `[N]` (relative to the nominal
    scale), neutral `[N, V, 3]` and posed `[N, V, 3]` meshes (mm, model space, posed = with
    expression, before rotation), projected `[N, V, 3]` pixels and depth, landmarks `[N, 68, 2]`
    (the projected model landmarks; NaN where the model defines none).
  """
  shape_codes: np.ndarray
  expr_codes: np.ndarray
  rotation: np.ndarray
  translation: np.ndarray
  scale: np.ndarray
  neutral: np.ndarray
  posed: np.ndarray
  projected: np.ndarray
  landmarks: np.ndarray


def fit_landmarks(model: FaceModel, landmarks: Any, *, image_size: Any, visible: Any = None,
                  steps: int = 400, learning_rate: float = 0.02, shape_prior: float = 1e-4,
                  expr_prior: float = 1e-3, batch_size: int = 128) -> LandmarkFit:
  """Fits pose, shape (on the sphere for sphere models) and expression to 2D landmarks.

  Minimises the face-size-normalised landmark reprojection error (`losses.landmark_loss`) plus
  Tikhonov priors, with Adam from a frontal start whose scale and translation match the
  landmarks' bounding box. Landmarks the model does not place (`FaceModel.fitted_landmarks`) are
  ignored. With a `contour`, the jaw landmarks (iBUG 1-8, 10-17) are matched at every step to
  the model's contour on the silhouette under the current pose (`contour_points`). Every photo
  is fitted independently (its parameters meet no other photo's), so batching changes nothing
  but speed.

  Speed: the optimisation decodes only the landmark (and contour) vertices, and photos go
  through one jitted program in groups of `batch_size` (the last group, or a smaller N, is padded
  with copies up to a power of two), so a folder of photos compiles once. Each photo's landmarks
  are divided by its image size first: the fit is scale-equivariant (relative camera,
  size-normalised loss), so photos of different sizes share the program.

  Args:
    model: the model (its `landmarks` map iBUG points to vertices).
    landmarks: `[N, 68, 2]` pixels (x right, y down).
    image_size: S of the square each photo's camera spans: one int, or `[N]` per photo.
    visible: optional `[N, 68]` weights.
    shape_prior: weight of the Tikhonov prior on Gaussian shape codes (unit-variance codes;
      sphere models have none). 1e-4 measured best for the neutral 3D shape on Surrey faces
      sampled with a different seed than the benchmark's, at 0.3% and 1% landmark noise
      (4.5 mm against 4.9 mm at 1e-3 and 5.0 mm for the mean face).
  """
  landmarks = np.asarray(landmarks, np.float32)
  count = landmarks.shape[0]
  sizes = np.broadcast_to(np.asarray(image_size, np.float32), (count,)).copy()
  fitted = model.fitted_landmarks
  weights = fitted[None] * (np.ones(landmarks.shape[:2], np.float32) if visible is None
                            else np.asarray(visible, np.float32))
  unit = landmarks / sizes[:, None, None]
  points, contour_valid = _landmark_vertices(model)
  results = []
  for rows, kept in padded_batches(count, batch_size):  # padded with the last photo
    result = _fit_unit_square(points, contour_valid, jnp.asarray(unit[rows]),
                              jnp.asarray(weights[rows]), jnp.float32(learning_rate),
                              jnp.float32(shape_prior), jnp.float32(expr_prior), steps=steps)
    results.append(jax.tree_util.tree_map(lambda x, kept=kept: np.asarray(x)[:kept], result))
  params, placed, shape_codes, rotation = jax.tree_util.tree_map(
      lambda *xs: np.concatenate(xs), *results)
  # The meshes in numpy: eager jax ops here would each compile on a first call.
  mean = np.asarray(model.mean, np.float32)
  neutral = mean + np.einsum("nk,kvc->nvc", shape_codes, np.asarray(model.shape_basis))
  posed = neutral + np.einsum("ne,evc->nvc", params["e"], np.asarray(model.expr_basis))
  scale = np.exp(params["log_scale"])
  camera_space = np.einsum("nij,nvj->nvi", rotation, posed)
  pixels_per_mm = camera.nominal_scale(sizes) * scale
  offset = (0.5 + params["translation"]) * sizes[:, None]
  projected = np.stack([pixels_per_mm[:, None] * camera_space[..., 0] + offset[:, None, 0],
                        -pixels_per_mm[:, None] * camera_space[..., 1] + offset[:, None, 1],
                        -camera_space[..., 2]], -1)  # camera.weak_perspective, on the host
  placed = np.where(fitted[None, :, None], placed * sizes[:, None, None], np.nan)
  return LandmarkFit(shape_codes=shape_codes, expr_codes=params["e"],
                     rotation=params["rotation"], translation=params["translation"],
                     scale=scale, neutral=neutral.astype(np.float32),
                     posed=posed.astype(np.float32), projected=projected.astype(np.float32),
                     landmarks=placed.astype(np.float32))


def contour_points(candidates: Any, valid: Any, outward: Any, targets: Any) -> Any:
  """Where the model's jaw contour meets the image's contour landmarks under the current pose.

  Per contour row, the silhouette candidate is the one furthest out along the image direction of
  the model's x axis (towards the subject's right for side 0, left for side 1): for a row
  crossing the cheek from the frontal outline backwards, that is the point where the surface
  turns away from the camera (the occluding contour; landmark marching). Each image contour
  landmark is then matched to the nearest of its side's silhouette points (as eos does along the
  outline). The choices are piecewise constant; positions are differentiable.

  Args:
    candidates: `[B, 2, C, W, 2]` projected contour candidates (pixels or any image units).
    valid: `[2, C, W]` bool, False for padding.
    outward: `[B, 2]` unit image direction of the model's +x axis (the subject's left).
    targets: `[B, 16, 2]` the image's contour landmarks, iBUG 1-8 then 10-17.

  Returns:
    `[B, 16, 2]` matched silhouette points and `[B, 2, C]` the chosen candidate of each row.
  """
  side_sign = jnp.asarray([-1.0, 1.0])
  score = jnp.einsum("bscwk,bk->bscw", candidates, outward) * side_sign[None, :, None, None]
  score = jnp.where(valid[None], score, -jnp.inf)
  chosen = jnp.argmax(jax.lax.stop_gradient(score), axis=-1)
  silhouette = jnp.take_along_axis(candidates, chosen[..., None, None], axis=3)[..., 0, :]
  rows = silhouette[:, np.repeat([0, 1], 8)]  # [B, 16, C, 2]: each landmark's side
  distance = jnp.sum(jnp.square(rows - targets[:, :, None, :]), -1)
  nearest = jnp.argmin(jax.lax.stop_gradient(distance), axis=-1)
  return jnp.take_along_axis(rows, nearest[..., None, None], axis=2)[:, :, 0], chosen


def _landmark_vertices(model: FaceModel) -> tuple[FaceModel, Any]:
  """The model restricted to what the landmark fit decodes at every step: its 68 landmark
  vertices (undefined ones at vertex 0, weighted 0), then the `2 C W` contour candidates (padding
  at vertex 0); and the contour's `[2, C, W]` validity (None without a contour)."""
  index = np.asarray(model.landmarks)
  vertices = np.where(index >= 0, index, 0)
  valid = None
  if model.contour is not None:
    contour = np.asarray(model.contour)
    valid = contour >= 0
    vertices = np.concatenate([vertices, np.where(contour >= 0, contour, 0).reshape(-1)])
  return FaceModel(mean=np.asarray(model.mean)[vertices],  # numpy: no eager op to compile
                   shape_basis=np.asarray(model.shape_basis)[:, vertices],
                   expr_basis=np.asarray(model.expr_basis)[:, vertices],
                   radius=np.asarray(model.radius), triangles=np.zeros((0, 3), np.int32),
                   landmarks=np.arange(len(index)), code_kind=model.code_kind), valid


@functools.partial(jax.jit, static_argnames=("steps",))
def _fit_unit_square(points: FaceModel, contour_valid, landmarks, weights, learning_rate,
                     shape_prior, expr_prior, *, steps: int):
  """Adam on one group of photos whose landmarks `[B, 68, 2]` are in units of their image size
  (a camera spanning the unit square); returns the parameters, the placed landmarks, the shape
  codes and the rotation matrices."""
  count, num_landmarks = landmarks.shape[:2]
  mean_points = points.mean[:num_landmarks, :2] * jnp.asarray([1.0, -1.0])
  # The start: the bounding boxes of the landmarks with a fixed vertex (contour ones move).
  start_used = weights > 0
  if contour_valid is not None:
    start_used = start_used & ~np.isin(np.arange(num_landmarks), CONTOUR_LANDMARKS)[None]

  def extent(xy):
    big = 1e9
    low = jnp.min(jnp.where(start_used[..., None], xy, big), axis=-2)
    high = jnp.max(jnp.where(start_used[..., None], xy, -big), axis=-2)
    return high - low, (high + low) / 2

  target_size, target_centre = extent(landmarks)
  model_size, model_centre = extent(jnp.broadcast_to(mean_points, landmarks.shape))
  nominal = camera.nominal_scale(1.0)
  scale0 = jnp.sqrt(jnp.prod(target_size, -1) / jnp.prod(model_size, -1)) / nominal
  translation0 = target_centre - nominal * scale0[:, None] * model_centre - 0.5
  sphere_codes = points.code_kind == "sphere"
  init_z = (jnp.ones((count, points.shape_dim)) * 1e-3 if sphere_codes
            else jnp.zeros((count, points.shape_dim)))
  params = {"z": init_z, "e": jnp.zeros((count, points.expr_dim)),
            "rotation": jnp.tile(jnp.asarray([1.0, 0, 0, 0, 1, 0]), (count, 1)),
            "translation": translation0, "log_scale": jnp.log(scale0)}

  def place(p):
    """`[B, 68, 2]` model landmarks in the image (contour ones matched), and the shape codes."""
    s = sphere.shape_codes(p["z"], points.code_kind, points.radius)
    vertices = decode(points, s, p["e"])
    rotation = geometry.rotation_6d_to_matrix(p["rotation"])
    scale, offset = camera.face_camera(jnp.exp(p["log_scale"]), p["translation"], image_size=1.0)
    projected = camera.weak_perspective(vertices, rotation, scale, offset)[0][..., :2]
    placed = projected[:, :num_landmarks]
    if contour_valid is not None:
      x_axis = rotation[:, :2, 0] * jnp.asarray([1.0, -1.0])  # model +x in the image (y down)
      outward = x_axis / jnp.linalg.norm(x_axis, axis=-1, keepdims=True)
      candidates = projected[:, num_landmarks:].reshape(count, *contour_valid.shape, 2)
      matched, _ = contour_points(candidates, contour_valid, outward,
                                  landmarks[:, CONTOUR_LANDMARKS])
      placed = placed.at[:, CONTOUR_LANDMARKS].set(matched)
    return placed, s

  def loss_fn(p):
    placed, s = place(p)
    data = losses.landmark_loss(placed, landmarks, visible=weights, squared=True)
    prior = expr_prior * losses.code_prior(p["e"])
    if not sphere_codes:
      prior = prior + shape_prior * losses.code_prior(s)
    return (data + prior) * count

  params = minimize(loss_fn, params, steps=steps, learning_rate=learning_rate)
  placed, shape_codes = place(params)
  return params, placed, shape_codes, geometry.rotation_6d_to_matrix(params["rotation"])
