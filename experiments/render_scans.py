r"""Render a scan folder as a photo folder: each scan under random pose, light, skin albedo,
background and occluders, with its 68 landmarks and its meshes (the stage-2 `folder` format).

  python -m experiments.render_scans --scan_dir=runs/surrey_people --model=runs/s1/sfm_model.npz \
      --out=runs/surrey_photos --views=2

Writes `<scan>_view<k>.png` and `.pts` beside it, `meshes/<scan>.ply` (the face as photographed),
`neutral/<person>.ply` (the person's neutral face: the mean of their scans labelled `neutral`)
and `meta.csv` (`path,identity,mesh,neutral`). The model gives the triangles, landmarks and jaw
lines (`sfm_jax.sources.rendered_scans`); the scans must be in its topology. The same renderer
makes the `--config.data.scan_dir` images of stage 2.
"""

import csv
import io
import os

import numpy as np
from absl import flags

from experiments import cli
from sfm_jax.io import atomic_write, write_mesh, write_png, write_pts
from sfm_jax.io.models import load_face_model
from sfm_jax.io.scan_folder import read_scan_folder
from sfm_jax.progress import Progress
from sfm_jax.sources import rendered_scans

_SCAN_DIR = flags.DEFINE_string("scan_dir", None, "The scan folder.", required=True)
_MODEL = flags.DEFINE_string("model", None, "A model file (or the Surrey folder) in the scans' "
                             "topology: triangles, landmarks, jaw lines.", required=True)
_OUT = flags.DEFINE_string("out", None, "The photo folder to write.", required=True)
_VIEWS = flags.DEFINE_integer("views", 2, "Photos per scan.")
_SIZE = flags.DEFINE_integer("image_size", 128, "Photo size (square, pixels).")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed (pose, light, albedo, background).")
_OCCLUDERS = flags.DEFINE_float("occluder_probability", 0.2, "Chance of an occluding patch.")


def main(argv):
  del argv
  model = load_face_model(_MODEL.value)
  folder = read_scan_folder(_SCAN_DIR.value)
  neutral = rendered_scans.neutral_of_identities(folder.vertices.astype(np.float64),
                                                 folder.identity, folder.expression)
  photos = rendered_scans.render_scans(folder.vertices, folder.identity, model, seed=_SEED.value,
                                       image_size=_SIZE.value, views=_VIEWS.value,
                                       occluder_probability=_OCCLUDERS.value, neutral=neutral)
  out = _OUT.value
  os.makedirs(os.path.join(out, "meshes"), exist_ok=True)
  os.makedirs(os.path.join(out, "neutral"), exist_ok=True)
  triangles = np.asarray(model.triangles)
  rows = [["path", "identity", "mesh", "neutral"]]
  progress = Progress("writing:", total=len(photos), unit="photos")
  written_neutral = set()
  for i in range(len(photos)):
    scan, view = divmod(i, _VIEWS.value)
    stem = os.path.splitext(os.path.basename(folder.paths[scan]))[0]
    label = folder.identity[scan]
    person = folder.identity_names[label] if label >= 0 else ""
    mesh = f"meshes/{stem}.ply"
    if view == 0:
      write_mesh(os.path.join(out, mesh), folder.vertices[scan], triangles)
    neutral_path = ""
    if person and photos.neutral_weight[i]:
      neutral_path = f"neutral/{person}.ply"
      if person not in written_neutral:
        write_mesh(os.path.join(out, neutral_path), photos.neutral[i], triangles)
        written_neutral.add(person)
    name = f"{stem}_view{view}.png"
    write_png(os.path.join(out, name), photos.images[i])
    write_pts(os.path.join(out, f"{stem}_view{view}.pts"), photos.landmarks[i])
    rows.append([name, person, mesh, neutral_path])
    if (i + 1) % max(len(photos) // 10, 1) == 0 or i + 1 == len(photos):
      progress.update(i + 1)
  buffer = io.StringIO()
  csv.writer(buffer, lineterminator="\n").writerows(rows)
  with atomic_write(os.path.join(out, "meta.csv"), "w") as f:  # last: a complete folder
    f.write(buffer.getvalue())
  if not written_neutral:
    print("note: no scan is labelled `neutral` in meta.csv's expression column, so no photo "
          "names a neutral mesh (held-out 3D errors need them)")
  print(f"wrote {len(photos)} photos of {len(folder.paths)} scans to {out}")


if __name__ == "__main__":
  cli.run(main)
