"""Inference with trained stage-2 networks: the `Predictor` (encoder + fine-tuned model), its
encoder file, `predict` / `predict_all`, loading a stage-2 workdir's predictors, and scoring them
on a split of images (held-out identities, the seen-identity diagnostic) and a gallery picture.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from sfm_jax import evaluation, fitting, geometry, metrics, mirror, readout, viz
from sfm_jax.errors import InputError
from sfm_jax.io.tree import load_tree, save_tree
from sfm_jax.model import FaceModel, decode, load_model
from sfm_jax.networks import Encoder
from sfm_jax.progress import Progress
from sfm_jax.sources.images import ImageData, Split
from sfm_jax.stage2 import oracle_codes, project_faces, render_faces, sphere_codes


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
  sphere_map: str = "radial"  # `stage2.Objective.sphere_map` it was trained with

  def metadata(self) -> dict:
    e = self.encoder
    return {"shape_dim": e.shape_dim, "expr_dim": e.expr_dim, "albedo_dim": e.albedo_dim,
            "depth": e.depth, "width": e.width, "rotation": e.rotation,
            "landmark_features": e.landmark_features, "landmark_norm": e.landmark_norm,
            "shape_from_landmarks": e.shape_from_landmarks, "landmark_linear": e.landmark_linear,
            "image_size": self.image_size, "window": self.window,
            "crop_margin": self.crop_margin, "sphere_map": self.sphere_map}


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
    raise InputError(f"{encoder_path}: not a stage-2 encoder file (missing "
                     f"{missing or 'params / batch_stats'})")
  if (meta["shape_dim"], meta["expr_dim"]) != (model.shape_dim, model.expr_dim):
    raise InputError(f"{encoder_path}: the encoder predicts K={meta['shape_dim']}, "
                     f"E={meta['expr_dim']} but the model has K={model.shape_dim}, "
                     f"E={model.expr_dim}")
  albedo_dim = 0 if model.albedo_basis is None else model.albedo_basis.shape[0]
  if meta["albedo_dim"] != albedo_dim:
    raise InputError(f"{encoder_path}: the encoder predicts {meta['albedo_dim']} albedo codes "
                     f"but the model has {albedo_dim}")
  encoder = Encoder(shape_dim=meta["shape_dim"], expr_dim=meta["expr_dim"],
                    albedo_dim=meta["albedo_dim"], depth=meta["depth"], width=meta["width"],
                    rotation=meta["rotation"],
                    landmark_features=int(meta.get("landmark_features", 0)),
                    landmark_norm=_landmark_norm(meta.get("landmark_norm", False)),
                    shape_from_landmarks=bool(meta.get("shape_from_landmarks", False)),
                    landmark_linear=bool(meta.get("landmark_linear", False)))
  return Predictor(encoder=encoder, variables=variables, model=model,
                   image_size=int(meta["image_size"]), window=int(meta.get("window", 4)),
                   crop_margin=meta.get("crop_margin"),
                   sphere_map=str(meta.get("sphere_map", "radial")))


def _landmark_norm(stored) -> str:
  """`Encoder.landmark_norm` of an encoder file: older files stored a flag (True: the
  BatchNorm) or, before the BatchNorm existed, nothing (raw inputs)."""
  if isinstance(stored, bool):
    return "batch" if stored else "none"
  return str(stored)


def predict(predictor: Predictor, images: jax.Array, landmarks: jax.Array | None = None) -> dict:
  """Everything the network says about `images` `[B, S, S, 3]` in [0, 1] (inference mode).

  Returns `shape_codes [B, K]` (on the sphere for SFM), `expression [B, E]`, `albedo [B, A]`,
  `rotation [B, 3, 3]`, `translation [B, 2]`, `scale [B]`, `light [B, 9, 3]`, `neutral [B, V, 3]`
  (mm, model space), `posed [B, V, 3]` (mm, with expression, rotated), `pixels [B, V, 3]`,
  `landmarks [B, 68, 2]` (pixels; undefined landmarks NaN), `rendered [B, S, S, 3]`, `mask
  [B, S, S]`. Pure; jit it (the `Predictor` is closed over or static).
  """
  model = jax.tree_util.tree_map(jnp.asarray, predictor.model)
  size = predictor.image_size
  out = predictor.encoder.apply(predictor.variables, images, train=False, landmarks=landmarks)
  s = sphere_codes(out["z"], model, sphere_map=predictor.sphere_map)
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


@functools.partial(jax.jit, static_argnames=("architecture", "keys"))
def _predict_keys(variables, model, images, landmarks, *, architecture: Predictor, keys: tuple):
  """`predict`'s `keys` of a predictor given as its weights and model (arguments: one compiled
  program serves every predictor of one `architecture`, the predictor without them)."""
  outputs = predict(dataclasses.replace(architecture, variables=variables, model=model), images,
                    landmarks)
  return {key: outputs[key] for key in keys}


def predict_all(predictor: Predictor, images: np.ndarray, landmarks: np.ndarray | None = None,
                *, batch_size: int = 64,
                keys: tuple = ("shape_codes", "expression", "albedo", "rotation", "translation",
                               "scale", "light", "neutral", "posed", "landmarks"),
                progress=None) -> dict:
  """`predict` over `[N, S, S, 3]` images (uint8 or float in [0, 1]) and their `[N, 68, 2]`
  landmarks (pixels; needed by networks that read them) in batches; numpy `keys`.

  The last batch is padded to `batch_size`, so every batch runs one compiled program, and later
  calls with the same architecture, model kind, batch size and `keys` reuse it (the weights are
  its arguments). `progress` (a `progress.Progress`) is updated after each batch.
  """
  architecture = dataclasses.replace(predictor, variables=None, model=None)
  images = np.asarray(images)
  total = len(images)
  if predictor.encoder.landmark_features and landmarks is None:
    raise InputError("this network reads the images' landmarks: pass them to predict_all")
  landmarks = (np.zeros((total, 68, 2), np.float32) if landmarks is None
               else np.asarray(landmarks, np.float32))
  outputs: dict = {key: [] for key in keys}
  for start in range(0, total, batch_size):
    chunk = images[start:start + batch_size]
    chunk = chunk.astype(np.float32) / 255.0 if chunk.dtype == np.uint8 else chunk.astype(
        np.float32)
    points = landmarks[start:start + batch_size]
    count = len(chunk)
    if count < batch_size:
      pad = lambda x: np.concatenate([x, np.repeat(x[-1:], batch_size - count, axis=0)])
      chunk, points = pad(chunk), pad(points)
    result = jax.device_get(_predict_keys(predictor.variables, predictor.model, chunk, points,
                                          architecture=architecture, keys=tuple(keys)))
    for key in keys:
      outputs[key].append(np.asarray(result[key])[:count])
    if progress is not None:
      progress.update(min(start + batch_size, total))
  return {key: np.concatenate(value) for key, value in outputs.items()}


MODELS = ("sfm", "baseline")


def load_predictors(workdir: str, names=MODELS) -> dict:
  """The trained predictors of a stage-2 workdir (`<name>_model.npz` + `<name>_encoder.npz`);
  a model whose files are absent is left out, none at all is an error."""
  predictors = {}
  for name in names:
    model_path = os.path.join(workdir, f"{name}_model.npz")
    encoder_path = os.path.join(workdir, f"{name}_encoder.npz")
    if os.path.isfile(model_path) and os.path.isfile(encoder_path):
      predictors[name] = load_predictor(encoder_path, load_model(model_path))
  if not predictors:
    raise InputError(f"{workdir}: no trained stage-2 model (expected <name>_model.npz and "
                     f"<name>_encoder.npz for a name in {names}); run experiments.stage2 first")
  return predictors


# Held-out rows predicted and scored at a time, so no `[N, V, 3]` array is kept; a multiple of
# `fitting.fit_landmarks`' batch (128), so fitting by chunks fits the same groups as at once.
EVAL_CHUNK = 256


def row_chunks(total: int, chunk: int) -> list[slice]:
  """`[slice]` consecutive runs of `chunk` rows (the last shorter) covering `range(total)`."""
  return [slice(start, min(start + chunk, total)) for start in range(0, total, chunk)]


def flip_average_row(name: str) -> str:
  """The table row of network `name`'s flip-averaged neutral shapes (`flip_averaged_neutral`)."""
  return f"{name}, flip-averaged"


def score_in_chunks(produce, split: Split, *, landmark_vertices: np.ndarray, seed: int,
                    chunk: int = EVAL_CHUNK, progress=None) -> tuple[dict, np.ndarray | None]:
  """Scores predictions on the rows of `split` made `chunk` rows at a time: each chunk's meshes
  are compared with its truth as soon as they are made and dropped, so memory holds the
  per-vertex errors `[N, V]` (float64) and the codes, never `[N, V, 3]` (a split of 1600
  images of 53k vertices held 1 GB per mesh array).

  Args:
    produce: function of a `slice` of the split's rows -> a dict with `neutral` `[n, V, 3]`
      (mm; asked for only when the split has 3D truth), optionally `shape_codes` `[n, K]` and
      `landmarks` `[n, 68, 2]` (pixels) together, and any other key holding further neutral
      shapes `[n, V, 3]`.
    split: the held-out split; its images, landmarks and truth may be row stores.
    landmark_vertices, seed: as for `evaluation.evaluate_images`.
    chunk: rows per call of `produce`.
    progress: a `progress.Progress` over the rows, or None.

  Returns ({"neutral": `evaluation.evaluate_images` scores (3D only without codes), other key:
  its 3D scores}, the codes `[N, K]` or None). Equal to scoring whole arrays.
  """
  landmark_vertices = np.asarray(landmark_vertices)
  now = landmark_vertices[list(metrics.NOW_LANDMARKS)]
  if split.neutral is not None and np.any(now < 0):
    raise ValueError("the model lacks some of the 7 NoW landmark vertices")
  errors: dict = {}
  codes, marks = [], []
  for rows in row_chunks(len(split), chunk):
    out = produce(rows)
    if "shape_codes" in out:
      codes.append(np.asarray(out["shape_codes"]))
      marks.append(np.asarray(out["landmarks"]))
    if split.neutral is not None:
      truth = np.asarray(split.neutral[rows])
      for key, value in out.items():
        if key not in ("shape_codes", "landmarks"):
          if key not in errors:  # filled in place: no list of chunks beside its concatenation
            errors[key] = np.empty((len(split), truth.shape[1]), np.float64)
          errors[key][rows] = metrics.now_aligned_errors(value, truth, now)
    if progress is not None:
      progress.update(rows.stop)
  neutral_errors = errors.pop("neutral", None) if codes else None
  rows = {key: metrics.error_summary(value) for key, value in errors.items()}
  if not codes:
    return rows, None
  codes = np.concatenate(codes)
  rows["neutral"] = evaluation.evaluate_images(
      {"shape_codes": codes, "landmarks": np.concatenate(marks)}, identity=split.identity,
      landmarks=np.asarray(split.landmarks), visible=np.asarray(split.visible),
      landmark_vertices=landmark_vertices, neutral_errors=neutral_errors, seed=seed)
  return rows, codes


def neutral_error(neutral_of, split: Split, landmark_vertices: np.ndarray, *,
                  chunk: int = EVAL_CHUNK) -> dict:
  """`metrics.error_summary` of predicted neutral shapes against the split's truth, after the
  similarity alignment on the 7 NoW landmarks (vertices `landmark_vertices` `[68]`), as every
  3D row of a stage-2 table is scored. `neutral_of`: function of a `slice` of the split's rows
  -> their predicted neutral shapes `[n, V, 3]` (mm), asked `chunk` rows at a time."""
  rows, _ = score_in_chunks(lambda rows: {"neutral": neutral_of(rows)}, split,
                            landmark_vertices=landmark_vertices, seed=0, chunk=chunk)
  return rows["neutral"]


def evaluate_split(predictors: dict, split: Split, *, landmark_vertices: np.ndarray,
                   batch_size: int, seed: int, input_landmarks: np.ndarray | None = None,
                   flip_partner: np.ndarray | None = None,
                   chunk: int = EVAL_CHUNK) -> tuple[dict, dict]:
  """(`{name: scores}`, `{name: shape codes [N, K]}`) of each network on a held-out split,
  predicted and scored `chunk` images at a time (`score_in_chunks`; rounded to whole batches,
  so the batches are those of one `predict_all` over the split).

  `input_landmarks` `[N, 68, 2]`: what the networks read instead of the split's landmarks (e.g.
  with noise added); the scores (NME included) still compare with the split's own.
  `flip_partner` (`[V]`, `images.mirror_map`): with 3D truth, each network's flip-averaged
  neutral shapes (`flip_averaged_neutral`) are scored in the same pass, as rows
  `flip_average_row(name)` after the networks' rows (3D only: the two views' codes make no one
  code without a fit).
  """
  rows, flipped, codes = {}, {}, {}
  network_landmarks = np.asarray(split.landmarks if input_landmarks is None
                                 else input_landmarks, np.float32)
  chunk = max(1, chunk // batch_size) * batch_size
  truth = split.neutral is not None
  for name, predictor in predictors.items():
    if predictor.image_size != split.images.shape[1]:
      raise InputError(f"{name}: the network takes {predictor.image_size} px images but the "
                       f"evaluation images are {split.images.shape[1]} px")

    def produce(rows, predictor=predictor):
      images, points = np.asarray(split.images[rows]), network_landmarks[rows]
      out = predict_all(predictor, images, points, batch_size=batch_size,
                        keys=("shape_codes", "landmarks") + (("neutral",) if truth else ()))
      if truth and flip_partner is not None:
        out["flipped"] = flip_averaged_neutral(predictor, images, points, out["neutral"],
                                               partner=flip_partner, batch_size=batch_size)
      return out

    scored, codes[name] = score_in_chunks(
        produce, split, landmark_vertices=landmark_vertices, seed=seed, chunk=chunk,
        progress=Progress(f"  predicting ({name}):", total=len(split), unit="images"))
    rows[name] = scored["neutral"]
    if "flipped" in scored:
      flipped[flip_average_row(name)] = scored["flipped"]
  return {**rows, **flipped}, codes


def flip_averaged_neutral(predictor: Predictor, images: np.ndarray, landmarks: np.ndarray,
                          neutral: np.ndarray, *, partner: np.ndarray,
                          batch_size: int) -> np.ndarray:
  """`[N, V, 3]` the network's neutral shapes averaged over each image and its mirror image:
  the mean of `neutral` (its prediction for `images` `[N, S, S, 3]` with `landmarks` `[N, 68,
  2]`) and, mirrored back through `partner` (`[V]`, `mirror.vertex_map`), its prediction for
  the images flipped left-right with their landmarks flipped and relabelled. Equivariant by
  construction: the average for the mirror images is the mirror of this one."""
  images = np.asarray(images)
  other = predict_all(predictor, images[:, :, ::-1],
                      mirror.landmarks_2d(landmarks, images.shape[2]), batch_size=batch_size,
                      keys=("neutral",))["neutral"]
  return 0.5 * (np.asarray(neutral, np.float64) + mirror.vertices(
      np.asarray(other, np.float64), partner))


def landmark_ridge(data: ImageData, *, seed: int,
                   landmark_noise: float = 0.0) -> readout.LandmarkRidge | None:
  """`readout.fit_landmark_ridge` on the training rows whose neutral shape is known (photos and
  rendered scans), or None when there are none (or the held-out images have no 3D truth): the
  `landmark ridge` reference's read-out. `landmark_noise` > 0: fitted on those rows' landmarks
  plus Gaussian noise of that std (pixels per coordinate, one draw from `seed`), the linear
  read-out matched to landmarks that noisy."""
  training = [s for s in (data.train, data.scans) if s is not None and s.has_truth]
  if data.test.neutral is None or not training:
    return None
  if landmark_noise:
    rng = np.random.default_rng([seed, 69])
    training = [s.with_landmark_noise(landmark_noise, rng) for s in training]
  noise = f" ({landmark_noise:g} px noise)" if landmark_noise else ""
  return readout.fit_landmark_ridge(training, image_size=data.image_size, seed=seed,
                                    progress_label=f"  landmark ridge{noise}: training meshes read")


def reference_rows(models: dict, data: ImageData, *, ridge: readout.LandmarkRidge | None,
                   fit_steps: int, seed: int) -> dict:
  """The rows that say whether a network learned anything (design section 7), scored like its
  own rows on the same held-out images `data.test`:

  - `mean face`: predict the training rows' mean neutral shape (`data.training_neutral_mean`;
    without training truth, the first model's mean) for every image: what a network that
    ignores the pixels scores (3D error only);
  - `landmark ridge`: `ridge` (`landmark_ridge(data)`; None: no row) reading the held-out
    landmarks: what a linear map of the landmarks reaches with the 3D supervision the networks
    get (3D error only; `ridge_penalty` is its cross-validated penalty);
  - `fit <name>`: per-image landmark fitting (`fitting.fit_landmarks`, no network) of each model
    in `models` to the annotated landmarks: its 3D error, code identity metrics and NME;
  - `best <name>`: each model's nearest neutral to each held-out truth, the decoded
    `stage2.oracle_codes` (constrained least squares on the sphere): the floor no network
    predicting that model's codes can beat (3D error only; a person's images share one true
    neutral, so identity metrics of these codes would be perfect by construction).
  """
  rows = {}
  split = data.test
  first = next(iter(models.values()))
  if split.neutral is not None:
    mean_face = data.training_neutral_mean(progress_label="  mean face: training neutrals read")
    mean_face = np.asarray(first.mean if mean_face is None else mean_face, np.float32)
    rows["mean face"] = neutral_error(
        lambda rows: np.broadcast_to(mean_face, (rows.stop - rows.start, *mean_face.shape)),
        split, first.landmarks)
    if ridge is not None:
      rows["landmark ridge"] = {**neutral_error(lambda rows: ridge.predict(split.landmarks[rows]),
                                                split, first.landmarks),
                                "ridge_penalty": ridge.penalty}
  for name, model in models.items():
    def fit(rows, model=model):
      result = fitting.fit_landmarks(model, split.landmarks[rows], image_size=data.image_size,
                                     visible=split.visible[rows], steps=fit_steps)
      return {"shape_codes": result.shape_codes, "landmarks": result.landmarks,
              **({"neutral": result.neutral} if split.neutral is not None else {})}

    scored, _ = score_in_chunks(fit, split, landmark_vertices=np.asarray(model.landmarks),
                                seed=seed, progress=Progress(f"  landmark fits ({name}):",
                                                             total=len(split), unit="images"))
    rows[f"fit {name}"] = scored["neutral"]
  if split.neutral is not None:
    for name, model in models.items():
      rows[f"best {name}"] = neutral_error(
          lambda rows, model=model: nearest_neutrals(model, split.neutral[rows]), split,
          model.landmarks)
  return rows


def nearest_neutrals(model: FaceModel, neutral: np.ndarray, *, chunk: int = 256) -> np.ndarray:
  """`[N, V, 3]` the model's neutral faces nearest to `neutral` `[N, V, 3]` (mm): the decoded
  `stage2.oracle_codes`, `chunk` faces at a time."""
  neutral = np.asarray(neutral)
  return np.concatenate([
      np.asarray(decode(model, oracle_codes(model, jnp.asarray(neutral[start:start + chunk],
                                                               jnp.float32))))
      for start in range(0, len(neutral), chunk)])


SEEN_COLUMNS = (("verification_accuracy", "verif. acc."), ("silhouette", "silhouette"),
                ("nmi", "NMI"), ("nme", "landmark NME"))


def evaluate_seen(predictors: dict, split: Split, *, count: int, batch_size: int,
                  seed: int) -> dict:
  """A diagnostic beside the held-out table: the same identity metrics and NME on `count`
  labelled *training* images (identities the network has seen). High here and low on held-out
  identities means the codes memorise rather than generalise."""
  index = np.flatnonzero(split.identity >= 0)[:count]
  rows = {}
  for name, predictor in predictors.items():
    out = predict_all(predictor, split.images[index], split.landmarks[index],
                      batch_size=batch_size, keys=("shape_codes", "landmarks"))
    rows[name] = evaluation.evaluate_images(
        out, identity=split.identity[index], landmarks=split.landmarks[index],
        visible=split.visible[index], landmark_vertices=np.asarray(predictor.model.landmarks),
        seed=seed)
  return rows


def gallery(predictors: dict, split: Split, *, count: int) -> np.ndarray:
  """A picture, one row per held-out image: the input, then per model the rendered
  reconstruction over the input (green: annotated landmarks, red: predicted) and its neutral
  mesh; each column titled."""
  # Images spread over the split (different identities), not the first few.
  index = np.linspace(0, len(split) - 1, min(count, len(split))).astype(int)
  batch = split.batch(index)["images"]
  size = batch.shape[1]
  columns = [list(batch)]
  for predictor in predictors.values():
    out = predict_all(predictor, batch, split.landmarks[index], batch_size=len(index),
                      keys=("rendered", "mask", "landmarks", "neutral"))
    columns.append([viz.reconstruction_overlay(batch[i], out["rendered"][i], out["mask"][i],
                                               out["landmarks"][i], split.landmarks[index[i]])
                    for i in range(len(index))])
    columns.append([viz.shade_mesh(out["neutral"][i], np.asarray(predictor.model.triangles),
                                   size=size) for i in range(len(index))])
  cells = [column[row] for row in range(len(index)) for column in columns]
  titles = ["input"] + [f"{name}\n{part}" for name in predictors
                        for part in ("reconstruction", "neutral")]
  return viz.with_column_titles(viz.image_grid(cells, columns=len(columns)), titles, width=size)
