r"""Fit a face model to the 68 iBUG landmarks of images, by optimisation (no network).

  python -m experiments.fit --model=runs/stage1/sfm_model.npz --pts='photos/*.pts' --out=runs/fit

For every `.pts` (a file, a folder, or a glob) it fits pose, shape (on the sphere for SFM models,
Gaussian otherwise) and expression, then writes into `--out` what `experiments.reconstruct`
writes (`sfm_jax.io.reconstruction`): `<name>_neutral.obj`, `<name>_posed.obj` (expression and
head rotation applied), `<name>.npz` (codes, pose, fitted landmarks, plus the NME) and
`<name>_overlay.png` (the image beside the `.pts`, if any, with the target landmarks in green
and the fitted ones in red). The camera spans a square of the image's larger side (or
`--image_size` when there is no image).
"""

import glob
import os

import jax.numpy as jnp
import numpy as np
from absl import app, flags

from experiments import cli
from sfm_jax import fitting, geometry, metrics, viz
from sfm_jax.errors import InputError
from sfm_jax.io import read_pts, write_png
from sfm_jax.io.models import load_face_model
from sfm_jax.io.reconstruction import write_reconstruction
from sfm_jax.progress import Progress
from sfm_jax.sources.images import read_image

_MODEL = flags.DEFINE_string("model", None, "Model file (ours or any loadable 3DMM).")
_PTS = flags.DEFINE_string("pts", None, "A .pts file, a folder of them, or a glob.")
_OUT = flags.DEFINE_string("out", "runs/fit", "Output folder.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 224, "Camera square when no image is found.")
_STEPS = flags.DEFINE_integer("steps", 400, "Adam steps.")


def _inputs(spec: str) -> list:
  if os.path.isdir(spec):
    paths = sorted(glob.glob(os.path.join(spec, "*.pts")))
  elif any(c in spec for c in "*?["):
    paths = sorted(glob.glob(spec))
  else:
    paths = [spec]
  if not paths:
    raise app.UsageError(f"--pts={spec}: no .pts files found")
  return paths


def _image_beside(pts_path: str):
  stem = os.path.splitext(pts_path)[0]
  for ext in (".png", ".jpg", ".jpeg", ".ppm"):
    if os.path.isfile(stem + ext):
      return read_image(stem + ext)
  return None


def main(argv):
  del argv
  if not _MODEL.value or not _PTS.value:
    raise app.UsageError("--model and --pts are required")
  model = load_face_model(_MODEL.value)
  if np.all(np.asarray(model.landmarks) < 0):
    raise InputError(f"{_MODEL.value}: the model defines no iBUG landmark vertices")
  os.makedirs(_OUT.value, exist_ok=True)
  paths = _inputs(_PTS.value)
  progress = Progress("fitting:", total=len(paths), unit="photos")
  for number, path in enumerate(paths, start=1):
    landmarks = read_pts(path)
    if landmarks.shape != (68, 2):
      raise InputError(f"{path}: expected 68 points, got {len(landmarks)}")
    image = _image_beside(path)
    size = max(image.shape[:2]) if image is not None else _IMAGE_SIZE.value
    fit = fitting.fit_landmarks(model, landmarks[None], image_size=size, steps=_STEPS.value)
    nme = metrics.landmark_nme(fit.landmarks, landmarks[None])
    name = os.path.join(_OUT.value, os.path.splitext(os.path.basename(path))[0])
    rotation = np.asarray(geometry.rotation_6d_to_matrix(jnp.asarray(fit.rotation[0])))
    write_reconstruction(
        name, neutral=fit.neutral[0], posed=fit.posed[0] @ rotation.T, triangles=model.triangles,
        shape_codes=fit.shape_codes[0], expression=fit.expr_codes[0], rotation=rotation,
        translation=fit.translation[0], scale=fit.scale[0], landmarks=fit.landmarks[0],
        image_size=size, nme=nme)
    canvas = (image.astype(np.float64) / 255.0 if image is not None
              else np.full((size, size, 3), 0.9))
    overlay = viz.draw_landmarks(canvas, landmarks, radius=1)
    overlay = viz.draw_landmarks(overlay, fit.landmarks[0], np.zeros(68, bool), radius=0)
    write_png(f"{name}_overlay.png", overlay)
    progress.update(number, f"{path}: landmark NME {nme:.4f} (inter-ocular)")


if __name__ == "__main__":
  cli.run(main)
