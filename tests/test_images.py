import os

import numpy as np
import pytest

from sfm_jax import face_world
from sfm_jax.io import read_pts, write_pts


@pytest.fixture(scope="module")
def images():
  return face_world.make_images(3, 4, seed=5, world=face_world.FaceWorld(resolution=24), image_size=64,
                           unlabelled_fraction=0.25, occluder_probability=0.0)


def test_images_are_deterministic_and_well_formed(images):
  again = face_world.make_images(3, 4, seed=5, world=face_world.FaceWorld(resolution=24), image_size=64,
                            unlabelled_fraction=0.25, occluder_probability=0.0)
  np.testing.assert_array_equal(images.images, again.images)
  assert images.images.shape == (12, 64, 64, 3) and images.images.dtype == np.float32
  assert 0.0 <= images.images.min() and images.images.max() <= 1.0
  assert images.landmarks.shape == (12, 68, 2) and images.visible.shape == (12, 68)
  np.testing.assert_array_equal(images.true_identity, np.repeat(np.arange(3), 4))
  labelled = images.identity >= 0
  np.testing.assert_array_equal(images.identity[labelled], images.true_identity[labelled])
  assert (~labelled).any()  # some images carry no identity label


def test_a_padded_last_batch_renders_the_views_of_one_batch(images):
  """Views are rendered in batches of one size, the last padded with copies of its last view
  (`splits.padded_batches`): batches of 7 (7, then 5 padded to 7) give the images, masks,
  landmarks and visibility of the 12 views rendered as one batch (padded to 16)."""
  batched = face_world.make_images(3, 4, seed=5, world=face_world.FaceWorld(resolution=24),
                                   image_size=64, unlabelled_fraction=0.25,
                                   occluder_probability=0.0, batch_size=7)
  assert images.images.shape[0] == 12
  np.testing.assert_allclose(batched.images, images.images, atol=1e-6)
  np.testing.assert_allclose(batched.landmarks, images.landmarks, atol=1e-4)
  np.testing.assert_array_equal(batched.mask, images.mask)
  np.testing.assert_array_equal(batched.visible, images.visible)


def test_landmarks_are_the_projected_landmark_vertices(images):
  """Each image's landmarks are its landmark vertices (expression applied, centred) rotated by
  scipy's extrinsic x-y-z Euler rotation (pitch, then yaw, then roll about the fixed axes) and
  projected by the weak-perspective formula written here: x = s X + tx, y = -s Y + ty."""
  from scipy.spatial.transform import Rotation
  world = face_world.FaceWorld(resolution=24)
  template = world.template
  faces = face_world.apply_expressions(template, images.neutral.astype(np.float64),
                                       images.expression.astype(np.float64))
  assert np.abs(images.rotation).max() > np.deg2rad(5)  # the heads really are turned
  for n in range(len(faces)):
    rotation = Rotation.from_euler("xyz", images.rotation[n].astype(np.float64)).as_matrix()
    points = (faces[n] - faces[n].mean(0))[template.landmarks] @ rotation.T
    expected = np.stack([images.scale[n] * points[:, 0] + images.translation[n, 0],
                         -images.scale[n] * points[:, 1] + images.translation[n, 1]], -1)
    np.testing.assert_allclose(images.landmarks[n], expected, atol=1e-3, err_msg=f"image {n}")


def test_turning_the_head_moves_the_nose_tip_towards_the_turn(images):
  """Geometry no formula restates: with positive yaw (the face turns to the subject's left, the
  image's right) the nose tip (iBUG 30) lies right of the midpoint of the outer eye corners
  (36, 45) along the eye line (measured along that line, so in-plane roll does not matter)."""
  lm = images.landmarks
  eye_line = lm[:, 45] - lm[:, 36]
  eye_line /= np.linalg.norm(eye_line, axis=-1, keepdims=True)
  offset = np.sum((lm[:, 30] - 0.5 * (lm[:, 36] + lm[:, 45])) * eye_line, -1)
  yaw = images.rotation[:, 1]
  turned = np.abs(yaw) > np.deg2rad(8)
  assert turned.sum() >= 3
  assert np.all(np.sign(offset[turned]) == np.sign(yaw[turned]))


def test_profile_views_hide_the_far_side():
  kwargs = dict(world=face_world.FaceWorld(resolution=32), image_size=96, occluder_probability=0.0,
                max_pitch_roll_degrees=0.0)
  images = face_world.make_images(4, 2, seed=1, max_yaw_degrees=70.0, **kwargs)
  yaw = images.rotation[:, 1]
  turned = np.abs(yaw) > np.deg2rad(45)
  assert turned.any()
  for n in np.flatnonzero(turned):
    # Yaw > 0 turns the face to the subject's left, showing its right side (iBUG 0, 36: x < 0):
    # past 45 degrees the far end of the jaw line is hidden, past 60 the far eye corner too.
    far_jaw, near_jaw, far_eye, near_eye = (16, 0, 45, 36) if yaw[n] > 0 else (0, 16, 36, 45)
    assert images.visible[n, near_jaw] and images.visible[n, near_eye]
    assert not images.visible[n, far_jaw]
    if abs(yaw[n]) > np.deg2rad(60):
      assert not images.visible[n, far_eye]
  frontal = face_world.make_images(2, 2, seed=2, max_yaw_degrees=5.0, **kwargs)
  assert frontal.visible[:, [36, 45, 30, 48, 54]].all()
  # The face covers a sensible share of the image.
  assert 0.15 < frontal.mask.mean() < 0.7


def test_pts_round_trip_and_errors(tmp_path, rng):
  points = rng.uniform(0, 200, size=(68, 2))
  write_pts(tmp_path / "a.pts", points)
  np.testing.assert_allclose(read_pts(tmp_path / "a.pts"), points, atol=1e-5)
  cases = {
      "version: 1\n{\n1 2\n}\n": r"line 1: missing 'n_points:' header",
      "version: 1\nn_points: 2\n1 2\n3 4\n": r"line 3: expected '\{'",
      "n_points: 2\n{\n1 2\n3 x\n}\n": r"line 4: expected two finite numbers",
      "n_points: 3\n{\n1 2\n3 4\n}\n": r"n_points is 3 but 2 points",
      "n_points: 1\n{\n1 2\n": r"missing closing",
      "n_points: 1\n{\nnan 2\n}\n": r"line 3: expected two finite numbers",
  }
  for text, pattern in cases.items():
    (tmp_path / "bad.pts").write_text(text)
    with pytest.raises(ValueError, match=r"bad\.pts: " + pattern):
      read_pts(tmp_path / "bad.pts")


def test_world_source_fills_its_arrays_chunk_by_chunk_as_the_chunks_render(monkeypatch):
  """`sources.images.load` (face world) over two chunks of identities equals the documented
  recipe computed here in one piece: each chunk is `make_images` under `chunk_seed(split seed,
  start)`, pixels rounded to uint8, the posed truth `apply_expressions` of all rows at once in
  float64; training labels relabelled, held-out ones the true identities."""
  from sfm_jax.sources import images as image_source
  from sfm_jax.sources.splits import CHUNK_IDENTITIES, chunk_seed, relabel, split_seed
  from experiments.configs import stage2 as stage2_config
  config = stage2_config.get_config("tiny").data
  config.train_identities, config.test_identities = CHUNK_IDENTITIES + 2, 2
  config.images_per_identity, config.unlabelled_fraction = 2, 0.25
  monkeypatch.setattr(image_source, "TRUTH_BLOCK_ROWS", 5)  # float64 passes in several blocks
  data = image_source.load(config, seed=3)
  np.testing.assert_allclose(data.training_neutral_mean(), data.train.neutral.mean(0), atol=1e-4)
  world = face_world.FaceWorld(resolution=config.resolution)
  for split, count, offset, held_out in ((data.train, config.train_identities, 0, False),
                                         (data.test, config.test_identities,
                                          config.train_identities, True)):
    seed = split_seed(3, "test" if held_out else "train")
    chunks = [face_world.make_images(
        min(CHUNK_IDENTITIES, count - start), 2, chunk_seed(seed, start), world=world,
        image_size=config.image_size,
        unlabelled_fraction=0.0 if held_out else config.unlabelled_fraction,
        occluder_probability=config.occluder_probability, identity_offset=offset + start)
        for start in range(0, count, CHUNK_IDENTITIES)]
    join = lambda name: np.concatenate([getattr(c, name) for c in chunks])
    assert len(chunks) == (2 if count > CHUNK_IDENTITIES else 1) and len(split) == 2 * count
    np.testing.assert_array_equal(
        split.images, np.round(np.clip(join("images"), 0, 1) * 255).astype(np.uint8))
    np.testing.assert_array_equal(split.landmarks, join("landmarks"))
    np.testing.assert_array_equal(split.visible, join("visible"))
    np.testing.assert_array_equal(split.neutral, join("neutral"))
    posed = face_world.apply_expressions(world.template, join("neutral").astype(np.float64),
                                         join("expression").astype(np.float64))
    assert split.posed.dtype == np.float32
    np.testing.assert_allclose(split.posed, posed, rtol=1e-6, atol=1e-4)
    assert np.abs(posed - join("neutral")).max() > 1.0  # expressions really move the faces
    np.testing.assert_array_equal(
        split.identity, join("true_identity") if held_out else relabel(join("identity")))
    assert split.names[0] == f"world_{offset * 2:05d}" and len(set(split.names)) == len(split)


def test_streamed_world_source_equals_the_in_memory_one_and_reuses_its_stores(tmp_path,
                                                                             monkeypatch, capsys):
  """`data.stream`: the face world's splits are row stores in the given folder with the
  in-memory source's rows bit for bit (batches and the mean face, whose progress lines count
  every row, too); a second load opens them without rendering, other data (another seed) gets
  stores of its own data, a damaged store is rewritten; what cannot stream says so."""
  from sfm_jax.errors import InputError
  from sfm_jax.io.row_store import RowStore
  from sfm_jax.sources import images as image_source
  from sfm_jax.sources.splits import CHUNK_IDENTITIES
  from experiments.configs import stage2 as stage2_config
  config = stage2_config.get_config("tiny").data
  config.train_identities, config.test_identities = CHUNK_IDENTITIES + 3, 2
  memory = image_source.load(config, seed=3)
  config.stream = True
  streamed = image_source.load(config, seed=3, store_dir=str(tmp_path))
  fields = ("images", "landmarks", "visible", "identity", "neutral", "posed")
  for a, b in ((memory.train, streamed.train), (memory.test, streamed.test)):
    assert all(isinstance(getattr(b, f), RowStore) for f in ("images", "neutral", "posed"))
    for field in fields:
      x, y = getattr(a, field), np.asarray(getattr(b, field))
      assert x.dtype == y.dtype and x.shape == y.shape, field
      np.testing.assert_array_equal(x, y, err_msg=field)
    assert a.names == b.names
  index = np.array([7, 2, 3, 80, 0, 7])
  for key, value in memory.train.batch(index).items():
    np.testing.assert_array_equal(value, streamed.train.batch(index)[key], err_msg=key)
  np.testing.assert_array_equal(memory.training_neutral_mean(), streamed.training_neutral_mean())
  np.testing.assert_array_equal(memory.training_neutral_mean(),
                                streamed.training_neutral_mean(progress_label="read:"))
  lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("read:")]
  assert lines and lines[-1].startswith(f"read: {len(memory.train)}/{len(memory.train)} rows")
  written = {name: os.path.getmtime(tmp_path / name) for name in os.listdir(tmp_path)}
  assert len(written) == 2 * 2 * 6  # train and test: 6 arrays, each rows + .json

  def no_rendering(*args, **kwargs):
    raise AssertionError("rendered again")
    yield
  with monkeypatch.context() as patch:
    patch.setattr(image_source, "world_image_chunks", no_rendering)
    again = image_source.load(config, seed=3, store_dir=str(tmp_path))
  np.testing.assert_array_equal(np.asarray(again.train.posed), memory.train.posed)
  assert {n: os.path.getmtime(tmp_path / n) for n in os.listdir(tmp_path)} == written
  other = image_source.load(config, seed=4, store_dir=str(tmp_path))  # other data: rewritten
  config.stream = False
  np.testing.assert_array_equal(np.asarray(other.test.images),
                                image_source.load(config, seed=4).test.images)
  config.stream = True
  with open(tmp_path / "train_posed.f32", "r+b") as f:
    f.truncate(100)
  damaged = image_source.load(config, seed=4, store_dir=str(tmp_path))
  assert os.path.getsize(tmp_path / "train_posed.f32") == memory.train.posed.nbytes
  np.testing.assert_array_equal(np.asarray(damaged.train.posed), np.asarray(other.train.posed))
  for change, message in ((dict(source="tfds"), "face world"), (dict(mirror=True), "in memory"),
                          ({}, "needs a folder")):
    bad = config.copy_and_resolve_references()
    bad.update(change)
    with pytest.raises(InputError, match=message):
      image_source.load(bad, seed=3, store_dir=None if not change else str(tmp_path))


def test_posed_truth_in_blocks_equals_one_pass():
  """`_posed` computes float64 blocks of rows; any block size gives the one-block result."""
  from sfm_jax.sources.images import _posed
  world = face_world.FaceWorld(resolution=12)
  rng = np.random.default_rng(0)
  vertices = world.template.vertices
  neutral = (vertices[None] + rng.normal(size=(7,) + vertices.shape)).astype(np.float32)
  expression = rng.uniform(0, 1, (7, len(face_world.EXPRESSIONS))).astype(np.float32)
  whole = _posed(world.template, neutral, expression, rows_per_block=7)
  np.testing.assert_allclose(whole, face_world.apply_expressions(
      world.template, neutral.astype(np.float64), expression.astype(np.float64)),
      rtol=1e-6, atol=1e-4)
  np.testing.assert_array_equal(_posed(world.template, neutral, expression, rows_per_block=3),
                                whole)
