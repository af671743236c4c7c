r"""Study: how well each stage-2 network's shape codes point where the best codes do.

  python -m experiments.studies.code_agreement --stage2=RUN0,RUN1,RUN2 --seeds=0,1,2
      [--variant=demo --out=FILE.md]

For every held-out image of a face-world stage-2 run (the `demo` or `tiny` variant, rebuilt from
its seed), the oracle code is the exported model's best shape code for the image's true neutral
face (`stage2.oracle_codes`, the target of the `code` term). The study reports, per model and
mean +- std over the runs, the median cosine between predicted and oracle codes over all K
directions and over four groups of directions ranked by the size of their basis column (largest
first; `evaluation.code_agreement`), and |predicted| / |oracle| (1 on the sphere). Cosine
verification weighs every direction alike, the 3D error each by its squared size: a network
whose small directions disagree with the oracle can have a good 3D error and codes that verify
poorly.
"""

import numpy as np
from absl import flags

from experiments import cli
from experiments.configs import stage2 as stage2_configs
from sfm_jax import evaluation, inference, stage2
from sfm_jax.errors import InputError
from sfm_jax.sources import images as image_sources

_STAGE2 = flags.DEFINE_list("stage2", None, "stage-2 workdirs", required=True)
_SEEDS = flags.DEFINE_list("seeds", None, "the seed of each run (its --config.seed)",
                           required=True)
_VARIANT = flags.DEFINE_enum("variant", "demo", ["demo", "tiny"], "the runs' config variant")
_OUT = flags.DEFINE_string("out", None, "also write the table (markdown) here")


def agreement_of_run(workdir: str, *, variant: str, seed: int) -> dict:
  """`{model: evaluation.code_agreement(...)}` of one face-world stage-2 run."""
  config = stage2_configs.get_config(variant)
  config.seed = seed
  predictors = inference.load_predictors(workdir)
  data = image_sources.load(config.data, seed=seed, model=predictors["sfm"].model)
  split = data.test
  result = {}
  for name, predictor in predictors.items():
    codes = inference.predict_all(predictor, split.images, split.landmarks,
                                  keys=("shape_codes",))["shape_codes"]
    oracle = np.asarray(stage2.oracle_codes(predictor.model, split.neutral))
    result[name] = evaluation.code_agreement(codes, oracle, predictor.model.shape_basis)
  return result


def main(argv):
  del argv
  if len(_SEEDS.value) != len(_STAGE2.value):
    raise InputError(f"--seeds names {len(_SEEDS.value)} seeds, --stage2 {len(_STAGE2.value)} runs")
  runs = [agreement_of_run(d, variant=_VARIANT.value, seed=int(s))
          for d, s in zip(_STAGE2.value, _SEEDS.value)]
  mean_std = lambda v: f"{np.mean(v):.3f} +- {np.std(v):.3f}"
  groups = len(runs[0]["sfm"]["group cosine"])
  lines = ["| model | cosine | " + " | ".join(f"group {g + 1} cosine" for g in range(groups))
           + " | norm ratio (5/50/95) |", "|---" * (groups + 3) + "|"]
  for name in runs[0]:
    cells = [mean_std([r[name]["cosine"] for r in runs])]
    cells += [mean_std([r[name]["group cosine"][g] for r in runs]) for g in range(groups)]
    ratio = np.mean([r[name]["norm ratio"] for r in runs], axis=0)
    cells.append(", ".join(f"{x:.2f}" for x in ratio))
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  sizes = np.mean([r["sfm"]["group size (mm)"] for r in runs], axis=0)
  lines.append("")
  lines.append("groups: the K directions ranked by basis column size, SFM's mean column norm "
               "per group (mm): " + ", ".join(f"{x:.1f}" for x in sizes))
  table = "\n".join(lines)
  cli.print_table(table, _OUT.value)


if __name__ == "__main__":
  cli.run(main)
