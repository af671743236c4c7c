r"""Stage 2: an image encoder and the fine-tuned basis from 2D images, SFM beside the baseline.

  python -m experiments.stage2 --config=experiments/configs/stage2.py:demo --workdir=runs/stage2

or from Python: `experiments.stage2.train_and_evaluate(config, workdir)`.

Starts from a stage-1 run: `--config.init_model` (SFM, default `runs/stage1/sfm_model.npz`) and
`--config.baseline_model` (default: `baseline_model.npz` beside it) are trained by the same code with
the same data; the baseline keeps Gaussian codes (Tikhonov prior, no identity terms).

Writes into the workdir:
  sfm_model.npz, baseline_model.npz      fine-tuned models (stage-1 basis + W_t, albedo model)
  sfm_encoder.npz, baseline_encoder.npz  the encoders (`experiments.reconstruct` reads them)
  metrics.jsonl                          one JSON object per logged step and model
  eval.json, report.md                   held-out table: 3D neutral error (NoW alignment), code
                                         verification and silhouette, landmark NME
  loss_curves.png, gallery.png, codes_2d.png
  checkpoints/{sfm,baseline}/            orbax checkpoints; rerunning the command resumes
  data/                                  with data.stream: the face world's images and 3D truth
                                         (row stores, read a batch at a time; reused by reruns)
"""

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments import cli, host, image_eval
from sfm_jax import evaluation, inference, parallel, stage2, train_loop, viz
from sfm_jax.errors import InputError
from sfm_jax.io import atomic_write, write_png
from sfm_jax.model import FaceModel, load_model, save_model
from sfm_jax.networks import LANDMARK_NORMS, Encoder, Trunk, whitening_statistics
from sfm_jax.progress import Phases, format_seconds
from sfm_jax.sources import images as image_sources
from sfm_jax.sources.splits import batch_indices
from sfm_jax.train_state import TrainState, parameter_average

LR_SCHEDULES = ("constant", "cosine")


def _validate(config) -> None:
  if config.parallel.mode != "jit":
    raise InputError("stage 2 runs with parallel.mode='jit' only (its BatchNorm statistics are "
                     "global under jit sharding; pmap would make them per device)")
  cli.check_train_config(config.train)
  if config.train.lr_schedule not in LR_SCHEDULES:
    raise InputError(f"train.lr_schedule must be one of {LR_SCHEDULES}, got "
                     f"{config.train.lr_schedule!r}")
  if not 0 <= config.train.warmup_steps < config.train.num_steps:
    raise InputError(f"train.warmup_steps must be >= 0 and below train.num_steps "
                     f"({config.train.num_steps}), got {config.train.warmup_steps} (a shorter "
                     "run sets its own, e.g. --config.train.warmup_steps=0)")
  if not 0.0 <= config.train.parameter_average < 1.0:
    raise InputError(f"train.parameter_average must be in [0, 1) (0 = off), got "
                     f"{config.train.parameter_average}")
  stage2.Objective(**config.objective.to_dict())  # checks its fields
  if config.model.shape_from not in ("all", "landmarks"):
    raise InputError(f"model.shape_from must be 'all' or 'landmarks', got "
                     f"{config.model.shape_from!r}")
  if config.model.shape_from == "landmarks" and config.model.landmark_features <= 0:
    raise InputError("model.shape_from='landmarks' needs model.landmark_features > 0")
  if config.model.landmark_norm not in LANDMARK_NORMS:
    raise InputError(f"model.landmark_norm must be one of {LANDMARK_NORMS}, got "
                     f"{config.model.landmark_norm!r}")
  image_sources.pretrain_source(config)  # checks pretrain.source
  if not config.model.shape_head_scale > 0:
    raise InputError(f"model.shape_head_scale must be > 0, got {config.model.shape_head_scale}")
  if not config.model.whitening_regularisation > 0:
    raise InputError(f"model.whitening_regularisation must be > 0, got "
                     f"{config.model.whitening_regularisation}")
  if not (isinstance(config.model.batch_groups, int) and config.model.batch_groups >= 1):
    raise InputError(f"model.batch_groups must be an int >= 1, got "
                     f"{config.model.batch_groups!r}")
  if not config.eval.landmark_noise >= 0:
    raise InputError(f"eval.landmark_noise must be >= 0 pixels (0 = off), got "
                     f"{config.eval.landmark_noise}")
  if not all(isinstance(level, (int, float)) and level > 0 for level in config.eval.noise_curve):
    raise InputError(f"eval.noise_curve must be a tuple of noise levels > 0 pixels (() = off), "
                     f"got {config.eval.noise_curve!r}")


def landmark_whitening(config, data) -> dict | None:
  """The encoder's `LandmarkWhitening` statistics from every training image's landmarks (photos
  and rendered scans), or None when the encoder does not whiten them."""
  if config.model.landmark_norm != "whiten" or config.model.landmark_features <= 0:
    return None
  landmarks = [data.train.landmarks] + ([data.scans.landmarks] if data.scans is not None else [])
  return whitening_statistics(np.concatenate(landmarks), image_size=data.image_size,
                              regularisation=config.model.whitening_regularisation)


def _load_models(config) -> dict:
  """{name: stage-1 FaceModel} for SFM and (unless "none") the baseline; clear errors."""
  stage1_command = ("python -m experiments.stage1 --config=experiments/configs/stage1.py:demo "
                    "--workdir=runs/stage1")
  if not config.init_model or not os.path.isfile(config.init_model):
    raise InputError(f"init_model {config.init_model!r}: no such file. Stage 2 starts from a "
                     f"stage-1 sfm_model.npz; make one with `{stage1_command}` or point "
                     "--config.init_model at yours")
  models = {"sfm": load_model(config.init_model)}
  if models["sfm"].code_kind != "sphere":
    raise InputError(f"{config.init_model}: an SFM model has code_kind 'sphere', this one is "
                     f"{models['sfm'].code_kind!r} (a baseline goes to --config.baseline_model)")
  baseline = config.baseline_model or os.path.join(os.path.dirname(config.init_model),
                                                   "baseline_model.npz")
  if baseline != "none":
    if not os.path.isfile(baseline):
      raise InputError(f"baseline_model {baseline!r}: no such file. The comparison needs the "
                       "stage-1 baseline (written beside sfm_model.npz by experiments.stage1); "
                       "--config.baseline_model=none skips it")
    models["baseline"] = load_model(baseline)
    if models["baseline"].code_kind != "gaussian":
      raise InputError(f"{baseline}: the baseline has Gaussian codes, this model has "
                       f"code_kind {models['baseline'].code_kind!r}")
  for name, model in models.items():
    if np.all(np.asarray(model.landmarks) < 0):
      raise InputError(f"{name} model: defines no iBUG landmark vertices (needed by stage 2)")
  return models


def _streamed(config, build, workdir: str, what: str):
  """`build(store_dir)`: with `data.stream`, process 0 writes the image stores into
  `WORKDIR/data/` (a rerun reuses them) while the others wait, then every process opens them;
  otherwise every process builds the same (deterministic) images itself in memory."""
  store_dir = os.path.join(workdir, "data")
  return parallel.chief_first(lambda: build(store_dir), name=f"stage-2 {what} image stores",
                              enabled=config.data.get("stream", False))


def _load_data(config, workdir: str, model: FaceModel) -> image_sources.ImageData:
  return _streamed(config, lambda store_dir: image_sources.load(
      config.data, seed=config.seed, model=model, store_dir=store_dir), workdir, "training")


def _check_data(data: image_sources.ImageData, model: FaceModel) -> None:
  for split in (data.train, data.test):
    if split.has_truth and split.posed.shape[1] != model.num_vertices:
      raise InputError(f"the images' meshes have {split.posed.shape[1]} vertices but the "
                       f"stage-1 model has {model.num_vertices}: set data.resolution to the "
                       "stage-1 grid (V = resolution^2), or give meshes in the model's topology")


def objectives(config) -> dict:
  """{"sfm": the config's objective, "baseline": its Gaussian twin with `config.baseline`}."""
  sfm = stage2.Objective(**{**config.objective.to_dict(), "code_kind": "sphere"})
  return {"sfm": sfm, "baseline": stage2.baseline_objective(sfm, **config.baseline.to_dict())}


def _encoder(config, model: FaceModel) -> Encoder:
  return Encoder(shape_dim=model.shape_dim, expr_dim=model.expr_dim,
                 albedo_dim=config.model.albedo_dim, depth=config.model.depth,
                 width=config.model.width, landmark_features=config.model.landmark_features,
                 landmark_norm=config.model.landmark_norm,
                 landmark_linear=config.model.landmark_linear,
                 shape_from_landmarks=config.model.shape_from == "landmarks",
                 shape_head_scale=config.model.shape_head_scale,
                 batch_groups=config.model.batch_groups, dtype=_float_dtype(config))


def _float_dtype(config):
  """float64 with `train.float64` (numerical checks; `jax_enable_x64` is then on), else float32."""
  return jnp.float64 if config.train.float64 else jnp.float32


def _as_dtype(tree, dtype):
  """Every floating array of `tree` in `dtype` (integers, e.g. triangles, stay as they are)."""
  return jax.tree_util.tree_map(
      lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


_IDENTITY_TERMS = {"margin": "margin softmax", "center": "centre"}  # SFM's, with their titles


def _identity_terms(objective) -> str:
  """The SFM identity terms that are on, with their weights (for the report)."""
  terms = [f"{title} (weight {objective[f'weight_{name}']:g})"
           for name, title in _IDENTITY_TERMS.items() if objective[f"weight_{name}"]]
  return ", ".join(terms) or "none"


def _pretraining_data(config) -> str:
  p = config.pretrain
  if image_sources.pretrain_source(config) == "scans":
    return f"{p.scan_views} renders of each scan of {config.data.scan_dir} (its training people)"
  return f"{p.identities} face-world identities x {p.images_per_identity} images"


def pretrain(config, workdir, log, mesh, model, whitening=None):
  """The identity-pretraining phase (`config.pretrain.steps` > 0), shared by both models:
  returns the trunk's `{"params", "batch_stats"}`, None when off, or "stopped" when
  `train.stop_after_steps` ended the run in this phase. `model`: the stage-1 SFM model (the
  topology of rendered scans); `whitening`: `landmark_whitening`."""
  p = config.pretrain
  if p.steps <= 0:
    return None
  if train_loop.is_chief():
    print(f"identity pretraining: rendering {_pretraining_data(config)} ...", flush=True)
  split = _streamed(config, lambda store_dir: image_sources.pretrain_split(
      config, seed=config.seed, model=model, store_dir=store_dir), workdir, "pretraining")
  trunk = Trunk(config.model.depth, config.model.width, config.model.landmark_features,
                dtype=_float_dtype(config), landmark_norm=config.model.landmark_norm,
                landmark_linear=config.model.landmark_linear,
                batch_groups=config.model.batch_groups)
  params, model_state = _as_dtype(stage2.init_pretrain_params(
      trunk, image_size=config.data.image_size, num_classes=int(split.identity.max()) + 1,
      seed=config.seed, landmark_whitening=whitening), _float_dtype(config))
  tx = stage2.make_pretrain_optimizer(lr_trunk=p.lr, lr_prototypes=p.lr_prototypes,
                                      warmup_steps=p.warmup_steps, total_steps=p.steps)
  state = TrainState.create(params=params, tx=tx, seed=config.seed, model_state=model_state,
                            loss_fn=stage2.make_pretrain_loss_fn(
                                trunk, margin_scale=p.margin_scale, margin=p.margin))
  train_config = config.train.copy_and_resolve_references()
  train_config.num_steps, train_config.global_batch_size = p.steps, p.global_batch_size
  parallel.check_global_batch(p.global_batch_size, mesh)

  def batch_for_step(step, rows):
    index = batch_indices(step, num_examples=len(split), batch_size=p.global_batch_size,
                          seed=config.seed + 1)[rows]
    batch = split.batch(index)
    return {key: batch[key] for key in ("images", "landmarks", "identity")}

  state = train_loop.run("pretrain", state, batch_for_step, train_config=train_config,
                         parallel_config=config.parallel, workdir=workdir, log=log, mesh=mesh,
                         summary=lambda m: f"margin {m['margin']:.3f}  accuracy "
                                           f"{m['accuracy']:.3f}")
  if train_loop.report_stop("pretrain", state, train_config):
    return "stopped"
  return {"params": parallel.to_host(state.params)["trunk"],
          "batch_stats": parallel.to_host(state.model_state)["batch_stats"]}


def train(name, model, objective, data, config, workdir, log, mesh, trunk=None,
          steps_before=0, whitening=None) -> TrainState:
  """Trains one reconstruction model (resuming from its checkpoints); `steps_before`: steps of
  the phases trained before this one (`train.stop_after_steps`); `whitening`:
  `landmark_whitening`."""
  encoder = _encoder(config, model)
  size = data.image_size
  params, model_state = _as_dtype(
      stage2.init_params(encoder, model, image_size=size, num_classes=data.num_classes,
                         albedo_dim=config.model.albedo_dim, seed=config.seed, trunk=trunk,
                         landmark_whitening=whitening),
      _float_dtype(config))
  loss_fn = stage2.make_loss_fn(encoder, model, objective, image_size=size)
  t = config.train
  cosine = t.lr_schedule == "cosine"
  tx = stage2.make_optimizer(lr_encoder=t.lr_encoder, lr_residual=t.lr_residual,
                             lr_albedo=t.lr_albedo, lr_identity=t.lr_identity,
                             warmup_steps=t.warmup_steps,
                             total_steps=t.num_steps if cosine else None,
                             average_decay=t.parameter_average)
  state = TrainState.create(params=params, tx=tx, loss_fn=loss_fn, seed=config.seed,
                            model_state=model_state)

  def batch_for_step(step, rows):
    return data.training_batch(step, rows, batch_size=t.global_batch_size, seed=config.seed)

  def summary(metrics):
    parts = [f"{key} {metrics[key]:.4f}" for key in ("landmark", "photometric", "vertex", "code",
                                                     *_IDENTITY_TERMS, "z_norm") if key in metrics]
    return "  ".join(parts)

  return train_loop.run(name, state, batch_for_step, train_config=t,
                        parallel_config=config.parallel, workdir=workdir, log=log, mesh=mesh,
                        summary=summary, steps_before=steps_before)


def _curves(workdir, log, names):
  panels = [("landmark (face-size units)", {m: log.series(m, "landmark") for m in names}),
            ("photometric", {m: log.series(m, "photometric") for m in names}),
            ("total loss", {m: log.series(m, "loss") for m in names}),
            ("3D vertex (mm)", {m: log.series(m, "vertex") for m in names}),
            ("code to the oracle code (/ R^2)", {m: log.series(m, "code") for m in names}),
            ("SFM identity terms", {k: log.series("sfm", k) for k in _IDENTITY_TERMS
                                    if log.series("sfm", k)[0]}),
            ("SFM free-vector length, (|z| - 1)^2", {"sfm": log.series("sfm", "z_norm")}),
            ("identity pretraining", {k: log.series("pretrain", k)
                                      for k in ("margin", "accuracy")})]
  write_png(os.path.join(workdir, "loss_curves.png"),
            viz.plot_curves([p for p in panels if any(s[0] for s in p[1].values())],
                            log_y=("total loss",)))


def _report(workdir, config, data, table, seen_table, noise_table, models, elapsed, phases):
  lines = [
      f"# Stage 2 ({config.variant})", "",
      f"Data: {data.description}.", "",
      (f"Encoder {config.model.depth} (width {config.model.width}) at {data.image_size} px; "
       f"K = {models['sfm'].shape_dim}, E = {models['sfm'].expr_dim}, albedo "
       f"{config.model.albedo_dim}; {config.train.num_steps} steps of global batch "
       f"{config.train.global_batch_size} per model on {jax.device_count()} device(s); "
       f"{elapsed:.0f} s in all."), "",
      (f"Identity pretraining of the encoder trunk: {config.pretrain.steps} steps of CosFace "
       f"over {_pretraining_data(config)} (shared by both models)."
       if config.pretrain.steps > 0 else "No identity pretraining."), "",
      (f"Started from `{config.init_model}`"
       + (" and its baseline" if "baseline" in models else "") + "."), "",
      "- **sfm**: codes on the sphere; identity terms on labelled images: "
      + _identity_terms(config.objective)
      + (f"; free-vector length term (|z| - 1)^2 weight {config.objective.weight_z_norm:g}"
         if config.objective.weight_z_norm else "") + ".",
      *(["- **baseline**: the same pipeline from the stage-1 PCA-Gaussian baseline, Tikhonov "
         "prior, no identity term."] if "baseline" in models else []), "",
      ("3D supervision where an image's 3D is known: vertex term weight "
       f"{config.objective.weight_vertex:g}; code term (the shape code to the stage-1 model's "
       "best code for the true neutral) weight "
       + ", ".join(f"{objective.weight_code:g} ({name})"
                   for name, objective in objectives(config).items() if name in models)
       + "."), "",
      ("Held-out identities only. 3D: the predicted neutral shape (expression zeroed) against "
       "the ground-truth neutral mesh after a similarity alignment on the 7 NoW landmarks, "
       "per-vertex distances in mm. Identity: 10-fold verification accuracy, silhouette and NMI "
       "of the predicted shape codes across images of one identity (different pose, light, "
       "expression). NME: visible landmarks, normalised by the inter-ocular distance."
       + (f" Rows *{image_eval.noisy_landmark_row('<name>', config.eval.landmark_noise)}*: "
          "the same network reading the annotated landmarks plus Gaussian noise of that many "
          "pixels per coordinate (scored against the annotations), as a detector's would be."
          if config.eval.landmark_noise else "")
       + (f" Trained with {config.objective.landmark_noise:g} px of such noise on the landmarks "
          "the encoder reads" + (" (each image's std drawn from U(0, "
                                 f"{config.objective.landmark_noise:g}) px))."
                                 if config.objective.landmark_noise_mode == "uniform" else ".")
          if config.objective.landmark_noise else "")
       + (f" Rows *{inference.flip_average_row('<name>')}*: the network's neutral shape "
          "averaged with the mirror image of its prediction for the horizontally flipped image "
          "(landmarks flipped and relabelled), 3D only." if config.eval.flip_average else "")),
      "",
      ("References: **mean face** predicts the training identities' mean neutral shape for "
       "every image (a network that ignores the pixels; the first row to beat); **landmark "
       "ridge** maps the landmarks linearly to the neutral shape (fitted on the training "
       "images with known 3D); **fit sfm** / "
       "**fit baseline** fit each exported model (the stage-1 basis + `W_t`, the model its "
       "network predicts codes of) to the image's annotated landmarks by optimisation (no "
       "network); **best sfm** / **best baseline** decode each model's nearest shape code to "
       "the true neutral face (constrained least squares on the sphere): the floor no network "
       "predicting that model's codes can beat."),
      "",
      table, "",
      ("Chance level: verification 0.5, silhouette about 0. Diagnostic, the same identity "
       f"metrics on {config.eval.seen_images} labelled *training* images (identities the "
       "networks have seen; high here but not above means memorised, not generalised, codes):"),
      "", seen_table, "",
      *([("The networks reading the held-out landmarks plus Gaussian noise of each std (one "
          "seeded draw, scaled), 3D median (mm) / verification; the landmark ridge reads the "
          "same noisy landmarks, as fitted on exact ones and refitted at each noise on the "
          "training landmarks plus that much noise; the mean face reads none:"), "",
         noise_table, "",
         "![landmark noise](landmark_noise.png)", ""] if noise_table else []),
      "![loss curves](loss_curves.png)", "",
      ("Held-out images (input; per model: reconstruction over the input with annotated "
       "landmarks green and predicted red; neutral mesh):"), "",
      "![gallery](gallery.png)", "",
      "![codes](codes_2d.png)", "",
      *cli.phase_table(phases)]
  with atomic_write(os.path.join(workdir, "report.md"), "w") as f:
    f.write("\n".join(lines))


def train_and_evaluate(config, workdir: str) -> dict:
  """Stage 2 end to end (see the module docstring); resumes from `workdir`'s checkpoints.

  Returns the contents of `eval.json` (on the chief process; {} elsewhere, when
  `train.stop_after_steps` stopped the run early, and with `eval.enabled` False).
  """
  _validate(config)
  if config.train.float64:
    jax.config.update("jax_enable_x64", True)
  models = {name: _as_dtype(model, _float_dtype(config))
            for name, model in _load_models(config).items()}
  mesh = parallel.make_mesh()
  parallel.check_global_batch(config.train.global_batch_size, mesh)
  chief = train_loop.is_chief()
  start = time.perf_counter()
  phases = Phases()
  if chief:
    print(f"stage 2 ({config.variant}): preparing images ...", flush=True)
  data = _load_data(config, workdir, models["sfm"])
  _check_data(data, models["sfm"])
  flip_partner = image_eval.flip_partner(  # fails before training
      config.eval.flip_average, config.data, models["sfm"], data)
  if chief:
    print(f"{data.description}; {jax.device_count()} device(s) in {jax.process_count()} "
          f"process(es) ({format_seconds(time.perf_counter() - start)})", flush=True)
  os.makedirs(workdir, exist_ok=True)
  cli.end_phase(phases, "data")
  log = train_loop.MetricsLog(os.path.join(workdir, "metrics.jsonl"))
  objective_of = objectives(config)
  whitening = landmark_whitening(config, data)
  trunk = pretrain(config, workdir, log, mesh, models["sfm"], whitening)
  if trunk == "stopped":
    return {}
  if config.pretrain.steps > 0:
    cli.end_phase(phases, "pretrain")
  predictors = {}
  steps_before = max(config.pretrain.steps, 0)
  for name, model in models.items():
    state = train(name, model, objective_of[name], data, config, workdir, log, mesh, trunk,
                  steps_before=steps_before, whitening=whitening)
    steps_before += config.train.num_steps
    cli.end_phase(phases, f"train {name}")
    if train_loop.report_stop(name, state, config.train):
      return {}
    average = parameter_average(state.opt_state)  # train.parameter_average > 0
    params = parallel.to_host(state.params if average is None else average)
    variables = {"params": params["encoder"], **parallel.to_host(state.model_state)}
    predictors[name] = inference.Predictor(
        encoder=_encoder(config, model), variables=variables,
        model=stage2.export_model(params, model), image_size=data.image_size,
        window=objective_of[name].window, sphere_map=objective_of[name].sphere_map,
        crop_margin=config.data.crop_margin if config.data.source == "folder" else None)
  if not chief:
    return {}
  for name, predictor in predictors.items():
    save_model(os.path.join(workdir, f"{name}_model.npz"), predictor.model)
    inference.save_encoder(os.path.join(workdir, f"{name}_encoder.npz"), predictor)
  if not config.eval.enabled:
    print(f"done in {format_seconds(time.perf_counter() - start)} (eval.enabled=False: the "
          f"models and encoders are in {workdir}, nothing was evaluated)", flush=True)
    return {}
  print(f"evaluating on {len(data.test)} held-out images ...", flush=True)
  rows, codes = inference.evaluate_split(
      predictors, data.test, landmark_vertices=np.asarray(models["sfm"].landmarks),
      batch_size=config.eval.batch_size, seed=config.seed, flip_partner=flip_partner)
  print("references: the mean face, the landmark ridge read-out and per-image landmark fits of "
        "each exported model; the networks reading noisy landmarks ...", flush=True)
  rows, noise_curve = image_eval.references_and_noise(
      predictors, data, rows, fit_steps=config.eval.fit_steps,
      row_noise=config.eval.landmark_noise, curve_levels=config.eval.noise_curve,
      landmark_vertices=np.asarray(models["sfm"].landmarks), batch_size=config.eval.batch_size,
      seed=config.seed)
  seen = inference.evaluate_seen(predictors, data.train, count=config.eval.seen_images,
                                 batch_size=config.eval.batch_size, seed=config.seed)
  cli.end_phase(phases, "evaluate")
  extra = {"phases": phases.rows, "host_memory": host.memory_settings()}
  if noise_curve:
    extra["landmark_noise_curve"] = noise_curve
  table = image_eval.write_results(
      workdir, rows, codes, predictors, data.test, description=data.description,
      gallery_count=config.eval.gallery, seen=seen, extra=extra)
  noise_table = image_eval.write_noise_curve(workdir, noise_curve) if noise_curve else None
  seen_table = evaluation.format_table(seen, inference.SEEN_COLUMNS)
  _curves(workdir, log, list(predictors))
  elapsed = time.perf_counter() - start
  _report(workdir, config, data, table, seen_table, noise_table, models, elapsed, phases)
  print(table)
  print("seen identities (training images, a diagnostic):")
  print(seen_table)
  print(f"done in {format_seconds(elapsed)}; see {os.path.join(workdir, 'report.md')} "
        "and the PNGs beside it", flush=True)
  with open(os.path.join(workdir, "eval.json"), encoding="utf-8") as f:
    return json.load(f)


if __name__ == "__main__":
  cli.run_stage(train_and_evaluate, default_config="experiments/configs/stage2.py:demo",
                default_workdir="runs/stage2")
