r"""Evaluate model files on held-out scans with the stage-1 fitting routine and metrics.

  # A stage-1 workdir's models on a scan folder (every scan; identities from meta.csv):
  python -m experiments.evaluate --models=runs/stage1/model.npz,runs/stage1/baseline.npz \
      --scan_dir=my_scans --out=runs/eval.json
  # Any loadable model (Basel, FLAME, FaceScape, Surrey, ours) on a config's held-out split:
  python -m experiments.evaluate --models=surrey=../shared/data/surrey \
      --config=experiments/configs/stage1.py:surrey

Models are `name=path` or `path` (named by the file stem). The scans must be in correspondence
with every model (same vertex count and order). Prints the table and writes JSON atomically.
"""

import json
import os

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from experiments import scan_data
from sfm_jax import evaluation
from sfm_jax.io import atomic_write, scan_folder
from sfm_jax.io.formats import load_face_model

_MODELS = flags.DEFINE_list("models", None, "Comma-separated `name=path` or `path` model files.")
_SCAN_DIR = flags.DEFINE_string("scan_dir", None, "A scan folder to evaluate on (all its scans).")
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Or: a stage-1 config whose data source's split is used.")
_SPLIT = flags.DEFINE_enum("split", "test", ["test", "train"], "Split of the config's data.")
_OUT = flags.DEFINE_string("out", "eval.json", "Where to write the JSON results.")
_FIT_STEPS = flags.DEFINE_integer("fit_steps", 150, "Adam steps per fitting round.")
_FIT_ROUNDS = flags.DEFINE_integer("fit_rounds", 3, "Alignment + refinement rounds.")
_FIT_LR = flags.DEFINE_float("fit_lr", 0.02, "Fitting learning rate.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the data source and of the metrics' sampling.")


def _scans():
  if (_SCAN_DIR.value is None) == (_CONFIG.value is None):
    raise app.UsageError("give exactly one of --scan_dir and --config")
  if _SCAN_DIR.value is not None:
    folder = scan_folder.read_scan_folder(_SCAN_DIR.value)
    return folder.vertices, folder.identity, f"scan folder {_SCAN_DIR.value}"
  data = scan_data.load(_CONFIG.value.data, seed=_SEED.value)
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


def main(argv):
  del argv
  if not _MODELS.value:
    raise app.UsageError("--models is required")
  models = _parse_models(_MODELS.value)
  scans, identity, description = _scans()
  loaded = {}
  for name, path in models.items():
    model = load_face_model(path)
    if model.num_vertices != scans.shape[1]:
      raise ValueError(f"{path}: the model has {model.num_vertices} vertices but the scans have "
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
  app.run(main)
