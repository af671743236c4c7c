"""Rendered scans (stage-2 3D supervision): the landmark blend on the Surrey model, renders whose
landmarks are a weak-perspective projection of the scan's landmark points (an affine fit written
in the test), the batch mix of scans and photos, and photo folders with mesh columns."""

import os

import ml_collections
import numpy as np
import pytest

from sfm_jax import face_world, stage1
from sfm_jax.errors import InputError
from sfm_jax.io import write_mesh, write_png, write_pts
from sfm_jax.io.scan_folder import read_scan_folder, write_scan_folder
from sfm_jax.sources import images as image_sources
from sfm_jax.sources import rendered_scans
from sfm_jax.sources.scans import sample_people

SURREY = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "surrey")


def _surrey():
  if not os.path.isfile(os.path.join(SURREY, "sfm_shape_3448.bin")):
    pytest.skip(f"the Surrey model is not in {SURREY} (shared data absent on this machine)")
  from sfm_jax.io.models import load_face_model
  return load_face_model(SURREY)


def _world_model(resolution=12):
  scans = face_world.make_scans(8, 2, seed=0, world=face_world.FaceWorld(resolution=resolution),
                                noise_mm=0.0)
  init = stage1.pca_init(scans.vertices, scans.identity, num_shape=3, num_expr=2)
  return stage1.pca_model(init, triangles=scans.triangles, landmarks=scans.landmarks), scans


def test_landmark_blend_places_jaw_points_by_arc_length_on_the_surrey_jaw_lines():
  model = _surrey()
  index, weights = rendered_scans.landmark_blend(model)
  landmarks = np.asarray(model.landmarks)
  np.testing.assert_allclose(weights.sum(1), 1.0, atol=1e-12)
  defined = landmarks >= 0
  assert np.all(index[defined, 0] == landmarks[defined]) and np.all(weights[defined, 0] == 1)
  mean = np.asarray(model.mean, np.float64)
  chin = mean[landmarks[8]]
  for side, targets in ((0, list(range(8))), (1, list(range(16, 8, -1)))):
    line = np.asarray(model.contour)[side, :, 0]
    if np.linalg.norm(mean[line[0]] - chin) < np.linalg.norm(mean[line[-1]] - chin):
      line = line[::-1]
    length = np.concatenate([[0], np.cumsum(np.linalg.norm(np.diff(mean[line], axis=0), axis=1))])
    for step, target in enumerate(targets):
      # Two consecutive vertices of the line, blended at arc length step/8 of the whole line.
      k = int(np.flatnonzero(line == index[target, 0])[0])
      assert index[target, 1] == line[k + 1] and weights[target, 2] == 0
      along = length[k] + weights[target, 1] * (length[k + 1] - length[k])
      assert along == pytest.approx(length[-1] * step / 8, abs=1e-6)
  assert index[0, 0] == line_start(model, 0) and weights[0, 0] == 1.0
  for target, sources in ((60, (48, 61, 67)), (64, (54, 63, 65))):
    assert sorted(index[target]) == sorted(landmarks[list(sources)])
    np.testing.assert_allclose(weights[target], 1 / 3)


def line_start(model, side):
  """The end of a jaw line far from the chin (where iBUG 1 / 17 sit)."""
  mean = np.asarray(model.mean, np.float64)
  line = np.asarray(model.contour)[side, :, 0]
  chin = mean[np.asarray(model.landmarks)[8]]
  return line[-1] if np.linalg.norm(mean[line[0]] - chin) < np.linalg.norm(
      mean[line[-1]] - chin) else line[0]


def test_a_model_without_jaw_landmarks_or_contour_is_refused():
  model, _ = _world_model()
  landmarks = np.asarray(model.landmarks).copy()
  landmarks[3] = -1
  with pytest.raises(InputError, match="jaw landmark"):
    rendered_scans.landmark_blend(model.replace(landmarks=landmarks))


def _affine_residual(points_3d, points_2d):
  """Least-squares `points_2d = points_3d @ M.T + t`: (max residual in pixels, M [2, 3])."""
  design = np.concatenate([points_3d, np.ones((len(points_3d), 1))], 1)
  solution, *_ = np.linalg.lstsq(design, points_2d, rcond=None)
  return np.abs(design @ solution - points_2d).max(), solution[:3].T


@pytest.mark.parametrize("which", ["world", "surrey"])
def test_rendered_landmarks_are_a_weak_perspective_projection_of_the_scans(which):
  if which == "surrey":
    model = _surrey()
    sampled = sample_people(model, 3, 2, seed=4, noise_mm=0.5, neutral_first=True)
    scans, identity = sampled.scans, sampled.identity
  else:
    model, world_scans = _world_model()
    scans, identity = world_scans.vertices[:6], world_scans.identity[:6]
  neutral = np.where(np.arange(len(scans))[:, None, None] % 2 == 0, scans, np.nan)
  split = rendered_scans.render_scans(scans, identity, model, seed=3, image_size=64, views=2,
                                      occluder_probability=0.0, neutral=neutral)
  assert split.images.shape == (12, 64, 64, 3) and split.images.dtype == np.uint8
  index, weights = rendered_scans.landmark_blend(model)
  for i in range(len(split)):
    scan = scans[i // 2].astype(np.float64)
    points = np.einsum("lpc,lp->lc", scan[index], weights)
    residual, m = _affine_residual(points, split.landmarks[i].astype(np.float64))
    assert residual < 2e-3 * 64  # float32 projection of the camera, nothing else
    # A weak-perspective camera: the 2x3 map is a scaled rotation (orthogonal rows, one scale)
    # and flips y (image y points down, model y up): its rows and the view axis form a
    # left-handed frame.
    gram = m @ m.T
    np.testing.assert_allclose(gram / gram[0, 0], np.eye(2), atol=2e-3)
    assert np.linalg.det(np.stack([m[0], m[1], np.cross(m[0], m[1])])) > 0
    np.testing.assert_array_equal(split.posed[i], scans[i // 2])
  np.testing.assert_array_equal(split.neutral_weight, np.repeat([1, 0] * 3, 2))
  np.testing.assert_array_equal(split.neutral[0], scans[0])
  assert not split.neutral[2].any()  # unknown: a zero placeholder with weight 0
  assert np.all(split.posed_weight == 1)
  np.testing.assert_array_equal(split.identity, np.repeat(identity, 2))  # views of one scan


def test_neutral_of_identities_is_the_mean_of_each_persons_neutral_scans():
  scans = np.arange(5 * 2 * 3, dtype=np.float64).reshape(5, 2, 3)
  identity = np.array([0, 0, 0, 1, -1])
  neutral = rendered_scans.neutral_of_identities(
      scans, identity, ["neutral", "smile", "Neutral", "smile", "neutral"])
  np.testing.assert_array_equal(neutral[:3], np.broadcast_to((scans[0] + scans[2]) / 2,
                                                              (3, 2, 3)))
  assert np.all(np.isnan(neutral[3:]))  # person 1 has no neutral scan; -1 is nobody
  assert np.all(np.isnan(rendered_scans.neutral_of_identities(scans, identity, None)))


def _split(count, offset, *, truth):
  rng = np.random.default_rng(offset)
  fields = dict(images=np.full((count, 8, 8, 3), offset, np.uint8),
                landmarks=rng.normal(size=(count, 68, 2)).astype(np.float32),
                visible=np.ones((count, 68), bool),
                identity=np.arange(count, dtype=np.int32) + offset,
                names=[f"{offset}_{i}" for i in range(count)], neutral=None, posed=None)
  if truth:
    fields.update(neutral=rng.normal(size=(count, 5, 3)).astype(np.float32),
                  posed=rng.normal(size=(count, 5, 3)).astype(np.float32))
  return image_sources.Split(**fields)


def test_training_batches_put_rendered_scans_first_and_slice_like_the_global_batch():
  photos, scans = _split(20, 0, truth=False), _split(30, 100, truth=True)
  data = image_sources.ImageData(train=photos, test=photos, image_size=8, description="",
                                 scans=scans, scan_fraction=0.25)
  assert data.scan_rows(8) == 2 and data.num_classes == 130
  whole = data.training_batch(5, slice(None), batch_size=8, seed=3)
  assert np.all(whole["identity"][:2] >= 100) and np.all(whole["identity"][2:] < 100)
  np.testing.assert_array_equal(whole["posed_weight"], [1, 1, 0, 0, 0, 0, 0, 0])
  np.testing.assert_array_equal(whole["neutral_weight"], [1, 1, 0, 0, 0, 0, 0, 0])
  assert not whole["posed"][2:].any()
  np.testing.assert_array_equal(whole["posed"][:2], scans.posed[whole["identity"][:2] - 100])
  for rows in (slice(0, 4), slice(4, 8), slice(1, 3)):  # a process's share
    part = data.training_batch(5, rows, batch_size=8, seed=3)
    for key, value in whole.items():
      np.testing.assert_array_equal(part[key], value[rows])
  other = data.training_batch(6, slice(None), batch_size=8, seed=3)
  assert not np.array_equal(other["identity"], whole["identity"])
  # The mean face reference: the mean of the known neutral truth (scans only here).
  np.testing.assert_allclose(data.training_neutral_mean(), scans.neutral.mean(0), atol=1e-6)


def _photo_folder(tmp_path, *, meshes):
  model, _ = _world_model()
  images = face_world.make_images(10, 2, seed=2, world=face_world.FaceWorld(resolution=12),
                                  image_size=48, occluder_probability=0.0)
  header = "path,identity" + (",mesh,neutral" if meshes else "")
  lines = [header]
  for i in range(20):
    write_png(tmp_path / f"p{i:02d}.png", images.images[i])
    write_pts(tmp_path / f"p{i:02d}.pts", images.landmarks[i])
    row = f"p{i:02d}.png,person{images.true_identity[i]}"
    if meshes:
      write_mesh(tmp_path / f"m{i:02d}.ply", images.neutral[i] + 1.0, model.triangles)
      write_mesh(tmp_path / f"n{i:02d}.ply", images.neutral[i], model.triangles)
      row += f",m{i:02d}.ply," + (f"n{i:02d}.ply" if i != 1 else "")
    lines.append(row)
  (tmp_path / "meta.csv").write_text("\n".join(lines) + "\n")
  config = ml_collections.ConfigDict(dict(
      source="folder", image_dir=str(tmp_path), image_size=32, test_fraction=0.5,
      crop_margin=0.25, skip_bad=False, allow_outside_paths=False, photo_meshes="all"))
  return config, images


def test_photo_folder_meshes_give_3d_truth_and_held_out_neutral_meshes(tmp_path):
  config, images = _photo_folder(tmp_path, meshes=True)
  data = image_sources.load(config, seed=0)
  train, test = data.train, data.test
  assert train.has_truth and test.has_truth
  for split in (train, test):
    for row, name in enumerate(split.names):
      i = int(name[1:3])
      np.testing.assert_allclose(split.posed[row], images.neutral[i] + 1.0, atol=1e-5)
      if i != 1:
        np.testing.assert_allclose(split.neutral[row], images.neutral[i], atol=1e-5)
  expected = [0.0 if name == "p01.png" else 1.0 for name in train.names]
  if "p01.png" in train.names:
    np.testing.assert_array_equal(train.weights("neutral"), expected)
  config.photo_meshes = "held_out"
  assert not image_sources.load(config, seed=0).train.has_truth


def test_photo_folder_mesh_columns_fail_clearly(tmp_path):
  config, _ = _photo_folder(tmp_path, meshes=True)
  meta = (tmp_path / "meta.csv").read_text().splitlines()
  meta[3] = meta[3].replace("m02.ply", "missing.ply")
  (tmp_path / "meta.csv").write_text("\n".join(meta) + "\n")
  with pytest.raises(InputError, match=r"meta\.csv: line 4: mesh mesh 'missing\.ply' does not"):
    image_sources.load(config, seed=0)
  meta[3] = meta[3].replace("missing.ply", "../outside.ply")
  (tmp_path / "meta.csv").write_text("\n".join(meta) + "\n")
  with pytest.raises(InputError, match=r"line 4: mesh '\.\./outside\.ply' leaves the folder"):
    image_sources.load(config, seed=0)
  (tmp_path / "meta.csv").write_text("path,identity,colour\np00.png,a\n")
  with pytest.raises(InputError, match=r"header must be 'path,identity\[,mesh\]\[,neutral\]'"):
    image_sources.load(config, seed=0)


def test_scan_folders_keep_their_contour(tmp_path):
  model, scans = _world_model()
  contour = np.stack([np.array([[0, 1], [2, -1]]), np.array([[3, 4], [5, 6]])])
  write_scan_folder(tmp_path, scans.vertices[:4], scans.identity[:4], triangles=scans.triangles,
                    landmarks=scans.landmarks, contour=contour)
  np.testing.assert_array_equal(read_scan_folder(tmp_path).contour, contour)
  (tmp_path / "contour.json").write_text('{"contour": [[[0]], [[-1]]]}')
  with pytest.raises(InputError, match=r"contour\.json: contour indices"):
    read_scan_folder(tmp_path)


def _ten_person_scan_folder(folder) -> list:
  """A scan folder of 10 face-world people x (neutral, smile) in the 12x12 grid's topology;
  returns each scan's identity name."""
  scans = face_world.make_scans(10, 2, seed=5, world=face_world.FaceWorld(resolution=12),
                                noise_mm=0.0)
  names = [f"id{i}" for i in scans.identity]
  write_scan_folder(folder, scans.vertices, names, triangles=scans.triangles,
                    landmarks=scans.landmarks, expression=["neutral", "smile"] * 10)
  return names


def test_scan_split_renders_only_identities_stage1_trained_on(tmp_path):
  model, _ = _world_model()
  names = _ten_person_scan_folder(tmp_path)
  config = ml_collections.ConfigDict(dict(scan_dir=str(tmp_path), scan_test_fraction=0.3,
                                          scan_views=1, image_size=32, occluder_probability=0.0))
  split = rendered_scans.scan_split(config, model, seed=0)
  from sfm_jax.sources.splits import identity_in_test
  kept = [n for n in names if not identity_in_test(n, 0.3)]
  assert 0 < len(kept) < len(names) and len(split) == len(kept)
  assert split.identity.max() + 1 == len(set(kept))
  np.testing.assert_array_equal(split.neutral_weight, 1.0)  # every person has a neutral scan
  small, _ = _world_model(resolution=10)
  with pytest.raises(InputError, match="vertices, the stage-1 model"):
    rendered_scans.scan_split(config, small, seed=0)


def test_pretraining_on_scan_dir_renders_its_training_people_afresh(tmp_path):
  from experiments.configs import stage2 as stage2_configs
  model, _ = _world_model()
  names = _ten_person_scan_folder(tmp_path)
  config = stage2_configs.get_config("tiny")
  config.data.scan_dir, config.data.scan_test_fraction = str(tmp_path), 0.3
  config.pretrain.scan_views = 3
  assert image_sources.pretrain_source(config) == "scans"  # "auto" with a scan_dir
  split = image_sources.pretrain_split(config, seed=0, model=model)
  training = rendered_scans.scan_split(config.data, model, seed=0)  # reconstruction's renders
  from sfm_jax.sources.splits import identity_in_test
  kept = [n for n in names if not identity_in_test(n, 0.3)]
  assert len(split) == 3 * len(kept) and split.identity.min() == 0
  # The same people as reconstruction's rendered scans, each labelled, in fresh renders.
  assert set(split.identity) == set(training.identity)
  assert np.bincount(split.identity).tolist() == [3 * kept.count(n) for n in dict.fromkeys(kept)]
  assert not np.array_equal(split.images[:len(training)], training.images)
  config.pretrain.source = "world"
  world = image_sources.pretrain_split(config, seed=0)
  assert len(world) == config.pretrain.identities * config.pretrain.images_per_identity
  config.data.scan_dir, config.pretrain.source = "", "scans"
  with pytest.raises(InputError, match="needs data.scan_dir"):
    image_sources.pretrain_source(config)
  config.pretrain.source = "photos"
  with pytest.raises(InputError, match="pretrain.source must be one of"):
    image_sources.pretrain_source(config)
