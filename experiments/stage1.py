r"""Stage 1: learn the SFM basis from 3D scans, with the PCA baseline trained by the same code.

  python -m experiments.stage1 --config=experiments/configs/stage1.py:demo --workdir=runs/stage1

Writes into the workdir:
  model.npz, baseline.npz, pca.npz   SFM, the baseline (Gaussian codes, trained by the same code),
                                     and the untrained PCA initialisation (model files)
  codes.npz                          training codes and identities of both trained models
  metrics.jsonl                      one JSON object per logged step and model
  eval.json, report.md               held-out evaluation table (design section 6)
  loss_curves.png, codes_2d.png, components_sfm.png, components_baseline.png
  checkpoints/{sfm,baseline}/        orbax checkpoints; rerunning the command resumes from them
"""

import json
import os
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from experiments import scan_data, training
from sfm_jax import evaluation, parallel, stage1, viz
from sfm_jax.io import atomic_write, write_png
from sfm_jax.model import save_model
from sfm_jax.train_state import TrainState

_CONFIG = config_flags.DEFINE_config_file(
    "config", "experiments/configs/stage1.py:demo", "Stage-1 config (`path:variant`).")
_WORKDIR = flags.DEFINE_string("workdir", "runs/stage1", "Output folder; reruns resume here.")


def train(name: str, objective: stage1.Objective, init: stage1.PCAInit, data, config,
          workdir: str, log: training.MetricsLog, mesh) -> TrainState:
  """Trains one model (resuming from its checkpoints) on `mesh`; returns the final state."""
  train_config = config.train
  params = stage1.init_params(init, data.train_identity, data.num_classes)
  loss_fn = stage1.make_loss_fn(objective, radius=init.radius, triangles=data.triangles,
                                mirror=data.mirror,
                                axis_name=parallel.DATA_AXIS if config.parallel.mode == "pmap"
                                else None)
  tx = stage1.make_optimizer(lr_basis=train_config.lr_basis, lr_codes=train_config.lr_codes,
                             lr_prototypes=train_config.lr_prototypes,
                             lr_centers=train_config.lr_centers,
                             warmup_steps=train_config.warmup_steps,
                             total_steps=train_config.num_steps)
  state = TrainState.create(params=params, tx=tx, loss_fn=loss_fn, seed=config.seed)
  num_scans = len(data.train_scans)

  def batch_for_step(step, rows):
    index = stage1.batch_indices(step, num_scans=num_scans,
                                 batch_size=train_config.global_batch_size, seed=config.seed)[rows]
    return {"scans": data.train_scans[index], "identity": data.train_identity[index],
            "index": index.astype(np.int32)}

  def summary(metrics):
    identity = "".join(f" {k} {metrics[k]:.3f}" for k in ("margin", "center") if k in metrics)
    return f"rec {metrics['rec']:.3f} mm{identity}  |s| {metrics['code_norm_mean']:.2f}"

  return training.run(name, state, batch_for_step, train_config=train_config,
                      parallel_config=config.parallel, workdir=workdir, log=log, mesh=mesh,
                      summary=summary)


def _objectives(config) -> tuple[stage1.Objective, stage1.Objective]:
  sfm = stage1.Objective(**config.objective.to_dict())
  baseline_fields = {**config.objective.to_dict(), "code_kind": "gaussian", "weight_margin": 0.0,
                     "weight_center": 0.0, "weight_isotropy": 0.0, "weight_ring": 0.0,
                     **config.baseline.to_dict()}
  return sfm, stage1.Objective(**baseline_fields)


def _validate(config) -> None:
  if config.train.global_batch_size < 2:
    raise ValueError("train.global_batch_size must be >= 2 (the isotropy term uses batch "
                     "statistics)")
  if config.parallel.mode not in ("jit", "pmap"):
    raise ValueError(f"parallel.mode must be 'jit' or 'pmap', got {config.parallel.mode!r}")
  if config.parallel.mode == "pmap" and jax.process_count() > 1:
    raise ValueError("parallel.mode='pmap' is single-process; use 'jit' on several hosts")
  if config.train.num_steps < 1:
    raise ValueError("train.num_steps must be >= 1")
  if config.model.shape_dim < 1 or config.model.expr_dim < 0:
    raise ValueError("model.shape_dim must be >= 1 and model.expr_dim >= 0")


def _pictures(workdir, log, models, evaluations, test_identity):
  series = log.series
  panels = [("reconstruction (mm)", {m: series(m, "rec") for m in ("sfm", "baseline")}),
            ("total loss", {m: series(m, "loss") for m in ("sfm", "baseline")}),
            ("SFM identity terms", {k: series("sfm", k) for k in ("margin", "center", "isotropy")
                                    if series("sfm", k)[0]}),
            ("code norm", {m: series(m, "code_norm_mean") for m in ("sfm", "baseline")})]
  write_png(os.path.join(workdir, "loss_curves.png"),
            viz.plot_curves(panels, log_y=("total loss",)))
  write_png(os.path.join(workdir, "codes_2d.png"), viz.plot_codes_2d(
      [(f"{name}: held-out codes (verif. {evaluations[name][0]['verification_accuracy']:.3f})",
        evaluations[name][1].shape_codes, test_identity) for name in ("sfm", "baseline", "pca")]))
  for name in ("sfm", "baseline"):
    write_png(os.path.join(workdir, f"components_{name}.png"),
              viz.component_grid(models[name], components=4, expressions=2, size=150))


def _report(workdir, config, data, table, init, elapsed):
  lines = [
      f"# Stage 1 ({config.variant})", "",
      f"Data: {data.description}.", "",
      f"K = {config.model.shape_dim}, E = {config.model.expr_dim}, sphere radius R = "
      f"{init.radius:.3f}; {config.train.num_steps} steps of global batch "
      f"{config.train.global_batch_size} per model on {jax.device_count()} device(s); "
      f"{elapsed:.0f} s in all.", "",
      "Held-out identities: every model fitted to the same scans by the same routine "
      "(`sfm_jax.fitting.fit_scans`); errors are per-vertex distances to the aligned scan; "
      "identity metrics on the fitted shape codes (cosine / unit codes).", "",
      "- **sfm**: the Sphere Face Model (codes on the sphere, margin + centre + isotropy terms).",
      "- **baseline**: PCA-Gaussian baseline trained by the same code (Tikhonov prior, no "
      "identity term).",
      "- **pca**: the untrained PCA initialisation both started from.", "",
      table, "",
      f"One run (seed {config.seed}); differences of a few points in verification are within "
      "seed-to-seed spread on small held-out sets: `python -m experiments.seeds "
      f"--config=experiments/configs/stage1.py:{config.variant}` reports mean ± std over seeds.",
      "",
      "![loss curves](loss_curves.png)", "",
      "![held-out codes](codes_2d.png)", "",
      "SFM components (-3 sd, mean, +3 sd): ![sfm](components_sfm.png)", "",
      "Baseline components: ![baseline](components_baseline.png)", ""]
  with atomic_write(os.path.join(workdir, "report.md"), "w") as f:
    f.write("\n".join(lines))


def main(argv):
  del argv
  config = _CONFIG.value
  workdir = _WORKDIR.value
  training.setup(config.parallel)
  _validate(config)
  mesh = parallel.make_mesh()
  parallel.check_global_batch(config.train.global_batch_size, mesh)
  start = time.perf_counter()
  # Every process builds the same (deterministic) data and feeds its slice of each batch.
  data = scan_data.load(config.data, seed=config.seed)
  if training.is_chief():
    print(f"stage 1 ({config.variant}): {data.description}; {jax.device_count()} device(s) in "
          f"{jax.process_count()} process(es), parallel mode {config.parallel.mode}", flush=True)
  stage1.check_sizes(len(data.train_scans), len(np.unique(data.train_identity)),
                     config.model.shape_dim, config.model.expr_dim)
  os.makedirs(workdir, exist_ok=True)
  init = stage1.pca_init(data.train_scans, data.train_identity, num_shape=config.model.shape_dim,
                         num_expr=config.model.expr_dim)
  per_vertex = np.sqrt(init.mean.shape[0])  # std of a unit direction in 3V -> RMS per vertex
  if training.is_chief():
    print(f"PCA initialisation: R = {init.radius:.3f}; per-vertex RMS of one sd: identity "
        f"{init.shape_std[0] / per_vertex:.2f} .. {init.shape_std[-1] / per_vertex:.2f} mm, "
        f"expression {(init.expr_std[0] if len(init.expr_std) else 0) / per_vertex:.2f} mm",
        flush=True)
  log = training.MetricsLog(os.path.join(workdir, "metrics.jsonl"))
  sfm_objective, baseline_objective = _objectives(config)
  models, codes = {}, {}
  for name, objective in (("sfm", sfm_objective), ("baseline", baseline_objective)):
    state = train(name, objective, init, data, config, workdir, log, mesh)
    params = parallel.to_host(state.params)
    if training.report_stop(name, state, config.train):
      return
    models[name], codes[name], codes[f"{name}_expr"] = stage1.export_model(
        params, radius=init.radius, objective=objective, triangles=data.triangles,
        landmarks=data.landmarks)
  if not training.is_chief():
    return  # only process 0 writes models, evaluations and pictures
  models["pca"] = stage1.pca_model(init, triangles=data.triangles, landmarks=data.landmarks)
  save_model(os.path.join(workdir, "model.npz"), models["sfm"])
  save_model(os.path.join(workdir, "baseline.npz"), models["baseline"])
  save_model(os.path.join(workdir, "pca.npz"), models["pca"])
  with atomic_write(os.path.join(workdir, "codes.npz"), "wb") as f:
    np.savez(f, sfm_shape=codes["sfm"], sfm_expr=codes["sfm_expr"],
             baseline_shape=codes["baseline"], baseline_expr=codes["baseline_expr"],
             identity=data.train_identity)

  print(f"evaluating on {len(data.test_scans)} held-out scans of "
        f"{len(np.unique(data.test_identity))} unseen identities ...", flush=True)
  evaluations = {name: evaluation.evaluate_model(
      model, data.test_scans, data.test_identity, seed=config.seed, steps=config.eval.fit_steps,
      rounds=config.eval.fit_rounds, learning_rate=config.eval.fit_learning_rate)
                 for name, model in models.items()}
  table_rows = {name: scores for name, (scores, _) in evaluations.items()}
  table = evaluation.format_table(table_rows)
  with atomic_write(os.path.join(workdir, "eval.json"), "w") as f:
    json.dump({"variant": config.variant, "data": data.description,
               "shape_dim": config.model.shape_dim, "expr_dim": config.model.expr_dim,
               "radius": init.radius, "test_scans": len(data.test_scans),
               "test_identities": int(len(np.unique(data.test_identity))),
               "models": table_rows}, f, indent=1)
  _pictures(workdir, log, models, evaluations, data.test_identity)
  elapsed = time.perf_counter() - start
  _report(workdir, config, data, table, init, elapsed)
  print(table)
  print(f"done in {training.format_seconds(elapsed)}; see {os.path.join(workdir, 'report.md')} and the "
        f"PNGs beside it", flush=True)


if __name__ == "__main__":
  app.run(main)
