r"""Fit a face model to the 68 iBUG landmarks of photos, by optimisation (no network).

  python -m experiments.fit --model=runs/stage1/sfm_model.npz --images=photos/ --out=runs/fit
  python -m experiments.fit --model=../shared/data/surrey --images='photos/*.jpg'
  python -m experiments.fit --model=... --pts='photos/*.pts'      # landmarks only

Photos (`--images`: a file, a folder or a glob; JPEG, PNG, PPM, ... any size, grey or RGBA, EXIF
orientation applied) use the `.pts` beside them when there is one, else `<stem>_face1.pts`, ...,
else dlib finds the faces (the `photos` extra). A photo with several faces gives one result per
face (`<name>_face1`, ...; only the largest with `--largest_face`). A photo that cannot be read
or shows no face is reported in one line and skipped; the others go on.

All faces are fitted together (`fitting.fit_landmarks`: one compiled program, groups of 128,
kept in JAX's persistent compilation cache, `--compilation_cache`) for
pose, shape (on the sphere for SFM models, Gaussian otherwise) and expression. For each face it
writes into `--out` what `experiments.reconstruct` writes (`sfm_jax.io.reconstruction`):
`<name>_neutral.obj`, `<name>_posed.obj` (expression and head rotation applied), `<name>.npz`
(codes, pose, fitted landmarks, `nme` and `nme_box`) and `<name>_overlay.png` (the photo with
the target landmarks in green and the fitted ones in red, only the landmarks the model defines).
NME counts only those landmarks (with a model `contour`, e.g. Surrey's
`sfm_model_contours.json`, the jaw line too): inter-ocular (outer eye corners) and box (square
root of the annotation box's area). The camera spans a square of the photo's larger side (`--image_size`
for a `.pts` without a photo).
"""

import os
import time

import jax.numpy as jnp
import numpy as np
from absl import app, flags

from experiments import cli
from sfm_jax import fitting, geometry, metrics, viz
from sfm_jax.errors import InputError
from sfm_jax.io import write_png
from sfm_jax.io.models import load_face_model
from sfm_jax.io.reconstruction import write_reconstruction
from sfm_jax.progress import Progress, format_seconds
from sfm_jax.sources.images import (
  PHOTO_EXTENSIONS,
  faces_in_photo,
  list_files,
  read_face_pts,
  read_image,
)

_MODEL = flags.DEFINE_string("model", None, "Model file (ours or any loadable 3DMM).")
_IMAGES = flags.DEFINE_string("images", None, "A photo, a folder of photos, or a glob.")
_PTS = flags.DEFINE_string("pts", None, "A .pts file, a folder of them, or a glob (instead of "
                           "--images).")
_OUT = flags.DEFINE_string("out", "runs/fit", "Output folder.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 224, "Camera square when no photo is found.")
_STEPS = flags.DEFINE_integer("steps", 400, "Adam steps.")
_LARGEST = flags.DEFINE_boolean("largest_face", False, "Only the largest face of each photo.")
_MESHES = flags.DEFINE_boolean("meshes", True, "Write the neutral and posed OBJ meshes.")
_OVERLAYS = flags.DEFINE_boolean("overlays", True, "Write the overlay PNGs.")
_CACHE = flags.DEFINE_string(
    "compilation_cache", os.path.join(os.path.expanduser("~"), ".cache", "sfm_jax", "xla"),
    "Folder of JAX's persistent compilation cache: later runs skip compiling the fit (about a "
    "second); empty: off.")
_DETECT = flags.DEFINE_boolean("detect", True, "Find landmarks with dlib where a photo has no "
                               ".pts (--nodetect: skip such photos).")


def _image_beside(pts_path: str):
  stem = os.path.splitext(pts_path)[0]
  for ext in PHOTO_EXTENSIONS:
    if os.path.isfile(stem + ext):
      return read_image(stem + ext)
  return None


def _faces(skipped: list) -> list:
  """`[(name, landmarks [68, 2], image or None, camera size)]` of every face to fit."""
  faces = []
  if _PTS.value:
    for path in list_files(_PTS.value, (".pts",)):
      landmarks = read_face_pts(path)
      image = _image_beside(path)
      size = max(image.shape[:2]) if image is not None else _IMAGE_SIZE.value
      faces.append((os.path.splitext(os.path.basename(path))[0], landmarks, image, size))
    return faces
  for path in list_files(_IMAGES.value):
    try:
      image = read_image(path)
      found = faces_in_photo(path, image, largest_face=_LARGEST.value, detect=_DETECT.value)
    except InputError as e:
      skipped.append(str(e))
      print(f"skipped: {e}", flush=True)
      continue
    if not found:
      reason = "no face found" if _DETECT.value else "no .pts (and --nodetect)"
      skipped.append(f"{path}: {reason}")
      print(f"skipped: {path}: {reason}", flush=True)
      continue
    stem = os.path.splitext(os.path.basename(path))[0]
    faces.extend((stem + suffix, landmarks, image, max(image.shape[:2]))
                 for suffix, landmarks in found)
  return faces


def main(argv):
  del argv
  if not _MODEL.value or bool(_IMAGES.value) == bool(_PTS.value):
    raise app.UsageError("--model and one of --images or --pts are required")
  if _CACHE.value:
    import jax
    jax.config.update("jax_compilation_cache_dir", _CACHE.value)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  model = load_face_model(_MODEL.value)
  defined = model.fitted_landmarks  # the landmarks the fit places (vertices or the contour)
  if not defined.any():
    raise InputError(f"{_MODEL.value}: the model defines no iBUG landmark vertices")
  os.makedirs(_OUT.value, exist_ok=True)
  start = time.perf_counter()
  skipped = []
  faces = _faces(skipped)
  if not faces:
    raise InputError(f"nothing to fit: {len(skipped)} photo(s) skipped")
  names, targets, images, sizes = zip(*faces)
  targets = np.stack(targets)
  print(f"fitting {len(faces)} face(s) together ({_STEPS.value} Adam steps) ...", flush=True)
  fit = fitting.fit_landmarks(model, targets, image_size=np.asarray(sizes), steps=_STEPS.value)
  nme = metrics.landmark_nme(np.nan_to_num(fit.landmarks), targets, defined, per_image=True)
  nme_box = metrics.landmark_nme(np.nan_to_num(fit.landmarks), targets, defined,
                                 normalizer="box", per_image=True)
  rotations = np.asarray(geometry.rotation_6d_to_matrix(jnp.asarray(fit.rotation)))
  progress = Progress("writing:", total=len(faces), unit="faces")
  for i, (name, image, size) in enumerate(zip(names, images, sizes)):
    stem = os.path.join(_OUT.value, name)
    write_reconstruction(
        stem, neutral=fit.neutral[i], posed=fit.posed[i] @ rotations[i].T,
        triangles=model.triangles, shape_codes=fit.shape_codes[i], expression=fit.expr_codes[i],
        rotation=rotations[i], translation=fit.translation[i], scale=fit.scale[i],
        landmarks=fit.landmarks[i], image_size=size, nme=nme[i], nme_box=nme_box[i],
        meshes=_MESHES.value)
    if _OVERLAYS.value:
      _write_overlay(stem, image, size, targets[i], fit.landmarks[i], defined)
    progress.update(i + 1, f"{name}: landmark NME {nme[i]:.4f} (inter-ocular), "
                           f"{nme_box[i]:.4f} (box)")
  print(f"fitted {len(faces)} face(s) in {format_seconds(time.perf_counter() - start)}; "
        f"{len(skipped)} photo(s) skipped; mean NME over the {defined.sum()} landmarks the model "
        f"places: {np.mean(nme):.4f} (inter-ocular), {np.mean(nme_box):.4f} (box); "
        f"outputs in {_OUT.value}", flush=True)


def _write_overlay(stem, image, size, target, fitted, defined):
  """The photo (or a grey square) with the target landmarks in green, the fitted ones in red."""
  canvas = (image.astype(np.float64) / 255.0 if image is not None
            else np.full((size, size, 3), 0.9))
  radius = max(1, size // 256)
  overlay = viz.draw_landmarks(canvas, target[defined], radius=radius)
  overlay = viz.draw_landmarks(overlay, fitted[defined], np.zeros(defined.sum(), bool),
                               radius=max(radius - 1, 0))
  write_png(f"{stem}_overlay.png", overlay)


if __name__ == "__main__":
  cli.run(main)
