r"""Find the 68 iBUG landmarks of the faces in photos and write them as `.pts` beside each photo.

  python -m experiments.detect --images=photos/          # a folder, a photo, or a glob
  python -m experiments.detect --images=photos/ --largest_face --overwrite

dlib's face detector and 68-point shape predictor (`sfm_jax.landmarks`, the `photos` extra).
One face: `<stem>.pts`; several: `<stem>_face1.pts`, `<stem>_face2.pts`, ... (largest first), or
only `<stem>.pts` for the largest with `--largest_face`. Existing `.pts` are kept unless
`--overwrite`. A photo that cannot be read or shows no face is reported in one line and counted;
the others go on. `--overlay_dir=DIR` also writes `<stem>_landmarks.png` there to look at.
"""

import os

import numpy as np
from absl import flags

from experiments import cli
from sfm_jax import landmarks as landmark_detection
from sfm_jax import viz
from sfm_jax.errors import InputError
from sfm_jax.io import write_png, write_pts
from sfm_jax.progress import Progress
from sfm_jax.sources.images import face_suffixes, list_files, read_image

_IMAGES = flags.DEFINE_string("images", None, "A photo, a folder of photos, or a glob.",
                              required=True)
_LARGEST = flags.DEFINE_boolean("largest_face", False, "Only the largest face of each photo.")
_OVERWRITE = flags.DEFINE_boolean("overwrite", False, "Replace existing .pts files.")
_OVERLAY_DIR = flags.DEFINE_string("overlay_dir", "", "Also write <stem>_landmarks.png (the "
                                   "photo with its points) into this folder.")
_UPSAMPLE = flags.DEFINE_integer("upsample", 1, "Image doublings before detection (small "
                                 "faces need more).")
_MIN_SCORE = flags.DEFINE_float("min_score", 0.5, "Drop detections scoring below this.")


def main(argv):
  del argv
  if not landmark_detection.available():
    raise InputError(landmark_detection.INSTALL_HINT)
  paths = list_files(_IMAGES.value)
  counts = {"faces": 0, "kept": 0, "unreadable": 0, "no face": 0}
  progress = Progress("detecting:", total=len(paths), unit="photos")
  for number, path in enumerate(paths, start=1):
    stem = os.path.splitext(path)[0]
    try:
      image = read_image(path)
    except InputError as e:
      counts["unreadable"] += 1
      print(f"skipped: {e}", flush=True)
      continue
    faces = landmark_detection.detect(image, upsample=_UPSAMPLE.value,
                                      min_score=_MIN_SCORE.value)
    if len(faces) == 0:
      counts["no face"] += 1
      print(f"skipped: {path}: no face found", flush=True)
      continue
    if _LARGEST.value:
      faces = faces[:1]
    targets = [f"{stem}{suffix}.pts" for suffix in face_suffixes(len(faces))]
    for target, points in zip(targets, faces):
      if os.path.exists(target) and not _OVERWRITE.value:
        counts["kept"] += 1
        continue
      write_pts(target, points)
      counts["faces"] += 1
    if _OVERLAY_DIR.value:
      canvas = image.astype(np.float64) / 255.0
      for points in faces:
        canvas = viz.draw_landmarks(canvas, points, radius=max(1, max(image.shape[:2]) // 400))
      os.makedirs(_OVERLAY_DIR.value, exist_ok=True)
      write_png(os.path.join(_OVERLAY_DIR.value, f"{os.path.basename(stem)}_landmarks.png"),
                canvas)
    progress.update(number, f"{path}: {len(faces)} face(s)")
  print(f"{len(paths)} photo(s): {counts['faces']} .pts written, {counts['kept']} existing kept "
        f"(--overwrite replaces them), {counts['no face']} without a face, "
        f"{counts['unreadable']} unreadable", flush=True)


if __name__ == "__main__":
  cli.run(main)
