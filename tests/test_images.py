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
