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

from sfm_jax import camera, geometry, losses, sphere
from sfm_jax.model import FaceModel, decode
from sfm_jax.train_state import minimize


@dataclasses.dataclass(frozen=True)
class Fit:
  """Result of `fit_scans` (numpy arrays).

  Attributes:
    shape_codes: `[N, K]` codes (on the sphere for sphere models).
    expr_codes: `[N, E]`.
    reconstruction: `[N, V, 3]` decoded fits, in the aligned scans' frame.
    aligned: `[N, V, 3]` the scans rigidly aligned to their reconstruction.
  """
  shape_codes: np.ndarray
  expr_codes: np.ndarray
  reconstruction: np.ndarray
  aligned: np.ndarray


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
              ridge: float = 1e-6, align: bool = True, batch_size: int = 256) -> Fit:
  """Fits codes (and a rigid pose) of `model` to each scan; see the module docstring.

  Args:
    model: the frozen model (`code_kind` picks the code space).
    scans: `[N, V, 3]` scans in correspondence with the model, mm.
    steps: Adam steps per round.
    rounds: alignment + refinement rounds.
    learning_rate: Adam learning rate on the codes.
    shape_prior, expr_prior: Tikhonov weights (mm^2 per unit code^2) on Gaussian shape codes and
      on expression codes.
    ridge: regulariser of the least-squares start.
    align: rigidly align scans to the reconstruction (else keep them as given).
    batch_size: scans fitted at a time (memory).

  Returns:
    A `Fit`.
  """
  scans = np.asarray(scans, np.float32)
  if scans.ndim != 3 or scans.shape[1:] != (model.num_vertices, 3):
    raise ValueError(f"fit_scans: scans must be [N, {model.num_vertices}, 3], got {scans.shape}")
  model = jax.tree_util.tree_map(jnp.asarray, model)
  outputs = []
  for start in range(0, len(scans), batch_size):
    batch = jnp.asarray(scans[start:start + batch_size])
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
    outputs.append((s, e, target, aligned))
  gather = lambda i: np.concatenate([np.asarray(o[i]) for o in outputs])
  return Fit(shape_codes=gather(0), expr_codes=gather(1), reconstruction=gather(2),
             aligned=gather(3))


@dataclasses.dataclass(frozen=True)
class LandmarkFit:
  """Result of `fit_landmarks` (numpy). Camera: `camera.face_camera`.

  Attributes:
    shape_codes `[N, K]`, expr_codes `[N, E]`, rotation `[N, 6]` (6D), translation `[N, 2]`
    (fraction of the image size, around its centre), scale `[N]` (relative to the nominal
    scale), neutral `[N, V, 3]` and posed `[N, V, 3]` meshes (mm, model space), projected
    `[N, V, 3]` pixels and depth, landmarks `[N, 68, 2]` (projected model landmarks).
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


def fit_landmarks(model: FaceModel, landmarks: Any, *, image_size: int, visible: Any = None,
                  steps: int = 400, learning_rate: float = 0.02, shape_prior: float = 1e-3,
                  expr_prior: float = 1e-3) -> LandmarkFit:
  """Fits pose, shape (on the sphere for sphere models) and expression to 2D landmarks.

  Minimises the face-size-normalised landmark reprojection error (`losses.landmark_loss`) plus
  Tikhonov priors, with Adam from a frontal start whose scale and translation match the
  landmarks' bounding box. Landmarks the model does not define (index -1) are ignored.

  Args:
    model: the model (its `landmarks` map iBUG points to vertices).
    landmarks: `[N, 68, 2]` pixels (x right, y down).
    image_size: S of the (square) image the camera maps to.
    visible: optional `[N, 68]` weights.
  """
  landmarks = jnp.asarray(landmarks, jnp.float32)
  count = landmarks.shape[0]
  index = np.asarray(model.landmarks)
  defined = jnp.asarray(index >= 0, jnp.float32)
  safe = jnp.asarray(np.where(index >= 0, index, 0))
  weights = defined[None] * (jnp.ones(landmarks.shape[:2]) if visible is None
                             else jnp.asarray(visible, jnp.float32))
  model = jax.tree_util.tree_map(jnp.asarray, model)
  mean_points = model.mean[safe][:, :2] * jnp.asarray([1.0, -1.0])
  used = weights > 0
  def extent(points):
    big = 1e9
    low = jnp.min(jnp.where(used[..., None], points, big), axis=-2)
    high = jnp.max(jnp.where(used[..., None], points, -big), axis=-2)
    return high - low, (high + low) / 2
  target_size, target_centre = extent(landmarks)
  model_size, model_centre = extent(jnp.broadcast_to(mean_points, landmarks.shape))
  nominal = camera.nominal_scale(image_size)
  scale0 = jnp.sqrt(jnp.prod(target_size, -1) / jnp.prod(model_size, -1)) / nominal
  translation0 = (target_centre - nominal * scale0[:, None] * model_centre) / image_size - 0.5
  sphere_codes = model.code_kind == "sphere"
  init_z = (jnp.ones((count, model.shape_dim)) * 1e-3 if sphere_codes
            else jnp.zeros((count, model.shape_dim)))
  params = {"z": init_z, "e": jnp.zeros((count, model.expr_dim)),
            "rotation": jnp.tile(jnp.asarray([1.0, 0, 0, 0, 1, 0]), (count, 1)),
            "translation": translation0, "log_scale": jnp.log(scale0)}

  def decode_all(p):
    s = sphere.shape_codes(p["z"], model.code_kind, model.radius)
    return s, decode(model, s, p["e"])

  def project(p, vertices):
    scale, offset = camera.face_camera(jnp.exp(p["log_scale"]), p["translation"],
                                       image_size=image_size)
    return camera.weak_perspective(vertices, geometry.rotation_6d_to_matrix(p["rotation"]),
                                   scale, offset)[0]

  def loss_fn(p):
    s, vertices = decode_all(p)
    projected = project(p, vertices)
    data = losses.landmark_loss(projected[:, safe, :2], landmarks, visible=weights, squared=True)
    prior = expr_prior * losses.code_prior(p["e"])
    if not sphere_codes:
      prior = prior + shape_prior * losses.code_prior(s)
    return (data + prior) * count

  run = jax.jit(lambda params: minimize(loss_fn, params, steps=steps,
                                        learning_rate=learning_rate))
  params = run(params)
  s, posed = decode_all(params)
  neutral = decode(model, s, None)
  projected = project(params, posed)
  as_np = lambda x: np.asarray(x)
  return LandmarkFit(shape_codes=as_np(s), expr_codes=as_np(params["e"]),
                     rotation=as_np(params["rotation"]), translation=as_np(params["translation"]),
                     scale=as_np(jnp.exp(params["log_scale"])), neutral=as_np(neutral),
                     posed=as_np(posed), projected=as_np(projected),
                     landmarks=as_np(projected[:, safe, :2]))
