r"""Study: how close each model can come to held-out neutral faces at all (its floor).

  python -m experiments.studies.shape_floor --stage1=RUN0,RUN1,RUN2 [--stage2=RUN0,RUN1,RUN2]
      [--identities=100 --seed=12345 --out=FILE.md]

A stage-2 network predicts a neutral face as the decoded shape code (expression 0). However well it
reads the pixels, it cannot beat the best shape code of its model. This study fits each model
directly to the true neutral faces of fresh face-world people (`evaluation.representation_floor`:
`fitting.fit_scans`, the routine of every 3D evaluation; no images, no network), in two ways:
  - `shape and expression`: every code free, as stage 1's evaluation fits scans;
  - `shape only`: the expression basis off, so only the shape code can explain the face, as in
    a predicted neutral.
It scores the NoW-aligned median per-vertex error (the stage-2 tables' metric) beside the mean
face. For Gaussian models it also reports how spread the fitted codes' norms are (5th, 50th and
95th percentile of |c| / R): an SFM code must have norm R.

`--stage1` lists stage-1 workdirs (one per seed; `sfm_model.npz` and `baseline_model.npz`);
`--stage2` optionally the stage-2 workdirs trained from them, whose exported models carry the
stage-2 basis residual. Rows give mean +- std over the runs.
"""

import os

import numpy as np
from absl import flags

from experiments import cli
from sfm_jax import evaluation, face_world
from sfm_jax import model as fm
from sfm_jax.errors import InputError

_STAGE1 = flags.DEFINE_list("stage1", None, "stage-1 workdirs, one per seed", required=True)
_STAGE2 = flags.DEFINE_list("stage2", [], "stage-2 workdirs trained from them (optional)")
_IDENTITIES = flags.DEFINE_integer("identities", 100, "fresh face-world people")
_SEED = flags.DEFINE_integer("seed", 12345, "seed of those people (not a training seed)")
_OUT = flags.DEFINE_string("out", None, "also write the table (markdown) here")


def _mean_std(values) -> str:
  values = np.asarray(values, np.float64)
  return f"{values.mean():.3f} +- {values.std():.3f}"


def main(argv):
  del argv
  if _STAGE2.value and len(_STAGE2.value) != len(_STAGE1.value):
    raise InputError(f"--stage2 names {len(_STAGE2.value)} runs, --stage1 {len(_STAGE1.value)}")
  world = face_world.FaceWorld(resolution=48)
  people = face_world.make_scans(_IDENTITIES.value, 1, seed=_SEED.value, world=world)
  neutral = people.neutral
  rows = {}  # (stage, model) -> {column: [per run]}
  mean_face = []
  for run, stage1_dir in enumerate(_STAGE1.value):
    sources = [("stage 1", stage1_dir)] + ([("stage 2", _STAGE2.value[run])]
                                            if _STAGE2.value else [])
    for stage, folder in sources:
      for name in ("sfm", "baseline"):
        path = os.path.join(folder, f"{name}_model.npz")
        if not os.path.isfile(path):
          raise InputError(f"{path}: missing (a {stage} workdir holds sfm_ and baseline_model.npz)")
        model = fm.load_model(path)
        if model.num_vertices != neutral.shape[1]:
          raise InputError(f"{path}: {model.num_vertices} vertices; this study uses the face "
                           f"world's {neutral.shape[1]} (`:demo`)")
        print(f"run {run}: fitting {stage} {name} to {len(neutral)} neutral faces ...", flush=True)
        scores = evaluation.representation_floor(model, neutral)
        for column, value in scores.items():
          rows.setdefault((stage, name), {}).setdefault(column, []).append(value)
        if stage == "stage 1" and name == "baseline":  # the reference row: its mean face
          mean_face.append(scores["mean face"])
  lines = [f"Representation floor on {len(neutral)} fresh face-world people (seed {_SEED.value}), "
           f"{len(_STAGE1.value)} runs: NoW-aligned median error (mm) of the best fit to the true "
           "neutral face, mean +- std over runs.", "",
           "| models | model | shape and expression | shape only | shape-only code norm / R "
           "(5th, 50th, 95th pct.) |", "|---|---|---|---|---|"]
  for (stage, name), columns in rows.items():
    norms = np.mean(columns["code norm / R"], axis=0)
    lines.append(f"| {stage} | {name} | {_mean_std(columns['shape and expression'])} | "
                 f"{_mean_std(columns['shape only'])} | "
                 f"{norms[0]:.3f}, {norms[1]:.3f}, {norms[2]:.3f} |")
  lines.append(f"| | mean face | {_mean_std(mean_face)} | | |")
  table = "\n".join(lines)
  cli.print_table(table, _OUT.value)


if __name__ == "__main__":
  cli.run(main)
