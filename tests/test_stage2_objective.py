import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sfm_jax import evaluation, face_world, losses, metrics, stage1, stage2
from sfm_jax.errors import InputError
from sfm_jax.networks import Encoder
from sfm_jax.train_state import TrainState, jit_train_step


@pytest.fixture(scope="module")
def problem():
  world = face_world.FaceWorld(resolution=16)
  scans = face_world.make_scans(12, 3, seed=0, world=world, noise_mm=0.0)
  init = stage1.pca_init(scans.vertices, scans.identity, num_shape=4, num_expr=3)
  model = stage1.pca_model(init, triangles=scans.triangles,
                           landmarks=scans.landmarks).replace(code_kind="sphere")
  images = face_world.make_images(4, 2, seed=1, world=world, image_size=32, occluder_probability=0.0,
                             max_yaw_degrees=20.0)
  batch = {"images": jnp.asarray(images.images), "landmarks": jnp.asarray(images.landmarks),
           "visible": jnp.asarray(images.visible), "identity": jnp.asarray(images.identity)}
  return model, batch


@pytest.mark.parametrize("code_kind", ["sphere", "gaussian"])
def test_every_term_active_and_the_loss_decreases(problem, code_kind):
  """(The sphere case maps with `sphere_map="metric"`; the stage-2 entry-point tests train the
  radial default.)"""
  model, batch = problem
  model = model.replace(code_kind=code_kind)
  encoder = Encoder(shape_dim=4, expr_dim=3, albedo_dim=2, depth="resnet10", width=8)
  # One render program (groups compile longer; test_render checks they render the same).
  objective = stage2.Objective(code_kind=code_kind, weight_shape_prior=1e-3, render_groups=1,
                               sphere_map="metric", weight_z_norm=0.1)
  params, model_state = stage2.init_params(encoder, model, image_size=32, num_classes=4,
                                           albedo_dim=2, seed=0)
  loss_fn = stage2.make_loss_fn(encoder, model, objective, image_size=32)
  tx = stage2.make_optimizer(lr_encoder=3e-3, lr_residual=1e-4, lr_albedo=1e-2,
                             lr_identity=1e-2)
  before = [np.asarray(x) for x in jax.tree_util.tree_leaves(model_state)]  # before donation
  state = TrainState.create(params=params, tx=tx, loss_fn=loss_fn, seed=0,
                            model_state=model_state)
  losses = []
  for _ in range(12):
    state, metrics = jit_train_step(state, batch)
    losses.append(float(metrics["loss"]))
  expected = {"landmark", "photometric", "expr_prior", "albedo_prior", "residual"}
  expected |= {"margin", "center", "z_norm"} if code_kind == "sphere" else {"shape_prior"}
  assert expected <= set(metrics)
  assert all(np.isfinite(losses))
  assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3])
  # The BatchNorm statistics travel in the train state and change during training.
  after = jax.tree_util.tree_leaves(state.model_state)
  assert any(not np.allclose(a, b) for a, b in zip(before, after))


def test_projection_of_frontal_and_turned_heads_matches_the_camera_formula(problem):
  model, _ = problem
  out = {"rotation": jnp.tile(jnp.array([1.0, 0, 0, 0, 1, 0]), (1, 1)),
         "scale": jnp.ones(1), "translation": jnp.zeros((1, 2))}
  vertices = jnp.asarray(model.mean)[None]
  pixels, _ = stage2.project_faces(vertices, out, image_size=64)
  s = 0.75 * 64 / 200.0  # nominal: a 200 mm face spans 75% of the image
  np.testing.assert_allclose(pixels[0, :, 0], s * model.mean[:, 0] + 32, rtol=1e-5)
  np.testing.assert_allclose(pixels[0, :, 1], -s * model.mean[:, 1] + 32, rtol=1e-5)
  np.testing.assert_allclose(pixels[0, :, 2], -model.mean[:, 2], rtol=1e-5)
  # A head turned by yaw 30 degrees (about y, written here as its matrix), scaled 1.5 and moved
  # by (0.1, -0.05) of the image: x' = cos a x + sin a z, z' = -sin a x + cos a z.
  a = np.deg2rad(30.0)
  yaw = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
  turned = {"rotation": jnp.asarray(np.concatenate([yaw[:, 0], yaw[:, 1]])[None], jnp.float32),
            "scale": jnp.full(1, 1.5), "translation": jnp.asarray([[0.1, -0.05]])}
  pixels, camera = stage2.project_faces(vertices, turned, image_size=64)
  v = np.asarray(model.mean, np.float64)
  rx = np.cos(a) * v[:, 0] + np.sin(a) * v[:, 2]
  rz = -np.sin(a) * v[:, 0] + np.cos(a) * v[:, 2]
  np.testing.assert_allclose(pixels[0, :, 0], 1.5 * s * rx + (0.5 + 0.1) * 64, rtol=1e-5,
                             atol=1e-3)
  np.testing.assert_allclose(pixels[0, :, 1], -1.5 * s * v[:, 1] + (0.5 - 0.05) * 64,
                             rtol=1e-5, atol=1e-3)
  np.testing.assert_allclose(pixels[0, :, 2], -rz, rtol=1e-5, atol=1e-3)
  np.testing.assert_allclose(camera[0], np.stack([rx, v[:, 1], rz], -1), rtol=1e-5, atol=1e-3)


def test_landmark_fitting_reprojects_rendered_faces(problem):
  from sfm_jax import fitting
  model, batch = problem
  landmarks = np.asarray(batch["landmarks"])
  visible = np.asarray(batch["visible"])
  fit = fitting.fit_landmarks(model, landmarks, image_size=32, visible=visible, steps=300)
  start = fitting.fit_landmarks(model, landmarks, image_size=32, visible=visible, steps=0)
  nme_fit = metrics.landmark_nme(fit.landmarks, landmarks, visible)
  nme_start = metrics.landmark_nme(start.landmarks, landmarks, visible)
  assert nme_fit < 0.06  # the stated bound: 6% of the inter-ocular distance
  assert nme_fit < 0.5 * nme_start
  np.testing.assert_allclose(np.linalg.norm(fit.shape_codes, axis=1), model.radius, rtol=1e-4)


def test_batched_landmark_fit_equals_one_photo_at_a_time(problem):
  """Photos of different sizes fitted together (padded groups, one program) give what fitting
  each alone gives, to 1e-4 of the image size; undefined landmarks come back NaN."""
  from sfm_jax import fitting
  model, batch = problem
  sizes = np.array([32.0, 64.0, 20.0, 32.0, 48.0])
  base = np.asarray(batch["landmarks"][:5])
  landmarks = base / 32.0 * sizes[:, None, None]  # the same faces in photos of other sizes
  model = model.replace(landmarks=np.asarray(model.landmarks).copy())
  model.landmarks[[0, 16]] = -1  # two landmarks this model does not define
  together = fitting.fit_landmarks(model, landmarks, image_size=sizes, steps=60, batch_size=4)
  assert np.isnan(together.landmarks[:, [0, 16]]).all()
  for n in (0, 1, 4):
    alone = fitting.fit_landmarks(model, landmarks[n:n + 1], image_size=int(sizes[n]), steps=60)
    defined = np.asarray(model.landmarks) >= 0
    np.testing.assert_allclose(together.landmarks[n][defined] / sizes[n],
                               alone.landmarks[0][defined] / sizes[n], atol=1e-4)
    np.testing.assert_allclose(together.shape_codes[n], alone.shape_codes[0], atol=1e-4)
    np.testing.assert_allclose(together.translation[n], alone.translation[0], atol=1e-4)


def _run_fit(model_path, out, *flags):
  """`experiments.fit` in a subprocess, its compilation cache beside `out` (not in ~/.cache)."""
  import subprocess
  import sys
  root = __file__.rsplit("/tests/", 1)[0]
  return subprocess.run([sys.executable, "-m", "experiments.fit", f"--model={model_path}",
                         f"--out={out}", f"--compilation_cache={out}_cache", *flags],
                        cwd=root, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_fit_command_writes_meshes_parameters_and_overlays(problem, tmp_path):
  from sfm_jax import model as fm
  from sfm_jax.io import read_obj, read_png, write_png, write_pts
  model, batch = problem
  fm.save_model(tmp_path / "model.npz", model)
  images = np.asarray(batch["images"])
  for n in range(2):
    write_png(tmp_path / f"face{n}.png", images[n])
    write_pts(tmp_path / f"face{n}.pts", np.asarray(batch["landmarks"][n]))
  result = _run_fit(tmp_path / "model.npz", tmp_path / "out", f"--pts={tmp_path}", "--steps=300")
  assert result.returncode == 0, result.stderr[-2000:]
  for n in range(2):
    fitted = np.load(tmp_path / "out" / f"face{n}.npz")
    assert float(fitted["nme"]) < 0.08  # all 68 points, occluded ones included
    assert int(fitted["image_size"]) == 32
    mesh = read_obj(tmp_path / "out" / f"face{n}_posed.obj")
    assert mesh.vertices.shape == (model.num_vertices, 3)
    assert read_png(tmp_path / "out" / f"face{n}_overlay.png").shape == (32, 32, 3)
  (tmp_path / "bad.pts").write_text("n_points: 68\n{\n1 2\n}\n")
  bad = _run_fit(tmp_path / "model.npz", tmp_path / "out", f"--pts={tmp_path / 'bad.pts'}")
  assert bad.returncode != 0 and "bad.pts: n_points is 68 but 1 points" in bad.stderr


@pytest.mark.slow
def test_fit_command_skips_bad_photos_in_one_line_each_and_fits_the_rest(problem, tmp_path):
  """--images on a folder: a photo with its .pts is fitted; a corrupt JPEG, a 1x1 image and a
  photo without a face (no .pts, detection finds none) are each reported in one line, counted,
  and the others go on."""
  from sfm_jax import landmarks
  from sfm_jax import model as fm
  from sfm_jax.io import write_png, write_pts
  if not landmarks.available():
    pytest.skip("the photos extra (dlib) is not installed")
  model, batch = problem
  fm.save_model(tmp_path / "model.npz", model)
  photos = tmp_path / "photos"
  photos.mkdir()
  write_png(photos / "face0.png", np.asarray(batch["images"][0]))
  write_pts(photos / "face0.pts", np.asarray(batch["landmarks"][0]))
  write_png(photos / "tiny.png", np.full((1, 1, 3), 0.5))
  write_png(photos / "plain.png", np.full((64, 48, 3), 0.7))
  (photos / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 40)
  result = _run_fit(tmp_path / "model.npz", tmp_path / "out", f"--images={photos}",
                    "--steps=50")
  assert result.returncode == 0, result.stderr[-2000:]
  skipped = [line for line in result.stdout.splitlines() if line.startswith("skipped: ")]
  assert len(skipped) == 3, result.stdout
  assert any("corrupt.jpg: unreadable image" in line for line in skipped)
  assert any("tiny.png: no face found" in line for line in skipped)
  assert any("plain.png: no face found" in line for line in skipped)
  assert "fitted 1 face(s)" in result.stdout and "3 photo(s) skipped" in result.stdout
  saved = np.load(tmp_path / "out" / "face0.npz")
  assert float(saved["nme_box"]) < float(saved["nme"])  # the box is larger than the eye span


def test_shape_floor_of_faces_a_model_spans_is_zero_and_reports_their_code_norms():
  """`evaluation.representation_floor` (the shape-floor study's fit): faces decoded from known
  shape codes of a model (norm R for the sphere model, any norms for the Gaussian one) are
  fitted back exactly, with or without the expression basis; the reported norm percentiles are
  the codes', and the mean face scores the NoW-aligned median computed here."""
  from sfm_jax import model as fm
  from sfm_jax.evaluation import representation_floor
  rng = np.random.default_rng(3)
  world = face_world.FaceWorld(resolution=12)
  template = world.template
  v = template.vertices.shape[0]
  basis = rng.normal(scale=0.5, size=(4, v, 3)).astype(np.float32)
  expressions = rng.normal(scale=0.5, size=(2, v, 3)).astype(np.float32)
  gaussian = fm.FaceModel(mean=template.vertices.astype(np.float32), shape_basis=basis,
                          expr_basis=expressions, radius=np.asarray(2.0, np.float32),
                          triangles=template.triangles, landmarks=template.landmarks,
                          code_kind="gaussian")
  codes = rng.normal(size=(12, 4))
  for model, scale in ((gaussian, rng.uniform(0.5, 1.5, size=(12, 1))),
                       (gaussian.replace(code_kind="sphere"), 2.0 / np.linalg.norm(codes, axis=1,
                                                                                  keepdims=True))):
    shape_codes = codes * scale
    faces = template.vertices + np.einsum("nk,kvc->nvc", shape_codes, basis)
    result = representation_floor(model, faces.astype(np.float32))
    assert result["shape and expression"] < 1e-3 and result["shape only"] < 1e-3, result
    np.testing.assert_allclose(result["code norm / R"], np.percentile(
        np.linalg.norm(shape_codes, axis=1) / 2.0, [5, 50, 95]), rtol=1e-3)
    # The mean face after the 7-landmark similarity alignment, in numpy (Umeyama, float64).
    now = template.landmarks[list(metrics.NOW_LANDMARKS)]
    mean_errors = []
    for face in faces.astype(np.float64):
      src, dst = template.vertices[now].astype(np.float64), face[now]
      mu_s, mu_d = src.mean(0), dst.mean(0)
      u, sigma, vt = np.linalg.svd((dst - mu_d).T @ (src - mu_s) / len(now))
      d = np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))])
      rotation = u @ d @ vt
      scale = np.trace(np.diag(sigma) @ d) / np.mean(np.sum((src - mu_s) ** 2, axis=1))
      aligned = scale * (template.vertices - mu_s) @ rotation.T + mu_d
      mean_errors.append(np.linalg.norm(aligned - face, axis=1))
    np.testing.assert_allclose(result["mean face"], np.median(mean_errors), rtol=1e-4)


@pytest.mark.parametrize("code_kind", ["sphere", "gaussian"])
def test_oracle_codes_recover_the_codes_of_spanned_faces_wherever_they_sit(problem, code_kind):
  model, _ = problem
  model = model.replace(code_kind=code_kind)
  rng = np.random.default_rng(0)
  codes = rng.normal(size=(5, model.shape_dim))
  if code_kind == "sphere":
    codes *= float(model.radius) / np.linalg.norm(codes, axis=1, keepdims=True)
  faces = np.asarray(model.mean) + np.einsum("bk,kvc->bvc", codes, np.asarray(model.shape_basis))
  faces += rng.normal(size=(5, 1, 3)) * 20.0  # the vertex term is blind to translation
  np.testing.assert_allclose(stage2.oracle_codes(model, jnp.asarray(faces, jnp.float32)), codes,
                             atol=2e-3 * float(model.radius))


def test_sphere_oracle_codes_solve_the_constrained_least_squares_fit(problem):
  """Targets off the model: the code satisfies the global optimality conditions of
  min ||W^T s - x||^2 over ||s|| = R (centred), (G + l I) s = W x with G + l I >= 0, and no
  random sphere code fits better."""
  model, _ = problem
  rng = np.random.default_rng(1)
  faces = np.asarray(model.mean) + rng.normal(size=(3, model.num_vertices, 3)) * 3.0
  codes = np.asarray(stage2.oracle_codes(model, jnp.asarray(faces, jnp.float32)), np.float64)
  radius = float(model.radius)
  centre = lambda x: x - x.mean(axis=-2, keepdims=True)
  basis = centre(np.asarray(model.shape_basis, np.float64)).reshape(model.shape_dim, -1)
  gram = basis @ basis.T
  targets = (centre(faces) - centre(np.asarray(model.mean, np.float64))).reshape(3, -1)
  np.testing.assert_allclose(np.linalg.norm(codes, axis=1), radius, rtol=1e-5)
  trials = rng.normal(size=(2000, model.shape_dim))
  trials *= radius / np.linalg.norm(trials, axis=1, keepdims=True)
  for code, target in zip(codes, targets):
    rhs = basis @ target
    multiplier = code @ (rhs - gram @ code) / (code @ code)  # l of (G + l I) s = W x
    np.testing.assert_allclose((gram + multiplier * np.eye(len(code))) @ code, rhs,
                               atol=1e-3 * np.abs(rhs).max())
    assert multiplier >= -np.linalg.eigvalsh(gram)[0] * (1 + 1e-4)
    cost = lambda s: np.sum(np.square(s @ basis - target), axis=-1)
    assert cost(code) <= cost(trials).min()


def test_code_term_is_the_known_rows_mean_squared_code_distance_to_the_oracle(problem):
  model, batch = problem
  world = face_world.FaceWorld(resolution=16)
  images = face_world.make_images(4, 2, seed=1, world=world, image_size=32,
                                  occluder_probability=0.0, max_yaw_degrees=20.0)
  known = np.array([1, 0, 1, 1, 0, 1, 1, 1], np.float32)
  batch = {**batch, "neutral": jnp.asarray(images.neutral), "posed": jnp.asarray(images.neutral),
           "neutral_weight": jnp.asarray(known), "posed_weight": jnp.asarray(known)}
  encoder = Encoder(shape_dim=4, expr_dim=3, albedo_dim=2, depth="resnet10", width=8)
  params, model_state = stage2.init_params(encoder, model, image_size=32, num_classes=4,
                                           albedo_dim=2, seed=0)
  objective = stage2.Objective(weight_code=2.0, weight_photometric=0.0)
  loss_fn = jax.jit(stage2.make_loss_fn(encoder, model, objective, image_size=32))
  _, (terms, _) = loss_fn(params, model_state, batch, None)
  out = encoder.apply({"params": params["encoder"], **model_state}, batch["images"], train=True,
                      landmarks=batch["landmarks"], mutable=["batch_stats"])[0]
  z = np.asarray(out["z"], np.float64)
  radius = float(model.radius)
  codes = radius * z / np.linalg.norm(z, axis=1, keepdims=True)
  target = np.asarray(stage2.oracle_codes(model, jnp.asarray(images.neutral)))
  distance = np.sum(np.square(codes - target), axis=1) / radius ** 2
  np.testing.assert_allclose(float(terms["code"]), np.sum(known * distance) / known.sum(),
                             rtol=1e-4)
  without = stage2.make_loss_fn(encoder, model, dataclasses.replace(objective, weight_code=0.0),
                                image_size=32)
  assert "code" not in jax.jit(without)(params, model_state, batch, None)[1][0]


def test_z_norm_term_is_the_mean_squared_distance_of_the_free_norms_from_one(problem):
  """SFM only: `(|z| - 1)^2` averaged over the batch, from the encoder's own free vectors; the
  Gaussian baseline's objective never has it (its z is the code)."""
  model, batch = problem
  encoder = Encoder(shape_dim=4, expr_dim=3, albedo_dim=2, depth="resnet10", width=8)
  params, model_state = stage2.init_params(encoder, model, image_size=32, num_classes=4,
                                           albedo_dim=2, seed=0)
  objective = stage2.Objective(weight_z_norm=0.5, weight_photometric=0.0, weight_code=0.0)
  _, (terms, _) = jax.jit(stage2.make_loss_fn(encoder, model, objective, image_size=32))(
      params, model_state, batch, None)
  out = encoder.apply({"params": params["encoder"], **model_state}, batch["images"], train=True,
                      landmarks=batch["landmarks"], mutable=["batch_stats"])[0]
  norms = np.linalg.norm(np.asarray(out["z"], np.float64), axis=1)
  assert np.ptp(norms) > 0.01  # the batch's free vectors differ in length
  np.testing.assert_allclose(float(terms["z_norm"]), np.mean(np.square(norms - 1.0)), rtol=1e-5)
  baseline = stage2.baseline_objective(objective)
  assert baseline.weight_z_norm == 0.0  # an SFM term, like the margin and the centre
  gaussian = model.replace(code_kind="gaussian")
  _, (terms, _) = jax.jit(stage2.make_loss_fn(encoder, gaussian, baseline, image_size=32))(
      params, model_state, batch, None)
  assert "z_norm" not in terms


def test_code_agreement_ranks_directions_by_basis_size_and_scores_each_group():
  rng = np.random.default_rng(2)
  sizes = np.array([1.0, 50.0, 5.0, 20.0, 2.0, 10.0, 8.0, 3.0])  # ranked: 1 3 5 6 2 7 4 0
  basis = rng.normal(size=(8, 30, 3))
  basis *= (sizes / np.linalg.norm(basis.reshape(8, -1), axis=1))[:, None, None]
  oracle = rng.normal(size=(9, 8))
  predicted = oracle.copy()
  predicted[:, [4, 0]] *= -1.0  # the two smallest directions point the other way
  predicted *= np.linspace(0.5, 1.5, 9)[:, None]
  result = evaluation.code_agreement(predicted, oracle, basis)
  np.testing.assert_allclose(result["group cosine"], [1.0, 1.0, 1.0, -1.0], atol=1e-12)
  np.testing.assert_allclose(result["group size (mm)"], [35.0, 9.0, 4.0, 1.5])
  flipped = np.sum(oracle[:, [4, 0]] ** 2, axis=1)
  cosines = (np.sum(oracle ** 2, axis=1) - 2 * flipped) / np.sum(oracle ** 2, axis=1)
  np.testing.assert_allclose(result["cosine"], np.median(cosines))
  np.testing.assert_allclose(result["norm ratio"], np.percentile(np.linspace(0.5, 1.5, 9),
                                                                 [5, 50, 95]))


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_warmed_up_schedule_scales_every_group_by_the_closed_form_rate(schedule):
  """With a constant gradient, Adam's bias-corrected step is `-lr_t * g / (|g| + eps)`, so each
  update reads the rate off: linear from 0 over the warm-up, then a cosine to 10% at the end, or
  (no `total_steps`) constant (float32 bias corrections at the first steps limit the agreement
  to about 1e-4)."""
  rates = dict(lr_encoder=3e-3, lr_residual=1e-4, lr_albedo=1e-2, lr_identity=2e-2)
  warmup, total = 4, 20
  tx = stage2.make_optimizer(**rates, warmup_steps=warmup,
                             total_steps=total if schedule == "cosine" else None)
  params = {"encoder": {"w": jnp.zeros(3)}, "residual": {"shape": jnp.zeros(2)},
            "albedo": {"mean": jnp.zeros(2)}, "prototypes": jnp.zeros(2),
            "centers": jnp.zeros(1)}
  grads = jax.tree_util.tree_map(lambda x: jnp.full_like(x, 0.5), params)
  opt_state = tx.init(params)
  group_rate = {"encoder": rates["lr_encoder"], "residual": rates["lr_residual"],
                "albedo": rates["lr_albedo"], "prototypes": rates["lr_identity"],
                "centers": rates["lr_identity"]}
  for step in range(total + 2):
    updates, opt_state = tx.update(grads, opt_state, params)
    if step < warmup:
      fraction = step / warmup
    elif schedule == "constant":
      fraction = 1.0
    else:
      progress = min(step - warmup, total - warmup) / (total - warmup)
      fraction = 0.1 + 0.9 * 0.5 * (1.0 + np.cos(np.pi * progress))
    for group, rate in group_rate.items():
      np.testing.assert_allclose(np.asarray(jax.tree_util.tree_leaves(updates[group])),
                                 -rate * fraction, rtol=2e-4, atol=1e-12)


@pytest.mark.parametrize("mode", ["fixed", "uniform"])
def test_landmark_noise_reaches_the_encoder_only_and_follows_the_step_key(problem, mode):
  """With `landmark_noise` the encoder reads the landmarks plus Gaussian noise from the step's key
  (std `landmark_noise` pixels, or per image U(0, landmark_noise) in mode "uniform"); the
  landmark term still compares the projection with the annotations."""
  model, batch = problem
  encoder = Encoder(shape_dim=4, expr_dim=3, albedo_dim=2, depth="resnet10", width=8,
                    landmark_features=16, landmark_linear=True, shape_from_landmarks=True)
  params, model_state = stage2.init_params(encoder, model, image_size=32, num_classes=4,
                                           albedo_dim=2, seed=0)
  noise = 1.5
  objective = stage2.Objective(landmark_noise=noise, landmark_noise_mode=mode, render_groups=1)
  loss_fn = jax.jit(stage2.make_loss_fn(encoder, model, objective, image_size=32))
  key = jax.random.key(7)
  _, (terms, _) = loss_fn(params, model_state, batch, key)
  # The landmark term by hand: the encoder on the noisy landmarks, the target the clean ones.
  shape = batch["landmarks"].shape
  if mode == "uniform":  # one std per image, from its own half of the key
    noise_key, scale_key = jax.random.split(key)
    std = noise * np.asarray(jax.random.uniform(scale_key, (shape[0], 1, 1)))
    assert np.all((std >= 0) & (std <= noise)) and np.ptp(std) > 0
  else:
    noise_key, std = key, noise
  noisy = np.asarray(batch["landmarks"]) + std * np.asarray(jax.random.normal(noise_key, shape))
  out = encoder.apply({"params": params["encoder"], **model_state}, batch["images"], train=True,
                      landmarks=jnp.asarray(noisy, jnp.float32), mutable=["batch_stats"])[0]
  z = np.asarray(out["z"], np.float64)
  codes = float(model.radius) * z / np.linalg.norm(z, axis=1, keepdims=True)
  vertices = (np.asarray(model.mean, np.float64)
              + np.einsum("bk,kvc->bvc", codes, np.asarray(model.shape_basis, np.float64))
              + np.einsum("be,evc->bvc", np.asarray(out["expression"], np.float64),
                          np.asarray(model.expr_basis, np.float64)))
  pixels, _ = stage2.project_faces(jnp.asarray(vertices, jnp.float32), out, image_size=32)
  index = np.asarray(model.landmarks)
  visible = np.asarray(batch["visible"], np.float32) * (index >= 0)[None]
  expected = losses.landmark_loss(pixels[:, np.maximum(index, 0), :2], batch["landmarks"],
                                  visible=jnp.asarray(visible))
  np.testing.assert_allclose(float(terms["landmark"]), float(expected), rtol=2e-4)
  # The same key gives the same loss; another key, or no noise, another one.
  again = loss_fn(params, model_state, batch, key)[1][0]
  assert float(again["landmark"]) == float(terms["landmark"])
  other = loss_fn(params, model_state, batch, jax.random.key(8))[1][0]
  clean = jax.jit(stage2.make_loss_fn(encoder, model, dataclasses.replace(objective,
                                                                          landmark_noise=0.0),
                                      image_size=32))(params, model_state, batch, None)[1][0]
  assert float(other["landmark"]) != float(terms["landmark"])
  assert float(clean["landmark"]) != float(terms["landmark"])
  with pytest.raises(InputError, match="landmark_noise"):
    stage2.Objective(landmark_noise=-1.0)
  with pytest.raises(InputError, match="landmark_noise_mode"):
    stage2.Objective(landmark_noise_mode="gaussian")
