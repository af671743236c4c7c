r"""Study: which stage-1 terms make the sphere help, on the face world and on hard Surrey data.

  python -m experiments.studies.stage1_terms --workdir=runs/study_stage1 [--seeds=0,1,2]
      [--variants=demo,hard] [--runs=full,no_margin,...] [--out=experiments/studies/stage1_terms.md]

For each variant (stage-1 configs `demo`: the face world; `hard`: heavy-tailed Surrey identities,
strong expressions, 1 mm noise) and seed it trains, with the stage-1 training loop and the
variant's settings, the SFM objective as configured (`full`), the same with one term off in turn
(`no_margin`, `no_center`, `no_isotropy`, `no_ring`), the soft sphere (`soft`), K = 10 and 40
(`k10`, `k40`), and the Gaussian baseline at each K (`baseline`, `baseline_k10`,
`baseline_k40`); the untrained PCA is evaluated at each K too. `free_norm`: the identity terms on
the codes' directions, their norms free (the soft sphere without its ring term). `shared` and
`baseline_shared`
train one shape code per identity instead of one per scan (`Objective.shared_identity_codes`).
`pca_sphere` trains nothing: the untrained PCA fitted with its codes held on the sphere of
radius R, which separates what the sphere costs at fitting time from what training does.
Variants `hard_gaussian_ids`, `hard_mild_expressions` and `hard_low_noise` are `hard` with one
difficulty removed (Gaussian identities; expressions at 1x; 0.3 mm noise), to find which one
the sphere loses to (run them with `--runs=full,baseline`). Every model is fitted to the
held-out scans by the one fitting routine (`evaluation.evaluate_model`).

Columns: mean per-vertex error (mm), 10-fold verification accuracy, cosine silhouette, NMCD
(within / between identity spread of the codes; lower is better) and the share of the
within-identity code spread that expressions explain (`expr share`: R^2 of a linear regression
of each held-out scan's code offset from its identity's mean code on that scan's expression
code; the expression leaking into the identity code). Mean +- std over seeds.

Each run keeps its checkpoints and `eval.json` under `--workdir/<variant>/seed<N>/<run>/`: a
killed study resumes where it stopped and finished runs are not retrained.
"""

import json
import os
import time

import numpy as np
from absl import flags

from experiments import cli
from experiments import stage1 as stage1_entry
from experiments.configs import stage1 as stage1_configs
from sfm_jax import evaluation, metrics, parallel, stage1, train_loop
from sfm_jax.io import atomic_write
from sfm_jax.progress import format_seconds
from sfm_jax.sources import scans as scan_sources

RUNS = {  # name -> (K or None for the variant's, objective changes, Gaussian baseline?)
    "full": (None, {}, False),
    "no_margin": (None, {"weight_margin": 0.0}, False),
    "no_center": (None, {"weight_center": 0.0}, False),
    "no_isotropy": (None, {"weight_isotropy": 0.0}, False),
    "no_ring": (None, {"weight_ring": 0.0}, False),
    "soft": (None, {"sphere_mode": "soft"}, False),
    "k10": (10, {}, False),
    "k40": (40, {}, False),
    "baseline": (None, {}, True),
    "baseline_k10": (10, {}, True),
    "baseline_k40": (40, {}, True),
    "free_norm": (None, {"sphere_mode": "soft", "weight_ring": 0.0}, False),
    "shared": (None, {"shared_identity_codes": True}, False),
    "pca_sphere": (None, {}, False),
    "baseline_shared": (None, {"shared_identity_codes": True}, True),
}
# Data variants beyond the stage-1 configs: `hard` with one of its difficulties removed.
DATA_VARIANTS = {
    "hard_gaussian_ids": ("hard", {"identity_tail_df": 0.0}),
    "hard_mild_expressions": ("hard", {"expression_scale": 1.0}),
    "hard_low_noise": ("hard", {"noise_mm": 0.3}),
}
COLUMNS = (("mean_mm", "error mm"), ("verification_accuracy", "verif."),
           ("silhouette", "silhouette"), ("nmcd", "NMCD"), ("expr_share", "expr share"))

_WORKDIR = flags.DEFINE_string("workdir", "runs/study_stage1", "Runs and their checkpoints.")
_OUT = flags.DEFINE_string("out", "experiments/studies/stage1_terms.md", "The written study.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds.")
_VARIANTS = flags.DEFINE_list("variants", ["demo", "hard"], "Stage-1 config variants.")
_RUNS = flags.DEFINE_list("runs", list(RUNS), "Runs (see the module docstring).")
_STEPS = flags.DEFINE_integer("num_steps", 0, "Training steps per model (0: the variant's).")


def _run(variant: str, seed: int, name: str, root: str) -> dict:
  """Trains (or resumes) one run and evaluates it; cached in its folder's `eval.json`."""
  workdir = os.path.join(root, variant, f"seed{seed}", name)
  result_path = os.path.join(workdir, "eval.json")
  if os.path.exists(result_path):
    with open(result_path, encoding="utf-8") as f:
      return json.load(f)
  shape_dim, changes, gaussian = RUNS[name]
  base, data_changes = DATA_VARIANTS.get(variant, (variant, {}))
  config = stage1_configs.get_config(base)
  config.data.update(data_changes)
  config.seed = seed
  if shape_dim:
    config.model.shape_dim = shape_dim
  if _STEPS.value:
    config.train.num_steps = _STEPS.value
  data = scan_sources.load(config.data, seed=seed)
  init = stage1.pca_init(data.train_scans, data.train_identity, num_shape=config.model.shape_dim,
                         num_expr=config.model.expr_dim)
  objective = stage1.Objective(**{**config.objective.to_dict(), **changes})
  if gaussian:
    objective = stage1.baseline_objective(objective, **config.baseline.to_dict())
  os.makedirs(workdir, exist_ok=True)
  pca = stage1.pca_model(init, triangles=data.triangles, landmarks=data.landmarks,
                         contour=data.contour)
  if name == "pca_sphere":  # no training: the PCA model fitted with codes on its sphere
    models = {name: pca.replace(code_kind="sphere")}
  else:
    log = train_loop.MetricsLog(os.path.join(workdir, "metrics.jsonl"))
    state = stage1_entry.train(name, objective, init, data, config, workdir, log,
                               parallel.make_mesh())
    models = {name: stage1.export_model(parallel.to_host(state.params),
                                        pca.replace(code_kind=objective.code_kind))}
  if name in ("baseline", "baseline_k10", "baseline_k40"):  # the untrained PCA at this K
    models["pca" + name[len("baseline"):]] = pca
  results = {}
  for model_name, model in models.items():
    scores, fit = evaluation.evaluate_model(
        model, data.test_scans, data.test_identity, seed=seed, steps=config.eval.fit_steps,
        rounds=config.eval.fit_rounds, learning_rate=config.eval.fit_learning_rate)
    scores["expr_share"] = metrics.expression_share(fit.shape_codes, data.test_identity,
                                            fit.expr_codes)
    results[model_name] = {k: float(v) for k, v in scores.items()}
  results["_data"] = data.description
  with atomic_write(result_path, "w") as f:
    json.dump(results, f, indent=1)
  return results


def _table(rows: dict) -> list:
  """Markdown lines: one row per model, `mean +- std` over seeds of each column."""
  lines = ["| model | " + " | ".join(title for _, title in COLUMNS) + " |",
           "|" + "---|" * (len(COLUMNS) + 1)]
  for name, per_seed in rows.items():
    cells = []
    for key, _ in COLUMNS:
      values = np.array([scores[key] for scores in per_seed])
      cells.append(f"{values.mean():.3f} +- {values.std():.3f}")
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return lines


def main(argv):
  del argv
  start = time.perf_counter()
  seeds = [int(s) for s in _SEEDS.value]
  lines = ["# Stage 1: which terms make the sphere help", "",
           "Written by `python -m experiments.studies.stage1_terms` (see its docstring for what "
           "each run and column is); mean +- std over seeds " + ", ".join(map(str, seeds)) + ".",
           ""]
  total = len(_VARIANTS.value) * len(seeds) * len(_RUNS.value)
  done = 0
  for variant in _VARIANTS.value:
    rows: dict = {}
    description = ""
    for seed in seeds:
      for name in _RUNS.value:
        results = _run(variant, seed, name, _WORKDIR.value)
        description = results.pop("_data")
        for model_name, scores in results.items():
          rows.setdefault(model_name, []).append(scores)
        done += 1
        print(f"[study] {done}/{total} runs ({variant}, seed {seed}, {name}) "
              f"{format_seconds(time.perf_counter() - start)}", flush=True)
    lines += [f"## `{variant}`", "", f"Data: {description}.", "", *_table(rows), ""]
  os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
  with atomic_write(_OUT.value, "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))
  print(f"written to {_OUT.value} in {format_seconds(time.perf_counter() - start)}")


if __name__ == "__main__":
  cli.run(main)
