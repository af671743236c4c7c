import os

import numpy as np
import pytest

from sfm_jax.io import scan_folder, write_ply


def _scans(rng, n=5, v=12):
  vertices = (rng.normal(size=(n, v, 3)) * 40).astype(np.float32)
  triangles = np.array([[0, 1, 2], [2, 3, 4], [5, 6, 7], [8, 9, 10], [9, 10, 11]], np.int32)
  landmarks = -np.ones(68, np.int32)
  landmarks[:5] = [0, 3, 6, 9, 11]
  return vertices, triangles, landmarks


@pytest.mark.parametrize("mesh_format", ["ply", "obj"])
def test_round_trip(tmp_path, rng, mesh_format):
  vertices, triangles, landmarks = _scans(rng)
  identity = ["10", "2", "10", None, "2"]
  expression = ["neutral", "smile", "smile", "neutral", "sad"]
  scan_folder.write_scan_folder(tmp_path, vertices, identity, triangles=triangles,
                                landmarks=landmarks, expression=expression,
                                mesh_format=mesh_format)
  folder = scan_folder.read_scan_folder(tmp_path)
  np.testing.assert_array_equal(folder.vertices, vertices)  # bit-exact in both formats
  assert folder.identity_names == ["2", "10"]  # numeric names sort numerically
  assert folder.identity.tolist() == [1, 0, 1, -1, 0]
  assert folder.expression == expression
  np.testing.assert_array_equal(folder.triangles, triangles)
  np.testing.assert_array_equal(folder.landmarks, landmarks)
  assert folder.paths[0] == f"scans/00000.{mesh_format}"


def _write_meta(directory, text):
  (directory / "meta.csv").write_text(text)


def _good_folder(tmp_path, rng):
  vertices, triangles, landmarks = _scans(rng, n=3)
  scan_folder.write_scan_folder(tmp_path, vertices, ["a", "b", "a"], triangles=triangles,
                                landmarks=landmarks)
  return vertices


def test_missing_meta(tmp_path):
  with pytest.raises(ValueError, match=r"meta\.csv: missing"):
    scan_folder.read_scan_folder(tmp_path)


@pytest.mark.parametrize("text,pattern", [
    ("", r"meta\.csv: empty"),
    ("path,identity\n", r"meta\.csv: empty \(a header but no scans\)"),
    ("file,person\nscans/00000.ply,a\n", r"meta\.csv: line 1: header must be"),
    ("path,identity\nscans/00000.ply,a\nscans/00000.ply,b\n",
     r"meta\.csv: line 3: duplicate path 'scans/00000.ply' \(first on line 2\)"),
    ("path,identity\nscans/00000.ply\n", r"meta\.csv: line 2: expected 2 columns"),
    ("path,identity\nscans/nothere.ply,a\n", r"scans/nothere\.ply: missing \(listed on line 2"),
])
def test_bad_meta_names_file_and_line(tmp_path, rng, text, pattern):
  _good_folder(tmp_path, rng)
  _write_meta(tmp_path, text)
  with pytest.raises(ValueError, match=pattern):
    scan_folder.read_scan_folder(tmp_path)


def test_mismatched_vertex_count_names_the_file(tmp_path, rng):
  vertices = _good_folder(tmp_path, rng)
  write_ply(tmp_path / "scans" / "00001.ply", vertices[1][:-1])
  with pytest.raises(ValueError, match=r"00001\.ply: 11 vertices, but scans/00000\.ply has 12"):
    scan_folder.read_scan_folder(tmp_path)


def test_non_finite_coordinates_name_the_file_and_line(tmp_path, rng):
  _good_folder(tmp_path, rng)
  (tmp_path / "scans" / "bad.obj").write_text("v 0 0 0\n" * 5 + "v 1 nan 0\n" + "v 0 0 0\n" * 6)
  _write_meta(tmp_path, "path,identity\nscans/00000.ply,a\nscans/bad.obj,b\n")
  with pytest.raises(ValueError, match=r"bad\.obj: line 6: non-finite vertex"):
    scan_folder.read_scan_folder(tmp_path)


def test_bad_landmarks_and_template(tmp_path, rng):
  _good_folder(tmp_path, rng)
  (tmp_path / "landmarks.txt").write_text("1 2 3\n")
  with pytest.raises(ValueError, match=r"landmarks\.txt: expected 68 landmark indices, got 3"):
    scan_folder.read_scan_folder(tmp_path)
  (tmp_path / "landmarks.txt").write_text(" ".join(["40"] * 68))
  with pytest.raises(ValueError, match=r"landmarks\.txt: landmark 0 = 40 is outside \[-1, 12\)"):
    scan_folder.read_scan_folder(tmp_path)
  os.remove(tmp_path / "landmarks.txt")
  (tmp_path / "template.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n")
  with pytest.raises(ValueError, match=r"template\.obj: 3 vertices, but the scans have 12"):
    scan_folder.read_scan_folder(tmp_path)


def test_interrupted_write_leaves_no_meta(tmp_path, rng):
  vertices, triangles, _ = _scans(rng, n=3)
  bad = vertices.copy()
  bad[2, 0, 0] = np.inf  # the third mesh cannot be written
  with pytest.raises(ValueError):
    scan_folder.write_scan_folder(tmp_path, bad, ["a", "b", "c"], triangles=triangles)
  assert not (tmp_path / "meta.csv").exists()  # never looks like a complete folder


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_paths_that_leave_the_folder_are_refused(tmp_path, rng, how):
  """meta.csv may not make a program read files outside its folder (unless allowed)."""
  folder = tmp_path / "scans_folder"
  folder.mkdir()
  vertices = _good_folder(folder, rng)
  outside = tmp_path / "elsewhere"
  outside.mkdir()
  write_ply(outside / "secret.ply", vertices[0])
  if how == "dotdot":
    path = "../elsewhere/secret.ply"
  elif how == "absolute":
    path = str(outside / "secret.ply")
  else:
    os.symlink(outside, folder / "link")
    path = "link/secret.ply"
  _write_meta(folder, f"path,identity\nscans/00000.ply,a\n{path},b\n")
  with pytest.raises(ValueError, match=r"meta\.csv: line 3: path .* leaves the folder"):
    scan_folder.read_scan_folder(folder)
  allowed = scan_folder.read_scan_folder(folder, allow_outside=True)
  np.testing.assert_array_equal(allowed.vertices[1], vertices[0])


def test_photo_folder_paths_that_leave_the_folder_are_refused(tmp_path):
  from sfm_jax.io import write_png, write_pts
  from sfm_jax.sources.images import photo_folder_entries
  folder = tmp_path / "photos"
  folder.mkdir()
  write_png(tmp_path / "private.png", np.zeros((8, 8, 3)))
  write_pts(tmp_path / "private.pts", np.zeros((68, 2)))
  _write_meta(folder, "path,identity\n../private.png,a\n")
  with pytest.raises(ValueError, match=r"meta\.csv: line 2: path '\.\./private\.png' leaves"):
    photo_folder_entries(str(folder), test_fraction=0.5)
  entries = photo_folder_entries(str(folder), test_fraction=0.0, allow_outside=True)
  assert [e[1] for e in entries.splits["train"]] == ["../private.png"]
