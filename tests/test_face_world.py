import numpy as np
import pytest

from sfm_jax import face_world


def _triangle_normals(x, triangles):
  a, b, c = (x[..., triangles[:, k], :] for k in range(3))
  return np.cross(b - a, c - a)


def test_scans_are_deterministic_for_a_seed():
  a = face_world.make_scans(5, 3, seed=11)
  b = face_world.make_scans(5, 3, seed=11)
  c = face_world.make_scans(5, 3, seed=12)
  for field in ("vertices", "identity", "expression", "neutral", "identity_directions"):
    np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)
  assert not np.array_equal(a.vertices, c.vertices)
  assert a.vertices.shape == (15, 64 * 64, 3) and a.vertices.dtype == np.float32
  assert a.identity.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]
  assert np.all(np.isfinite(a.vertices)) and np.all(np.isfinite(a.neutral))


def test_identities_differ_more_than_scans_of_one_identity():
  scans = face_world.make_scans(30, 4, seed=5)
  v = scans.vertices.astype(np.float64)
  # [N, N] mean per-vertex distances, one row at a time (all pairs at once would be 0.8 GB)
  dist = np.stack([np.linalg.norm(v - row, axis=-1).mean(-1) for row in v])
  same = scans.identity[:, None] == scans.identity[None]
  off_diagonal = ~np.eye(len(v), dtype=bool)
  within, between = dist[same & off_diagonal].mean(), dist[~same].mean()
  assert between > 1.8 * within, (between, within)  # measured: 6.6 mm vs 2.8 mm


def test_identity_shapes_are_realistic_and_nonlinear():
  world = face_world.FaceWorld()
  template = world.template
  directions = world.sample_identities(np.random.default_rng(0), 200)
  shapes = world.neutral_shapes(directions)
  offset = np.linalg.norm(shapes - template.vertices, axis=-1)
  assert 2.0 < offset.mean() < 10.0 and offset.max() < 40.0  # mm: faces stay face-like
  # A linear (Gaussian) model would give f(u) + f(-u) = 2 f(0) exactly.
  symmetric = world.neutral_shapes(-directions[:50]) + shapes[:50] - 2 * template.vertices
  assert np.linalg.norm(symmetric, axis=-1).mean() > 0.2
  # Attributes are bounded (tanh) and use their range.
  attributes = world.attributes(directions)
  assert np.all(np.abs(attributes) < 1) and np.abs(attributes).max() > 0.9


def test_no_degenerate_or_flipped_triangles_without_noise():
  world = face_world.FaceWorld()
  template = world.template
  neutral = world.neutral_shapes(world.sample_identities(np.random.default_rng(1), 40))
  reference = _triangle_normals(template.vertices.astype(np.float64), template.triangles)
  weights = np.random.default_rng(2).uniform(size=(40, len(face_world.EXPRESSIONS)))
  for faces in (neutral, face_world.apply_expressions(template, neutral, weights)):
    normals = _triangle_normals(faces, template.triangles)
    area = 0.5 * np.linalg.norm(normals, axis=-1)
    cosine = np.sum(normals * reference, -1) / (2 * area * np.linalg.norm(reference, axis=-1))
    assert area.min() > 0.01  # mm^2
    assert cosine.min() > 0.0  # no triangle turns over


def test_template_topology_landmarks_and_mirror():
  template = face_world.face_template(64)  # the default; much coarser grids merge inner-lip points
  assert template.vertices.shape == (4096, 3) and template.triangles.shape == (2 * 63 * 63, 3)
  assert template.triangles.min() == 0 and template.triangles.max() == 4095
  # Counter-clockwise from the front: every triangle's normal points toward +z.
  assert np.all(_triangle_normals(template.vertices, template.triangles)[:, 2] > 0)
  assert template.landmarks.shape == (68,) and len(set(template.landmarks.tolist())) == 68
  mirror = template.mirror
  np.testing.assert_array_equal(mirror[mirror], np.arange(4096))
  np.testing.assert_allclose(template.vertices[mirror] * [-1, 1, 1], template.vertices, atol=1e-4)
  # Left-right landmark pairs map onto each other (eye corners, mouth corners, jaw ends, brows).
  for right, left in ((36, 45), (39, 42), (48, 54), (0, 16), (17, 26), (31, 35)):
    assert mirror[template.landmarks[right]] == template.landmarks[left]
  # Landmarks sit where iBUG puts them: eyes above the nose tip above the mouth above the chin.
  y = template.vertices[template.landmarks, 1]
  assert y[[36, 45]].min() > y[30] > y[[48, 54]].max() > y[8]
  x = template.vertices[template.landmarks, 0]
  assert x[36] < x[39] < 0 < x[42] < x[45]  # subject's right eye at negative x


def test_expressions_move_the_right_regions():
  template = face_world.FaceWorld().template
  neutral = template.vertices[None].astype(np.float64)
  landmarks = template.landmarks

  def moved(name):
    weights = np.zeros((1, len(face_world.EXPRESSIONS)))
    weights[0, face_world.EXPRESSIONS.index(name)] = 1.0
    return face_world.apply_expressions(template, neutral, weights)[0] - neutral[0]

  smile = moved("smile")
  assert smile[landmarks[48], 1] > 3 and smile[landmarks[54], 1] > 3  # mouth corners rise
  jaw = moved("jaw_open")
  assert jaw[landmarks[8], 1] < -20  # the chin drops
  assert abs(jaw[landmarks[36], 1]) < 1e-3  # the eyes stay
  brows = moved("brow_raise")
  assert brows[landmarks[19], 1] > 4 and abs(brows[landmarks[57], 1]) < 0.1


def test_bad_arguments():
  with pytest.raises(ValueError, match="num_identities"):
    face_world.make_scans(0, 3, seed=0)
  with pytest.raises(ValueError, match="resolution"):
    face_world.face_template(4)
