r"""Evaluate model files on held-out scans with the stage-1 fitting routine and metrics.

  # A stage-1 workdir's models on a scan folder (every scan; identities from meta.csv):
  python -m experiments.evaluate --models=runs/stage1/sfm_model.npz,runs/stage1/baseline_model.npz \
      --scan_dir=my_scans --out=runs/eval.json
  # Any loadable model (Basel, FLAME, FaceScape, Surrey, ours) on a config's held-out split:
  python -m experiments.evaluate --models=surrey=../shared/data/surrey \
      --config=experiments/configs/stage1.py:surrey

Models are `name=path` or `path` (named by the file stem). The scans must be in correspondence
with every model (same vertex count and order). Prints the table and writes JSON atomically.

Image mode: the trained networks of a stage-2 workdir on held-out images (3D neutral error after
the NoW 7-landmark alignment where ground truth exists, verification / silhouette / NMI of the
predicted codes, landmark NME), with the stage-2 config's data or a photo folder:

  python -m experiments.evaluate --stage2=runs/stage2 \
      --config=experiments/configs/stage2.py:demo --out_dir=runs/eval_images
  python -m experiments.evaluate --stage2=runs/stage2 --image_dir=my_photos \
      --config=experiments/configs/stage2.py:folder

It writes `eval.json`, `gallery.png` and `codes_2d.png` into `--out_dir`.
"""

import json
import os

import numpy as np
from absl import app, flags

from experiments import cli, image_eval
from sfm_jax import evaluation, inference
from sfm_jax.errors import InputError
from sfm_jax.io import atomic_write, scan_folder
from sfm_jax.io.models import load_face_model
from sfm_jax.sources import images as image_sources
from sfm_jax.sources import scans as scan_sources

_MODELS = flags.DEFINE_list("models", None, "Comma-separated `name=path` or `path` model files.")
_SCAN_DIR = flags.DEFINE_string("scan_dir", None, "A scan folder to evaluate on (all its scans).")
_CONFIG = cli.define_config(None, "Or: a stage-1 config whose data source's split is used.")
_SPLIT = flags.DEFINE_enum("split", "test", ["test", "train"], "Split of the config's data.")
_OUT = flags.DEFINE_string("out", "eval.json", "Where to write the JSON results.")
_FIT_STEPS = flags.DEFINE_integer("fit_steps", 150, "Adam steps per fitting round.")
_FIT_ROUNDS = flags.DEFINE_integer("fit_rounds", 3, "Alignment + refinement rounds.")
_FIT_LR = flags.DEFINE_float("fit_lr", 0.02, "Fitting learning rate.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the data source and of the metrics' sampling.")
_STAGE2 = flags.DEFINE_string("stage2", None, "Image mode: a trained stage-2 workdir.")
_IMAGE_DIR = flags.DEFINE_string("image_dir", None, "Image mode: a photo folder (meta.csv + "
                                 "images + .pts); its held-out identities are evaluated.")
_OUT_DIR = flags.DEFINE_string("out_dir", "runs/eval_images", "Image mode: output folder.")
_BATCH = flags.DEFINE_integer("batch_size", 64, "Image mode: images per forward pass.")
_STORE_DIR = flags.DEFINE_string("store_dir", None, "With a config that streams its data "
                                 "(data.stream, e.g. :paper): the folder of its scan stores, "
                                 "e.g. a stage-1 workdir's data/ (written there if absent); in "
                                 "image mode of its image stores (default OUT_DIR/data; a "
                                 "stage-2 workdir's data/ reuses its images for the run's seed).")


def _scans():
  if (_SCAN_DIR.value is None) == (_CONFIG.value is None):
    raise app.UsageError("give exactly one of --scan_dir and --config")
  if _SCAN_DIR.value is not None:
    folder = scan_folder.read_scan_folder(_SCAN_DIR.value)
    return folder.vertices, folder.identity, f"scan folder {_SCAN_DIR.value}"
  if _CONFIG.value.data.get("stream", False) and not _STORE_DIR.value:
    raise app.UsageError("this config streams its scans (data.stream): give --store_dir (e.g. "
                         "the stage-1 workdir's data/ folder) or --config.data.stream=False")
  data = scan_sources.load(_CONFIG.value.data, seed=_SEED.value, store_dir=_STORE_DIR.value)
  if _SPLIT.value == "test":
    return data.test_scans, data.test_identity, f"{data.description} (test split)"
  return data.train_scans, data.train_identity, f"{data.description} (train split)"


def _parse_models(entries):
  models = {}
  for entry in entries:
    name, path = entry.split("=", 1) if "=" in entry else (
        os.path.splitext(os.path.basename(entry.rstrip("/")))[0], entry)
    if name in models:
      raise app.UsageError(f"two models named {name!r}; use name=path")
    models[name] = path
  return models


def image_mode() -> None:
  if _CONFIG.value is None:
    raise app.UsageError("image mode needs --config=experiments/configs/stage2.py:VARIANT")
  data_config = _CONFIG.value.data
  if _IMAGE_DIR.value:
    data_config.source, data_config.image_dir = "folder", _IMAGE_DIR.value
  predictors = inference.load_predictors(_STAGE2.value)
  size = next(iter(predictors.values())).image_size
  if data_config.image_size != size:
    print(f"data.image_size {data_config.image_size} -> {size} (the network's input size)")
    data_config.image_size = size
  first_model = next(iter(predictors.values())).model
  data = image_sources.load(data_config, seed=_SEED.value, model=first_model,
                            store_dir=_STORE_DIR.value or os.path.join(_OUT_DIR.value, "data"))
  landmark_vertices = np.asarray(first_model.landmarks)
  flip_partner = image_eval.flip_partner(_CONFIG.value.eval.flip_average, data_config,
                                         first_model, data)
  print(f"evaluating {', '.join(predictors)} from {_STAGE2.value} on {len(data.test)} held-out "
        f"images: {data.description}", flush=True)
  rows, codes = inference.evaluate_split(predictors, data.test,
                                         landmark_vertices=landmark_vertices,
                                         batch_size=_BATCH.value, seed=_SEED.value,
                                         flip_partner=flip_partner)
  rows, noise_curve = image_eval.references_and_noise(
      predictors, data, rows, fit_steps=_CONFIG.value.eval.fit_steps,
      row_noise=_CONFIG.value.eval.landmark_noise, curve_levels=_CONFIG.value.eval.noise_curve,
      landmark_vertices=landmark_vertices, batch_size=_BATCH.value, seed=_SEED.value)
  os.makedirs(_OUT_DIR.value, exist_ok=True)
  table = image_eval.write_results(
      _OUT_DIR.value, rows, codes, predictors, data.test, description=data.description,
      gallery_count=_CONFIG.value.eval.gallery,
      extra={"landmark_noise_curve": noise_curve} if noise_curve else None)
  print(table)
  written = "eval.json, gallery.png, codes_2d.png"
  if noise_curve:
    print("the networks reading noisy landmarks, 3D median (mm) / verification:")
    print(image_eval.write_noise_curve(_OUT_DIR.value, noise_curve))
    written += ", landmark_noise.png"
  print(f"wrote {written} to {_OUT_DIR.value}")


def main(argv):
  del argv
  if _STAGE2.value:
    return image_mode()
  if not _MODELS.value:
    raise app.UsageError("--models is required")
  models = _parse_models(_MODELS.value)
  scans, identity, description = _scans()
  loaded = {}
  for name, path in models.items():
    model = load_face_model(path)
    if model.num_vertices != scans.shape[1]:
      raise InputError(f"{path}: the model has {model.num_vertices} vertices but the scans have "
                       f"{scans.shape[1]}; they must be in correspondence")
    loaded[name] = model
  print(f"evaluating {len(loaded)} model(s) on {len(scans)} scans of "
        f"{len(np.unique(identity[identity >= 0]))} identities: {description}", flush=True)
  rows = {}
  for name, model in loaded.items():
    rows[name], _ = evaluation.evaluate_model(
        model, scans, identity, seed=_SEED.value, steps=_FIT_STEPS.value,
        rounds=_FIT_ROUNDS.value, learning_rate=_FIT_LR.value)
    print(f"  {name}: mean {rows[name]['mean_mm']:.3f} mm, verification "
          f"{rows[name]['verification_accuracy']:.3f}", flush=True)
  print(evaluation.format_table(rows))
  out_dir = os.path.dirname(os.path.abspath(_OUT.value))
  os.makedirs(out_dir, exist_ok=True)
  with atomic_write(_OUT.value, "w") as f:
    json.dump({"data": description, "scans": int(len(scans)), "models": models,
               "results": rows}, f, indent=1)
  print(f"wrote {_OUT.value}")


if __name__ == "__main__":
  cli.run(main)
