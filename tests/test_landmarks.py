"""Landmark detection on real photos (dlib, the `photos` extra) and how photos find their faces:
a `.pts` beside the photo first, numbered `_faceN.pts` next, detection last."""

import numpy as np
import pytest

from sfm_jax import landmarks
from sfm_jax.errors import InputError
from sfm_jax.io import write_pts
from sfm_jax.sources.images import faces_in_photo

needs_dlib = pytest.mark.skipif(not landmarks.available(), reason="the photos extra (dlib-bin, "
                                "face-recognition-models) is not installed")

# Outer and inner eye corners of skimage.data.astronaut() (512 x 512), read by a person from a
# 3x enlargement with a 10-pixel grid: iBUG index -> (x, y) pixels.
ASTRONAUT_EYE_CORNERS = {36: (193, 102), 39: (212, 104), 42: (237, 104), 45: (254, 103)}


@pytest.fixture(scope="module")
def astronaut():
  data = pytest.importorskip("skimage.data", reason="scikit-image (the test extra) is missing")
  return data.astronaut()


@needs_dlib
def test_the_astronaut_has_one_face_with_its_eye_corners_where_a_person_put_them(astronaut):
  faces = landmarks.detect(astronaut)
  assert faces.shape == (1, 68, 2) and faces.dtype == np.float32  # not the mission patch
  for index, (x, y) in ASTRONAUT_EYE_CORNERS.items():
    assert abs(faces[0, index, 0] - x) <= 6 and abs(faces[0, index, 1] - y) <= 6, index
  grey = landmarks.detect(astronaut.mean(-1).astype(np.uint8))
  np.testing.assert_allclose(grey, faces, atol=4.0)  # grey input finds the same points


@needs_dlib
def test_two_faces_come_largest_first(astronaut):
  from PIL import Image
  face = astronaut[40:220, 130:320]  # the head with a border
  small = np.asarray(Image.fromarray(face).resize((face.shape[1] * 3 // 4,
                                                   face.shape[0] * 3 // 4)))
  canvas = np.full((260, 420, 3), 200, np.uint8)
  canvas[10:10 + small.shape[0], 10:10 + small.shape[1]] = small
  canvas[40:40 + face.shape[0], 220:220 + face.shape[1]] = face
  faces = landmarks.detect(canvas)
  assert faces.shape[0] == 2
  widths = np.ptp(faces[..., 0], axis=1)
  assert widths[0] > widths[1]
  assert faces[0, 30, 0] > 220 and faces[1, 30, 0] < 220  # the large face is the right one


@needs_dlib
def test_no_face_is_an_empty_array_and_bad_arrays_are_refused(astronaut):
  assert landmarks.detect(np.full((1, 1, 3), 128, np.uint8)).shape == (0, 68, 2)
  assert landmarks.detect(astronaut[300:, 300:]).shape == (0, 68, 2)  # helmet, no face
  with pytest.raises(ValueError, match="uint8"):
    landmarks.detect(astronaut.astype(np.float32))


def test_a_pts_beside_the_photo_wins_then_numbered_ones(tmp_path, rng):
  photo = str(tmp_path / "p.jpg")
  image = np.zeros((8, 8, 3), np.uint8)  # no face: detection would find nothing
  first, second = rng.uniform(0, 8, (2, 68, 2)).astype(np.float32)
  write_pts(tmp_path / "p_face1.pts", first)
  write_pts(tmp_path / "p_face2.pts", second)
  found = faces_in_photo(photo, image, detect=False)
  assert [suffix for suffix, _ in found] == ["_face1", "_face2"]
  np.testing.assert_allclose(found[1][1], second, atol=1e-4)
  assert [s for s, _ in faces_in_photo(photo, image, detect=False, largest_face=True)] == [""]
  write_pts(tmp_path / "p.pts", second)
  found = faces_in_photo(photo, image, detect=False)
  assert len(found) == 1 and found[0][0] == ""
  np.testing.assert_allclose(found[0][1], second, atol=1e-4)
  (tmp_path / "p.pts").write_text("version: 1\nn_points: 3\n{\n1 1\n2 2\n3 3\n}\n")
  with pytest.raises(InputError, match=r"p\.pts: expected 68 points, got 3"):
    faces_in_photo(photo, image, detect=False)
  assert faces_in_photo(str(tmp_path / "q.png"), image, detect=False) == []


@needs_dlib
def test_a_photo_folder_without_pts_uses_detection_and_skips_faceless_photos(tmp_path,
                                                                            astronaut):
  """A photo folder (`meta.csv`) whose astronaut photo has no `.pts` gets dlib's landmarks; a
  photo without a face is skipped and counted even without `skip_bad`."""
  from sfm_jax.io import write_png
  from sfm_jax.sources.images import load_annotated, photo_folder_entries
  write_png(tmp_path / "astronaut.png", astronaut)
  write_png(tmp_path / "wall.png", np.full((60, 80, 3), 0.8))
  (tmp_path / "meta.csv").write_text("path,identity\nastronaut.png,eileen\nwall.png,nobody\n")
  folder = photo_folder_entries(str(tmp_path), test_fraction=0.0)
  assert [relative for _, relative, _ in folder.splits["train"]] == ["astronaut.png"]
  assert len(folder.skipped) == 1 and "wall.png: no face found" in folder.skipped[0]
  image, points = load_annotated(str(tmp_path), "astronaut.png")
  np.testing.assert_allclose(points, landmarks.detect(astronaut)[0])
  assert image.shape == (512, 512, 3)
  assert not (tmp_path / "astronaut.pts").exists()  # detection writes nothing beside photos
