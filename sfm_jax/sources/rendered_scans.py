"""Scans as photos: registered 3D scans rendered under random pose, light, skin albedo,
background and occluders, with their 68 landmarks and their 3D truth (design section 7, joint
2D/3D training).

Stage 2 mixes these images into every batch (`--config.data.scan_dir`, `data.scan_fraction`),
so its `vertex` term sees faces whose 3D is known, whatever the photos are. The scans must be in
the stage-1 model's topology; the model gives the triangles, the landmark vertices and, for
models that leave the jaw contour undefined (the Surrey model), the jaw lines along which the
contour landmarks are placed (`landmark_blend`).
"""

from __future__ import annotations

import os

import numpy as np

from sfm_jax.errors import InputError
from sfm_jax.face_world.images import render_views
from sfm_jax.io.scan_folder import read_scan_folder
from sfm_jax.model import FaceModel
from sfm_jax.sources.splits import identity_in_test, relabel

# iBUG inner mouth corners (61, 65; 0-based 60, 64), which some models do not place: the mean of
# the outer corner and the two inner-lip points beside it.
_INNER_MOUTH_CORNERS = {60: (48, 61, 67), 64: (54, 63, 65)}
_CHIN = 8


def landmark_blend(model: FaceModel) -> tuple[np.ndarray, np.ndarray]:
  """How each iBUG landmark sits on the mesh: (`[68, 3]` vertex indices, `[68, 3]` weights
  summing to 1), so a landmark is the weighted sum of those vertices (in 3D or projected).

  A defined landmark is its vertex. Undefined jaw landmarks (iBUG 1-8 and 10-17) are placed
  along the model's jaw lines (`model.contour`, the first candidate of each row) at equal steps
  of 3D arc length on the mean shape, from the line's end far from the chin (iBUG 1 and 17) in
  eighths towards the chin; undefined inner mouth corners are the mean of the outer corner and
  the inner-lip points beside it. Any other undefined landmark raises `InputError`.
  """
  landmarks = np.asarray(model.landmarks)
  index = np.zeros((68, 3), np.int64)
  weights = np.zeros((68, 3))
  index[:, 0] = np.maximum(landmarks, 0)
  weights[:, 0] = 1.0
  missing = set(np.flatnonzero(landmarks < 0).tolist())
  mean = np.asarray(model.mean, np.float64)
  jaw = set(range(8)) | set(range(9, 17))
  if missing & jaw:
    if model.contour is None or landmarks[_CHIN] < 0:
      raise InputError("rendering scans needs every jaw landmark (iBUG 1-17) defined, or a "
                       "model contour and the chin (iBUG 9)")
    chin = mean[landmarks[_CHIN]]
    for side, targets in ((0, range(0, 8)), (1, range(16, 8, -1))):
      line = np.asarray(model.contour)[side, :, 0]
      line = line[line >= 0]
      if np.linalg.norm(mean[line[0]] - chin) < np.linalg.norm(mean[line[-1]] - chin):
        line = line[::-1]  # from the end far from the chin
      lengths = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(mean[line], axis=0),
                                                                axis=1))])
      for step, target in enumerate(targets):
        if target not in missing:
          continue
        at = lengths[-1] * step / 8
        k = min(int(np.searchsorted(lengths, at, side="right")) - 1, len(line) - 2)
        t = (at - lengths[k]) / max(lengths[k + 1] - lengths[k], 1e-12)
        index[target, :2], weights[target, :2] = line[k:k + 2], (1 - t, t)
      missing -= set(targets)
  for target, sources in _INNER_MOUTH_CORNERS.items():
    if target in missing and all(landmarks[s] >= 0 for s in sources):
      index[target], weights[target] = landmarks[list(sources)], 1.0 / 3
      missing.discard(target)
  if missing:
    raise InputError(f"rendering scans: the model places no vertex for iBUG landmark(s) "
                     f"{sorted(m + 1 for m in missing)} (1-based)")
  return index, weights


def skin_albedo(mean: np.ndarray, landmark_points: np.ndarray, rng: np.random.Generator,
                count: int) -> np.ndarray:
  """`[count, V, 3]` per-vertex albedo in [0, 1] for any face mesh: a skin tone per person,
  smooth blotches, darker brows and eyes, redder lips, each a Gaussian bump around the iBUG
  landmarks of that feature on the mean shape (`mean [V, 3]`, `landmark_points [68, 3]`, mm)
  scaled by the inter-ocular distance."""
  mean = np.asarray(mean, np.float64)
  ocular = np.linalg.norm(landmark_points[36] - landmark_points[45])

  def bump(points, width):
    distance = np.min(np.linalg.norm(mean[:, None] - points[None], axis=-1), axis=1)
    return np.exp(-0.5 * (distance / (width * ocular)) ** 2)

  tone = rng.uniform(0.25, 1.0, size=(count, 1, 1))  # darker .. lighter skin
  base = np.array([0.45, 0.28, 0.2]) + tone * np.array([0.45, 0.42, 0.38])
  blotches = np.zeros((count, len(mean)))
  for _ in range(4):
    centre = mean[rng.integers(0, len(mean), count)]
    blotches += rng.normal(scale=0.05, size=(count, 1)) * np.exp(
        -0.5 * np.sum((mean[None] - centre[:, None]) ** 2, -1) / (0.6 * ocular) ** 2)
  albedo = base * (1.0 + blotches[..., None])
  brows = bump(landmark_points[17:27], 0.06)[None, :, None]
  eyes = bump(landmark_points[36:48], 0.05)[None, :, None]
  lips = bump(landmark_points[48:60], 0.05)[None, :, None]
  albedo = albedo * (1.0 - 0.55 * brows) * (1.0 - 0.7 * eyes)
  albedo = albedo * (1.0 - 0.25 * lips) + 0.15 * lips * np.array([0.6, 0.1, 0.1])
  return np.clip(albedo, 0.0, 1.0)


def render_scans(scans: np.ndarray, identity: np.ndarray, model: FaceModel, *, seed: int,
                 image_size: int, views: int = 1, occluder_probability: float = 0.2,
                 neutral: np.ndarray | None = None):
  """Photographs of scans: `views` images of each scan (its own pose, light and background),
  one skin albedo per identity.

  Args:
    scans: `[N, V, 3]` scans in the topology of `model` (mm, model space).
    identity: `[N]` labels (any ints; unlabelled -1 keep their own albedo each).
    model: gives the triangles and the landmarks (`landmark_blend`).
    neutral: optional `[N, V, 3]` neutral shape of each scan's person, NaN rows where unknown.

  Returns:
    A `sources.images.Split` with `N * views` images: `posed` = the scan, `neutral` where known
    (`neutral_weight` 0 elsewhere), landmarks = the projection of the landmark blend.
  """
  from sfm_jax.sources.images import Split, to_uint8
  scans = np.asarray(scans, np.float64)
  if scans.ndim != 3 or scans.shape[1] != model.num_vertices:
    raise InputError(f"scans have shape {scans.shape}, but the model has {model.num_vertices} "
                     "vertices: the scans must be in the stage-1 model's topology")
  rng = np.random.default_rng(seed)
  index, weights = landmark_blend(model)
  mean = np.asarray(model.mean, np.float64)
  people = np.unique(identity, return_inverse=True)[1]
  people = np.where(identity < 0, people.max() + 1 + np.arange(len(identity)), people)
  albedo_of = skin_albedo(mean, np.einsum("lpc,lp->lc", mean[index], weights), rng,
                          int(people.max()) + 1)
  rows = np.repeat(np.arange(len(scans)), views)
  shots = render_views(scans[rows], albedo_of[people[rows]], rng,
                       triangles=np.asarray(model.triangles), landmark_vertices=index,
                       landmark_weights=weights, image_size=image_size,
                       occluder_probability=occluder_probability)
  known = (np.zeros(len(scans), bool) if neutral is None
           else np.all(np.isfinite(neutral), axis=(1, 2)))
  neutral_rows = (np.zeros_like(scans, np.float32) if neutral is None
                  else np.where(known[:, None, None], np.nan_to_num(neutral), 0.0))[rows]
  return Split(images=to_uint8(shots.images), landmarks=shots.landmarks, visible=shots.visible,
               identity=np.asarray(identity, np.int32)[rows],
               neutral=neutral_rows.astype(np.float32), posed=scans[rows].astype(np.float32),
               names=[f"scan_{r:05d}_view{v}" for r, v in zip(rows, np.tile(np.arange(views),
                                                                           len(scans)))],
               neutral_weight=known[rows].astype(np.float32),
               posed_weight=np.ones(len(rows), np.float32))


def neutral_of_identities(scans: np.ndarray, identity: np.ndarray,
                          expression: list | None) -> np.ndarray:
  """`[N, V, 3]` the neutral shape of each scan's person: the mean of that person's scans
  labelled `neutral` (case-insensitive) in the expression column; NaN rows where the person has
  none (or the folder has no expression column, or the scan is unlabelled)."""
  neutral = np.full(scans.shape, np.nan)
  if expression is None:
    return neutral
  is_neutral = np.array([e.strip().lower() == "neutral" for e in expression])
  for person in np.unique(identity[identity >= 0]):
    mine = identity == person
    if np.any(mine & is_neutral):
      neutral[mine] = scans[mine & is_neutral].mean(0)
  return neutral


def scan_split(config, model: FaceModel, *, seed: int):
  """The rendered-scan training images of a stage-2 `data` config: the scan folder
  `config.scan_dir` (identities that stage 1 held out, by `identity_in_test` at
  `config.scan_test_fraction`, are left out), `config.scan_views` images per scan at
  `config.image_size`; identity labels contiguous from 0 (-1 unlabelled)."""
  if not os.path.isdir(config.scan_dir):
    raise InputError(f"data.scan_dir: {config.scan_dir} is not a folder")
  folder = read_scan_folder(config.scan_dir,
                            allow_outside=config.get("allow_outside_paths", False))
  names = folder.identity_names
  held_out = np.array([label >= 0 and identity_in_test(names[label], config.scan_test_fraction)
                       for label in folder.identity])
  if held_out.all():
    raise InputError(f"{config.scan_dir}: every identity is held out at scan_test_fraction "
                     f"{config.scan_test_fraction}")
  if folder.vertices.shape[1] != model.num_vertices:
    raise InputError(f"{config.scan_dir}: its scans have {folder.vertices.shape[1]} vertices, "
                     f"the stage-1 model {model.num_vertices}: scan_dir must be in the model's "
                     "topology (e.g. the folder stage 1 was trained on)")
  keep = ~held_out
  scans = folder.vertices[keep].astype(np.float64)
  identity = relabel(folder.identity[keep])
  expression = ([e for e, k in zip(folder.expression, keep) if k]
                if folder.expression is not None else None)
  return render_scans(scans, identity, model, seed=seed, image_size=config.image_size,
                      views=config.scan_views, occluder_probability=config.occluder_probability,
                      neutral=neutral_of_identities(scans, identity, expression))
