r"""Stage 1 over several seeds: mean and std of every table entry, so differences can be judged
against seed-to-seed spread.

  python -m experiments.seeds --config=experiments/configs/stage1.py:demo --seeds=0,1,2 \
      --workdir=runs/seeds

Runs `experiments.stage1.train_and_evaluate` once per seed in this process (workdir
`WORKDIR/seed<N>`, resumable), then writes `WORKDIR/summary.json` and `WORKDIR/summary.md`.
Config overrides apply to every seed (`--config.objective.weight_center=3`).
"""

import json
import os
import sys

import numpy as np
from absl import flags

from experiments import cli, stage1
from sfm_jax.evaluation import COLUMNS
from sfm_jax.io import atomic_write

_CONFIG = cli.define_config("experiments/configs/stage1.py:demo", "Stage-1 config.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds to run.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/seeds", "Parent folder of the per-seed runs.")


def summarize(results: dict) -> dict:
  """`{seed: {model: scores}}` -> `{model: {key: {"mean", "std"}}}` over seeds."""
  models = list(next(iter(results.values())))
  return {model: {key: {"mean": float(np.mean([results[s][model][key] for s in results])),
                        "std": float(np.std([results[s][model][key] for s in results]))}
                  for key, _ in COLUMNS} for model in models}


def run_seeds(config, seeds: list, workdir: str) -> dict:
  """Trains and evaluates stage 1 once per seed; returns `{seed: {model: scores}}`."""
  results = {}
  for seed in seeds:
    seed_workdir = os.path.join(workdir, f"seed{seed}")
    print(f"seed {seed}: {seed_workdir}", flush=True)
    seeded = config.copy_and_resolve_references()
    seeded.seed = int(seed)
    results[str(seed)] = stage1.train_and_evaluate(seeded, seed_workdir)["models"]
  return results


def main(argv):
  del argv
  config, seeds, workdir = _CONFIG.value, _SEEDS.value, _WORKDIR.value
  cli.setup(config.parallel)
  results = run_seeds(config, seeds, workdir)
  summary = summarize(results)
  overrides = " ".join(a for a in sys.argv[1:] if a.startswith("--config."))
  lines = [f"Stage 1 `{config.variant}`, seeds {', '.join(seeds)} "
           f"(mean ± std over seeds). Overrides: {overrides or 'none'}.", "",
           "| model | " + " | ".join(title for _, title in COLUMNS) + " |",
           "|" + "---|" * (len(COLUMNS) + 1)]
  for model, scores in summary.items():
    cells = [f"{scores[key]['mean']:.3f} ± {scores[key]['std']:.3f}" for key, _ in COLUMNS]
    lines.append(f"| {model} | " + " | ".join(cells) + " |")
  text = "\n".join(lines) + "\n"
  os.makedirs(workdir, exist_ok=True)
  with atomic_write(os.path.join(workdir, "summary.md"), "w") as f:
    f.write(text)
  with atomic_write(os.path.join(workdir, "summary.json"), "w") as f:
    json.dump({"seeds": seeds, "overrides": overrides, "per_seed": results,
               "summary": summary}, f, indent=1)
  print(text)


if __name__ == "__main__":
  cli.run(main)
