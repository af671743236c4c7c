r"""Sample a scan folder from a Gaussian face model (e.g. the Surrey model): people, expressions
and the scanner, written in the scan-folder format stage 1 and stage 2 read.

  python -m experiments.sample_scans --model=../shared/data/surrey --out=runs/surrey_scans \
      --identities=1000 --scans_per_identity=2

`meta.csv` gets an `expression` column (`neutral` for scans without expression, else the active
components `e0+e5`), `template.obj` the topology, `landmarks.txt` the model's iBUG vertices and
`contour.json` its jaw lines (where it has them). Seeded; the same command writes the same files.
"""

import os

import numpy as np
from absl import flags

from experiments import cli
from sfm_jax.errors import InputError
from sfm_jax.io.models import load_face_model
from sfm_jax.io.scan_folder import write_scan_folder
from sfm_jax.sources.scans import sample_people

_MODEL = flags.DEFINE_string("model", None, "A Gaussian model file or the Surrey folder.",
                             required=True)
_OUT = flags.DEFINE_string("out", None, "The scan folder to write.", required=True)
_IDENTITIES = flags.DEFINE_integer("identities", 100, "People.")
_SCANS = flags.DEFINE_integer("scans_per_identity", 4, "Scans per person.")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed.")
_NOISE = flags.DEFINE_float("noise_mm", 0.5, "Scanner noise (mm).")
_EXPRESSION_SCALE = flags.DEFINE_float("expression_scale", 1.0, "Expression strength.")
_TAIL_DF = flags.DEFINE_float("identity_tail_df", 0.0, "0: Gaussian identities; > 2: Student "
                              "t with this many degrees of freedom.")
_NEUTRAL_FRACTION = flags.DEFINE_float("neutral_fraction", 0.25, "Share of neutral scans.")
_NEUTRAL_FIRST = flags.DEFINE_boolean("neutral_first", True, "Every person's first scan is "
                                     "neutral (so every person has a known neutral face).")
_NAME_PREFIX = flags.DEFINE_string("name_prefix", "person", "Identity names: PREFIX0000, ...")


def expression_labels(weights: np.ndarray, names: list) -> list:
  """One label per scan: `neutral` where every weight is 0, else the active names joined by +."""
  return ["+".join(names[j] for j in np.flatnonzero(row)) or "neutral" for row in weights]


def main(argv):
  del argv
  if not os.path.exists(_MODEL.value):
    raise InputError(f"--model: {_MODEL.value} does not exist")
  model = load_face_model(_MODEL.value)
  if model.code_kind != "gaussian":
    raise InputError(f"--model: {_MODEL.value} has {model.code_kind} codes; scans are sampled "
                     "from Gaussian models")
  sampled = sample_people(model, _IDENTITIES.value, _SCANS.value, _SEED.value,
                          noise_mm=_NOISE.value, neutral_fraction=_NEUTRAL_FRACTION.value,
                          expression_scale=_EXPRESSION_SCALE.value,
                          identity_tail_df=_TAIL_DF.value, neutral_first=_NEUTRAL_FIRST.value)
  names = [f"e{j}" for j in range(model.expr_dim)]
  labels = expression_labels(sampled.expression, names)
  write_scan_folder(_OUT.value, sampled.scans,
                    [f"{_NAME_PREFIX.value}{i:04d}" for i in sampled.identity],
                    triangles=np.asarray(model.triangles), landmarks=np.asarray(model.landmarks),
                    expression=labels,
                    contour=None if model.contour is None else np.asarray(model.contour))
  print(f"wrote {len(sampled.scans)} scans of {_IDENTITIES.value} people "
        f"({labels.count('neutral')} neutral) to {_OUT.value}")


if __name__ == "__main__":
  cli.run(main)
