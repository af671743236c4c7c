"""Stage 2: the image encoder and the basis fine-tuning objective (design section 7).

Parameters (`init_params`): the encoder's, the basis residuals `W_t` (shape and expression,
zero at the start, penalised by `||W_t||^2` and trained at a small learning rate), a per-vertex
albedo mean and albedo basis, and identity prototypes and centres. The stage-1 model is frozen:
the basis used is `W = W_stage1 + W_t`.

For a batch of images `[B, S, S, 3]` with landmarks `[B, 68, 2]` (pixels, y down), visibility and
identity labels (-1 unlabelled), the objective is

    landmark     reprojection of the model's landmark vertices (visible landmarks, normalised
                 by face size)
    photometric  masked per-pixel colour error between the rendered face and the image
    margin, center   identity terms on the predicted shape directions (labelled images; SFM)
    shape_prior  Tikhonov on Gaussian shape codes (baseline)
    expr_prior, albedo_prior   Tikhonov on the predicted codes
    residual     ||W_t||^2

Camera: weak perspective, `x = s0 * scale * (R v)_x + (0.5 + t_x) S`, `y = -s0 * scale *
(R v)_y + (0.5 + t_y) S`, depth `-(R v)_z`, with `s0` the nominal pixels per mm.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sfm_jax import geometry, losses, render, sphere
from sfm_jax.model import FaceModel, decode
from sfm_jax.networks import Encoder
from sfm_jax.train_state import grouped_optimizer


@dataclasses.dataclass(frozen=True)
class Objective:
  """Stage-2 objective settings; a weight of 0 switches a term off."""
  code_kind: str = "sphere"
  margin_scale: float = 32.0
  margin: float = 0.35
  weight_landmark: float = 1.0
  weight_photometric: float = 1.0
  weight_margin: float = 0.05
  weight_center: float = 0.5
  weight_shape_prior: float = 0.0
  weight_expr_prior: float = 1e-3
  weight_albedo_prior: float = 1e-3
  weight_residual: float = 1e-3
  window: int = 3               # rasteriser window (see `render.rasterize`)

  def __post_init__(self):
    if self.code_kind not in ("sphere", "gaussian"):
      raise ValueError(f"Objective.code_kind must be 'sphere' or 'gaussian', got "
                       f"{self.code_kind!r}")


def nominal_scale(image_size: int, face_height_mm: float = 200.0) -> float:
  """Pixels per mm that make a face of `face_height_mm` span 75% of the image."""
  return 0.75 * image_size / face_height_mm


def init_params(encoder: Encoder, model: FaceModel, *, image_size: int, num_classes: int,
                albedo_dim: int, seed: int) -> tuple[dict, dict]:
  """(params, model_state) for stage 2 from a stage-1 model."""
  key = jax.random.key(seed)
  variables = encoder.init(key, jnp.zeros((1, image_size, image_size, 3)), train=False)
  num_vertices = model.num_vertices
  rng = np.random.default_rng(seed)
  directions = rng.normal(size=(num_classes, model.shape_dim))
  directions /= np.linalg.norm(directions, axis=1, keepdims=True)
  albedo_basis = rng.normal(size=(albedo_dim, num_vertices, 3)) * 0.01
  params = {
      "encoder": variables["params"],
      "residual": {"shape": jnp.zeros_like(jnp.asarray(model.shape_basis)),
                   "expr": jnp.zeros_like(jnp.asarray(model.expr_basis))},
      "albedo": {"mean": jnp.full((num_vertices, 3), 0.6, jnp.float32),
                 "basis": jnp.asarray(albedo_basis, jnp.float32)},
      "prototypes": jnp.asarray(directions, jnp.float32),
      "centers": jnp.asarray(directions, jnp.float32),
  }
  return params, {"batch_stats": variables["batch_stats"]}


def project_faces(vertices: jax.Array, out: dict, *, image_size: int) -> tuple[jax.Array,
                                                                               jax.Array]:
  """(`[B, V, 3]` pixel positions and depth, `[B, 3, 3]` rotations) of model-space faces."""
  rotation = geometry.rotation_6d_to_matrix(out["rotation"])
  camera = jnp.einsum("bij,bvj->bvi", rotation, vertices, precision=geometry.HIGHEST)
  s = nominal_scale(image_size) * out["scale"][:, None]
  offset = (0.5 + out["translation"]) * image_size
  pixels = jnp.stack([s * camera[..., 0] + offset[:, :1], -s * camera[..., 1] + offset[:, 1:],
                      -camera[..., 2]], -1)
  return pixels, rotation


def make_loss_fn(encoder: Encoder, model: FaceModel, objective: Objective, *, image_size: int):
  """The stage-2 `loss_fn(params, model_state, batch, rng)` for `TrainState`.

  `batch`: `images [B, S, S, 3]` in [0, 1], `landmarks [B, 68, 2]`, `visible [B, 68]`,
  `identity [B]` (-1 unlabelled).
  """
  frozen = jax.tree_util.tree_map(jnp.asarray, model)
  landmark_index = np.asarray(model.landmarks)
  defined = landmark_index >= 0
  safe_index = jnp.asarray(np.where(defined, landmark_index, 0))
  defined = jnp.asarray(defined)
  triangles = jnp.asarray(model.triangles)
  sphere_model = objective.code_kind == "sphere"

  def loss_fn(params, model_state, batch, rng):
    del rng
    out, updates = encoder.apply({"params": params["encoder"], **model_state}, batch["images"],
                                 train=True, mutable=["batch_stats"])
    s = sphere.project(out["z"], frozen.radius) if sphere_model else out["z"]
    face = frozen.replace(shape_basis=frozen.shape_basis + params["residual"]["shape"],
                          expr_basis=frozen.expr_basis + params["residual"]["expr"])
    vertices = decode(face, s, out["expression"])
    pixels, rotation = project_faces(vertices, out, image_size=image_size)
    terms = {}
    visible = batch["visible"].astype(jnp.float32) * defined[None].astype(jnp.float32)
    if objective.weight_landmark:
      terms["landmark"] = losses.landmark_loss(pixels[:, safe_index, :2], batch["landmarks"],
                                               visible=visible)
    if objective.weight_photometric:
      albedo = params["albedo"]["mean"] + jnp.einsum(
          "ba,avc->bvc", out["albedo"], params["albedo"]["basis"])
      camera = jnp.einsum("bij,bvj->bvi", rotation, vertices, precision=geometry.HIGHEST)
      normals = jax.vmap(lambda v: geometry.vertex_normals(v, triangles))(camera)
      rendered, mask, _ = jax.vmap(lambda p, a, n, l: render.render(
          p, triangles, a, n, l, height=image_size, width=image_size,
          window=objective.window))(pixels, jnp.clip(albedo, 0.0, 1.0), normals, out["light"])
      terms["photometric"] = losses.photometric_loss(rendered, batch["images"], mask)
    if sphere_model:
      u = s / frozen.radius
      if objective.weight_margin:
        terms["margin"] = losses.cosface_loss(u, batch["identity"], params["prototypes"],
                                              scale=objective.margin_scale,
                                              margin=objective.margin)
      if objective.weight_center:
        terms["center"] = losses.spherical_center_loss(u, batch["identity"], params["centers"])
    elif objective.weight_shape_prior:
      terms["shape_prior"] = losses.code_prior(s)
    if objective.weight_expr_prior:
      terms["expr_prior"] = losses.code_prior(out["expression"])
    if objective.weight_albedo_prior and out["albedo"].shape[-1]:
      terms["albedo_prior"] = losses.code_prior(out["albedo"])
    if objective.weight_residual:
      terms["residual"] = losses.squared_norm(params["residual"])
    total = sum(getattr(objective, f"weight_{name}") * value for name, value in terms.items())
    return total, (terms, updates)

  return loss_fn


def make_optimizer(*, lr_encoder: float, lr_residual: float, lr_albedo: float,
                   lr_identity: float) -> optax.GradientTransformation:
  """Adam per parameter group: encoder, basis residual (small), albedo model, prototypes and
  centres."""
  return grouped_optimizer(
      {"encoder": optax.adam(lr_encoder), "residual": optax.adam(lr_residual),
       "albedo": optax.adam(lr_albedo), "identity": optax.adam(lr_identity)},
      {"encoder": "encoder", "residual": "residual", "albedo": "albedo",
       "prototypes": "identity", "centers": "identity"})
