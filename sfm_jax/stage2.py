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
from sfm_jax.io.tree import load_tree, save_tree
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
  window: int = 4               # rasteriser window (see `render.rasterize`); the logged
                                # `render_overflow` counts triangles it dropped (0 = exact)

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
  """(`[B, V, 3]` pixel positions and depth, `[B, V, 3]` camera-space vertices: rotated, mm) of
  model-space faces."""
  rotation = geometry.rotation_6d_to_matrix(out["rotation"])
  camera = jnp.einsum("bij,bvj->bvi", rotation, vertices, precision=geometry.HIGHEST)
  s = nominal_scale(image_size) * out["scale"][:, None]
  offset = (0.5 + out["translation"]) * image_size
  pixels = jnp.stack([s * camera[..., 0] + offset[:, :1], -s * camera[..., 1] + offset[:, 1:],
                      -camera[..., 2]], -1)
  return pixels, camera


def render_faces(pixels: jax.Array, camera: jax.Array, albedo: jax.Array, light: jax.Array,
                 triangles: jax.Array, *, image_size: int,
                 window: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(`[B, S, S, 3]` shaded images, `[B, S, S]` masks, `[B]` rasteriser overflow counts: triangles
  left out, 0 = exact) of faces: `pixels [B, V, 3]` and `camera [B, V, 3]` (for the normals) from
  `project_faces`, per-vertex `albedo [B, V, 3]` (clipped to [0, 1]), SH `light [B, 9, 3]`.
  Differentiable in everything but the triangle selection."""
  normals = jax.vmap(lambda v: geometry.vertex_normals(v, triangles))(camera)
  rendered, mask, fragments = jax.vmap(lambda p, a, n, l: render.render(
      p, triangles, a, n, l, height=image_size, width=image_size, window=window))(
          pixels, jnp.clip(albedo, 0.0, 1.0), normals, light)
  return rendered, mask, fragments.overflow


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
    pixels, camera = project_faces(vertices, out, image_size=image_size)
    terms = {}
    visible = batch["visible"].astype(jnp.float32) * defined[None].astype(jnp.float32)
    if objective.weight_landmark:
      terms["landmark"] = losses.landmark_loss(pixels[:, safe_index, :2], batch["landmarks"],
                                               visible=visible)
    if objective.weight_photometric:
      albedo = params["albedo"]["mean"] + jnp.einsum(
          "ba,avc->bvc", out["albedo"], params["albedo"]["basis"])
      rendered, mask, overflow = render_faces(pixels, camera, albedo, out["light"], triangles,
                                              image_size=image_size, window=objective.window)
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
    if objective.weight_photometric:  # a health metric, not a loss term
      terms["render_overflow"] = jnp.mean(overflow.astype(jnp.float32))
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


def export_model(model: FaceModel, params: dict) -> FaceModel:
  """The fine-tuned model (numpy): the stage-1 basis plus the trained residuals `W_t`, and the
  learned albedo model (`albedo_mean`, `albedo_basis`)."""
  params = jax.device_get(params)
  return model.replace(
      shape_basis=np.asarray(model.shape_basis + params["residual"]["shape"], np.float32),
      expr_basis=np.asarray(model.expr_basis + params["residual"]["expr"], np.float32),
      albedo_mean=np.asarray(params["albedo"]["mean"], np.float32),
      albedo_basis=np.asarray(params["albedo"]["basis"], np.float32))


@dataclasses.dataclass(frozen=True)
class Predictor:
  """A trained stage-2 network with its fine-tuned model: what `predict` needs.

  `variables` holds the encoder's `params` and `batch_stats`; `model` is `export_model`'s output
  (it carries the albedo model). `crop_margin` records how the training images were framed:
  None for whole images (the face world), else squares around the landmarks with that margin
  (`imaging.landmark_box`, photo folders); new images must be framed the same way.
  """
  encoder: Encoder
  variables: dict
  model: FaceModel
  image_size: int
  window: int = 4
  crop_margin: float | None = None

  def metadata(self) -> dict:
    e = self.encoder
    return {"shape_dim": e.shape_dim, "expr_dim": e.expr_dim, "albedo_dim": e.albedo_dim,
            "depth": e.depth, "width": e.width, "rotation": e.rotation,
            "image_size": self.image_size, "window": self.window,
            "crop_margin": self.crop_margin}


def save_encoder(path, predictor: Predictor) -> None:
  """Writes the encoder's variables and hyperparameters (the model goes to its own file)."""
  save_tree(path, jax.device_get(predictor.variables), predictor.metadata())


def load_predictor(encoder_path, model: FaceModel) -> Predictor:
  """The `Predictor` of an encoder file (`save_encoder`) and its model; `ValueError` naming the
  file when they do not fit together."""
  variables, meta = load_tree(encoder_path)
  required = ("shape_dim", "expr_dim", "albedo_dim", "depth", "width", "rotation", "image_size")
  missing = [key for key in required if key not in meta]
  if missing or set(variables) != {"params", "batch_stats"}:
    raise ValueError(f"{encoder_path}: not a stage-2 encoder file (missing "
                     f"{missing or 'params / batch_stats'})")
  if (meta["shape_dim"], meta["expr_dim"]) != (model.shape_dim, model.expr_dim):
    raise ValueError(f"{encoder_path}: the encoder predicts K={meta['shape_dim']}, "
                     f"E={meta['expr_dim']} but the model has K={model.shape_dim}, "
                     f"E={model.expr_dim}")
  albedo_dim = 0 if model.albedo_basis is None else model.albedo_basis.shape[0]
  if meta["albedo_dim"] != albedo_dim:
    raise ValueError(f"{encoder_path}: the encoder predicts {meta['albedo_dim']} albedo codes "
                     f"but the model has {albedo_dim}")
  encoder = Encoder(shape_dim=meta["shape_dim"], expr_dim=meta["expr_dim"],
                    albedo_dim=meta["albedo_dim"], depth=meta["depth"], width=meta["width"],
                    rotation=meta["rotation"])
  return Predictor(encoder=encoder, variables=variables, model=model,
                   image_size=int(meta["image_size"]), window=int(meta.get("window", 4)),
                   crop_margin=meta.get("crop_margin"))


def predict(predictor: Predictor, images: jax.Array) -> dict:
  """Everything the network says about `images` `[B, S, S, 3]` in [0, 1] (inference mode).

  Returns `shape_codes [B, K]` (on the sphere for SFM), `expression [B, E]`, `albedo [B, A]`,
  `rotation [B, 3, 3]`, `translation [B, 2]`, `scale [B]`, `light [B, 9, 3]`, `neutral [B, V, 3]`
  (mm, model space), `posed [B, V, 3]` (mm, with expression, rotated), `pixels [B, V, 3]`,
  `landmarks [B, 68, 2]` (pixels; undefined landmarks NaN), `rendered [B, S, S, 3]`, `mask
  [B, S, S]`. Pure; jit it (the `Predictor` is closed over or static).
  """
  model = jax.tree_util.tree_map(jnp.asarray, predictor.model)
  size = predictor.image_size
  out = predictor.encoder.apply(predictor.variables, images, train=False)
  s = (sphere.project(out["z"], model.radius) if model.code_kind == "sphere" else out["z"])
  zeros = jnp.zeros_like(out["expression"])
  neutral = decode(model, s, zeros)
  vertices = decode(model, s, out["expression"])
  pixels, posed = project_faces(vertices, out, image_size=size)
  index = jnp.asarray(model.landmarks)
  landmarks = jnp.where((index >= 0)[None, :, None], pixels[:, jnp.maximum(index, 0), :2],
                        jnp.nan)
  albedo = jnp.broadcast_to(jnp.full((model.num_vertices, 3), 0.6), vertices.shape)
  if model.albedo_mean is not None:
    albedo = model.albedo_mean + jnp.einsum("ba,avc->bvc", out["albedo"], model.albedo_basis)
  rendered, mask, _ = render_faces(pixels, posed, albedo, out["light"], model.triangles,
                                   image_size=size, window=predictor.window)
  return {"shape_codes": s, "expression": out["expression"], "albedo": out["albedo"],
          "rotation": geometry.rotation_6d_to_matrix(out["rotation"]),
          "translation": out["translation"], "scale": out["scale"],
          "light": out["light"], "neutral": neutral, "posed": posed, "pixels": pixels,
          "landmarks": landmarks, "rendered": rendered, "mask": mask}


def predict_all(predictor: Predictor, images: np.ndarray, *, batch_size: int = 64,
                keys: tuple = ("shape_codes", "expression", "albedo", "rotation", "translation",
                               "scale", "light", "neutral", "posed", "landmarks"),
                progress=None) -> dict:
  """`predict` over `[N, S, S, 3]` images (uint8 or float in [0, 1]) in batches; numpy `keys`.

  The last batch is padded to `batch_size` (one compilation). `progress(done, total)` is
  called after each batch.
  """
  @jax.jit
  def function(variables, model, images):  # weights as arguments, not baked-in constants
    outputs = predict(dataclasses.replace(predictor, variables=variables, model=model), images)
    return {key: outputs[key] for key in keys}

  images = np.asarray(images)
  total = len(images)
  outputs: dict = {key: [] for key in keys}
  for start in range(0, total, batch_size):
    chunk = images[start:start + batch_size]
    chunk = chunk.astype(np.float32) / 255.0 if chunk.dtype == np.uint8 else chunk.astype(
        np.float32)
    count = len(chunk)
    if count < batch_size:
      chunk = np.concatenate([chunk, np.zeros((batch_size - count,) + chunk.shape[1:],
                                              np.float32)])
    result = jax.device_get(function(predictor.variables, predictor.model, chunk))
    for key in keys:
      outputs[key].append(np.asarray(result[key])[:count])
    if progress is not None:
      progress(min(start + batch_size, total), total)
  return {key: np.concatenate(value) for key, value in outputs.items()}
