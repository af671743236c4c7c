"""Rotations, rigid motion, normals, the mesh Laplacian and similarity Procrustes (cameras live in
`sfm_jax.camera`).

Model space: x to the subject's left, y up, z out of the face toward the camera; millimetres.
Rotation matrices act on column vectors (`p' = R p`); batched points are `[..., V, 3]`.
Everything is pure JAX and differentiable unless it says otherwise.

Every product here is small and accuracy-critical, so all of them ask for full float32 precision
(`HIGHEST`): on GPUs the default would round float32 operands to TF32 (10-bit mantissa), which
put Procrustes alignments 0.05 mm off on an H100.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sfm_jax.sphere import normalize, safe_norm, where_positive

Array = Any

HIGHEST = jax.lax.Precision.HIGHEST


def _matmul(a: Array, b: Array) -> Array:
  return jnp.matmul(a, b, precision=HIGHEST)


# ---------------------------------------------------------------------------------------------
# Rotations.


def euler_to_matrix(angles: Array) -> Array:
  """Rotation from Euler angles `[..., 3]` = (pitch about x, yaw about y, roll about z), radians.

  `R = Rz(roll) @ Ry(yaw) @ Rx(pitch)`: pitch is applied first. Returns `[..., 3, 3]`.
  """
  pitch, yaw, roll = angles[..., 0], angles[..., 1], angles[..., 2]
  cx, sx, cy, sy, cz, sz = (jnp.cos(pitch), jnp.sin(pitch), jnp.cos(yaw), jnp.sin(yaw),
                            jnp.cos(roll), jnp.sin(roll))
  one, zero = jnp.ones_like(pitch), jnp.zeros_like(pitch)
  rx = jnp.stack([one, zero, zero, zero, cx, -sx, zero, sx, cx], -1).reshape(*pitch.shape, 3, 3)
  ry = jnp.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], -1).reshape(*pitch.shape, 3, 3)
  rz = jnp.stack([cz, -sz, zero, sz, cz, zero, zero, zero, one], -1).reshape(*pitch.shape, 3, 3)
  return _matmul(_matmul(rz, ry), rx)


def rotation_6d_to_matrix(x: Array) -> Array:
  """Continuous 6D rotation representation (Zhou et al., CVPR 2019) to a matrix.

  The 6 numbers are two 3-vectors; Gram-Schmidt turns them into the first two columns of R and
  their cross product is the third. `[..., 6] -> [..., 3, 3]`.
  """
  b1 = normalize(x[..., 0:3])
  a2 = x[..., 3:6]
  b2 = normalize(a2 - jnp.sum(b1 * a2, -1, keepdims=True) * b1)
  b3 = jnp.cross(b1, b2)
  return jnp.stack([b1, b2, b3], axis=-1)


def matrix_to_rotation_6d(rotation: Array) -> Array:
  """Inverse of `rotation_6d_to_matrix` on rotations: the first two columns, `[..., 6]`."""
  return jnp.concatenate([rotation[..., :, 0], rotation[..., :, 1]], axis=-1)


def quaternion_to_matrix(q: Array) -> Array:
  """Quaternion `[..., 4]` = (w, x, y, z), normalised here, to a rotation `[..., 3, 3]`."""
  w, x, y, z = jnp.moveaxis(normalize(q), -1, 0)
  rows = [
      1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
      2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
      2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
  ]
  return jnp.stack(rows, -1).reshape(*w.shape, 3, 3)


# ---------------------------------------------------------------------------------------------
# Rigid motion (the camera module builds on it).


def rigid_transform(points: Array, rotation: Array, translation: Array) -> Array:
  """`R p + t` for `[..., V, 3]` points, `[..., 3, 3]` rotation, `[..., 3]` translation."""
  return (jnp.einsum("...ij,...vj->...vi", rotation, points, precision=HIGHEST)
          + translation[..., None, :])


# ---------------------------------------------------------------------------------------------
# Mesh differential quantities.


def unit_vectors(vectors: Array, *, axis: int = -1, eps: float = 1e-6) -> Array:
  """`v / max(||v||, eps)` of 3-vectors along `axis` (size 3), per component: fast on every
  backend, for moderate magnitudes (`||v||^2` finite in the dtype; `sphere.normalize` is the
  overflow-safe one for codes of any size). Finite gradients everywhere, 0 at v = 0."""
  x, y, z = (jnp.take(vectors, k, axis=axis) for k in range(3))
  return vectors * jnp.expand_dims(_inverse_norm(x, y, z, eps), axis)


@jax.custom_jvp
def squared_lengths(vectors: Array) -> Array:
  """`[..., 3] -> [...]`: `x^2 + y^2 + z^2` of each 3-vector, differentiable.

  Per component, not a sum over the trailing axis of 3, which XLA on CPU (0.10) reduces slowly.
  The tangent is stated as `2 sum(v * dv, axis=-1)`, so reverse mode gives `2 v * ct[..., None]`,
  one elementwise pass: transposing the per-component form pads each component's gradient
  back into place, which XLA fused into a pass that took 50 ms of a 390 ms stage-1 step at paper
  shapes (the distances of 128 x 53149 vertices; the step went 1.05x faster with this rule).
  """
  x, y, z = (vectors[..., k] for k in range(3))
  return x * x + y * y + z * z


@squared_lengths.defjvp
def _squared_lengths_jvp(primals, tangents):
  (vectors,), (d_vectors,) = primals, tangents
  return squared_lengths(vectors), 2.0 * jnp.sum(vectors * d_vectors, axis=-1)


@jax.custom_jvp
def lengths(vectors: Array) -> Array:
  """`[..., 3] -> [...]`: the Euclidean length of each 3-vector, with gradient 0 at length 0.

  The tangent is stated as `sum(v * dv, axis=-1) / |v|`, so reverse mode gives `v * (ct /
  |v|)[..., None]`: one pass that reads the lengths this function returned. Written as a square
  root of `squared_lengths`, XLA on CPU (0.10) recomputed each vector's three squares inside
  that pass (strided reads of the components): in a stage-1 step at paper shapes (128 x 53149
  vertices) the vertex loss' passes took 37 ms per step, 19 ms with this rule, and the step ran
  1.055x faster (paired, huge pages; 1.017x with 4 KiB pages). Finite below 1e19 (float32), as
  `squared_lengths`.
  """
  return jnp.sqrt(squared_lengths(vectors))


@lengths.defjvp
def _lengths_jvp(primals, tangents):
  (vectors,), (d_vectors,) = primals, tangents
  length = lengths(vectors)
  inverse = where_positive(length, lambda positive: 1.0 / positive)
  return length, jnp.sum(vectors * d_vectors, axis=-1) * inverse


def unit_components(vectors: Array, *, axis: int = -1, eps: float = 1e-6) -> tuple:
  """The three components of `unit_vectors(vectors)` as separate arrays (`axis` removed), for
  per-component arithmetic that follows (SH shading)."""
  x, y, z = (jnp.take(vectors, k, axis=axis) for k in range(3))
  inverse = _inverse_norm(x, y, z, eps)
  return x * inverse, y * inverse, z * inverse


def _inverse_norm(x: Array, y: Array, z: Array, eps: float) -> Array:
  return jax.lax.rsqrt(jnp.maximum(x * x + y * y + z * z, eps * eps))


def _face_normal_rows(vertices: Array, triangles: Array) -> tuple[Array, tuple]:
  """(`[T, 3, B]` unnormalised triangle normals `(v1 - v0) x (v2 - v0)` of `vertices [..., V, 3]`
  flattened to B meshes, one row per triangle (row gathers and scatters are the fast ones), the
  leading shape)."""
  lead = vertices.shape[:-2]
  rows = jnp.transpose(vertices.reshape((-1,) + vertices.shape[-2:]), (1, 2, 0))  # [V, 3, B]
  v0, v1, v2 = (rows[triangles[:, k]] for k in range(3))
  a, b = v1 - v0, v2 - v0
  (ax, ay, az), (bx, by, bz) = (a[:, 0], a[:, 1], a[:, 2]), (b[:, 0], b[:, 1], b[:, 2])
  return jnp.stack([ay * bz - az * by, az * bx - ax * bz, ax * by - ay * bx], 1), lead


def _from_rows(rows: Array, lead: tuple) -> Array:
  """`[..., N, 3]` from `[N, 3, B]` rows."""
  return jnp.transpose(rows, (2, 0, 1)).reshape(lead + rows.shape[:2])


def face_normals(vertices: Array, triangles: Array, *, normalized: bool = True) -> Array:
  """Triangle normals `[..., T, 3]` (`(v1 - v0) x (v2 - v0)`, outward for CCW triangles) of
  `vertices [..., V, 3]`; unit length with `normalized`."""
  rows, lead = _face_normal_rows(vertices, triangles)
  return _from_rows(unit_vectors(rows, axis=1) if normalized else rows, lead)


def vertex_normals(vertices: Array, triangles: Array) -> Array:
  """Area-weighted unit vertex normals `[..., V, 3]` of `vertices [..., V, 3]` (scatter-add of
  the unnormalised face normals)."""
  normals, lead = _face_normal_rows(vertices, triangles)
  total = jnp.zeros((vertices.shape[-2],) + normals.shape[1:], normals.dtype)
  for k in range(3):
    total = total.at[triangles[:, k]].add(normals)
  return _from_rows(unit_vectors(total, axis=1), lead)


def mesh_edges(triangles: np.ndarray) -> np.ndarray:
  """Unique undirected edges `[N, 2]` (int32, smaller index first) of a triangle list (numpy)."""
  triangles = np.asarray(triangles)
  pairs = np.concatenate([triangles[:, [0, 1]], triangles[:, [1, 2]], triangles[:, [2, 0]]])
  return np.unique(np.sort(pairs, axis=1), axis=0).astype(np.int32)


def uniform_laplacian(fields: Array, edges: Array) -> Array:
  """Uniform graph Laplacian `(L x)_i = x_i - mean_{j ~ i} x_j` via segment sums.

  Args:
    fields: `[..., V, C]` per-vertex values.
    edges: `[N, 2]` int undirected edges (each listed once).

  Returns:
    `[..., V, C]`. An isolated vertex (no edge) gets `L x = x`.
  """
  num_vertices = fields.shape[-2]
  source = jnp.concatenate([edges[:, 0], edges[:, 1]])
  target = jnp.concatenate([edges[:, 1], edges[:, 0]])
  moved = jnp.moveaxis(fields, -2, 0)  # [V, ..., C]
  neighbour_sum = jax.ops.segment_sum(moved[source], target, num_segments=num_vertices)
  degree = jax.ops.segment_sum(jnp.ones_like(target, dtype=fields.dtype), target,
                               num_segments=num_vertices)
  degree = jnp.maximum(degree, 1.0).reshape((num_vertices,) + (1,) * (moved.ndim - 1))
  return jnp.moveaxis(moved - neighbour_sum / degree, 0, -2)


# ---------------------------------------------------------------------------------------------
# Procrustes.


def similarity_procrustes(source: Array, target: Array, *, weights: Array | None = None,
                          with_scale: bool = True) -> tuple[Array, Array, Array]:
  """Least-squares similarity (Umeyama 1991): `target ~ scale * R @ source + t`.

  Args:
    source: `[N, 3]` points.
    target: `[N, 3]` corresponding points.
    weights: optional `[N]` non-negative weights.
    with_scale: False fixes scale to 1 (rigid alignment).

  Returns:
    (scale scalar, rotation `[3, 3]` with det +1, translation `[3]`). Batch with `jax.vmap`.
  """
  if weights is None:
    weights = jnp.ones(source.shape[0], source.dtype)
  w = weights / jnp.sum(weights)
  mu_s = _matmul(w, source)
  mu_t = _matmul(w, target)
  xs, xt = source - mu_s, target - mu_t
  covariance = _matmul((xt * w[:, None]).T, xs)  # [3, 3], sum_i w_i (t_i)(s_i)^T
  u, d, vt = jnp.linalg.svd(covariance)
  sign = jnp.sign(jnp.linalg.det(u) * jnp.linalg.det(vt))
  sign = jnp.where(sign == 0, 1.0, sign)
  correction = jnp.asarray([1.0, 1.0, 0.0], source.dtype) + jnp.asarray([0.0, 0.0, 1.0],
                                                                          source.dtype) * sign
  rotation = _matmul(u * correction, vt)
  if with_scale:
    variance = jnp.sum(w * jnp.sum(jnp.square(xs), -1))
    scale = jnp.sum(d * correction) / variance
  else:
    scale = jnp.ones((), source.dtype)
  translation = mu_t - scale * _matmul(rotation, mu_s)
  return scale, rotation, translation


def apply_similarity(points: Array, scale: Array, rotation: Array, translation: Array) -> Array:
  """`scale * R p + t` for `[N, 3]` points."""
  return scale * _matmul(points, rotation.T) + translation


def aligned_distance(source: Array, target: Array, *, weights: Array | None = None) -> Array:
  """Per-point distances `[N]` after similarity-aligning `source` to `target`."""
  scale, rotation, translation = similarity_procrustes(source, target, weights=weights)
  return safe_norm(apply_similarity(source, scale, rotation, translation) - target)
