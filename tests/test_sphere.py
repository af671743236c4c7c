import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from sfm_jax import sphere


def test_project_lands_on_sphere_and_keeps_direction(rng):
  z = rng.normal(size=(5, 7)) * rng.uniform(0.01, 100.0, size=(5, 1))
  s = np.asarray(sphere.project(jnp.asarray(z, jnp.float32), 2.5))
  np.testing.assert_allclose(np.linalg.norm(s, axis=-1), 2.5, rtol=1e-6)
  np.testing.assert_allclose(s, 2.5 * z / np.linalg.norm(z, axis=-1, keepdims=True), rtol=1e-5)


def test_project_gradients_random_points(x64, rng):
  z = jnp.asarray(rng.normal(size=(4, 6)))
  check_grads(jax.jit(lambda z: sphere.project(z, 1.7)), (z,), order=2, modes=("fwd", "rev"))
  check_grads(jax.jit(lambda r: sphere.project(z, r)), (jnp.asarray(1.7),), order=2,
              modes=("fwd", "rev"))


@pytest.mark.parametrize("norm", [0.0, 3e-7, 2e-6, 1e-6 + 1e-7])
def test_project_gradients_near_zero(x64, rng, norm):
  direction = rng.normal(size=(3, 5))
  z = jnp.asarray(norm * direction / np.linalg.norm(direction, axis=-1, keepdims=True))
  # Check through z = 1e-6 w: the same code path at the same points, but with O(1) derivatives,
  # so second-order finite differences are not swamped by rounding (steps stay on one side of
  # the floor eps = 1e-6, whose kink is a genuine discontinuity of the first derivative).
  w = z / 1e-6
  check_grads(jax.jit(lambda w: sphere.project(1e-6 * w, 2.0)), (w,), order=2,
              modes=("fwd", "rev"), eps=1e-5)
  value, jac = sphere.project(z, 2.0), jax.jacfwd(lambda z: sphere.project(z, 2.0))(z)
  assert np.all(np.isfinite(value)) and np.all(np.isfinite(jac))
  if norm < 1e-6:  # linear below the floor: R z / eps
    np.testing.assert_allclose(value, 2.0 * z / 1e-6, rtol=1e-12, atol=1e-300)


def test_project_at_zero_float32_is_finite():
  z = jnp.zeros((2, 4), jnp.float32)
  value, vjp = jax.vjp(lambda z: sphere.project(z, 3.0), z)
  (grad,) = vjp(jnp.ones_like(value))
  assert np.all(value == 0) and np.all(np.isfinite(grad))
  np.testing.assert_allclose(grad, 3.0 / 1e-6, rtol=1e-6)


@pytest.mark.parametrize("magnitude", [1e20, 1e30, 1e37])
def test_project_huge_norms_float32(rng, magnitude):
  z = jnp.asarray(rng.normal(size=(3, 8)) * magnitude, jnp.float32)
  value, vjp = jax.vjp(lambda z: sphere.project(z, 3.0), z)
  (grad,) = vjp(jnp.ones_like(value))
  assert np.all(np.isfinite(value)) and np.all(np.isfinite(grad))
  np.testing.assert_allclose(np.linalg.norm(np.asarray(value, np.float64), axis=-1), 3.0,
                             rtol=1e-6)
  # Exact Jacobian-vector product of R z/|z| with a ones cotangent: R/|z| (1 - u <u, 1>).
  z64 = np.asarray(z, np.float64)
  u = z64 / np.linalg.norm(z64, axis=-1, keepdims=True)
  expected = 3.0 / np.linalg.norm(z64, axis=-1, keepdims=True) * (
      1.0 - u * u.sum(-1, keepdims=True))
  # Entries below float32's smallest normal number (at 1e37) are flushed to zero.
  np.testing.assert_allclose(np.asarray(grad, np.float64), expected, rtol=1e-4,
                             atol=max(1e-6 * np.abs(expected).max(), np.finfo(np.float32).tiny))


def _anisotropic_gram(rng, k):
  """A positive definite `[k, k]` Gram matrix whose eigenvalues span 1e4 (as a face basis')."""
  q, _ = np.linalg.qr(rng.normal(size=(k, k)))
  return (q * np.logspace(2, -2, k)) @ q.T


def test_metric_project_is_the_nearest_sphere_code_in_the_metric(x64, rng):
  """Checked against the global optimality conditions of the trust-region problem
  min_{|s| = R} (z - s)^T G (z - s) (More and Sorensen): |s| = R, and some l with
  (G + l I) s = G z and G + l I positive semidefinite; for G = c I it is the radial projection."""
  k, radius = 6, 2.0
  gram = _anisotropic_gram(rng, k)
  z = rng.normal(size=(40, k)) * rng.uniform(0.05, 20.0, size=(40, 1))
  s = np.asarray(sphere.metric_project(jnp.asarray(z), radius, jnp.asarray(gram)))
  np.testing.assert_allclose(np.linalg.norm(s, axis=1), radius, rtol=1e-12)
  lowest = np.linalg.eigvalsh(gram)[0]
  for zi, si in zip(z, s):
    multiplier = float(si @ (gram @ (zi - si))) / radius ** 2  # from (G + l I) s = G z
    np.testing.assert_allclose(gram @ si + multiplier * si, gram @ zi, atol=1e-7 * np.abs(
        gram @ zi).max())
    assert multiplier >= -lowest * (1 + 1e-6)  # G + l I is positive semidefinite: the global one
    # No other sphere point of a random sample is nearer.
    others = rng.normal(size=(2000, k))
    others *= radius / np.linalg.norm(others, axis=1, keepdims=True)
    distance = lambda p: np.einsum("...i,ij,...j->...", zi - p, gram, zi - p)
    assert distance(si) <= distance(others).min() + 1e-9
  np.testing.assert_allclose(
      sphere.metric_project(jnp.asarray(z), radius, 3.0 * jnp.eye(k)),
      sphere.project(jnp.asarray(z), radius), rtol=1e-12)


def test_metric_project_gradients_and_float32(x64, rng):
  k, radius = 5, 1.5
  gram = jnp.asarray(_anisotropic_gram(rng, k))
  z = jnp.asarray(rng.normal(size=(4, k)) * 3.0)
  # Jitted: the bisection loop runs op by op otherwise (14 s).
  check_grads(jax.jit(lambda z: sphere.metric_project(z, radius, gram)), (z,), order=1,
              modes=("fwd", "rev"))
  check_grads(jax.jit(lambda r: sphere.metric_project(z, r, gram)), (jnp.asarray(radius),),
              order=1, modes=("fwd", "rev"))
  exact = np.asarray(sphere.metric_project(z, radius, gram))
  single = np.asarray(sphere.metric_project(z.astype(jnp.float32), radius,
                                            gram.astype(jnp.float32)))
  np.testing.assert_allclose(single, exact, atol=1e-4 * radius)
  zero = jnp.zeros((1, k))
  value, grad = jax.value_and_grad(lambda z: sphere.metric_project(z, radius, gram).sum())(zero)
  assert np.all(np.asarray(value) == 0) and np.all(np.isfinite(grad))  # as `project` at 0


def test_cosine_and_geodesic_match_numpy(x64, rng):
  a, b = rng.normal(size=(10, 4)), rng.normal(size=(10, 4))
  cos = np.sum(a * b, -1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
  np.testing.assert_allclose(sphere.cosine_similarity(a, b), cos, rtol=1e-12)
  np.testing.assert_allclose(sphere.geodesic_distance(a, b), np.arccos(cos), rtol=1e-10)
  # Accurate where arccos is not: nearly equal and opposite directions.
  e = np.array([1.0, 0.0, 0.0])
  tiny = np.array([1.0, 1e-9, 0.0])
  np.testing.assert_allclose(sphere.geodesic_distance(e, tiny), 1e-9, rtol=1e-6)
  np.testing.assert_allclose(sphere.geodesic_distance(e, -tiny), np.pi - 1e-9, rtol=1e-12)
  check_grads(jax.jit(lambda a: sphere.geodesic_distance(a, b)), (jnp.asarray(a),), order=2)
  assert np.all(np.isfinite(jax.grad(lambda a: sphere.geodesic_distance(a, a))(jnp.asarray(e))))


def test_tangent_project_is_orthogonal_and_idempotent(x64, rng):
  u, g = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
  t = np.asarray(sphere.tangent_project(u, g))
  unit = u / np.linalg.norm(u, axis=-1, keepdims=True)
  np.testing.assert_allclose(np.sum(t * unit, -1), 0.0, atol=1e-12)
  np.testing.assert_allclose(sphere.tangent_project(u, t), t, atol=1e-12)
  np.testing.assert_allclose(t, g - np.sum(g * unit, -1, keepdims=True) * unit, atol=1e-12)


def test_uniform_samples_are_on_sphere_and_centred():
  s = np.asarray(sphere.sample_uniform(jax.random.key(0), (20000,), 5, 2.0))
  np.testing.assert_allclose(np.linalg.norm(s, axis=-1), 2.0, rtol=1e-5)
  # Mean 0 and covariance R^2/K I for the uniform distribution; 20000 samples: se ~ 0.01.
  np.testing.assert_allclose(s.mean(0), 0.0, atol=0.05)
  np.testing.assert_allclose(np.cov(s.T), np.eye(5) * 4.0 / 5.0, atol=0.05)


def _vmf_cosine_moments(kappa: float, dim: int) -> tuple[float, float]:
  """(E[w], Var[w]) of w = <x, mu> by quadrature of its marginal density
  exp(kappa w) (1 - w^2)^((d-3)/2) on (-1, 1)."""
  w = np.linspace(-1.0, 1.0, 400001)[1:-1]
  log_density = kappa * w + 0.5 * (dim - 3) * np.log1p(-w ** 2)
  density = np.exp(log_density - log_density.max())
  density /= np.sum(density)
  mean = float(np.sum(w * density))
  return mean, float(np.sum((w - mean) ** 2 * density))


@pytest.mark.parametrize("kappa,dim", [(2.0, 3), (20.0, 10), (200.0, 16)])
def test_vmf_cosine_mean_and_spread_match_quadrature(kappa, dim):
  mu = jnp.arange(1.0, dim + 1.0)
  x = np.asarray(sphere.sample_vmf(jax.random.key(1), mu, kappa, 4000, radius=3.0), np.float64)
  np.testing.assert_allclose(np.linalg.norm(x, axis=-1), 3.0, rtol=1e-5)
  mu_unit = np.asarray(mu) / np.linalg.norm(mu)
  cosines = x @ mu_unit / 3.0
  expected_mean, expected_variance = _vmf_cosine_moments(kappa, dim)
  n = len(cosines)
  assert abs(cosines.mean() - expected_mean) < 4 * cosines.std() / np.sqrt(n) + 1e-4
  # The spread too: the sample variance's standard error is about sqrt((m4 - var^2) / n).
  centred = cosines - cosines.mean()
  variance_error = np.sqrt(max(np.mean(centred ** 4) - np.var(cosines) ** 2, 0.0) / n)
  assert abs(np.var(cosines) - expected_variance) < 4 * variance_error + 1e-7
  # The part orthogonal to mu has no preferred direction.
  tangent = x / 3.0 - cosines[:, None] * mu_unit
  assert np.linalg.norm(tangent.mean(0)) < 6 * np.sqrt(np.mean(np.sum(tangent ** 2, -1))
                                                       / len(x))
