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
    vertex       3D supervision where the batch carries `neutral` and `posed` ground truth
                 (face-world images, rendered scans, photo folders with meshes): mean
                 per-vertex distance (mm) of the decoded neutral and posed shapes, each centred
                 (`losses.centred_vertex_errors`), averaged over the shapes whose
                 `neutral_weight` / `posed_weight` is 1
    code         where `neutral` is known: the squared distance of the predicted shape code
                 to the stage-1 model's best code for that neutral (`oracle_codes`), over R^2
                 (on the sphere `2 (1 - cos)`). The vertex term pulls on a code direction in
                 proportion to its basis column's squared size (on `demo` about 170x more on the
                 largest than on the smallest); this term pulls on every direction alike, as
                 cosine verification weighs them
    margin, center   identity terms on the predicted shape directions (labelled images; SFM)
    shape_prior  Tikhonov on Gaussian shape codes (baseline)
    expr_prior, albedo_prior   Tikhonov on the predicted codes
    residual     ||W_t||^2

Camera: weak perspective (`camera.weak_perspective`) with the encoder's relative scale and
translation (`camera.face_camera`).

The two stages mirror each other: `Objective`, `init_params(..., seed)`, `make_loss_fn`,
`make_optimizer`, `export_model(params, base) -> FaceModel`, `baseline_objective`.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sfm_jax import camera, geometry, losses, render, sphere
from sfm_jax.errors import InputError
from sfm_jax.model import FaceModel, decode
from sfm_jax.networks import Encoder
from sfm_jax.train_state import adam, grouped_optimizer, track_parameter_average

SPHERE_MAPS = ("radial", "metric")
LANDMARK_NOISE_MODES = ("fixed", "uniform")


def sphere_codes(z: jax.Array, model: FaceModel, *, sphere_map: str) -> jax.Array:
  """The shape codes `[B, K]` of an encoder's free vectors `z` under `model` (its current basis):
  Gaussian models use `z`; sphere models map it onto the sphere of radius R radially
  (`sphere.project`) or, with `sphere_map="metric"`, to the sphere code whose decoded shape is
  nearest to the unconstrained shape `W^T z` (`sphere.metric_project` in the basis' Gram
  metric, held constant): a linear read-out then lands where the shape says, not where the
  direction of z points, which the radial map distorts when the basis' directions have very
  different sizes."""
  if model.code_kind == "sphere" and sphere_map == "metric":
    return sphere.metric_project(z, model.radius, sphere.basis_gram(model.shape_basis))
  return sphere.shape_codes(z, model.code_kind, model.radius)


@dataclasses.dataclass(frozen=True)
class Objective:
  """Stage-2 objective settings; a weight of 0 switches a term off."""
  code_kind: str = "sphere"
  margin_scale: float = 32.0
  margin: float = 0.35
  weight_landmark: float = 10.0
  weight_vertex: float = 1.0    # 3D supervision (mm) on images whose 3D is known
  weight_code: float = 0.25     # shape codes to the oracle codes of the known neutrals (/ R^2)
  weight_photometric: float = 1.0
  weight_margin: float = 0.05
  weight_center: float = 0.5
  weight_shape_prior: float = 0.0
  weight_expr_prior: float = 1e-3
  weight_albedo_prior: float = 1e-3
  weight_residual: float = 1e-3
  weight_z_norm: float = 0.0    # SFM only: (|z| - 1)^2 on the free vectors (`losses.ring_loss`
                                # at radius 1). R z / |z| ignores |z|, but Adam turns z's
                                # direction by about lr / |z| per step, so as |z| grows the code
                                # learns slower; this holds |z| near 1
  window: int = 4               # rasteriser window (see `render.rasterize`); the logged
                                # `render_overflow` counts triangles it dropped (0 = exact)
  render_groups: int = 4        # the batch rendered as this many independent groups (the
                                # same images; faster on CPU, slower to compile: see
                                # `render.render`)
  sphere_map: str = "radial"    # how an SFM network's free vector z becomes its code: "radial"
                                # (R z / |z|) or "metric" (the sphere code whose shape is nearest
                                # to the shape of z: `sphere_codes`); unused by Gaussian codes
  landmark_noise: float = 0.0   # std (pixels) of Gaussian noise added to the landmark positions
                                # the encoder reads while training (augmentation; the landmark
                                # term still compares with the annotated ones); 0 = off
  landmark_noise_mode: str = "fixed"  # "fixed": every image gets `landmark_noise`; "uniform":
                                # each image's std drawn from U(0, landmark_noise), so the
                                # encoder sees every level from exact to the largest

  def __post_init__(self):
    if self.code_kind not in ("sphere", "gaussian"):
      raise InputError(f"Objective.code_kind must be 'sphere' or 'gaussian', got "
                       f"{self.code_kind!r}")
    if self.sphere_map not in SPHERE_MAPS:
      raise InputError(f"Objective.sphere_map must be one of {SPHERE_MAPS}, got "
                       f"{self.sphere_map!r}")
    if not self.landmark_noise >= 0:
      raise InputError(f"Objective.landmark_noise must be >= 0 pixels, got "
                       f"{self.landmark_noise!r}")
    if self.landmark_noise_mode not in LANDMARK_NOISE_MODES:
      raise InputError(f"Objective.landmark_noise_mode must be one of {LANDMARK_NOISE_MODES}, "
                       f"got {self.landmark_noise_mode!r}")
    if not (isinstance(self.render_groups, int) and self.render_groups >= 1):
      raise InputError(f"Objective.render_groups must be an int >= 1, got "
                       f"{self.render_groups!r}")


_DUMMY_LANDMARKS = jnp.zeros((1, 68, 2)) + jnp.arange(68.0)[:, None]  # spread: nonzero radius


@functools.partial(jax.jit, static_argnames=("module", "image_size"))
def _initial_variables(module, *, image_size: int, seed) -> dict:
  """A Flax encoder's or trunk's initial variables, in one compiled program (initialised op by
  op, every kernel shape's initialiser compiles on its own: seconds on a CPU); the same values."""
  return module.init(jax.random.key(seed), jnp.zeros((1, image_size, image_size, 3)),
                     train=False, landmarks=_DUMMY_LANDMARKS)


def _set_whitening(trunk_stats: dict, whitening: dict | None) -> dict:
  """A trunk's `batch_stats` with its `landmarks_whitening` statistics replaced (None: kept)."""
  if whitening is None:
    return trunk_stats
  if "landmarks_whitening" not in trunk_stats:
    raise ValueError("landmark_whitening given, but the encoder does not whiten its landmarks")
  return {**trunk_stats, "landmarks_whitening": {key: jnp.asarray(whitening[key])
                                                 for key in ("mean", "matrix")}}


def init_params(encoder: Encoder, model: FaceModel, *, image_size: int, num_classes: int,
                albedo_dim: int, seed: int, trunk: dict | None = None,
                landmark_whitening: dict | None = None) -> tuple[dict, dict]:
  """(params, model_state) for stage 2 from a stage-1 model; `trunk` (the `pretrain` phase's
  `{"params", "batch_stats"}`) replaces the encoder trunk's initial variables;
  `landmark_whitening` (`networks.whitening_statistics` of the training landmarks) sets the
  trunk's fixed landmark whitening."""
  variables = _initial_variables(encoder, image_size=image_size, seed=seed)
  if trunk is not None:
    variables = {"params": {**variables["params"], "trunk": trunk["params"]},
                 "batch_stats": {**variables["batch_stats"], "trunk": trunk["batch_stats"]}}
  variables["batch_stats"] = {**variables["batch_stats"], "trunk": _set_whitening(
      variables["batch_stats"]["trunk"], landmark_whitening)}
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
  model-space faces under the encoder's camera `out` (6D `rotation`, relative `scale` and
  `translation`; see `camera.face_camera`)."""
  scale, offset = camera.face_camera(out["scale"], out["translation"], image_size=image_size)
  return camera.weak_perspective(vertices, geometry.rotation_6d_to_matrix(out["rotation"]),
                                 scale, offset)


def render_faces(pixels: jax.Array, camera: jax.Array, albedo: jax.Array, light: jax.Array,
                 triangles: jax.Array, *, image_size: int,
                 window: int, groups: int = 1) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(`[B, S, S, 3]` shaded images, `[B, S, S]` masks, `[B]` rasteriser overflow counts: triangles
  left out, 0 = exact) of faces: `pixels [B, V, 3]` and `camera [B, V, 3]` (for the normals) from
  `project_faces`, per-vertex `albedo [B, V, 3]` (clipped to [0, 1]), SH `light [B, 9, 3]`.
  `groups`: see `render.render`. Differentiable in everything but the triangle selection."""
  normals = geometry.vertex_normals(camera, triangles)
  rendered, mask, fragments = render.render(pixels, triangles, jnp.clip(albedo, 0.0, 1.0),
                                            normals, light, height=image_size,
                                            width=image_size, window=window, groups=groups)
  return rendered, mask, fragments.overflow


def oracle_codes(model: FaceModel, neutral: jax.Array) -> jax.Array:
  """`[B, K]` the shape codes of `model` whose decoded neutral faces (expression 0) lie nearest
  to `neutral` `[B, V, 3]` (mm, model space), each face and decoded shape centred (as the vertex
  term sees them): least squares, then for sphere models the sphere code nearest to it in the
  basis' metric (`sphere.metric_project`), which is the constrained least-squares code.
  No gradient (a target)."""
  centre = lambda x: x - jnp.mean(x, axis=-2, keepdims=True)
  basis = centre(jnp.asarray(model.shape_basis))
  flat = basis.reshape(basis.shape[0], -1)
  gram = sphere.basis_gram(basis)
  offsets = (centre(neutral) - centre(jnp.asarray(model.mean))).reshape(neutral.shape[0], -1)
  rhs = jnp.matmul(offsets, flat.T, precision=geometry.HIGHEST)
  ridge = 1e-9 * jnp.trace(gram) / gram.shape[0]  # guards a degenerate basis, else negligible
  codes = jnp.linalg.solve(gram + ridge * jnp.eye(gram.shape[0], dtype=gram.dtype), rhs.T).T
  if model.code_kind == "sphere":
    codes = sphere.metric_project(codes, model.radius, gram)
  return jax.lax.stop_gradient(codes)


def make_loss_fn(encoder: Encoder, model: FaceModel, objective: Objective, *, image_size: int):
  """The stage-2 `loss_fn(params, model_state, batch, rng)` for `TrainState`.

  `batch`: `images [B, S, S, 3]` in [0, 1], `landmarks [B, 68, 2]`, `visible [B, 68]`,
  `identity [B]` (-1 unlabelled); optionally `neutral [B, V, 3]` and `posed [B, V, 3]` (mm,
  model space), the 3D ground truth of the `vertex` term, with `neutral_weight [B]` and
  `posed_weight [B]` (1 known, 0 a placeholder row).
  """
  frozen = jax.tree_util.tree_map(jnp.asarray, model)
  landmark_index = np.asarray(model.landmarks)
  defined = landmark_index >= 0
  safe_index = jnp.asarray(np.where(defined, landmark_index, 0))
  defined = jnp.asarray(defined)
  triangles = jnp.asarray(model.triangles)
  sphere_model = objective.code_kind == "sphere"

  def encoder_landmarks(landmarks, rng):
    """The landmarks `[B, 68, 2]` the encoder reads: the annotated ones, plus Gaussian noise per
    coordinate drawn from the step's key (the same on resume), of std `landmark_noise` pixels
    or, in mode "uniform", of a std per image drawn from U(0, landmark_noise)."""
    if not objective.landmark_noise:
      return landmarks
    if objective.landmark_noise_mode == "uniform":
      rng, scale_rng = jax.random.split(rng)
      scale = objective.landmark_noise * jax.random.uniform(
          scale_rng, (landmarks.shape[0], 1, 1), landmarks.dtype)
    else:
      scale = objective.landmark_noise
    noise = jax.random.normal(rng, landmarks.shape, landmarks.dtype)
    return landmarks + scale * noise

  def loss_fn(params, model_state, batch, rng):
    out, updates = encoder.apply({"params": params["encoder"], **model_state}, batch["images"],
                                 train=True, landmarks=encoder_landmarks(batch["landmarks"], rng),
                                 mutable=["batch_stats"])
    face = frozen.replace(shape_basis=frozen.shape_basis + params["residual"]["shape"],
                          expr_basis=frozen.expr_basis + params["residual"]["expr"],
                          code_kind=objective.code_kind)
    s = sphere_codes(out["z"], face, sphere_map=objective.sphere_map)
    vertices = decode(face, s, out["expression"])
    pixels, camera = project_faces(vertices, out, image_size=image_size)
    terms = {}
    visible = batch["visible"].astype(jnp.float32) * defined[None].astype(jnp.float32)
    if objective.weight_landmark:
      terms["landmark"] = losses.landmark_loss(pixels[:, safe_index, :2], batch["landmarks"],
                                               visible=visible)
    if objective.weight_vertex and "neutral" in batch:
      neutral = decode(face, s, jnp.zeros_like(out["expression"]))
      known = batch["neutral_weight"], batch["posed_weight"]
      errors = (losses.centred_vertex_errors(neutral, batch["neutral"]),
                losses.centred_vertex_errors(vertices, batch["posed"]))
      terms["vertex"] = (sum(jnp.sum(w * e) for w, e in zip(known, errors))
                         / jnp.maximum(known[0].sum() + known[1].sum(), 1.0))
    if objective.weight_code and "neutral" in batch:
      target = oracle_codes(frozen.replace(code_kind=objective.code_kind), batch["neutral"])
      distance = jnp.sum(jnp.square(s - target), axis=-1) / jnp.square(frozen.radius)
      known = batch["neutral_weight"]
      terms["code"] = jnp.sum(known * distance) / jnp.maximum(known.sum(), 1.0)
    if objective.weight_photometric:
      albedo = params["albedo"]["mean"] + jnp.einsum(
          "ba,avc->bvc", out["albedo"], params["albedo"]["basis"])
      rendered, mask, overflow = render_faces(pixels, camera, albedo, out["light"], triangles,
                                              image_size=image_size, window=objective.window,
                                              groups=objective.render_groups)
      terms["photometric"] = losses.photometric_loss(rendered, batch["images"], mask)
    if sphere_model:
      u = s / frozen.radius
      if objective.weight_z_norm:
        terms["z_norm"] = losses.ring_loss(out["z"], 1.0)  # (|z| - 1)^2, batch mean
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


# ---------------------------------------------------------------------------------------------
# Identity pretraining of the encoder trunk (the paper's regressor is a face-recognition
# backbone): CosFace on the trunk's normalised features over many rendered identities, before
# the reconstruction phase starts from the trained trunk. Same `TrainState`, same loop.


def init_pretrain_params(trunk, *, image_size: int, num_classes: int, seed: int,
                         landmark_whitening: dict | None = None) -> tuple[dict, dict]:
  """(params `{"trunk", "prototypes" [C, F]}`, model_state `{"batch_stats"}`) of the pretraining
  phase for a `networks.Trunk`; `landmark_whitening` as in `init_params`."""
  variables = _initial_variables(trunk, image_size=image_size, seed=seed)
  variables = {**variables, "batch_stats": _set_whitening(variables["batch_stats"],
                                                          landmark_whitening)}
  features = jax.eval_shape(lambda v: trunk.apply(v, jnp.zeros((1, image_size, image_size, 3)),
                                                  train=False, landmarks=_DUMMY_LANDMARKS),
                            variables).shape[-1]
  rng = np.random.default_rng(seed)
  prototypes = rng.normal(size=(num_classes, features))
  prototypes /= np.linalg.norm(prototypes, axis=1, keepdims=True)
  return ({"trunk": variables["params"], "prototypes": jnp.asarray(prototypes, jnp.float32)},
          {"batch_stats": variables["batch_stats"]})


def make_pretrain_loss_fn(trunk, *, margin_scale: float = 32.0, margin: float = 0.35):
  """`loss_fn(params, model_state, batch, rng)`: CosFace of the trunk's unit features over the
  identity prototypes; `batch`: `images`, `landmarks`, `identity` (as in reconstruction)."""
  def loss_fn(params, model_state, batch, rng):
    del rng
    features, updates = trunk.apply({"params": params["trunk"], **model_state}, batch["images"],
                                    train=True, landmarks=batch["landmarks"],
                                    mutable=["batch_stats"])
    u = sphere.normalize(features)
    margin_loss = losses.cosface_loss(u, batch["identity"], params["prototypes"],
                                      scale=margin_scale, margin=margin)
    cosines = jnp.einsum("bf,cf->bc", u, sphere.normalize(params["prototypes"]))
    correct = jnp.argmax(cosines, -1) == batch["identity"]
    return margin_loss, ({"margin": margin_loss,
                          "accuracy": jnp.mean(correct.astype(jnp.float32))}, updates)
  return loss_fn


def make_pretrain_optimizer(*, lr_trunk: float, lr_prototypes: float, warmup_steps: int = 0,
                            total_steps: int | None = None) -> optax.GradientTransformation:
  """Adam for the trunk and the prototypes (warm-up and cosine decay with `total_steps`)."""
  schedule = dict(warmup_steps=warmup_steps, total_steps=total_steps)
  return grouped_optimizer({"trunk": adam(lr_trunk, **schedule),
                            "prototypes": adam(lr_prototypes, **schedule)},
                           {"trunk": "trunk", "prototypes": "prototypes"})


def baseline_objective(objective: Objective, **overrides) -> Objective:
  """The PCA-Gaussian baseline's objective beside `objective`: the same terms with Gaussian codes
  and no identity terms (design section 8), then `overrides` (e.g. its Tikhonov weight)."""
  return dataclasses.replace(objective, code_kind="gaussian", weight_margin=0.0,
                             weight_center=0.0, weight_z_norm=0.0, sphere_map="radial",
                             **overrides)


def make_optimizer(*, lr_encoder: float, lr_residual: float, lr_albedo: float,
                   lr_identity: float, warmup_steps: int = 0, total_steps: int | None = None,
                   average_decay: float = 0.0) -> optax.GradientTransformation:
  """Adam per parameter group: encoder, basis residual (small), albedo model, prototypes and
  centres; with `total_steps`, warm-up and cosine decay (`train_state.adam`); with
  `average_decay` > 0, a moving average of the parameters in the optimizer state
  (`train_state.track_parameter_average`, read with `train_state.parameter_average`)."""
  schedule = dict(warmup_steps=warmup_steps, total_steps=total_steps)
  grouped = grouped_optimizer(
      {"encoder": adam(lr_encoder, **schedule), "residual": adam(lr_residual, **schedule),
       "albedo": adam(lr_albedo, **schedule), "identity": adam(lr_identity, **schedule)},
      {"encoder": "encoder", "residual": "residual", "albedo": "albedo",
       "prototypes": "identity", "centers": "identity"})
  if average_decay > 0.0:
    return optax.chain(grouped, track_parameter_average(average_decay))
  return grouped


def export_model(params: dict, base: FaceModel) -> FaceModel:
  """The fine-tuned model (numpy): the stage-1 model `base` with its basis plus the trained
  residuals `W_t`, and the learned albedo model (`albedo_mean`, `albedo_basis`)."""
  params = jax.device_get(params)
  return base.replace(
      shape_basis=np.asarray(base.shape_basis + params["residual"]["shape"], np.float32),
      expr_basis=np.asarray(base.expr_basis + params["residual"]["expr"], np.float32),
      albedo_mean=np.asarray(params["albedo"]["mean"], np.float32),
      albedo_basis=np.asarray(params["albedo"]["basis"], np.float32))
