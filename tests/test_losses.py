import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from sfm_jax import geometry, losses


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _log_softmax_ce(logits, label):
  return np.log(np.sum(np.exp(logits))) - logits[label]


# A 3-sample case: K = 2, C = 2 prototypes along the axes, one unlabelled sample.
U = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
LABELS = np.array([0, 1, -1])
PROTOTYPES = np.array([[2.0, 0.0], [0.0, 3.0]])  # normalised inside the losses


def test_cosface_three_samples(x64):
  # Sample 0: cos = (1, 0), label 0 -> logits (s (1 - m), 0). Sample 1: cos = (0.6, 0.8), label 1.
  s, m = 32.0, 0.35
  expected = np.mean([_log_softmax_ce(np.array([s * (1 - m), 0.0]), 0),
                      _log_softmax_ce(np.array([s * 0.6, s * (0.8 - m)]), 1)])
  got = losses.cosface_loss(U, LABELS, PROTOTYPES, scale=s, margin=m)
  np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_arcface_three_samples_and_fallback(x64):
  s, m = 32.0, 0.5
  # Sample 0: theta = 0 -> cos(m). Sample 1: theta = arccos(0.8) -> cos(theta + m).
  expected = np.mean([_log_softmax_ce(np.array([s * np.cos(m), 0.0]), 0),
                      _log_softmax_ce(np.array([s * 0.6, s * np.cos(np.arccos(0.8) + m)]), 1)])
  got = losses.arcface_loss(U, LABELS, PROTOTYPES, scale=s, margin=m)
  np.testing.assert_allclose(got, expected, rtol=1e-12)
  # Past theta + m > pi the target logit is s (cos - m sin m): a sample opposite its prototype.
  u = np.array([[-1.0, 0.0]])
  expected = _log_softmax_ce(np.array([s * (-1.0 - m * np.sin(m)), 0.0]), 0)
  np.testing.assert_allclose(losses.arcface_loss(u, np.array([0]), PROTOTYPES, scale=s, margin=m),
                             expected, rtol=1e-12)


def test_center_loss_three_samples(x64):
  centers = np.array([[1.0, 1.0], [0.0, -2.0]])
  expected = np.mean([1 - 1 / np.sqrt(2), 1 - (-0.8)])
  np.testing.assert_allclose(losses.spherical_center_loss(U, LABELS, centers), expected,
                             rtol=1e-12)


def test_isotropy_and_ring_three_samples(x64):
  s = np.array([[1.0, 2.0], [3.0, -1.0], [2.0, 2.0]])
  radius = 2.0
  sigma2 = radius ** 2 / 2
  mean, var = s.mean(0), s.var(0)
  kl = 0.5 * np.sum(var / sigma2 + mean ** 2 / sigma2 - 1 - np.log(var / sigma2 + 1e-6))
  np.testing.assert_allclose(losses.isotropy_kl(s, radius), kl, rtol=1e-12)
  ring = np.mean((np.linalg.norm(s, axis=-1) / radius - 1) ** 2)
  np.testing.assert_allclose(losses.ring_loss(s, radius), ring, rtol=1e-12)


def test_isotropy_is_zero_for_the_target_gaussian_statistics(x64):
  # 2K samples at +-sigma sqrt(K) on each axis: every dimension has mean 0 and var sigma^2.
  k, radius = 4, 3.0
  sigma = radius / np.sqrt(k)
  s = np.concatenate([sigma * np.eye(k) * np.sqrt(k), -sigma * np.eye(k) * np.sqrt(k)])
  np.testing.assert_allclose(s.var(0), sigma ** 2)
  np.testing.assert_allclose(losses.isotropy_kl(s, radius), -0.5 * k * np.log1p(1e-6 / 1.0),
                             atol=1e-9)


@pytest.mark.parametrize("name", ["cosface", "arcface", "center"])
def test_unlabelled_samples_contribute_nothing(x64, name, rng):
  fn = {"cosface": losses.cosface_loss, "arcface": losses.arcface_loss,
        "center": losses.spherical_center_loss}[name]
  u, w = rng.normal(size=(5, 4)), rng.normal(size=(3, 4))
  labels = np.array([0, -1, 2, -1, 1])
  with_unlabelled = fn(u, labels, w)
  only_labelled = fn(u[labels >= 0], labels[labels >= 0], w)
  np.testing.assert_allclose(with_unlabelled, only_labelled, rtol=1e-12)
  # A batch of only -1: exactly 0, with finite zero gradients.
  none = -np.ones(5, np.int64)
  value, grads = jax.value_and_grad(fn, argnums=(0, 2))(jnp.asarray(u), none, jnp.asarray(w))
  assert float(value) == 0.0
  for g in grads:
    assert np.all(np.isfinite(g)) and np.all(np.asarray(g) == 0)


def _random_identity_batch(rng, b=6, k=5, c=3):
  u = rng.normal(size=(b, k))
  labels = np.array([0, 1, 2, -1, 1, 0])[:b]
  return jnp.asarray(u), labels, jnp.asarray(rng.normal(size=(c, k)))


@pytest.mark.parametrize("fn", [
    lambda u, y, w: losses.cosface_loss(u, y, w, scale=4.0),
    lambda u, y, w: losses.arcface_loss(u, y, w, scale=4.0),
    losses.spherical_center_loss,
], ids=["cosface", "arcface", "center"])
def test_identity_terms_gradcheck(x64, rng, fn):
  u, labels, w = _random_identity_batch(rng)
  check_grads(jax.jit(lambda u, w: fn(u, labels, w)), (u, w), order=2, modes=("fwd", "rev"))


def test_isotropy_and_ring_gradcheck(x64, rng):
  s = jnp.asarray(rng.normal(size=(6, 4)))
  check_grads(jax.jit(losses.isotropy_kl), (s, jnp.asarray(1.5)), order=2,
              modes=("fwd", "rev"))
  check_grads(jax.jit(losses.ring_loss), (s, jnp.asarray(1.5)), order=2,
              modes=("fwd", "rev"))


def test_vertex_and_landmark_losses_match_numpy(x64, rng):
  pred, target = rng.normal(size=(2, 5, 3)), rng.normal(size=(2, 5, 3))
  dist = np.linalg.norm(pred - target, axis=-1)
  np.testing.assert_allclose(losses.vertex_loss(pred, target), dist.mean(), rtol=1e-12)
  np.testing.assert_allclose(losses.vertex_loss(pred, target, squared=True), (dist ** 2).mean(),
                             rtol=1e-12)
  weights = np.array([1.0, 0.0, 2.0, 1.0, 0.0])
  expected = np.mean((dist * weights).sum(-1) / weights.sum())
  np.testing.assert_allclose(losses.vertex_loss(pred, target, weights=weights), expected,
                             rtol=1e-12)
  # Exact match: zero loss and zero (finite) gradient.
  grad = jax.grad(lambda p: losses.vertex_loss(p, jnp.asarray(target)))(jnp.asarray(target))
  assert np.all(np.asarray(grad) == 0)

  target2d = np.array([[[0.0, 0.0], [4.0, 0.0], [4.0, 9.0], [1.0, 2.0]]])  # box 4 x 9 -> size 6
  pred2d = target2d + np.array([[[3.0, 4.0], [0.0, 0.0], [0.0, 6.0], [100.0, 0.0]]])
  visible = np.array([[1.0, 1.0, 1.0, 0.0]])
  np.testing.assert_allclose(losses.landmark_loss(pred2d, target2d, visible=visible),
                             (5 / 6 + 0 + 6 / 6) / 3, rtol=1e-12)
  np.testing.assert_allclose(losses.landmark_loss(pred2d, target2d, visible=visible, squared=True),
                             (25 / 36 + 0 + 36 / 36) / 3, rtol=1e-12)


def test_photometric_loss_matches_numpy(x64, rng):
  rendered, target = rng.uniform(size=(2, 3, 4, 3)), rng.uniform(size=(2, 3, 4, 3))
  mask = (rng.uniform(size=(2, 3, 4)) > 0.4).astype(float)
  l2 = np.linalg.norm(rendered - target, axis=-1)
  l1 = np.abs(rendered - target).sum(-1)
  for kind, per_pixel in (("l2", l2), ("l1", l1)):
    expected = np.mean((per_pixel * mask).sum((1, 2)) / mask.sum((1, 2)))
    np.testing.assert_allclose(losses.photometric_loss(rendered, target, mask, kind=kind),
                               expected, rtol=1e-12)
  check_grads(jax.jit(lambda r: losses.photometric_loss(r, target, mask)), (rendered,), order=2,
              modes=["fwd", "rev"])
  # A pixel that matches exactly: gradient 0 there (not NaN), the rest unchanged.
  matched = rendered.copy()
  matched[0, 0, 0] = target[0, 0, 0]
  grad = np.asarray(jax.grad(lambda r: losses.photometric_loss(r, target, mask))(matched))
  assert np.all(np.isfinite(grad)) and np.all(grad[0, 0, 0] == 0)


def test_basis_regularisers_match_numpy(x64, rng):
  basis = rng.normal(size=(3, 4, 3))
  flat = basis.reshape(3, -1)
  expected = np.sum((flat @ flat.T / 12 - np.eye(3)) ** 2)
  np.testing.assert_allclose(losses.basis_orthogonality(basis), expected, rtol=1e-12)
  unit_rows = _unit(flat)
  np.testing.assert_allclose(losses.basis_orthogonality(basis, scale_invariant=True),
                             np.sum((unit_rows @ unit_rows.T - np.eye(3)) ** 2), rtol=1e-12)
  # An orthogonal basis with unit-RMS rows scores 0.
  q, _ = np.linalg.qr(rng.normal(size=(12, 3)))
  np.testing.assert_allclose(losses.basis_orthogonality(q.T.reshape(3, 4, 3) * np.sqrt(12)), 0.0,
                             atol=1e-20)

  # Laplacian on a 4-vertex fan: dense numpy Laplacian from the same edges.
  triangles = np.array([[0, 1, 2], [0, 2, 3]])
  edges = geometry.mesh_edges(triangles)
  adjacency = np.zeros((4, 4))
  adjacency[edges[:, 0], edges[:, 1]] = adjacency[edges[:, 1], edges[:, 0]] = 1
  dense_l = np.eye(4) - adjacency / adjacency.sum(1, keepdims=True)
  fields = rng.normal(size=(2, 4, 3))
  expected = np.mean(np.sum((dense_l @ fields) ** 2, -1))
  np.testing.assert_allclose(losses.laplacian_smoothness(fields, edges), expected, rtol=1e-12)

  # Symmetry: 3 vertices, 0 <-> 1 mirrored, 2 on the midline.
  mirror = np.array([1, 0, 2])
  shape = np.array([[1.0, 2.0, 3.0], [-1.0, 2.0, 3.0], [0.0, 5.0, 1.0]])
  np.testing.assert_allclose(losses.symmetry_loss(shape, mirror), 0.0, atol=1e-15)
  shape[0, 2] += 1.0  # one vertex pushed out by 1 mm: two residuals of 1
  np.testing.assert_allclose(losses.symmetry_loss(shape, mirror), 2.0 / 3.0, rtol=1e-12)
  np.testing.assert_allclose(losses.code_prior(np.array([[3.0, 4.0], [0.0, 1.0]])), 13.0)
  np.testing.assert_allclose(losses.squared_norm({"a": np.ones(3), "b": [2 * np.ones(2)]}), 11.0)


def test_losses_are_jit_and_vmap_safe(rng):
  u, labels, w = _random_identity_batch(rng)
  u, w = u.astype(jnp.float32), w.astype(jnp.float32)
  eager = losses.cosface_loss(u, labels, w)
  np.testing.assert_allclose(jax.jit(losses.cosface_loss)(u, labels, w), eager, rtol=1e-5)
  per_sample = jax.vmap(lambda ui, yi: losses.spherical_center_loss(ui[None], yi[None], w))(
      u, jnp.asarray(labels))
  labelled = labels >= 0
  np.testing.assert_allclose(per_sample[labelled].mean(),
                             losses.spherical_center_loss(u, labels, w), rtol=1e-5)


def test_centred_vertex_loss_hand_values():
  # A unit triangle and the same triangle shifted by (5, -2, 7): centring removes the shift.
  triangle = np.array([[[0.0, 0, 0], [3, 0, 0], [0, 3, 0]]])
  shifted = triangle + np.array([5.0, -2.0, 7.0])
  assert float(losses.centred_vertex_loss(jnp.asarray(shifted), jnp.asarray(triangle))) == (
      pytest.approx(0.0, abs=1e-6))
  # Moving one vertex by 3 mm along z moves the centroid by 1 mm: the centred distances are
  # 1, 1 and 2 mm (vertex 0 by 3 - 1), mean 4/3.
  moved = triangle.copy()
  moved[0, 0, 2] = 3.0
  assert float(losses.centred_vertex_loss(jnp.asarray(moved), jnp.asarray(triangle))) == (
      pytest.approx(4.0 / 3.0, rel=1e-6))
  # Per shape: the shifted triangle scores 0, the moved one 4/3; the loss is their mean.
  both = jnp.asarray(np.concatenate([shifted, moved]))
  np.testing.assert_allclose(losses.centred_vertex_errors(both, jnp.asarray(np.concatenate(
      [triangle, triangle]))), [0.0, 4.0 / 3.0], atol=1e-6)
