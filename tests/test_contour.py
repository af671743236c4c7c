"""The jaw contour for landmark fitting: the silhouette matcher on an analytic head (an ellipsoid
whose occluding contour is known in closed form), the contour field of model files, and the
Surrey contour lists."""

import os

import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from sfm_jax import fitting
from sfm_jax import model as fm
from sfm_jax.errors import InputError
from tests.conftest import SURREY_DIR

A, B, C = 70.0, 100.0, 60.0  # ellipsoid semi-axes (mm): width x, height y, depth z
HEIGHTS = np.array([-70.0, -50.0, -30.0, -10.0, 10.0, 30.0, 50.0, 65.0])  # 8 rows per side
ANGLES = np.deg2rad(np.arange(6.0, 176.0, 4.0))  # candidates from the front (0) backwards (180)


def _ellipsoid_rows():
  """`[2, 8, W, 3]` points: side 0 on the subject's right (x < 0), side 1 on the left."""
  ring = np.sqrt(1 - (HEIGHTS / B) ** 2)[:, None]
  rows = []
  for sign in (-1.0, 1.0):
    x = sign * A * ring * np.sin(ANGLES)[None]
    z = C * ring * np.cos(ANGLES)[None]
    rows.append(np.stack([x, np.broadcast_to(HEIGHTS[:, None], x.shape), z], -1))
  return np.stack(rows)


def _analytic_silhouette_angle(view, sign):
  """The angle of the occluding contour on one side: the ellipsoid normal (x/A^2, y/B^2, z/C^2)
  is perpendicular to the view direction v (in the x-z plane here); on the ring
  x = sign A r sin t, z = C r cos t that is sign v_x sin t / A + v_z cos t / C = 0, i.e.
  tan t = -(A v_z) / (sign C v_x), taken in (0, pi)."""
  angle = np.arctan2(A * view[2], -sign * C * view[0])
  return angle % np.pi


@pytest.mark.parametrize("yaw,roll", [(30.0, 0.0), (-30.0, 0.0), (50.0, 15.0), (-20.0, -10.0)])
def test_the_matcher_picks_the_silhouette_vertex_of_a_rotated_ellipsoid(yaw, roll):
  rows = _ellipsoid_rows()
  rotation = Rotation.from_euler("zy", [roll, yaw], degrees=True).as_matrix()  # yaw, then roll
  camera = rows @ rotation.T
  image = camera[..., :2] * np.array([1.0, -1.0])  # orthographic, y down
  x_axis = rotation[:2, 0] * np.array([1.0, -1.0])
  outward = x_axis / np.linalg.norm(x_axis)
  view = rotation.T @ np.array([0.0, 0.0, 1.0])  # the viewing direction in model space
  truth, expected = [], np.zeros((2, 8), int)
  for side, sign in enumerate((-1.0, 1.0)):
    angle = _analytic_silhouette_angle(view, sign)
    expected[side] = np.argmin(np.abs(ANGLES - angle))
    ring = np.sqrt(1 - (HEIGHTS / B) ** 2)
    point = np.stack([sign * A * ring * np.sin(angle), HEIGHTS, C * ring * np.cos(angle)], -1)
    truth.append((point @ rotation.T)[:, :2] * np.array([1.0, -1.0]))
  targets = np.concatenate(truth)[None]  # the image contour at the true silhouette
  matched, chosen = fitting.contour_points(jnp.asarray(image[None]), jnp.ones(image.shape[:3], bool),
                                           jnp.asarray(outward[None]), jnp.asarray(targets))
  np.testing.assert_array_equal(np.asarray(chosen)[0], expected)
  # Each landmark lands on its own row's silhouette vertex: within half a candidate spacing.
  spacing = np.deg2rad(4.0) * max(A, C)
  assert np.max(np.linalg.norm(np.asarray(matched)[0] - targets[0], axis=-1)) < spacing


def test_padding_is_never_chosen_and_a_row_of_one_is_its_vertex():
  candidates = np.zeros((1, 2, 8, 3, 2))
  candidates[..., 0] = np.arange(3.0)[None, None, None] * np.array([-1.0, 1.0])[None, :, None, None]
  valid = np.ones((2, 8, 3), bool)
  valid[:, :, 2] = False  # the furthest-out candidate is padding
  _, chosen = fitting.contour_points(jnp.asarray(candidates), jnp.asarray(valid),
                                     jnp.asarray([[1.0, 0.0]]), jnp.zeros((1, 16, 2)))
  assert np.all(np.asarray(chosen) == 1)


def test_model_files_keep_the_contour_and_refuse_a_bad_one(tmp_path):
  from sfm_jax import face_world
  model = face_world.toy_model(num_shape=2, num_expr=1, resolution=8)
  contour = np.full((2, 4, 2), -1, np.int32)
  contour[:, :, 0] = np.arange(8).reshape(2, 4)
  contour[0, 0, 1] = 20
  fm.save_model(tmp_path / "m.npz", model.replace(contour=contour))
  loaded = fm.load_model(tmp_path / "m.npz")
  np.testing.assert_array_equal(loaded.contour, contour)
  assert loaded.fitted_landmarks[[0, 7, 9, 16]].all()
  bad = contour.copy()
  bad[1, 2, 0] = -1
  with pytest.raises(InputError, match="key 'contour': the first candidate of every row"):
    fm.save_model(tmp_path / "bad.npz", model.replace(contour=bad))
  with pytest.raises(InputError, match=r"key 'contour': indices must lie in \[-1, 64\)"):
    fm.save_model(tmp_path / "bad.npz", model.replace(contour=contour + 100))


@pytest.mark.skipif(not os.path.isdir(SURREY_DIR), reason=f"{SURREY_DIR} is absent")
def test_the_surrey_loader_reads_the_jaw_lines_beside_the_model(tmp_path):
  import json

  from sfm_jax.io.models import load_face_model
  model = load_face_model(SURREY_DIR)
  with open(os.path.join(SURREY_DIR, "sfm_model_contours.json")) as f:
    lists = json.load(f)["model_contour"]
  assert model.contour.shape == (2, len(lists["right_contour"]), 1)
  np.testing.assert_array_equal(model.contour[0, :, 0], lists["right_contour"])
  np.testing.assert_array_equal(model.contour[1, :, 0], lists["left_contour"])
  assert model.fitted_landmarks.sum() == 66  # 50 mapped vertices + the 16 jaw landmarks
  for name in os.listdir(SURREY_DIR):
    if name != "sfm_model_contours.json":
      os.symlink(os.path.join(os.path.abspath(SURREY_DIR), name), tmp_path / name)
  (tmp_path / "sfm_model_contours.json").write_text('{"model_contour": {"right_contour": [1]}}')
  with pytest.raises(InputError, match=r"sfm_model_contours\.json: not a Surrey contour file"):
    load_face_model(tmp_path)
