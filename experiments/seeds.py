r"""Stage 1 over several seeds: mean and std of every table entry, so differences can be judged
against seed-to-seed spread.

  python -m experiments.seeds --config=experiments/configs/stage1.py:demo --seeds=0,1,2 \
      --workdir=runs/seeds

Runs `experiments.stage1` once per seed (workdir `WORKDIR/seed<N>`, resumable), then writes
`WORKDIR/summary.json` and `WORKDIR/summary.md`. Config overrides pass through
(`--config.objective.weight_center=3`).
"""

import json
import os
import subprocess
import sys

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from sfm_jax.evaluation import COLUMNS
from sfm_jax.io import atomic_write

_CONFIG = config_flags.DEFINE_config_file("config", "experiments/configs/stage1.py:demo",
                                          "Stage-1 config.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds to run.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/seeds", "Parent folder of the per-seed runs.")


def main(argv):
  del argv
  config_arg = next(a for a in sys.argv if a.startswith("--config="))
  overrides = [a for a in sys.argv[1:] if a.startswith("--config.") and "seed=" not in a]
  results = {}
  for seed in _SEEDS.value:
    workdir = os.path.join(_WORKDIR.value, f"seed{seed}")
    print(f"seed {seed}: {workdir}", flush=True)
    command = [sys.executable, "-m", "experiments.stage1", config_arg, f"--workdir={workdir}",
               f"--config.seed={seed}", *overrides]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    with open(os.path.join(workdir, "eval.json")) as f:
      results[seed] = json.load(f)["models"]
  models = list(next(iter(results.values())))
  summary = {model: {key: {"mean": float(np.mean([results[s][model][key] for s in results])),
                           "std": float(np.std([results[s][model][key] for s in results]))}
                     for key, _ in COLUMNS} for model in models}
  lines = [f"Stage 1 `{_CONFIG.value.variant}`, seeds {', '.join(_SEEDS.value)} "
           f"(mean ± std over seeds). Overrides: {' '.join(overrides) or 'none'}.", "",
           "| model | " + " | ".join(title for _, title in COLUMNS) + " |",
           "|" + "---|" * (len(COLUMNS) + 1)]
  for model in models:
    cells = [f"{summary[model][key]['mean']:.3f} ± {summary[model][key]['std']:.3f}"
             for key, _ in COLUMNS]
    lines.append(f"| {model} | " + " | ".join(cells) + " |")
  text = "\n".join(lines) + "\n"
  os.makedirs(_WORKDIR.value, exist_ok=True)
  with atomic_write(os.path.join(_WORKDIR.value, "summary.md"), "w") as f:
    f.write(text)
  with atomic_write(os.path.join(_WORKDIR.value, "summary.json"), "w") as f:
    json.dump({"seeds": _SEEDS.value, "overrides": overrides, "per_seed": results,
               "summary": summary}, f, indent=1)
  print(text)


if __name__ == "__main__":
  app.run(main)
