"""One face reconstruction on disk, the same for every command that makes one (`experiments.fit`
and `experiments.reconstruct`):

    <stem>_neutral.obj   the identity's neutral shape (mm, model space; albedo as vertex colours
                         when known)
    <stem>_posed.obj     with the expression and the head rotation applied (mm, camera axes)
    <stem>.npz           shape_codes [K], expression [E], rotation [3, 3], translation [2]
                         (fraction of the image around its centre), scale (relative to the
                         nominal scale), landmarks [68, 2] (pixels of the original image, NaN
                         where the model defines none), image_size; plus what the command knows
                         besides (albedo, light, crop_box, nme, nme_box)
"""

from __future__ import annotations

import numpy as np

from sfm_jax.io.atomic import atomic_write
from sfm_jax.io.mesh import write_obj

KEYS = ("shape_codes", "expression", "rotation", "translation", "scale", "landmarks",
        "image_size")


def write_reconstruction(stem: str, *, neutral: np.ndarray, posed: np.ndarray,
                         triangles: np.ndarray, colors: np.ndarray | None = None,
                         meshes: bool = True, **arrays) -> None:
  """Writes the two meshes (unless `meshes` is False) and the `.npz` (every key of `KEYS`
  required in `arrays`, extra keys kept), each file atomically."""
  missing = [key for key in KEYS if key not in arrays]
  if missing:
    raise TypeError(f"write_reconstruction: missing {missing}")
  if meshes:
    write_obj(f"{stem}_neutral.obj", neutral, triangles, colors=colors)
    write_obj(f"{stem}_posed.obj", posed, triangles, colors=colors)
  with atomic_write(f"{stem}.npz", "wb") as f:
    np.savez(f, **arrays)
