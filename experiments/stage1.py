r"""Stage 1: learn the SFM basis from 3D scans, with the PCA baseline trained by the same code.

  python -m experiments.stage1 --config=experiments/configs/stage1.py:demo --workdir=runs/stage1

or from Python: `experiments.stage1.train_and_evaluate(config, workdir)`.

Writes into the workdir:
  sfm_model.npz, baseline_model.npz, pca_model.npz
                                     SFM, the baseline (Gaussian codes, trained by the same code),
                                     and the untrained PCA initialisation (model files)
  codes.npz                          training codes and identities of both trained models
  metrics.jsonl                      one JSON object per logged step and model
  eval.json, report.md               held-out evaluation table (design section 6)
  loss_curves.png, codes_2d.png, components_sfm.png, components_baseline.png
  checkpoints/{sfm,baseline}/        orbax checkpoints; rerunning the command resumes from them
"""

import dataclasses
import hashlib
import json
import os
import time

import jax
import numpy as np

from experiments import cli, host
from sfm_jax import evaluation, parallel, stage1, train_loop, viz
from sfm_jax.errors import InputError
from sfm_jax.io import atomic_write, load_tree, save_tree, write_png
from sfm_jax.model import FaceModel, save_model
from sfm_jax.progress import Phases, format_seconds
from sfm_jax.sources import scans as scan_sources
from sfm_jax.sources.splits import batch_indices
from sfm_jax.train_state import TrainState

MODELS = ("sfm", "baseline")


def train(name: str, objective: stage1.Objective, init: stage1.PCAInit, data, config,
          workdir: str, log: train_loop.MetricsLog, mesh, steps_before: int = 0) -> TrainState:
  """Trains one model (resuming from its checkpoints) on `mesh`; returns the final state.
  `steps_before`: steps of the phases trained before this one (`train.stop_after_steps`)."""
  train_config = config.train
  loss_fn = stage1.make_loss_fn(objective, radius=init.radius, triangles=data.triangles,
                                mirror=data.mirror,
                                axis_name=parallel.DATA_AXIS if config.parallel.mode == "pmap"
                                else None)
  tx = stage1.make_optimizer(lr_basis=train_config.lr_basis, lr_codes=train_config.lr_codes,
                             lr_prototypes=train_config.lr_prototypes,
                             lr_centers=train_config.lr_centers,
                             warmup_steps=train_config.warmup_steps,
                             total_steps=train_config.num_steps)
  num_scans = len(data.train_scans)

  def batch_for_step(step, rows):
    index = batch_indices(step, num_examples=num_scans,
                          batch_size=train_config.global_batch_size, seed=config.seed)[rows]
    return {"scans": data.train_scans[index], "identity": data.train_identity[index],
            "index": index.astype(np.int32)}

  def summary(metrics):
    identity = "".join(f" {k} {metrics[k]:.3f}" for k in ("margin", "center") if k in metrics)
    return f"rec {metrics['rec']:.3f} mm{identity}  |s| {metrics['code_norm_mean']:.2f}"

  # The fresh state is not kept here: `run` replaces it by its replicated copy, and at paper
  # shapes (566 MiB of parameters and Adam moments) holding both costs that much memory.
  return train_loop.run(
      name, TrainState.create(
          params=stage1.init_params(init, data.train_identity, data.num_classes,
                                    seed=config.seed,
                                    shared_identity_codes=objective.shared_identity_codes),
          tx=tx, loss_fn=loss_fn, seed=config.seed),
      batch_for_step, train_config=train_config, parallel_config=config.parallel,
      workdir=workdir, log=log, mesh=mesh, summary=summary, steps_before=steps_before,
      earlier_layouts=[stage1.separate_bases_layout])


def objectives(config) -> dict:
  """{"sfm": the config's objective, "baseline": its Gaussian twin with `config.baseline`}."""
  sfm = stage1.Objective(**config.objective.to_dict())
  return {"sfm": sfm, "baseline": stage1.baseline_objective(sfm, **config.baseline.to_dict())}


def _validate(config) -> None:
  cli.check_train_config(config.train)
  if config.parallel.mode not in ("jit", "pmap"):
    raise InputError(f"parallel.mode must be 'jit' or 'pmap', got {config.parallel.mode!r}")
  if config.parallel.mode == "pmap" and jax.process_count() > 1:
    raise InputError("parallel.mode='pmap' is single-process; use 'jit' on several hosts")
  if config.model.shape_dim < 1 or config.model.expr_dim < 0:
    raise InputError("model.shape_dim must be >= 1 and model.expr_dim >= 0")
  if config.pca.method not in ("auto", "exact", "streamed"):
    raise InputError(f"pca.method must be 'auto', 'exact' or 'streamed', got "
                     f"{config.pca.method!r}")
  if config.pca.method == "exact" and config.data.stream:
    raise InputError("pca.method='exact' holds every scan in memory, which data.stream avoids; "
                     "use 'streamed' (or 'auto')")
  if not (config.pca.tol > 0 and config.pca.max_iterations >= 1 and config.pca.block_rows >= 1
          and config.pca.oversample >= 0):
    raise InputError("pca.tol must be > 0, pca.max_iterations and pca.block_rows >= 1, "
                     "pca.oversample >= 0")


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


def _report(workdir, config, data, table, init, elapsed, phases):
  lines = [
      f"# Stage 1 ({config.variant})", "",
      f"Data: {data.description}.", "",
      f"K = {config.model.shape_dim}, E = {config.model.expr_dim}, sphere radius R = "
      f"{init.radius:.3f}; {config.train.num_steps} steps of global batch "
      f"{config.train.global_batch_size} per model on {jax.device_count()} device(s); "
      f"{elapsed:.0f} s in all."
      + (f" PCA of the training scans: {kept}." if (kept := _variance_kept_text(init, config))
         else ""), "",
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
      "Baseline components: ![baseline](components_baseline.png)", "",
      *cli.phase_table(phases)]
  with atomic_write(os.path.join(workdir, "report.md"), "w") as f:
    f.write("\n".join(lines))


def _pca_key(config, data) -> str:
  """What the cached PCA of a streamed run depends on: the stored data and the PCA settings."""
  text = json.dumps([data.train_scans.key, config.model.shape_dim, config.model.expr_dim,
                     config.pca.to_dict()], sort_keys=True)
  return hashlib.sha256(text.encode()).hexdigest()


_PCA_SCALARS = ("radius", "shape_total_variance", "expr_total_variance")  # cached as metadata


def _variance_kept_text(init: stage1.PCAInit, config) -> str:
  """'K = 20 identity directions hold 93.8% of the training identities' shape variance, E = 10
  expression directions 71.2% of the within-identity variance' (empty when unknown)."""
  shape, expr = init.variance_kept()
  parts = []
  if shape is not None:
    parts.append(f"K = {config.model.shape_dim} identity directions hold {100 * shape:.1f}% of "
                 "the training identities' shape variance")
  if expr is not None and config.model.expr_dim:
    parts.append(f"E = {config.model.expr_dim} expression directions {100 * expr:.1f}% of the "
                 "variance within identities")
  return ", ".join(parts)


def _pca(config, data, cache: str | None) -> stage1.PCAInit:
  """The PCA initialisation (`config.pca`); with a `cache` path (streamed data), read from it
  when it was computed for the same data and settings, else computed and written there."""
  key = _pca_key(config, data) if cache else None
  if cache and os.path.exists(cache):
    arrays, meta = load_tree(cache)
    if meta.get("key") == key:
      return stage1.PCAInit(**arrays, **{name: meta.get(name) for name in _PCA_SCALARS})
  method = config.pca.method
  if method == "auto":
    method = "streamed" if config.data.stream else "exact"
  sizes = dict(num_shape=config.model.shape_dim, num_expr=config.model.expr_dim)
  if method == "exact":
    init = stage1.pca_init(data.train_scans, data.train_identity, **sizes)
  else:
    init = stage1.pca_init_streamed(
        data.train_scans, data.train_identity, **sizes, block_rows=config.pca.block_rows,
        tol=config.pca.tol, max_iterations=config.pca.max_iterations,
        oversample=config.pca.oversample, seed=config.seed,
        report=lambda line: print(line, flush=True) if train_loop.is_chief() else None)
  if cache:
    arrays = {f.name: getattr(init, f.name) for f in dataclasses.fields(init)
              if f.name not in _PCA_SCALARS}
    save_tree(cache, arrays, {"key": key, **{name: getattr(init, name) for name in _PCA_SCALARS}})
  return init


def _data_and_init(config, workdir: str, phases: Phases):
  """(training data, PCA initialisation). With `data.stream`, process 0 writes the scan store
  and the PCA into `WORKDIR/data/` (a rerun reuses both) while the others wait, then read them;
  otherwise every process builds the same (deterministic) data and PCA itself."""
  chief, stream = train_loop.is_chief(), config.data.stream
  store_dir = os.path.join(workdir, "data")

  def build():
    data = scan_sources.load(config.data, seed=config.seed, store_dir=store_dir)
    if chief:
      print(f"stage 1 ({config.variant}): {data.description}; {jax.device_count()} device(s) "
            f"in {jax.process_count()} process(es), parallel mode {config.parallel.mode}"
            + (f"; training scans streamed from {data.train_scans.path}" if stream else ""),
            flush=True)
    cli.end_phase(phases, "data")
    stage1.check_sizes(len(data.train_scans), len(np.unique(data.train_identity)),
                       config.model.shape_dim, config.model.expr_dim)
    return data, _pca(config, data, os.path.join(store_dir, "pca_init.npz") if stream else None)

  data, init = parallel.chief_first(build, name="stage-1 scan store and PCA", enabled=stream)
  # Training runs in float32: keep the bases at that precision (the same values reach the
  # parameters; half the memory of the float64 solve).
  init = dataclasses.replace(init, mean=init.mean.astype(np.float32),
                             shape_basis=init.shape_basis.astype(np.float32),
                             expr_basis=init.expr_basis.astype(np.float32))
  per_vertex = np.sqrt(init.mean.shape[0])  # std of a unit direction in 3V -> RMS per vertex
  if chief:
    print(f"PCA initialisation: R = {init.radius:.3f}; per-vertex RMS of one sd: identity "
          f"{init.shape_std[0] / per_vertex:.2f} .. {init.shape_std[-1] / per_vertex:.2f} mm, "
          f"expression {(init.expr_std[0] if len(init.expr_std) else 0) / per_vertex:.2f} mm"
          + (f"; {kept}" if (kept := _variance_kept_text(init, config)) else ""), flush=True)
  cli.end_phase(phases, "PCA")
  return data, init


def train_and_evaluate(config, workdir: str) -> dict:
  """Stage 1 end to end (see the module docstring); resumes from `workdir`'s checkpoints.

  Returns `{"models": {name: scores}, ...}` as written to `eval.json` (on the chief process; {}
  elsewhere, and when `train.stop_after_steps` stopped the run early).
  """
  _validate(config)
  mesh = parallel.make_mesh()
  parallel.check_global_batch(config.train.global_batch_size, mesh)
  chief = train_loop.is_chief()
  start = time.perf_counter()
  phases = Phases()
  os.makedirs(workdir, exist_ok=True)
  data, init = _data_and_init(config, workdir, phases)
  log = train_loop.MetricsLog(os.path.join(workdir, "metrics.jsonl"))
  models: dict[str, FaceModel] = {}
  codes = {}
  pca = stage1.pca_model(init, triangles=data.triangles, landmarks=data.landmarks,
                         contour=data.contour)
  for phase, (name, objective) in enumerate(objectives(config).items()):
    state = train(name, objective, init, data, config, workdir, log, mesh,
                  steps_before=phase * config.train.num_steps)
    cli.end_phase(phases, f"train {name}")
    if train_loop.report_stop(name, state, config.train):
      return {}
    params = parallel.to_host(state.params)
    del state  # the next model trains without this one's optimizer state in memory
    models[name] = stage1.export_model(params, pca.replace(code_kind=objective.code_kind))
    codes[name], codes[f"{name}_expr"] = stage1.training_codes(params, objective, init.radius,
                                                               identity=data.train_identity)
    del params
  if not chief:
    return {}  # only process 0 writes models, evaluations and pictures
  models["pca"] = pca
  for name, model in models.items():
    save_model(os.path.join(workdir, f"{name}_model.npz"), model)
  with atomic_write(os.path.join(workdir, "codes.npz"), "wb") as f:
    np.savez(f, sfm_shape=codes["sfm"], sfm_expr=codes["sfm_expr"],
             baseline_shape=codes["baseline"], baseline_expr=codes["baseline_expr"],
             identity=data.train_identity)

  print(f"evaluating on {len(data.test_scans)} held-out scans of "
        f"{len(np.unique(data.test_identity))} unseen identities ...", flush=True)
  evaluations = {name: evaluation.evaluate_model(
      model, data.test_scans, data.test_identity, seed=config.seed, steps=config.eval.fit_steps,
      rounds=config.eval.fit_rounds, learning_rate=config.eval.fit_learning_rate,
      keep_meshes=False) for name, model in models.items()}
  table_rows = {name: scores for name, (scores, _) in evaluations.items()}
  table = evaluation.format_table(table_rows)
  cli.end_phase(phases, "evaluate")
  results = {"variant": config.variant, "data": data.description,
             "shape_dim": config.model.shape_dim, "expr_dim": config.model.expr_dim,
             "radius": init.radius, "pca_variance_kept": dict(zip(
                 ("identity", "expression"), init.variance_kept())),
             "test_scans": len(data.test_scans),
             "test_identities": int(len(np.unique(data.test_identity))), "models": table_rows,
             "phases": phases.rows, "host_memory": host.memory_settings()}
  with atomic_write(os.path.join(workdir, "eval.json"), "w") as f:
    json.dump(results, f, indent=1)
  _pictures(workdir, log, models, evaluations, data.test_identity)
  elapsed = time.perf_counter() - start
  _report(workdir, config, data, table, init, elapsed, phases)
  print(table)
  print(f"done in {format_seconds(elapsed)}; see {os.path.join(workdir, 'report.md')} and the "
        "PNGs beside it", flush=True)
  return results


if __name__ == "__main__":
  cli.run_stage(train_and_evaluate, default_config="experiments/configs/stage1.py:demo",
                default_workdir="runs/stage1")
