import jax
import jax.test_util
import jax.numpy as jnp
import numpy as np
import pytest

from sfm_jax import camera, geometry


def _rx(a):
  return np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])


def _ry(a):
  return np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])


def _rz(a):
  return np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])


def test_euler_matches_composed_axis_rotations(x64, rng):
  angles = rng.uniform(-np.pi, np.pi, size=(5, 3))
  got = np.asarray(geometry.euler_to_matrix(angles))
  for a, r in zip(angles, got):
    np.testing.assert_allclose(r, _rz(a[2]) @ _ry(a[1]) @ _rx(a[0]), atol=1e-12)
  # Yaw of +90 degrees turns the face (+z) toward the subject's left (+x).
  np.testing.assert_allclose(geometry.euler_to_matrix(np.array([0.0, np.pi / 2, 0.0]))
                             @ np.array([0.0, 0.0, 1.0]), [1.0, 0.0, 0.0], atol=1e-12)


def test_6d_round_trip_and_orthonormality(x64, rng):
  rotations = np.asarray(geometry.euler_to_matrix(rng.uniform(-3, 3, size=(6, 3))))
  six = geometry.matrix_to_rotation_6d(rotations)
  np.testing.assert_allclose(geometry.rotation_6d_to_matrix(six), rotations, atol=1e-12)
  r = np.asarray(geometry.rotation_6d_to_matrix(rng.normal(size=(6, 6))))
  np.testing.assert_allclose(r @ np.swapaxes(r, -1, -2), np.broadcast_to(np.eye(3), r.shape),
                             atol=1e-12)
  np.testing.assert_allclose(np.linalg.det(r), 1.0, atol=1e-12)


def test_quaternion_known_rotations(x64):
  half = np.pi / 4  # 90 degrees about each axis
  for axis, reference in ((0, _rx), (1, _ry), (2, _rz)):
    q = np.zeros(4)
    q[0], q[1 + axis] = np.cos(half), np.sin(half)
    np.testing.assert_allclose(geometry.quaternion_to_matrix(3.0 * q), reference(np.pi / 2),
                               atol=1e-12)


def test_projections_match_numpy(x64, rng):
  points = rng.normal(size=(2, 5, 3)) * 50
  rotation = np.asarray(geometry.euler_to_matrix(rng.uniform(-0.5, 0.5, size=(2, 3))))
  scale, t2 = np.array([1.5, 0.7]), rng.normal(size=(2, 2))
  # Weak perspective to pixels: x right, y down (image rows), depth away from the viewer.
  rotated = np.stack([points[i] @ rotation[i].T for i in range(2)])
  expected = np.stack([scale[:, None] * rotated[..., 0] + t2[:, None, 0],
                       -scale[:, None] * rotated[..., 1] + t2[:, None, 1], -rotated[..., 2]], -1)
  pixels, camera_space = camera.weak_perspective(points, rotation, scale, t2)
  np.testing.assert_allclose(pixels, expected, rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(camera_space, rotated, rtol=1e-12)
  jax.test_util.check_grads(lambda p, r, s, t: camera.weak_perspective(p, r, s, t),
                            (points, rotation, scale, t2), order=1, modes=("fwd", "rev"))
  # The encoder's relative parameters: scale 1 and translation 0 put the model origin at the
  # image centre with 0.75 S per 200 mm.
  s, offset = camera.face_camera(np.array([1.0, 2.0]), np.array([[0.0, 0.0], [0.1, -0.2]]),
                                 image_size=64)
  np.testing.assert_allclose(s, [0.24, 0.48])
  np.testing.assert_allclose(offset, [[32.0, 32.0], [38.4, 19.2]])
  t3 = np.array([[0.0, 0.0, -600.0], [10.0, -5.0, -900.0]])
  focal, centre = np.array([1000.0, 800.0]), np.array([[48.0, 48.0], [112.0, 112.0]])
  projected, depth = camera.pinhole(points, rotation, t3, focal, centre)
  q = np.einsum("bij,bvj->bvi", rotation, points) + t3[:, None]
  np.testing.assert_allclose(depth, -q[..., 2], rtol=1e-12)
  np.testing.assert_allclose(projected, focal[:, None, None] * q[..., :2] / -q[..., 2:]
                             + centre[:, None], rtol=1e-12)


def test_normals_of_a_tetrahedron_and_plane(x64):
  # Right-angle corner: three faces along the axis planes, outward normals -x, -y, -z, and the
  # slanted face with normal (1, 1, 1)/sqrt(3). All triangles CCW from outside.
  vertices = np.array([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]])
  triangles = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])
  face_n = np.asarray(geometry.face_normals(vertices, triangles))
  np.testing.assert_allclose(face_n, [[0, 0, -1], [0, -1, 0], [-1, 0, 0],
                                      np.ones(3) / np.sqrt(3)], atol=1e-12)
  vertex_n = np.asarray(geometry.vertex_normals(vertices, triangles))
  # Vertex 0 touches the three axis faces with equal area: normal -(1, 1, 1)/sqrt(3).
  np.testing.assert_allclose(vertex_n[0], -np.ones(3) / np.sqrt(3), atol=1e-12)
  # Vertex 1 sums -y (area 1/2), -z (area 1/2) and the slanted face (area sqrt(3)/2).
  total = np.array([0, -0.5, -0.5]) + 0.5 * np.ones(3)
  np.testing.assert_allclose(vertex_n[1], total / np.linalg.norm(total), atol=1e-12)
  grid = np.stack(np.meshgrid(np.arange(3.0), np.arange(3.0)), -1).reshape(-1, 2)
  plane = np.concatenate([grid, np.zeros((9, 1))], -1)
  tri = np.array([[0, 1, 4], [0, 4, 3], [1, 2, 5], [1, 5, 4]])
  np.testing.assert_allclose(np.asarray(geometry.vertex_normals(plane, tri))[[0, 1, 4]],
                             np.tile([0.0, 0.0, 1.0], (3, 1)), atol=1e-12)


def test_unit_vectors_match_numpy_with_finite_gradients(x64, rng):
  from jax.test_util import check_grads
  vectors = rng.normal(size=(5, 4, 3)) * np.exp(rng.uniform(-3, 3, size=(5, 4, 1)))
  vectors[0, 0] = 0.0  # below eps: v / eps, here 0
  vectors[0, 1] = [3e-7, 0.0, -4e-7]  # norm 5e-7 < eps = 1e-6
  norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
  expected = vectors / np.maximum(norms, 1e-6)
  np.testing.assert_allclose(np.asarray(geometry.unit_vectors(vectors)), expected, rtol=1e-12,
                             atol=1e-15)
  # Along another axis: the same vectors laid out as [3, ...].
  np.testing.assert_allclose(np.asarray(geometry.unit_vectors(np.moveaxis(vectors, -1, 0),
                                                              axis=0)),
                             np.moveaxis(expected, -1, 0), rtol=1e-12, atol=1e-15)
  components = geometry.unit_components(vectors)
  for k in range(3):
    np.testing.assert_allclose(np.asarray(components[k]), expected[..., k], rtol=1e-12,
                               atol=1e-15)
  check_grads(jax.jit(geometry.unit_vectors), (vectors[1:],), order=2, modes=["fwd", "rev"])
  check_grads(jax.jit(lambda v: jnp.stack(geometry.unit_components(v))), (vectors[1:],), order=2,
              modes=["fwd", "rev"])
  grad = jax.grad(lambda v: jnp.sum(geometry.unit_vectors(v) * jnp.arange(3.0)))(
      jnp.zeros(3))
  np.testing.assert_allclose(np.asarray(grad), np.arange(3.0) / 1e-6)  # x / eps: finite


def test_squared_lengths_match_numpy_with_the_plain_derivatives(x64, rng):
  from jax.test_util import check_grads
  vectors = rng.normal(size=(4, 6, 3)) * np.exp(rng.uniform(-2, 2, size=(4, 6, 1)))
  np.testing.assert_allclose(np.asarray(geometry.squared_lengths(vectors)),
                             np.sum(vectors ** 2, -1), rtol=1e-14)
  weights = rng.normal(size=(4, 6))
  grad = jax.grad(lambda v: jnp.sum(weights * geometry.squared_lengths(v)))(vectors)
  np.testing.assert_allclose(np.asarray(grad), 2 * vectors * weights[..., None], rtol=1e-14)
  check_grads(jax.jit(geometry.squared_lengths), (vectors,), order=2, modes=["fwd", "rev"])


def test_lengths_match_numpy_with_the_plain_derivatives_and_zero_gradient_at_zero(x64, rng):
  from jax.test_util import check_grads
  vectors = rng.normal(size=(4, 6, 3)) * np.exp(rng.uniform(-2, 2, size=(4, 6, 1)))
  np.testing.assert_allclose(np.asarray(geometry.lengths(vectors)),
                             np.linalg.norm(vectors, axis=-1), rtol=1e-14)
  weights = rng.normal(size=(4, 6))
  grad = jax.grad(lambda v: jnp.sum(weights * geometry.lengths(v)))(vectors)
  expected = vectors / np.linalg.norm(vectors, axis=-1, keepdims=True) * weights[..., None]
  np.testing.assert_allclose(np.asarray(grad), expected, rtol=1e-12)
  check_grads(jax.jit(geometry.lengths), (vectors,), order=2, modes=["fwd", "rev"])
  # A zero vector (an exact match in the vertex loss): length 0, gradient 0 in both modes.
  with_zero = vectors.copy()
  with_zero[1, 2] = 0.0
  assert float(geometry.lengths(with_zero)[1, 2]) == 0.0
  grad = np.asarray(jax.grad(lambda v: jnp.sum(geometry.lengths(v)))(with_zero))
  assert np.all(np.isfinite(grad)) and np.all(grad[1, 2] == 0.0)
  tangent = rng.normal(size=with_zero.shape)
  _, forward = jax.jvp(geometry.lengths, (with_zero,), (tangent,))
  assert float(forward[1, 2]) == 0.0 and np.all(np.isfinite(np.asarray(forward)))


def test_normals_of_a_batch_equal_each_mesh_alone(x64, rng):
  vertices = rng.normal(size=(2, 3, 6, 3))
  triangles = np.array([[0, 1, 2], [1, 3, 2], [2, 3, 4], [3, 5, 4]])
  face = np.asarray(geometry.face_normals(vertices, triangles))
  vertex = np.asarray(geometry.vertex_normals(vertices, triangles))
  assert face.shape == (2, 3, 4, 3) and vertex.shape == (2, 3, 6, 3)
  for i in range(2):
    for j in range(3):
      v0, v1, v2 = (vertices[i, j][triangles[:, k]] for k in range(3))
      cross = np.cross(v1 - v0, v2 - v0)
      np.testing.assert_allclose(face[i, j], cross / np.linalg.norm(cross, axis=1, keepdims=True),
                                 rtol=1e-12)
      total = np.zeros_like(vertices[i, j])
      for k in range(3):
        np.add.at(total, triangles[:, k], cross)
      np.testing.assert_allclose(vertex[i, j], total / np.linalg.norm(total, axis=1,
                                                                      keepdims=True), rtol=1e-12)


def test_uniform_laplacian_matches_dense_and_batches(x64, rng):
  triangles = np.array([[0, 1, 2], [1, 3, 2], [2, 3, 4]])
  edges = geometry.mesh_edges(triangles)
  assert edges.tolist() == [[0, 1], [0, 2], [1, 2], [1, 3], [2, 3], [2, 4], [3, 4]]
  adjacency = np.zeros((5, 5))
  adjacency[edges[:, 0], edges[:, 1]] = adjacency[edges[:, 1], edges[:, 0]] = 1
  dense = np.eye(5) - adjacency / adjacency.sum(1, keepdims=True)
  fields = rng.normal(size=(3, 2, 5, 3))
  np.testing.assert_allclose(geometry.uniform_laplacian(fields, edges),
                             np.einsum("ij,abjc->abic", dense, fields), atol=1e-12)
  # Constant fields are in the kernel.
  np.testing.assert_allclose(geometry.uniform_laplacian(np.ones((5, 3)), edges), 0.0, atol=1e-12)


@pytest.mark.parametrize("with_noise", [False, True])
def test_procrustes_recovers_similarity(rng, with_noise):
  source = rng.normal(size=(40, 3)) * 30.0
  rotation = np.asarray(geometry.euler_to_matrix(np.array([0.3, -1.1, 2.0])), np.float64)
  scale, translation = 1.37, np.array([5.0, -20.0, 100.0])
  target = scale * source @ rotation.T + translation
  if with_noise:
    target = target + rng.normal(size=target.shape) * 1e-3
  s, r, t = geometry.similarity_procrustes(jnp.asarray(source, jnp.float32),
                                           jnp.asarray(target, jnp.float32))
  tol = 1e-5 if not with_noise else 1e-4
  np.testing.assert_allclose(s, scale, rtol=tol)
  np.testing.assert_allclose(r, rotation, atol=tol)
  np.testing.assert_allclose(t, translation, atol=tol * 200)
  aligned = geometry.aligned_distance(jnp.asarray(source, jnp.float32),
                                      jnp.asarray(target, jnp.float32))
  assert float(jnp.max(aligned)) < (1e-3 if not with_noise else 1e-2)


def test_procrustes_never_returns_a_reflection(x64, rng):
  source = rng.normal(size=(20, 3))
  mirrored = source * np.array([-1.0, 1.0, 1.0])
  _, r, _ = geometry.similarity_procrustes(source, mirrored)
  np.testing.assert_allclose(np.linalg.det(r), 1.0, atol=1e-12)
  # The rigid variant with fixed scale, under vmap.
  rotations = np.asarray(geometry.euler_to_matrix(rng.uniform(-1, 1, size=(3, 3))))
  targets = np.einsum("bij,vj->bvi", rotations, source)
  s, r, t = jax.vmap(lambda y: geometry.similarity_procrustes(source, y, with_scale=False))(
      targets)
  np.testing.assert_allclose(s, 1.0)
  np.testing.assert_allclose(r, rotations, atol=1e-10)
  np.testing.assert_allclose(t, 0.0, atol=1e-10)
