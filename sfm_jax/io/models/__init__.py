"""Third-party 3D morphable models, loaded offline into a `FaceModel` (one module per format).

Each loader returns a Gaussian model (`code_kind="gaussian"`): the PCA basis is scaled by the
components' standard deviations, so codes are about N(0, I) and `radius` is `sqrt(K)`, the typical
norm of such a code. Units are converted to millimetres. Where a format carries no iBUG-68
landmark map, `landmarks` is 68 times -1.

| format | loader | file |
|---|---|---|
| Basel Face Model 2009 | `load_basel2009` | `01_MorphableModel.mat` (micrometres) |
| Basel Face Model 2017/2019 | `load_basel2017` | `model2017-1_*.h5`, `model2019_*.h5` (statismo) |
| FLAME 2020/2023 | `load_flame` | `generic_model.pkl`, `flame2023.pkl` (metres; chumpy not needed) |
| FaceScape bilinear | `load_facescape` | `facescape_bm_v*.npz` |
| Surrey Face Model | `load_surrey` | `sfm_shape_3448.bin` (+ blendshapes, iBUG map) |

`load_face_model(path)` picks the loader from the file.
"""

from __future__ import annotations

import os

import numpy as np

from sfm_jax.errors import InputError
from sfm_jax.io.models.basel import load_basel2009, load_basel2017
from sfm_jax.io.models.facescape import load_facescape
from sfm_jax.io.models.flame import load_flame
from sfm_jax.io.models.surrey import (
  load_surrey,
  read_surrey_blendshapes,
  read_surrey_landmarks,
  read_surrey_shape,
)
from sfm_jax.model import FaceModel


def load_face_model(path: str | os.PathLike, **kwargs) -> FaceModel:
  """Loads any supported model file: our `.npz` model files, FaceScape `.npz`, Basel `.mat` /
  `.h5`, FLAME `.pkl`, Surrey `.bin` (or a folder holding one)."""
  from sfm_jax.model import load_model

  path = os.fspath(path)
  ext = os.path.splitext(path)[1].lower()
  if os.path.isdir(path) or ext == ".bin":
    return load_surrey(path, **kwargs)
  if ext == ".mat":
    return load_basel2009(path, **kwargs)
  if ext in (".h5", ".hdf5"):
    return load_basel2017(path, **kwargs)
  if ext == ".pkl":
    return load_flame(path, **kwargs)
  if ext == ".npz":
    try:
      with np.load(path, allow_pickle=False) as npz:
        is_facescape = "shape_bm_core" in npz.files
    except Exception as e:
      raise InputError(f"{path}: not a readable .npz file ({e})") from None
    return load_facescape(path, **kwargs) if is_facescape else load_model(path, **kwargs)
  raise InputError(f"{path}: unknown model format {ext!r} (expected .npz, .mat, .h5, .pkl, .bin)")


__all__ = ["load_basel2009", "load_basel2017", "load_facescape", "load_flame", "load_surrey",
           "read_surrey_blendshapes", "read_surrey_landmarks", "read_surrey_shape",
           "load_face_model"]
