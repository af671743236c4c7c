import os

import numpy as np
import pytest

from sfm_jax.io import (
  atomic_write,
  encode_png,
  read_mesh,
  read_obj,
  read_ply,
  read_png,
  write_mesh,
  write_obj,
  write_ply,
)


def _mesh(rng, v=30, t=40, dtype=np.float32):
  vertices = (rng.normal(size=(v, 3)) * 50).astype(dtype)
  triangles = rng.integers(0, v, size=(t, 3)).astype(np.int32)
  colors = rng.uniform(size=(v, 3)).astype(np.float32)
  return vertices, triangles, colors


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("fmt", ["obj", "ply-binary", "ply-ascii"])
def test_round_trips_are_exact(tmp_path, rng, fmt, dtype):
  vertices, triangles, colors = _mesh(rng, dtype=dtype)
  path = tmp_path / ("m.obj" if fmt == "obj" else "m.ply")
  if fmt == "obj":
    write_obj(path, vertices, triangles, colors=colors)
    mesh = read_obj(path, dtype=dtype)
  else:
    write_ply(path, vertices, triangles, colors=colors, binary=fmt == "ply-binary")
    mesh = read_ply(path, dtype=dtype)
  # Bit-exact positions: float32 as 9 digits / `float`, float64 as 17 digits / `double`.
  assert mesh.vertices.dtype == dtype
  np.testing.assert_array_equal(mesh.vertices, vertices)
  np.testing.assert_array_equal(mesh.triangles, triangles)
  tolerance = 1e-6 if fmt == "obj" else 0.5 / 255 + 1e-7  # PLY stores 8-bit colour
  np.testing.assert_allclose(mesh.colors, colors, atol=tolerance)


def test_binary_ply_bytes_hold_the_float32_bits(tmp_path, rng):
  vertices, triangles, _ = _mesh(rng)
  write_ply(tmp_path / "m.ply", vertices, triangles)
  data = (tmp_path / "m.ply").read_bytes()
  body = data[data.index(b"end_header\n") + len(b"end_header\n"):]
  np.testing.assert_array_equal(np.frombuffer(body[:vertices.nbytes], "<f4").reshape(-1, 3),
                                vertices)


def test_mesh_without_faces_or_colours_and_dispatch(tmp_path, rng):
  vertices, _, _ = _mesh(rng)
  for name in ("p.obj", "p.ply"):
    write_mesh(tmp_path / name, vertices)
    mesh = read_mesh(tmp_path / name)
    np.testing.assert_array_equal(mesh.vertices, vertices)
    assert mesh.triangles.shape == (0, 3) and mesh.colors is None
  with pytest.raises(ValueError, match=r"p\.stl.*unknown mesh extension"):
    read_mesh(tmp_path / "p.stl")


def test_obj_with_texture_normal_and_negative_indices(tmp_path):
  path = tmp_path / "t.obj"
  path.write_text("# comment\nmtllib x.mtl\nv 0 0 0\nv 1 0 0\nv 0 1 0\nv 1 1 0\nvt 0 0\n"
                  "vn 0 0 1\ng face\nf 1/1/1 2/1/1 3/1/1\nf -3//1 -1//1 -2//1\n")
  mesh = read_obj(path)
  assert mesh.triangles.tolist() == [[0, 1, 2], [1, 3, 2]]


def test_big_endian_ply_is_read(tmp_path):
  header = ("ply\nformat binary_big_endian 1.0\nelement vertex 3\nproperty double x\n"
            "property double y\nproperty double z\nelement face 1\n"
            "property list uchar int vertex_indices\nend_header\n").encode()
  vertices = np.array([[0.0, 0, 0], [1, 0, 0], [0, 1, 0]])
  face = np.array([3], ">u1").tobytes() + np.array([0, 1, 2], ">i4").tobytes()
  (tmp_path / "be.ply").write_bytes(header + vertices.astype(">f8").tobytes() + face)
  mesh = read_ply(tmp_path / "be.ply", dtype=np.float64)
  np.testing.assert_array_equal(mesh.vertices, vertices)
  assert mesh.triangles.tolist() == [[0, 1, 2]]


OBJ_CASES = {
    "quad": ("v 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nf 1 2 3 4\n", r"line 5: face with 4 vertices"),
    "bad index": ("v 0 0 0\nv 1 0 0\nv 1 1 0\nf 1 2 9\n", r"line 4: vertex index out of range"),
    "index zero": ("v 0 0 0\nv 1 0 0\nv 1 1 0\nf 0 1 2\n", r"line 4: vertex index 0"),
    "non-finite": ("v 0 0 0\nv 1 nan 0\n", r"line 2: non-finite vertex"),
    "truncated": ("v 0 0 0\nv 1 0 0\nv 1 1", r"line 3: a vertex needs 3 coordinates"),
    "garbage": ("v 0 0 0\nv 1 zero 0\n", r"line 2: cannot parse vertex"),
    "empty": ("# nothing\n", r"no vertices"),
    "partial colours": ("v 0 0 0 1 0 0\nv 1 0 0\n", r"vertex 1 has no colour"),
}


@pytest.mark.parametrize("case", sorted(OBJ_CASES))
def test_obj_errors_name_file_and_line(tmp_path, case):
  text, pattern = OBJ_CASES[case]
  path = tmp_path / "broken.obj"
  path.write_text(text)
  with pytest.raises(ValueError, match=r"broken\.obj: " + pattern):
    read_obj(path)


def _binary_ply(vertex_count, vertices, faces, face_sizes=None):
  header = (f"ply\nformat binary_little_endian 1.0\nelement vertex {vertex_count}\n"
            "property float x\nproperty float y\nproperty float z\n"
            f"element face {len(faces)}\nproperty list uchar int vertex_indices\nend_header\n")
  body = np.asarray(vertices, "<f4").tobytes()
  for i, face in enumerate(faces):
    n = len(face) if face_sizes is None else face_sizes[i]
    body += np.array([n], "u1").tobytes() + np.asarray(face, "<i4").tobytes()
  return header.encode() + body


SQUARE = [[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]]
BINARY_CASES = {
    "truncated vertices": (_binary_ply(4, SQUARE, [[0, 1, 2]])[:-30],
                           r"truncated in element 'vertex'"),
    "truncated faces": (_binary_ply(4, SQUARE, [[0, 1, 2], [0, 2, 3]])[:-3],
                        r"truncated in element 'face'"),
    "quad": (_binary_ply(4, SQUARE, [[0, 1, 2], [0, 1, 2, 3]]),
             r"element 'face' 1 has 4 vertices; triangles are required"),
    "bad index": (_binary_ply(4, SQUARE, [[0, 1, 2], [0, 2, 7]]),
                  r"element 'face' 1: vertex index out of range"),
    "non-finite": (_binary_ply(4, [[0, 0, 0], [1, 0, 0], [np.inf, 1, 0], [0, 1, 0]], [[0, 1, 2]]),
                   r"element 'vertex' 2: non-finite value in property 'x'"),
    "count too small": (_binary_ply(3, SQUARE, [[0, 1, 2]]),
                        r"element 'face' 0 has 0 vertices.*counts and data disagree"),
    "not ply": (b"solid stl file\n", r"not a PLY file"),
}


@pytest.mark.parametrize("case", sorted(BINARY_CASES))
def test_binary_ply_errors_name_file_and_element(tmp_path, case):
  data, pattern = BINARY_CASES[case]
  path = tmp_path / "broken.ply"
  path.write_bytes(data)
  with pytest.raises(ValueError, match=r"broken\.ply: .*(" + pattern + ")"):
    read_ply(path)


def _ascii_ply(vertex_count, lines):
  header = (f"ply\nformat ascii 1.0\nelement vertex {vertex_count}\nproperty float x\n"
            "property float y\nproperty float z\nelement face 1\n"
            "property list uchar int vertex_indices\nend_header\n")
  return header + "\n".join(lines) + "\n"


ASCII_CASES = {  # the header is 9 lines, so the first data line is line 10
    "truncated": (_ascii_ply(4, ["0 0 0", "1 0 0", "1 1 0"]),
                  r"truncated: element 'vertex' expects 4 lines"),
    "quad": (_ascii_ply(4, ["0 0 0", "1 0 0", "1 1 0", "0 1 0", "4 0 1 2 3"]),
             r"line 14: face with 4 vertices"),
    "bad index": (_ascii_ply(3, ["0 0 0", "1 0 0", "1 1 0", "3 0 1 5"]),
                  r"line 13: vertex index out of range"),
    "non-finite": (_ascii_ply(3, ["0 0 0", "1 inf 0", "1 1 0", "3 0 1 2"]),
                   r"line 11: non-finite value"),
    "wrong token count": (_ascii_ply(3, ["0 0 0", "1 0", "1 1 0", "3 0 1 2"]),
                          r"line 11: cannot parse element 'vertex' 1"),
    "extra data": (_ascii_ply(3, ["0 0 0", "1 0 0", "1 1 0", "3 0 1 2", "3 0 1 2"]),
                   r"line 14: data after the last element"),
}


@pytest.mark.parametrize("case", sorted(ASCII_CASES))
def test_ascii_ply_errors_name_file_and_line(tmp_path, case):
  text, pattern = ASCII_CASES[case]
  path = tmp_path / "broken.ply"
  path.write_text(text)
  with pytest.raises(ValueError, match=r"broken\.ply: " + pattern):
    read_ply(path)


def test_writers_validate_and_never_leave_partial_files(tmp_path, rng):
  vertices, triangles, _ = _mesh(rng)
  path = tmp_path / "m.ply"
  write_ply(path, vertices, triangles)
  before = path.read_bytes()
  bad = vertices.copy()
  bad[3, 1] = np.nan
  with pytest.raises(ValueError, match=r"m\.ply: vertex 3 is not finite"):
    write_ply(path, bad, triangles)
  with pytest.raises(ValueError, match=r"m\.obj: triangle 0 .* outside"):
    write_obj(tmp_path / "m.obj", vertices, np.array([[0, 1, 999]]))
  assert path.read_bytes() == before
  # A failure in the middle of writing leaves the old file and no temporary file.
  with pytest.raises(RuntimeError):
    with atomic_write(path, "wb") as f:
      f.write(b"half a mesh")
      raise RuntimeError("killed mid-write")
  assert path.read_bytes() == before
  assert sorted(os.listdir(tmp_path)) == ["m.ply"]


def test_png_round_trip(tmp_path, rng):
  from sfm_jax.io import write_png
  image = rng.integers(0, 256, size=(7, 5, 3), dtype=np.uint8)
  write_png(tmp_path / "a.png", image)
  np.testing.assert_array_equal(read_png(tmp_path / "a.png"), image)
  grey = rng.uniform(size=(4, 6))
  assert encode_png(grey)[:8] == b"\x89PNG\r\n\x1a\n"
  write_png(tmp_path / "g.png", grey)
  np.testing.assert_array_equal(read_png(tmp_path / "g.png")[..., 0],
                                np.round(grey * 255).astype(np.uint8))
  with pytest.raises(ValueError, match="expected"):
    encode_png(np.zeros((3, 3, 2)))
