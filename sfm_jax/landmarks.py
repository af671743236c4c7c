"""The 68 iBUG landmarks of faces in photos, found automatically.

dlib's HOG frontal face detector finds the faces and its 68-point shape predictor (the iBUG 300-W
ensemble of regression trees, Kazemi & Sullivan 2014, shipped in the `face-recognition-models`
package) places the points. Both come with the `photos` extra (`pip install -e ".[photos]"`:
`dlib-bin` wheels and the model file; they install offline, no compiler).

Coordinates follow the project's image convention (`camera.py`): pixels, x right, y down, the
origin at the top-left corner of the top-left pixel, so dlib's integer pixel indices (pixel
centres) get +0.5.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import numpy as np

from sfm_jax.errors import InputError

PREDICTOR_FILE = os.path.join("models", "shape_predictor_68_face_landmarks.dat")
INSTALL_HINT = 'landmark detection needs the photos extra: pip install -e ".[photos]"'


def available() -> bool:
  """True when dlib and the 68-point predictor file are installed."""
  try:
    _predictor_path()
    import dlib  # noqa: F401
  except (ImportError, InputError):
    return False
  return True


def _predictor_path() -> str:
  # `face_recognition_models/__init__` imports pkg_resources (gone from recent setuptools): find
  # the package's folder without importing it.
  spec = importlib.util.find_spec("face_recognition_models")
  if spec is None or not spec.submodule_search_locations:
    raise InputError(INSTALL_HINT)
  path = os.path.join(next(iter(spec.submodule_search_locations)), PREDICTOR_FILE)
  if not os.path.isfile(path):
    raise InputError(f"{path}: missing; {INSTALL_HINT}")
  return path


@functools.lru_cache(maxsize=1)
def _dlib_models():
  try:
    import dlib
  except ImportError:
    raise InputError(INSTALL_HINT) from None
  return dlib.get_frontal_face_detector(), dlib.shape_predictor(_predictor_path())


def detect(image: np.ndarray, *, upsample: int = 1, min_score: float = 0.5) -> np.ndarray:
  """All faces' landmarks in one image.

  Args:
    image: `[H, W, 3]` uint8 RGB or `[H, W]` grey.
    upsample: times the image is doubled before detection (1 finds faces down to about 40 px).
    min_score: detections scoring below this are dropped (dlib keeps any above 0; on
      `skimage.data.astronaut()` its mission patch scores 0.12, the face 1.16).

  Returns:
    `[F, 68, 2]` float32 pixels, the largest face (by the area of its detection box) first;
    `[0, 68, 2]` when no face is found.
  """
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and
                                                              image.shape[-1] != 3):
    raise ValueError(f"detect needs a [H, W, 3] or [H, W] uint8 image, got {image.dtype} "
                     f"{image.shape}")
  detector, predictor = _dlib_models()
  image = np.ascontiguousarray(image)
  boxes, scores, _ = detector.run(image, upsample, 0.0)
  kept = [box for box, score in zip(boxes, scores) if score >= min_score]
  kept.sort(key=lambda box: -box.area())
  faces = [[(part.x + 0.5, part.y + 0.5) for part in predictor(image, box).parts()]
           for box in kept]
  return np.asarray(faces, np.float32).reshape(len(faces), 68, 2)
