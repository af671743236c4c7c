"""SFM losses: spherical identity terms, reconstruction terms and basis regularisers.

All are pure functions returning batch-mean float scalars, safe under `jit`, `vmap` and `grad`
(second order included). Identity terms take directions `u` `[B, K]` and integer labels `[B]`;
label -1 means "no identity": such samples contribute nothing, and a batch with no labelled sample
gives exactly 0 (with zero, finite gradients). Directions, prototypes and centres are normalised
inside the losses, so the terms depend only on angles. Their products use full float32 precision
(`HIGHEST`; GPUs would otherwise use TF32 and round cosines to about 1e-3).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from sfm_jax.geometry import HIGHEST, lengths, squared_lengths, uniform_laplacian
from sfm_jax.sphere import normalize, safe_norm, safe_sqrt

Array = Any


# ---------------------------------------------------------------------------------------------
# Identity terms on the sphere.


def _labelled_mean(values: Array, labels: Array) -> Array:
  """Mean of `values` `[B]` over samples with label >= 0; 0 when there are none."""
  weight = (labels >= 0).astype(values.dtype)
  return jnp.sum(values * weight) / jnp.maximum(jnp.sum(weight), 1.0)


def _cosines(u: Array, prototypes: Array) -> Array:
  """`[B, K] x [C, K] -> [B, C]` cosines between directions and (normalised) prototypes."""
  return jnp.matmul(normalize(u), normalize(prototypes).T, precision=HIGHEST)


def _margin_softmax(cos: Array, target_logit: Array, labels: Array, scale: float) -> Array:
  """Cross-entropy with the target class's logit replaced by `target_logit` `[B]`."""
  num_classes = cos.shape[-1]
  one_hot = jax.nn.one_hot(labels, num_classes, dtype=cos.dtype)  # all-zero rows for label -1
  logits = scale * cos * (1.0 - one_hot) + target_logit[:, None] * one_hot
  per_sample = jax.nn.logsumexp(logits, axis=-1) - target_logit
  return _labelled_mean(per_sample, labels)


def _target_cosine(cos: Array, labels: Array) -> Array:
  safe_labels = jnp.maximum(labels, 0)
  return jnp.take_along_axis(cos, safe_labels[:, None], axis=-1)[:, 0]


def cosface_loss(u: Array, labels: Array, prototypes: Array, *, scale: float = 32.0,
                 margin: float = 0.35) -> Array:
  """CosFace (large-margin cosine) softmax: target logit `scale * (cos - margin)`.

  Args:
    u: `[B, K]` directions (normalised here).
    labels: `[B]` int identity in [0, C), or -1 for none.
    prototypes: `[C, K]` class prototypes `w_c` (normalised here). Differentiable.
    scale: kappa, the logit scale.
    margin: additive cosine margin m.

  Returns:
    Scalar mean cross-entropy over labelled samples (0 if none).
  """
  cos = _cosines(u, prototypes)
  return _margin_softmax(cos, scale * (_target_cosine(cos, labels) - margin), labels, scale)


def arcface_loss(u: Array, labels: Array, prototypes: Array, *, scale: float = 32.0,
                 margin: float = 0.5) -> Array:
  """ArcFace (additive angular margin) softmax: target logit `scale * cos(theta + margin)`.

  Where `theta + margin > pi` the angle can no longer grow monotonically, so the usual fallback
  (InsightFace's) `cos(theta) - margin * sin(margin)` is used instead. It keeps the target logit
  non-increasing in `theta` but is *not* continuous at `theta = pi - margin`: the target cosine
  drops there from `-1` to `-cos(margin) - margin * sin(margin)`.

  Args and returns as `cosface_loss`.
  """
  cos = _cosines(u, prototypes)
  target = _target_cosine(cos, labels)
  sin = safe_sqrt(1.0 - target ** 2)
  with_margin = target * jnp.cos(margin) - sin * jnp.sin(margin)  # cos(theta + m)
  fallback = target - margin * jnp.sin(margin)
  target_cos = jnp.where(target > jnp.cos(jnp.pi - margin), with_margin, fallback)
  return _margin_softmax(cos, scale * target_cos, labels, scale)


def spherical_center_loss(u: Array, labels: Array, centers: Array) -> Array:
  """Spherical center loss `mean(1 - <u_i, c_{y_i}>)` over labelled samples.

  Args:
    u: `[B, K]` directions (normalised here).
    labels: `[B]` int identity, -1 for none.
    centers: `[C, K]` identity centres (normalised here). Differentiable.
  """
  target = _target_cosine(_cosines(u, centers), labels)
  return _labelled_mean(1.0 - target, labels)


def isotropy_kl(s: Array, radius: Array, *, eps: float = 1e-6) -> Array:
  """KL divergence from the batch's per-dimension Gaussian of `s` to `N(0, (R^2 / K) I)`.

  With `mu_k`, `var_k` the batch mean and (biased) variance of dimension k and
  `sigma^2 = R^2 / K`: `sum_k 0.5 * (var_k / sigma^2 + mu_k^2 / sigma^2 - 1 - log(var_k / sigma^2))`,
  the KL of the product of the K marginals (a scalar, not a mean over k). It is 0 for codes
  spread isotropically over the sphere and grows when they collapse onto a cap.

  Args:
    s: `[B, K]` codes, B >= 2.
    radius: R.
    eps: added to `var_k / sigma^2` inside the log.
  """
  num_dims = s.shape[-1]
  sigma2 = radius ** 2 / num_dims
  mean = jnp.mean(s, axis=0)
  var = jnp.mean(jnp.square(s - mean), axis=0)
  ratio = var / sigma2
  return 0.5 * jnp.sum(ratio + jnp.square(mean) / sigma2 - 1.0 - jnp.log(ratio + eps))


def ring_loss(s: Array, radius: Array) -> Array:
  """Soft sphere constraint `mean_b (||s_b|| / R - 1)^2`, `s` `[B, K]`."""
  return jnp.mean(jnp.square(safe_norm(s) / radius - 1.0))


# ---------------------------------------------------------------------------------------------
# Reconstruction.


def vertex_loss(predicted: Array, target: Array, *, squared: bool = False,
                weights: Array | None = None) -> Array:
  """Per-vertex reconstruction error, mm (or mm^2 when `squared`).

  Args:
    predicted: `[B, V, 3]`.
    target: `[B, V, 3]`.
    squared: average squared distances instead of distances.
    weights: optional `[V]` or `[B, V]` non-negative vertex weights (e.g. a face-region mask).

  Returns:
    Scalar: the (weighted) mean over vertices of the Euclidean distance, averaged over the batch.
    Differentiable; the gradient at an exact match is 0. Distances are square roots of summed
    squares, finite below 1e19 (float32; vertices are in mm): the rescaled `safe_norm` would cost
    two more passes over `[B, V, 3]`, 9% of a stage-1 step at paper shapes.
  """
  difference = predicted - target
  per_vertex = squared_lengths(difference) if squared else lengths(difference)
  if weights is None:
    return jnp.mean(per_vertex)
  weights = jnp.broadcast_to(weights, per_vertex.shape).astype(per_vertex.dtype)
  per_face = jnp.sum(per_vertex * weights, -1) / jnp.maximum(jnp.sum(weights, -1), 1e-12)
  return jnp.mean(per_face)


def face_size(landmarks: Array, visible: Array | None = None) -> Array:
  """Face size in the landmarks' units: `sqrt(width * height)` of their bounding box, `[B]`.

  Args:
    landmarks: `[B, L, 2]`.
    visible: optional `[B, L]` bool/0-1; invisible points are left out of the box.
  """
  if visible is None:
    visible = jnp.ones(landmarks.shape[:-1], bool)
  visible = visible.astype(bool)[..., None]
  big = jnp.asarray(jnp.finfo(landmarks.dtype).max, landmarks.dtype)
  low = jnp.min(jnp.where(visible, landmarks, big), axis=-2)
  high = jnp.max(jnp.where(visible, landmarks, -big), axis=-2)
  extent = jnp.maximum(high - low, 0.0)
  return safe_sqrt(extent[..., 0] * extent[..., 1])


def centred_vertex_errors(predicted: Array, target: Array) -> Array:
  """`[B]` per-shape mean per-vertex distance (mm) after moving each shape's centroid to the
  origin: the 3D supervision of stage 2, blind to the translation a weak-perspective camera
  cannot see.

  Args:
    predicted: `[B, V, 3]`.
    target: `[B, V, 3]`.

  Returns:
    `[B]`: per shape, the mean over vertices of `||(p - mean p) - (t - mean t)||`.
  """
  centre = lambda x: x - jnp.mean(x, axis=-2, keepdims=True)
  return jnp.mean(safe_norm(centre(predicted) - centre(target)), axis=-1)


def centred_vertex_loss(predicted: Array, target: Array) -> Array:
  """Scalar: the batch mean of `centred_vertex_errors` (mm)."""
  return jnp.mean(centred_vertex_errors(predicted, target))


def landmark_loss(predicted: Array, target: Array, *, visible: Array | None = None,
                  squared: bool = False) -> Array:
  """2D landmark reprojection error normalised by face size.

  Args:
    predicted: `[B, L, 2]` projected model landmarks (pixels).
    target: `[B, L, 2]` annotated landmarks (pixels).
    visible: optional `[B, L]` weights (1 visible / annotated, 0 not).
    squared: use squared distances (and the squared face size).

  Returns:
    Scalar: per face, the mean over visible landmarks of `||p - t|| / face_size(t)`, averaged over
    faces. Differentiable in `predicted`; the face size is computed from `target`.
  """
  if visible is None:
    visible = jnp.ones(predicted.shape[:-1], predicted.dtype)
  visible = visible.astype(predicted.dtype)
  size = jnp.maximum(face_size(target, visible), 1e-6)
  diff = predicted - target
  if squared:
    per_point = jnp.sum(jnp.square(diff), -1) / jnp.square(size)[:, None]
  else:
    per_point = safe_norm(diff) / size[:, None]
  per_face = jnp.sum(per_point * visible, -1) / jnp.maximum(jnp.sum(visible, -1), 1.0)
  return jnp.mean(per_face)


def photometric_loss(rendered: Array, target: Array, mask: Array, *, kind: str = "l2") -> Array:
  """Masked photometric error in RGB.

  Args:
    rendered: `[B, H, W, 3]` in [0, 1].
    target: `[B, H, W, 3]` in [0, 1].
    mask: `[B, H, W]` weights (the rendered face's coverage, times any skin mask).
    kind: "l2" (per-pixel Euclidean colour distance, as in the MoFA/Deep3D line) or "l1".

  Returns:
    Scalar: per image, sum of `mask * error` over sum of mask; averaged over images.
  """
  # Per colour channel: reductions over a trailing axis of 3 (and their gradients) are several
  # times slower on CPU than the same sums of three `[B, H, W]` arrays.
  diff = [rendered[..., c] - target[..., c] for c in range(3)]
  if kind == "l2":  # colours are bounded: no rescaling needed against overflow
    per_pixel = safe_sqrt(diff[0] * diff[0] + diff[1] * diff[1] + diff[2] * diff[2])
  elif kind == "l1":
    per_pixel = jnp.abs(diff[0]) + jnp.abs(diff[1]) + jnp.abs(diff[2])
  else:
    raise ValueError(f"photometric_loss: kind must be 'l1' or 'l2', got {kind!r}")
  mask = mask.astype(per_pixel.dtype)
  per_image = jnp.sum(per_pixel * mask, (1, 2)) / jnp.maximum(jnp.sum(mask, (1, 2)), 1.0)
  return jnp.mean(per_image)


# ---------------------------------------------------------------------------------------------
# Priors and basis regularisers.


def code_prior(codes: Array) -> Array:
  """Tikhonov prior `mean_b ||c_b||^2` on `[B, D]` codes (expression, albedo, Gaussian shape)."""
  return jnp.mean(jnp.sum(jnp.square(codes), axis=-1))


def squared_norm(tree: Any) -> Array:
  """`sum ||x||^2` over every array of a pytree (the stage-2 basis-residual penalty `||W_t||^2`)."""
  leaves = jax.tree_util.tree_leaves(tree)
  return sum(jnp.sum(jnp.square(x)) for x in leaves)


def basis_orthogonality(basis: Array, *, normalizer: float | None = None,
                        scale_invariant: bool = False) -> Array:
  """Orthogonality of a basis `[K, V, 3]` seen as `W` `[K, 3V]`: `||W W^T / n - I||_F^2`.

  Args:
    basis: `[K, V, 3]`.
    normalizer: n; defaults to `3V`, so a basis with orthogonal rows of unit RMS entry scores 0.
    scale_invariant: use the cosine Gram matrix (rows normalised) instead, which only penalises
      correlation between components and leaves their lengths (variances) free.
  """
  flat = basis.reshape(basis.shape[0], -1)
  if scale_invariant:
    flat = normalize(flat)
    gram = jnp.matmul(flat, flat.T, precision=HIGHEST)
  else:
    gram = jnp.matmul(flat, flat.T, precision=HIGHEST) / (
        flat.shape[1] if normalizer is None else normalizer)
  return jnp.sum(jnp.square(gram - jnp.eye(flat.shape[0], dtype=gram.dtype)))


def laplacian_smoothness(fields: Array, edges: Array) -> Array:
  """Mesh smoothness `mean ||L x||^2` of per-vertex fields with the uniform graph Laplacian.

  Args:
    fields: `[..., V, 3]` (e.g. a basis `[K, V, 3]` or shapes `[B, V, 3]`).
    edges: `[N, 2]` int unique undirected edges (`geometry.mesh_edges`).

  Returns:
    Scalar: mean over leading dims and vertices of `||x_i - mean_{j ~ i} x_j||^2`.
  """
  return jnp.mean(jnp.sum(jnp.square(uniform_laplacian(fields, edges)), axis=-1))


def symmetry_loss(fields: Array, mirror: Array) -> Array:
  """Left-right asymmetry `mean ||x_i - M x_{mirror(i)}||^2`, `M` negating the x coordinate.

  Args:
    fields: `[..., V, 3]` shapes or basis components in model space (x to the subject's left).
    mirror: `[V]` int index of each vertex's mirror partner (itself on the midline).
  """
  reflected = fields[..., mirror, :] * jnp.asarray([-1.0, 1.0, 1.0], fields.dtype)
  return jnp.mean(jnp.sum(jnp.square(fields - reflected), axis=-1))
