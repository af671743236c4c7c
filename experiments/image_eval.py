"""Held-out image evaluation shared by `experiments.stage2` and `experiments.evaluate`
(image mode): predictions, the table, `eval.json`, `report` text and the pictures.

Every model is a trained stage-2 `Predictor`; the same images, the same batches and the same
`evaluation.evaluate_images` score each, so rows are comparable.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np

from experiments.image_data import Split
from experiments.training import format_seconds
from sfm_jax import evaluation, stage2, viz
from sfm_jax.io import atomic_write, write_png
from sfm_jax.model import load_model

MODELS = ("sfm", "baseline")


def load_predictors(workdir: str, names=MODELS) -> dict:
  """The trained predictors of a stage-2 workdir (`<name>_model.npz` + `<name>_encoder.npz`);
  a model whose files are absent is left out, none at all is an error."""
  predictors = {}
  for name in names:
    model_path = os.path.join(workdir, f"{name}_model.npz")
    encoder_path = os.path.join(workdir, f"{name}_encoder.npz")
    if os.path.isfile(model_path) and os.path.isfile(encoder_path):
      predictors[name] = stage2.load_predictor(encoder_path, load_model(model_path))
  if not predictors:
    raise ValueError(f"{workdir}: no trained stage-2 model (expected <name>_model.npz and "
                     f"<name>_encoder.npz for a name in {names}); run experiments.stage2 first")
  return predictors


def _progress(label: str):
  start = time.perf_counter()

  def report(done, total):
    elapsed = time.perf_counter() - start
    eta = elapsed / done * (total - done)
    print(f"  {label}: {done}/{total} images  ETA {format_seconds(eta)}", flush=True)
  return report


def evaluate(predictors: dict, split: Split, *, landmark_vertices: np.ndarray, batch_size: int,
             seed: int) -> tuple[dict, dict]:
  """(`{name: scores}`, `{name: predictions}`) on a held-out split."""
  rows, predictions = {}, {}
  for name, predictor in predictors.items():
    if predictor.image_size != split.images.shape[1]:
      raise ValueError(f"{name}: the network takes {predictor.image_size} px images but the "
                       f"evaluation images are {split.images.shape[1]} px")
    predictions[name] = stage2.predict_all(predictor, split.images, batch_size=batch_size,
                                           progress=_progress(f"predicting ({name})"))
    rows[name] = evaluation.evaluate_images(
        predictions[name], identity=split.identity, landmarks=split.landmarks,
        visible=split.visible, landmark_vertices=landmark_vertices, neutral=split.neutral,
        seed=seed)
  return rows, predictions


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
    out = stage2.predict_all(predictor, split.images[index], batch_size=batch_size)
    rows[name] = evaluation.evaluate_images(
        out, identity=split.identity[index], landmarks=split.landmarks[index],
        visible=split.visible[index], landmark_vertices=np.asarray(predictor.model.landmarks),
        seed=seed)
  return rows


def gallery(predictors: dict, split: Split, *, count: int) -> np.ndarray:
  """A picture, one row per held-out image: the input, then per model the rendered
  reconstruction over the input (green: annotated landmarks, red: predicted) and its neutral
  mesh."""
  # Images spread over the split (different identities), not the first few.
  index = np.linspace(0, len(split) - 1, min(count, len(split))).astype(int)
  batch = split.batch(index)["images"]
  size = batch.shape[1]
  columns = [list(batch)]
  for predictor in predictors.values():
    out = stage2.predict_all(predictor, batch, batch_size=len(index),
                             keys=("rendered", "mask", "landmarks", "neutral"))
    columns.append([viz.reconstruction_overlay(batch[i], out["rendered"][i], out["mask"][i],
                                               out["landmarks"][i], split.landmarks[index[i]])
                    for i in range(len(index))])
    columns.append([viz.shade_mesh(out["neutral"][i], np.asarray(predictor.model.triangles),
                                   size=size) for i in range(len(index))])
  cells = [column[row] for row in range(len(index)) for column in columns]
  return viz.image_grid(cells, columns=len(columns))


def write_results(out_dir: str, rows: dict, predictions: dict, predictors: dict, split: Split,
                  *, description: str, gallery_count: int, seen: dict | None = None) -> str:
  """Writes `eval.json` (with the `seen` diagnostic rows, if any), `gallery.png` and
  `codes_2d.png` into `out_dir`; returns the held-out table (Markdown)."""
  table = evaluation.format_table(rows, evaluation.IMAGE_COLUMNS)
  with atomic_write(os.path.join(out_dir, "eval.json"), "w") as f:
    json.dump({"data": description, "test_images": len(split),
               "test_identities": len(np.unique(split.identity[split.identity >= 0])),
               "ground_truth_3d": split.neutral is not None, "models": rows,
               **({"seen_identities": seen} if seen else {})}, f, indent=1)
  write_png(os.path.join(out_dir, "gallery.png"), gallery(predictors, split, count=gallery_count))
  labelled = split.identity >= 0
  write_png(os.path.join(out_dir, "codes_2d.png"), viz.plot_codes_2d(
      [(f"{name}: held-out image codes (verif. {rows[name]['verification_accuracy']:.3f})",
        predictions[name]["shape_codes"][labelled], split.identity[labelled])
       for name in predictions]))
  return table
