"""The hypersphere of shape codes: projection, directions, distances, samplers, tangent spaces.

Codes `s` live on the sphere of radius R in R^K; `u = s / R` are unit directions. Every function
here is pure and safe under `jit`, `vmap` and `grad` (including second order): norms are computed
with a max-rescaling so they neither overflow (|z| up to ~1e38 in float32) nor underflow, and every
square root or division has a guarded branch so values and gradients stay finite at zero.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

Array = Any

DEFAULT_EPS = 1e-6


def where_positive(x: Array, f, fallback: float = 0.0) -> Array:
  """`f(x)` where `x > 0` else `fallback`, with finite gradients on both branches (double where)."""
  positive = x > 0
  return jnp.where(positive, f(jnp.where(positive, x, 1.0)), fallback)


def safe_sqrt(x: Array) -> Array:
  """`sqrt(max(x, 0))` with gradient 0 (not inf/NaN) at and below 0."""
  return where_positive(x, jnp.sqrt)


def safe_norm(x: Array, axis: int = -1, keepdims: bool = False) -> Array:
  """Euclidean norm along `axis`, finite in value and all derivatives everywhere.

  Rescales by the largest |component| (held constant for differentiation, which is exact because
  the norm is 1-homogeneous), so float32 inputs up to ~1e38 neither overflow nor underflow.
  The gradient at exactly 0 is 0 (the subgradient of least norm).
  """
  scale = jax.lax.stop_gradient(jnp.max(jnp.abs(x), axis=axis, keepdims=True))
  scale = jnp.where(scale > 0, scale, 1.0)
  pre = jnp.where(scale > 1e18, 2.0 ** -64, 1.0).astype(scale.dtype)  # see `project`
  squared = jnp.sum(jnp.square((x * pre) / (scale * pre)), axis=axis, keepdims=True)
  norm = safe_sqrt(squared) * scale
  return norm if keepdims else jnp.squeeze(norm, axis=axis)


def project(z: Array, radius: Array, *, eps: float = DEFAULT_EPS) -> Array:
  """Maps free vectors onto the sphere of radius R: `s = R * z / max(||z||, eps)`.

  Args:
    z: `[..., K]` free shape vectors.
    radius: scalar (or broadcastable) sphere radius R.
    eps: norm floor. For `||z|| < eps` the map is the linear `R * z / eps` (so z = 0 -> 0 with
      gradient `R / eps`); elsewhere it is the radial projection.

  Returns:
    `[..., K]` codes with `||s|| = R` (for `||z|| >= eps`). Differentiable in `z` and `radius`.
  """
  # Work on w = z / max|z_i| (the scale is held constant for differentiation, which keeps every
  # derivative exact): ||w|| lies in [1, sqrt(K)], so neither the value nor the backward pass
  # (which divides by the squared norm) overflows or underflows, even for ||z|| ~ 1e38 in float32.
  # XLA on CPU flushes subnormals to zero and may divide as `z * (1 / scale)`: for scale above
  # ~1e38 that reciprocal is subnormal, flushes to 0, and w = 0 / 0. Both sides are first
  # brought down by 2^-64 for huge scales, so every intermediate stays a normal number.
  scale = jax.lax.stop_gradient(jnp.max(jnp.abs(z), axis=-1, keepdims=True))
  scale = jnp.where(scale > 0, scale, 1.0)
  pre = jnp.where(scale > 1e18, 2.0 ** -64, 1.0).astype(scale.dtype)
  w = (z * pre) / (scale * pre)
  norm_w = safe_sqrt(jnp.sum(jnp.square(w), axis=-1, keepdims=True))
  return radius * w / jnp.maximum(norm_w, eps / scale)



def shape_codes(z: Array, code_kind: str, radius: Array, *, hard: bool = True) -> Array:
  """The shape codes `s` of free vectors `z` under a model's code space: `project(z, R)` for
  sphere models with the hard constraint, `z` itself otherwise (Gaussian codes, or the soft
  sphere whose ring penalty acts on `z`). `code_kind` is "sphere" or "gaussian" (static)."""
  return project(z, radius) if code_kind == "sphere" and hard else z


def unit(s: Array, radius: Array) -> Array:
  """Unit directions `u = s / R`, `[..., K]`."""
  return s / radius


def normalize(x: Array, *, eps: float = DEFAULT_EPS) -> Array:
  """`x / max(||x||, eps)` along the last axis (`project` onto the unit sphere)."""
  return project(x, 1.0, eps=eps)


def cosine_similarity(a: Array, b: Array, *, eps: float = DEFAULT_EPS) -> Array:
  """Cosine of the angle between `a` and `b`, `[..., K] x [..., K] -> [...]` (broadcasting)."""
  return jnp.sum(normalize(a, eps=eps) * normalize(b, eps=eps), axis=-1)


def geodesic_distance(a: Array, b: Array, *, eps: float = DEFAULT_EPS) -> Array:
  """Great-circle angle in radians between the directions of `a` and `b`, in [0, pi].

  Computed as `2 * atan2(||u - v||, ||u + v||)` on unit vectors, which is accurate for nearly
  equal and nearly opposite directions (unlike `arccos` of the cosine). The gradient at `u = v`
  is 0 (the distance has a cone there).
  """
  u, v = normalize(a, eps=eps), normalize(b, eps=eps)
  return 2.0 * jnp.arctan2(safe_norm(u - v), safe_norm(u + v))


def tangent_project(direction: Array, vector: Array, *, eps: float = DEFAULT_EPS) -> Array:
  """Component of `vector` tangent to the sphere at `direction`: `v - <v, u> u`, `[..., K]`."""
  u = normalize(direction, eps=eps)
  return vector - jnp.sum(vector * u, axis=-1, keepdims=True) * u


def sample_uniform(key: jax.Array, shape: tuple[int, ...], dim: int, radius: Array = 1.0,
                   *, dtype=jnp.float32) -> Array:
  """Uniform samples on the sphere of radius R in R^dim, `[*shape, dim]`."""
  gaussian = jax.random.normal(key, (*shape, dim), dtype)
  return project(gaussian, radius)


def _sample_vmf_cosine(key: jax.Array, kappa: Array, dim: int, dtype) -> Array:
  """One draw of w = <x, mu> for x ~ vMF(mu, kappa) on S^(dim-1), by Wood's (1994) rejection."""
  kappa = jnp.asarray(kappa, dtype)
  d1 = dim - 1.0
  # b = (-2k + sqrt(4k^2 + d1^2)) / d1, in the form that does not cancel for large kappa.
  b = d1 / (2.0 * kappa + jnp.sqrt(4.0 * kappa ** 2 + d1 ** 2))
  x0 = (1.0 - b) / (1.0 + b)
  c = kappa * x0 + d1 * jnp.log1p(-x0 ** 2)

  def cond(carry):
    return ~carry[2]

  def body(carry):
    key, _, _ = carry
    key, k_beta, k_uniform = jax.random.split(key, 3)
    z = jax.random.beta(k_beta, d1 / 2.0, d1 / 2.0, dtype=dtype)
    w = (1.0 - (1.0 + b) * z) / (1.0 - (1.0 - b) * z)
    log_u = jnp.log(jax.random.uniform(k_uniform, (), dtype, minval=jnp.finfo(dtype).tiny))
    accept = kappa * w + d1 * jnp.log1p(-x0 * w) - c >= log_u
    return key, w, accept

  _, w, _ = jax.lax.while_loop(cond, body, (key, jnp.zeros((), dtype), jnp.zeros((), bool)))
  return w


def sample_vmf(key: jax.Array, mean_direction: Array, kappa: Array, num_samples: int,
               radius: Array = 1.0) -> Array:
  """Von Mises-Fisher samples around a direction (synthetic identities, augmentation).

  Density on the unit sphere S^(K-1): `p(u) ~ exp(kappa * <mu, u>)`. Larger kappa concentrates the
  samples; the expected cosine to `mu` is `I_{K/2}(kappa) / I_{K/2-1}(kappa)`.

  Args:
    key: PRNG key.
    mean_direction: `[K]` (normalised here), K >= 2.
    kappa: concentration >= 0.
    num_samples: N.
    radius: R of the returned points.

  Returns:
    `[N, K]` points on the sphere of radius R. Not differentiable in `kappa` (rejection sampling).
  """
  mu = normalize(mean_direction)
  dim = mu.shape[-1]
  dtype = mu.dtype
  key_w, key_v = jax.random.split(key)
  w = jax.vmap(lambda k: _sample_vmf_cosine(k, kappa, dim, dtype))(
      jax.random.split(key_w, num_samples))
  # A uniform direction in the tangent space of mu, then rotate by the sampled angle.
  v = normalize(tangent_project(mu, jax.random.normal(key_v, (num_samples, dim), dtype)))
  x = w[:, None] * mu + jnp.sqrt(jnp.clip(1.0 - w ** 2, 0.0))[:, None] * v
  return radius * x


def basis_gram(shape_basis: Array) -> Array:
  """`G = W W^T` `[K, K]` of a shape basis `W` `[K, V, 3]` (mm^2 per unit code^2): the squared
  shape distance of two codes is `(a - b)^T G (a - b)`."""
  flat = jnp.reshape(shape_basis, (shape_basis.shape[0], -1))
  return flat @ flat.T


def metric_project(z: Array, radius: Array, gram: Array, *, eps: float = DEFAULT_EPS,
                   bisections: int = 40) -> Array:
  """The code on the sphere of radius R nearest to `z` in the metric `gram`:
  `argmin_{||s|| = R} (z - s)^T G (z - s)`. With `G = basis_gram(W)` that is the sphere code
  whose decoded shape lies nearest to the (unconstrained) shape `W^T z`.

  The solution is `s = (G + l I)^-1 G z` with the `l > -lambda_min(G)` at which `||s|| = R` (the
  trust-region secular equation, unique for `z` with a component along G's smallest
  eigenvector): found by bisection on `1 / ||s(l)||` (no gradient), then one Newton step written
  in `z` and R, whose derivative at the root is the implicit one; the result is brought exactly
  onto the sphere by `project`. For `G = c I` it is the radial `project(z, R)`.

  Args:
    z: `[..., K]` free vectors (finite, |z| below ~1e18).
    radius: scalar sphere radius R.
    gram: `[K, K]` symmetric positive definite metric, treated as a constant (no gradient).
    eps: as in `project`; `z` of norm below it map as `project` maps them.
    bisections: bisection steps (40: float32 precision on any bracket).

  Returns:
    `[..., K]` codes with `||s|| = R`; differentiable in `z` and `radius` (first order).
  """
  lam, vecs = jnp.linalg.eigh(jax.lax.stop_gradient(gram))
  lam = jnp.maximum(lam / lam[-1], 1e-9)  # scale-free; the solution does not depend on G's scale
  small = safe_norm(z, keepdims=True) < eps  # those go to `project`; a safe stand-in here
  a = (jnp.where(small, jnp.ones_like(z), z) @ vecs) * lam  # G z in G's eigenbasis, [..., K]
  a_fixed = jax.lax.stop_gradient(a)
  r_fixed = jax.lax.stop_gradient(radius)

  def inverse_norm(coefficients, shift):  # 1 / ||s(shift)||, s_i = a_i / (lambda_i + shift)
    denominator = jnp.maximum(lam + shift[..., None], 1e-30)
    return 1.0 / jnp.maximum(safe_norm(coefficients / denominator), 1e-30)

  # The root lies in [lo, hi]: at lo the smallest-eigenvalue component alone has length R, at hi
  # every component is at most |a_i| R / |a|.
  lo = -lam[0] + jnp.abs(a_fixed[..., 0]) / r_fixed
  hi = -lam[0] + safe_norm(a_fixed) / r_fixed

  def bisect(_, bounds):
    low, high = bounds
    middle = 0.5 * (low + high)
    longer = inverse_norm(a_fixed, middle) < 1.0 / r_fixed  # ||s|| > R: the root is to the right
    return jnp.where(longer, middle, low), jnp.where(longer, high, middle)

  low, high = jax.lax.fori_loop(0, bisections, bisect, (lo, hi))
  shift0 = jax.lax.stop_gradient(0.5 * (low + high))
  # One Newton step on psi(l) = 1/||s(l)|| - 1/R, written in a and R (the implicit derivative).
  denominator = lam + shift0[..., None]
  norm = safe_norm(a / denominator)
  slope = jnp.sum(jnp.square(a) / denominator ** 3, axis=-1) / jnp.maximum(norm, 1e-30) ** 3
  psi = 1.0 / jnp.maximum(norm, 1e-30) - 1.0 / radius
  shift = shift0 - psi / jnp.maximum(slope, 1e-30)
  codes = (a / (lam + shift[..., None])) @ vecs.T
  return jnp.where(small, project(z, radius, eps=eps), project(codes, radius, eps=eps))
