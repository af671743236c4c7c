import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import stage1 as stage1_configs
from sfm_jax import face_world, fitting, sphere, stage1
from sfm_jax import model as fm
from sfm_jax.sources import scans as scan_sources
from sfm_jax.sources.splits import batch_indices, padded_batches
from sfm_jax.train_state import TrainState, jit_train_step

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _linear_scans(rng, identities=12, v=30, k=3, e=2):
  """Noise-free scans of an exact linear model, 4 per identity with expression codes
  x1, -x1, x2, -x2 (so each identity's mean scan is its neutral face)."""
  mean = rng.normal(size=(v, 3)) * 50
  shape_basis, expr_basis = rng.normal(size=(k, v, 3)), rng.normal(size=(e, v, 3)) * 0.5
  ids = np.repeat(np.arange(identities), 4)
  s = rng.normal(size=(identities, k))[ids]
  x = rng.normal(size=(identities, 2, e))
  x = np.stack([x[:, 0], -x[:, 0], x[:, 1], -x[:, 1]], axis=1).reshape(-1, e)
  scans = mean + np.einsum("nk,kvc->nvc", s, shape_basis) + np.einsum("ne,evc->nvc", x,
                                                                     expr_basis)
  return scans, ids, shape_basis


def test_pca_init_spans_the_true_subspaces(rng):
  scans, ids, shape_basis = _linear_scans(rng)
  init = stage1.pca_init(scans, ids, num_shape=3, num_expr=2)
  decoded = init.mean + np.einsum("nk,kvc->nvc", init.shape_codes, init.shape_basis) + np.einsum(
      "ne,evc->nvc", init.expr_codes, init.expr_basis)
  np.testing.assert_allclose(decoded, scans, atol=1e-8)
  # The identity subspace equals the true one: projecting the true basis onto it loses nothing.
  q, _ = np.linalg.qr(init.shape_basis.reshape(3, -1).T)
  true = shape_basis.reshape(3, -1).T
  np.testing.assert_allclose(q @ (q.T @ true), true, atol=1e-8)
  np.testing.assert_allclose(init.radius, np.mean(np.linalg.norm(init.shape_codes, axis=1)))
  # Whitened codes: unit variance per identity dimension over identity means.
  means = np.stack([init.shape_codes[ids == i].mean(0) for i in range(12)])
  np.testing.assert_allclose(means.var(0), 1.0, rtol=1e-6)


def test_pca_init_reports_the_variance_its_directions_hold(rng):
  scans, ids, _ = _linear_scans(rng)
  scans = scans + rng.normal(scale=0.01, size=scans.shape)  # every direction gets some
  init = stage1.pca_init(scans, ids, num_shape=2, num_expr=1)
  flat = scans.reshape(len(scans), -1)
  means = np.stack([flat[ids == i].mean(0) for i in range(ids.max() + 1)])
  identity_spectrum = np.linalg.svd(means - flat.mean(0), compute_uv=False) ** 2
  residual_spectrum = np.linalg.svd(flat - means[ids], compute_uv=False) ** 2
  shape_kept, expr_kept = init.variance_kept()
  np.testing.assert_allclose(shape_kept, identity_spectrum[:2].sum() / identity_spectrum.sum(),
                             rtol=1e-9)
  np.testing.assert_allclose(expr_kept, residual_spectrum[:1].sum() / residual_spectrum.sum(),
                             rtol=1e-9)
  assert 0.5 < shape_kept < 1 and 0.3 < expr_kept < 1  # 3 and 2 true directions, fewer kept
  # All the true directions hold all but the noise.
  assert stage1.pca_init(scans, ids, num_shape=3, num_expr=2).variance_kept()[0] > 0.999


@pytest.mark.parametrize("kind", ["gaussian", "sphere"])
def test_fitting_recovers_codes_of_noise_free_scans(rng, kind):
  scans, ids, _ = _linear_scans(rng, identities=20)
  init = stage1.pca_init(scans, ids, num_shape=3, num_expr=2)
  model = stage1.pca_model(init, triangles=np.zeros((0, 3), np.int32),
                           landmarks=-np.ones(68, np.int32)).replace(code_kind=kind)
  codes = rng.normal(size=(6, 3)).astype(np.float32)
  if kind == "sphere":
    codes = codes / np.linalg.norm(codes, axis=1, keepdims=True) * init.radius
  expr = rng.normal(size=(6, 2)).astype(np.float32)
  truth = np.asarray(fm.decode(model, codes, expr))
  fit = fitting.fit_scans(model, truth, shape_prior=0.0, expr_prior=0.0, steps=300, rounds=2)
  np.testing.assert_allclose(fit.shape_codes, codes, atol=2e-3)
  np.testing.assert_allclose(fit.expr_codes, expr, atol=2e-3)
  assert np.max(np.linalg.norm(fit.reconstruction - truth, axis=-1)) < 1e-2  # mm
  # A rigidly moved copy is aligned back and gives the same codes.
  angle = np.deg2rad(2.0)
  rotation = np.array([[np.cos(angle), 0, np.sin(angle)], [0, 1, 0],
                       [-np.sin(angle), 0, np.cos(angle)]])
  moved = truth @ rotation.T + np.array([1.0, -2.0, 0.5])
  fit = fitting.fit_scans(model, moved, shape_prior=0.0, expr_prior=0.0, steps=300, rounds=6)
  np.testing.assert_allclose(fit.shape_codes, codes, atol=2e-2)


def _tiny_config(**train):
  config = stage1_configs.get_config("tiny")
  for key, value in train.items():
    config.train[key] = value
  return config


def test_checkpoints_with_separate_bases_restore_into_the_stacked_layout(tmp_path, rng):
  """Checkpoints from before stop 49 held `shape_basis` and `expr_basis` apart (params and
  Adam's moments); restored with `separate_bases_layout` they give the stacked state: each
  `bases` leaf the rows of the two, every other array as saved."""
  from sfm_jax import checkpoint
  scans, ids, _ = _linear_scans(rng)
  init = stage1.pca_init(scans, ids, num_shape=3, num_expr=2)
  tx = stage1.make_optimizer(lr_basis=1e-3, lr_codes=1e-2, lr_prototypes=1e-2, lr_centers=1e-2)
  loss_fn = stage1.make_loss_fn(stage1.Objective(), radius=init.radius,
                                triangles=np.zeros((1, 3), np.int32))
  template = TrainState.create(params=stage1.init_params(init, ids, 12, seed=0), tx=tx,
                               loss_fn=loss_fn, seed=0)
  v = scans.shape[1]
  separate = {**template.params, "model": {
      "mean": template.params["model"]["mean"],
      "shape_basis": rng.normal(size=(3, v, 3)).astype(np.float32),
      "expr_basis": rng.normal(size=(2, v, 3)).astype(np.float32)}}
  old = TrainState.create(params=separate, tx=tx, loss_fn=loss_fn, seed=0)
  noisy = lambda x: (rng.normal(size=np.shape(x)).astype(np.float32)
                     if np.asarray(x).dtype == np.float32 else x)
  old = old.replace(step=jnp.asarray(7, jnp.int32), opt_state=jax.tree_util.tree_map(
      noisy, old.opt_state))
  manager = checkpoint.make_manager(tmp_path / "checkpoints", async_save=False)
  checkpoint.save(manager, old, force=True)
  checkpoint.wait(manager)
  with pytest.raises(Exception):
    checkpoint.restore(manager, template)
  restored = checkpoint.restore(manager, template, earlier_layouts=[stage1.separate_bases_layout])
  saved = {jax.tree_util.keystr(path): np.asarray(x)
           for path, x in jax.tree_util.tree_flatten_with_path(old.arrays())[0]}
  got = jax.tree_util.tree_flatten_with_path(restored.arrays())[0]
  assert len(got) == len(saved) - sum("['expr_basis']" in key for key in saved)
  stacked = 0
  for path, x in got:
    key = jax.tree_util.keystr(path)
    if key.endswith("['bases']"):
      expected = np.concatenate([saved[key.replace("['bases']", "['shape_basis']")],
                                 saved[key.replace("['bases']", "['expr_basis']")]])
      stacked += 1
    else:
      expected = saved[key]
    np.testing.assert_array_equal(np.asarray(x), expected, err_msg=key)
  assert stacked == 3  # the parameter and Adam's two moments
  assert int(restored.step) == 7
  manager.close()


def test_tiny_training_decreases_the_loss():
  config = _tiny_config()
  data = scan_sources.load(config.data, seed=0)
  init = stage1.pca_init(data.train_scans, data.train_identity, num_shape=4, num_expr=3)
  objective = stage1.Objective(**config.objective.to_dict())
  loss_fn = stage1.make_loss_fn(objective, radius=init.radius, triangles=data.triangles,
                                mirror=data.mirror)
  state = TrainState.create(params=stage1.init_params(init, data.train_identity,
                                                      data.num_classes, seed=0),
                            tx=stage1.make_optimizer(lr_basis=1e-3, lr_codes=1e-2,
                                                     lr_prototypes=1e-2, lr_centers=1e-2),
                            loss_fn=loss_fn, seed=0)
  everything = {"scans": data.train_scans, "identity": data.train_identity,
                "index": np.arange(len(data.train_scans), dtype=np.int32)}
  first, _ = loss_fn(state.params, {}, everything, None)
  for _ in range(60):
    state, metrics = jit_train_step(state, everything)
  last, (terms, _) = loss_fn(state.params, {}, everything, None)
  assert float(last) < 0.8 * float(first)
  assert {"rec", "margin", "center", "isotropy"} <= set(terms)
  codes = sphere.shape_codes(state.params["codes"]["z"], objective.code_kind, init.radius)
  np.testing.assert_allclose(jnp.linalg.norm(codes, axis=1), init.radius, rtol=1e-5)


def test_learning_rates_are_per_group():
  params = {"model": {"w": jnp.ones(3)}, "codes": {"z": jnp.ones(3)},
            "prototypes": jnp.ones(2), "centers": jnp.ones(2)}
  tx = stage1.make_optimizer(lr_basis=0.1, lr_codes=0.0, lr_prototypes=0.2, lr_centers=0.0)
  grads = jax.tree_util.tree_map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  # Adam's first step moves every coordinate by -lr.
  np.testing.assert_allclose(updates["model"]["w"], -0.1, rtol=1e-4)
  np.testing.assert_allclose(updates["codes"]["z"], 0.0)
  np.testing.assert_allclose(updates["prototypes"], -0.2, rtol=1e-4)
  np.testing.assert_allclose(updates["centers"], 0.0)


def test_batches_cover_each_epoch_and_are_reproducible():
  steps = [batch_indices(s, num_examples=10, batch_size=3, seed=2) for s in range(6)]
  epoch = np.concatenate(steps[:3])
  assert len(set(epoch.tolist())) == 9  # three disjoint batches per epoch
  again = batch_indices(4, num_examples=10, batch_size=3, seed=2)
  np.testing.assert_array_equal(again, steps[4])


def test_padded_batches_cover_every_row_once_in_batches_of_one_size():
  for count, batch_size, size in [(12, 7, 7), (12, 32, 16), (1, 32, 1), (64, 32, 32), (5, 4, 4)]:
    batches = padded_batches(count, batch_size)
    assert {len(rows) for rows, _ in batches} == {size}
    kept = np.concatenate([rows[:n] for rows, n in batches])
    np.testing.assert_array_equal(kept, np.arange(count))  # each row once, in order
    last, n = batches[-1]
    np.testing.assert_array_equal(last[n:], count - 1)  # the padding repeats the last row


def _run_stage1(workdir, *flags, timeout=240):
  return subprocess.run([sys.executable, "-m", "experiments.stage1",
                         "--config=experiments/configs/stage1.py:tiny", f"--workdir={workdir}",
                         *flags], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


KILL_FLAGS = ["--config.train.num_steps=60", "--config.train.checkpoint_every=10"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  """One uninterrupted run both kill tests compare with (`--dist loadfile` keeps this file on one
  worker, so it is made once)."""
  workdir = tmp_path_factory.mktemp("reference")
  result = _run_stage1(workdir, *KILL_FLAGS)
  assert result.returncode == 0, result.stderr[-2000:]
  return workdir


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["sfm", "baseline"])
def test_resume_after_kill_gives_identical_parameters(uninterrupted, tmp_path, phase):
  """SIGKILL in either training phase (SFM first, then the baseline), rerun: the same models."""
  common = KILL_FLAGS
  workdir = tmp_path / "killed"
  process = subprocess.Popen(
      [sys.executable, "-m", "experiments.stage1", "--config=experiments/configs/stage1.py:tiny",
       f"--workdir={workdir}", *common, "--config.train.sleep_per_step=0.05"],
      cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  checkpoints = workdir / "checkpoints" / phase
  deadline = time.time() + 120
  while time.time() < deadline:
    done = [int(p) for p in os.listdir(checkpoints) if p.isdigit()] if checkpoints.exists() else []
    if done and max(done) >= 20:
      break
    time.sleep(0.05)
  process.send_signal(signal.SIGKILL)
  process.wait()
  assert not (workdir / "sfm_model.npz").exists()  # it really died mid-training
  resumed = _run_stage1(workdir, *common)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert "resumed from the checkpoint at step" in resumed.stdout
  for name in ("sfm_model.npz", "baseline_model.npz"):
    a, b = fm.load_model(uninterrupted / name), fm.load_model(workdir / name)
    for field in ("mean", "shape_basis", "expr_basis", "radius"):
      np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=name + field)
  codes_a, codes_b = np.load(uninterrupted / "codes.npz"), np.load(workdir / "codes.npz")
  np.testing.assert_array_equal(codes_a["sfm_shape"], codes_b["sfm_shape"])
  # The metrics log holds each logged step once per model, with no duplicates from the resume.
  rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
  keys = [(r["model"], r["step"]) for r in rows]
  assert len(keys) == len(set(keys)) == 2 * 12
  evaluation = json.loads(open(workdir / "eval.json").read())
  assert set(evaluation["models"]) == {"sfm", "baseline", "pca"}
  data = scan_sources.load(stage1_configs.get_config("tiny").data, seed=0)
  kept = stage1.pca_init(data.train_scans, data.train_identity, num_shape=4,
                         num_expr=3).variance_kept()
  assert [evaluation["pca_variance_kept"][k] for k in ("identity", "expression")] == (
      pytest.approx(list(kept), rel=1e-9))
  report = open(workdir / "report.md").read()
  assert f"hold {100 * kept[0]:.1f}% of the training identities'" in report
  from experiments import host  # the command restarted itself with huge pages where due
  expected = host.memory_settings()
  if host.huge_pages_environment(["python", "-m", "experiments.stage1"], os.environ,
                                 thp_mode=expected["transparent_huge_pages"],
                                 glibc=expected["glibc"]) is not None:
    expected["malloc_hugetlb"] = "1"
  assert evaluation["host_memory"] == json.loads(json.dumps(expected))
  assert f"\nRan with {host.describe_memory_settings(expected)}.\n" in report
  for name in ("loss_curves.png", "codes_2d.png", "components_sfm.png", "report.md"):
    assert (workdir / name).exists()


@pytest.mark.slow
@pytest.mark.parametrize("flags,message", [
    (["--config.model.shape_dim=500"], "shape_dim K=500 must be in"),
    (["--config=experiments/configs/stage1.py:folder"], "data.scan_dir is not set"),
    (["--config=experiments/configs/stage1.py:nonsense"], "unknown stage-1 config variant"),
    (["--config.train.global_batch_size=1"], "global_batch_size must be >= 2"),
])
def test_bad_config_fails_before_training(tmp_path, flags, message):
  result = _run_stage1(tmp_path / "w", *flags, timeout=120)
  assert result.returncode != 0
  assert message in result.stderr + result.stdout
  if "variant" not in message:  # validators raise InputError: one line, no traceback
    assert "Traceback" not in result.stderr and "stage1.py: error:" in result.stderr
  assert not (tmp_path / "w" / "checkpoints").exists()


def test_model_source_samples_scans_from_any_model_file(tmp_path):
  toy = face_world.toy_model(num_shape=5, num_expr=2, resolution=10).replace(code_kind="gaussian")
  fm.save_model(tmp_path / "toy.npz", toy)
  config = stage1_configs.get_config("tiny")
  config.data.source, config.data.model_path, config.data.noise_mm = "model", str(
      tmp_path / "toy.npz"), 0.0
  data = scan_sources.load(config.data, seed=0)
  assert data.train_scans.shape == (30, 100, 3) and data.test_scans.shape == (12, 100, 3)
  assert set(data.train_identity.tolist()).isdisjoint(data.test_identity.tolist())
  # Noise-free samples lie (up to the small rigid misalignment) near the model's span.
  basis = np.concatenate([toy.shape_basis, toy.expr_basis]).reshape(7, -1)
  offsets = (data.train_scans - toy.mean).reshape(30, -1)
  residual = offsets - np.linalg.lstsq(basis.T, offsets.T, rcond=None)[0].T @ basis
  assert np.sqrt(np.mean(residual ** 2)) < 2.0  # mm, from the 1 degree / 1 mm misalignment
  config.data.model_path = str(tmp_path / "missing.npz")
  with pytest.raises(ValueError, match="data.model_path.*does not exist"):
    scan_sources.load(config.data, seed=0)


def test_heavy_tailed_identity_codes_are_the_gaussian_ones_rescaled_by_a_chi_square():
  """identity_codes with df: the Gaussian draw of the same generator divided row-wise by
  sqrt(chi2_df / (df - 2)), the chi-square from default_rng([seed, 1]) (computed here by
  hand); unit variance per component, and heavier tails than the Gaussian (excess kurtosis of a
  Student t with df 6: 6 / (df - 4) = 3)."""
  gaussian = scan_sources.identity_codes(np.random.default_rng(7), 20000, 3, seed=7)
  heavy = scan_sources.identity_codes(np.random.default_rng(7), 20000, 3, seed=7, tail_df=6.0)
  chi2 = np.random.default_rng([7, 1]).chisquare(6.0, size=(20000, 1))
  np.testing.assert_allclose(heavy, gaussian / np.sqrt(chi2 / 4.0), rtol=1e-12)
  np.testing.assert_allclose(heavy.var(0), 1.0, atol=0.06)
  excess = lambda x: np.mean(x ** 4, 0) / np.mean(x ** 2, 0) ** 2 - 3
  assert np.all(np.abs(excess(gaussian)) < 0.2) and np.all(excess(heavy) > 1.5)


@pytest.mark.skipif(not os.path.isdir(os.path.join(os.path.dirname(__file__), "..", "..",
                                                   "shared", "data", "surrey")),
                    reason="../shared/data/surrey is absent")
def test_the_hard_variant_at_tiny_size_trains_and_evaluates(tmp_path):
  """`:hard` (heavy-tailed Surrey identities, strong expressions, 1 mm noise) shrunk to seconds:
  both models train and the evaluation table has the three models and the references."""
  from experiments import stage1 as stage1_entry
  config = stage1_configs.get_config("hard")
  config.data.surrey_dir = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                                        "surrey")
  config.data.train_identities, config.data.test_identities = 12, 4
  config.data.scans_per_identity = 3
  config.model.shape_dim, config.model.expr_dim = 6, 3
  config.train.num_steps, config.train.global_batch_size, config.train.warmup_steps = 30, 8, 5
  config.train.log_every, config.train.checkpoint_every = 10, 30
  config.eval.fit_steps, config.eval.fit_rounds = 20, 1
  results = stage1_entry.train_and_evaluate(config, str(tmp_path))
  assert set(results["models"]) == {"sfm", "baseline", "pca"}
  data = scan_sources.load(config.data, seed=config.seed)
  assert "Student-t identities (df 3.0)" in data.description and "x1.5" in data.description
  for scores in results["models"].values():
    assert np.isfinite(scores["mean_mm"]) and scores["mean_mm"] > 1.0  # 1 mm noise at least


def test_shared_identity_codes_replace_each_labelled_scans_code_by_its_identitys():
  """Hand-made parameters: labelled scans read their identity's row of `identity_codes`,
  unlabelled ones their own row of `codes.z`; init puts each identity's mean PCA code there."""
  params = {"codes": {"z": jnp.asarray([[9.0, 9.0], [8.0, 8.0], [7.0, 7.0]])},
            "identity_codes": jnp.asarray([[1.0, 2.0], [3.0, 4.0]])}
  codes = stage1.scan_shape_codes(params, jnp.asarray([0, 1, 2]), jnp.asarray([1, -1, 0]))
  np.testing.assert_array_equal(np.asarray(codes), [[3.0, 4.0], [8.0, 8.0], [1.0, 2.0]])
  del params["identity_codes"]
  own = stage1.scan_shape_codes(params, jnp.asarray([2, 0]), jnp.asarray([1, 0]))
  np.testing.assert_array_equal(np.asarray(own), [[7.0, 7.0], [9.0, 9.0]])
  scans = face_world.make_scans(5, 3, seed=0, world=face_world.FaceWorld(resolution=12),
                                noise_mm=0.3)
  init = stage1.pca_init(scans.vertices, scans.identity, num_shape=3, num_expr=2)
  params = stage1.init_params(init, scans.identity, 5, seed=0, shared_identity_codes=True)
  expected = np.stack([init.shape_codes[scans.identity == c].mean(0) for c in range(5)])
  np.testing.assert_allclose(np.asarray(params["identity_codes"]), expected, rtol=1e-5)


def test_training_with_shared_identity_codes_gives_one_code_per_identity():
  config = stage1_configs.get_config("tiny")
  data = scan_sources.load(config.data, seed=0)
  init = stage1.pca_init(data.train_scans, data.train_identity, num_shape=4, num_expr=3)
  objective = stage1.Objective(shared_identity_codes=True)
  params = stage1.init_params(init, data.train_identity, data.num_classes, seed=0,
                              shared_identity_codes=True)
  initial = np.asarray(params["identity_codes"])  # the step donates the state
  loss_fn = stage1.make_loss_fn(objective, radius=init.radius, triangles=data.triangles)
  tx = stage1.make_optimizer(lr_basis=1e-3, lr_codes=1e-2, lr_prototypes=1e-2, lr_centers=1e-2)
  state = TrainState.create(params=params, tx=tx, loss_fn=loss_fn, seed=0)
  for step in range(5):
    index = batch_indices(step, num_examples=len(data.train_scans), batch_size=8, seed=0)
    state, _ = jit_train_step(state, {"scans": data.train_scans[index],
                                      "identity": data.train_identity[index],
                                      "index": index.astype(np.int32)})
  assert not np.allclose(np.asarray(state.params["identity_codes"]), initial)  # trained
  shape, _ = stage1.training_codes(state.params, objective, init.radius,
                                   identity=data.train_identity)
  for label in np.unique(data.train_identity):
    rows = shape[data.train_identity == label]
    np.testing.assert_allclose(rows, np.broadcast_to(rows[0], rows.shape), rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(rows[0]), init.radius, rtol=1e-5)  # on the sphere
