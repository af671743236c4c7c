"""Writing a held-out image evaluation (shared by `experiments.stage2` and `experiments.evaluate`
image mode): `eval.json`, `gallery.png`, `codes_2d.png` and the Markdown table, and the rows of
the networks reading noisy landmarks. The scoring itself is `sfm_jax.inference.evaluate_split`
(the same images, batches and metrics for every model).
"""

from __future__ import annotations

import json
import os

import numpy as np

from sfm_jax import evaluation, inference, viz
from sfm_jax.io import atomic_write, write_png
from sfm_jax.sources.images import Split


def noisy_landmark_row(name: str, noise: float) -> str:
  """The table row of network `name` reading landmarks with `noise` pixels of noise."""
  return f"{name}, landmarks +{noise:g} px noise"


def noisy_landmark_rows(predictors: dict, split: Split, *, noise: float,
                        landmark_vertices: np.ndarray, batch_size: int, seed: int) -> dict:
  """Each network scored again reading the held-out landmarks plus Gaussian noise of `noise`
  pixels per coordinate (drawn from `seed`), against the same annotations: how much its
  prediction rests on exact landmarks, which no detector gives. Empty when `noise` is 0."""
  if not noise:
    return {}
  rng = np.random.default_rng([seed, 68])
  noisy = split.landmarks + rng.normal(scale=noise, size=split.landmarks.shape)
  rows, _ = inference.evaluate_split(predictors, split, landmark_vertices=landmark_vertices,
                                     batch_size=batch_size, seed=seed,
                                     input_landmarks=noisy.astype(split.landmarks.dtype))
  return {noisy_landmark_row(name, noise): scores for name, scores in rows.items()}


def write_results(out_dir: str, rows: dict, predictions: dict, predictors: dict, split: Split,
                  *, description: str, gallery_count: int, seen: dict | None = None,
                  extra: dict | None = None) -> str:
  """Writes `eval.json` (with the `seen` diagnostic rows, if any, and the entries of `extra`),
  `gallery.png` and `codes_2d.png` into `out_dir`; returns the held-out table (Markdown)."""
  table = evaluation.format_table(rows, evaluation.IMAGE_COLUMNS)
  with atomic_write(os.path.join(out_dir, "eval.json"), "w") as f:
    json.dump({"data": description, "test_images": len(split),
               "test_identities": len(np.unique(split.identity[split.identity >= 0])),
               "ground_truth_3d": split.neutral is not None, "models": rows,
               **({"seen_identities": seen} if seen else {}), **(extra or {})}, f, indent=1)
  write_png(os.path.join(out_dir, "gallery.png"), inference.gallery(predictors, split, count=gallery_count))
  labelled = split.identity >= 0
  write_png(os.path.join(out_dir, "codes_2d.png"), viz.plot_codes_2d(
      [(f"{name}: held-out image codes (verif. {rows[name]['verification_accuracy']:.3f})",
        predictions[name]["shape_codes"][labelled], split.identity[labelled])
       for name in predictions]))
  return table
