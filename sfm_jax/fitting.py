"""Fitting a frozen model to scans: the one routine every evaluation uses for every model.

For scans `[N, V, 3]` in correspondence with a `FaceModel`:
1. a least-squares start on the scans as given: `[s; e]` solving `decode(s, e) ~ scan` (tiny
   ridge);
2. refinement with Adam under the model's code space: sphere models optimise free vectors `z`
   with `s = project(z, R)`; Gaussian models optimise `s` with a Tikhonov prior. Expression codes
   have a Tikhonov prior in both;
3. for each further round (`rounds` in all): rigid alignment of each scan to its current
   reconstruction (Procrustes, no scale), then refinement from the current codes. The loss is
the mean squared per-vertex distance (mm^2) plus the priors; every scan is fitted independently
(all parameters are per scan, so batching does not couple them).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sfm_jax import geometry, sphere
from sfm_jax.model import FaceModel, decode


@dataclasses.dataclass(frozen=True)
class Fit:
  """Result of `fit_scans` (numpy arrays).

  Attributes:
    shape_codes: `[N, K]` codes (on the sphere for sphere models).
    expr_codes: `[N, E]`.
    reconstruction: `[N, V, 3]` decoded fits, in the aligned scans' frame.
    aligned: `[N, V, 3]` the scans rigidly aligned to their reconstruction.
  """
  shape_codes: np.ndarray
  expr_codes: np.ndarray
  reconstruction: np.ndarray
  aligned: np.ndarray


def _align_rigid(scans: jax.Array, targets: jax.Array) -> jax.Array:
  """Each scan rigidly moved onto its target (least squares), `[N, V, 3]`."""
  def one(scan, target):
    scale, rotation, translation = geometry.similarity_procrustes(scan, target, with_scale=False)
    return geometry.apply_similarity(scan, scale, rotation, translation)
  return jax.vmap(one)(scans, targets)


def _least_squares_codes(model: FaceModel, offsets: jax.Array, ridge: float) -> jax.Array:
  """`[N, K + E]` codes minimising `||codes @ B - offsets||^2 + ridge ||codes||^2`."""
  basis = jnp.concatenate([model.shape_basis, model.expr_basis]).reshape(
      model.shape_dim + model.expr_dim, -1)
  gram = jnp.matmul(basis, basis.T, precision=geometry.HIGHEST)
  rhs = jnp.matmul(offsets.reshape(offsets.shape[0], -1), basis.T, precision=geometry.HIGHEST)
  return jnp.linalg.solve(gram + ridge * jnp.eye(gram.shape[0], dtype=gram.dtype), rhs.T).T


@functools.partial(jax.jit, static_argnames=("steps", "sphere_codes"))
def _refine(model: FaceModel, aligned: jax.Array, shape_init: jax.Array, expr_init: jax.Array, *,
            steps: int, learning_rate: float, shape_prior: float, expr_prior: float,
            sphere_codes: bool):
  """Adam refinement of the codes; returns (shape codes, expr codes)."""
  def codes_of(params):
    s = sphere.project(params["z"], model.radius) if sphere_codes else params["z"]
    return s, params["e"]

  def loss_fn(params):
    s, e = codes_of(params)
    residual = decode(model, s, e) - aligned
    data = jnp.mean(jnp.sum(jnp.square(residual), -1))
    prior = expr_prior * jnp.mean(jnp.sum(jnp.square(e), -1))
    if not sphere_codes:
      prior = prior + shape_prior * jnp.mean(jnp.sum(jnp.square(s), -1))
    return (data + prior) * aligned.shape[0]  # per-scan objectives summed: independent fits

  tx = optax.adam(learning_rate)
  params = {"z": shape_init, "e": expr_init}
  state = tx.init(params)

  def step(carry, _):
    params, state = carry
    grads = jax.grad(loss_fn)(params)
    updates, state = tx.update(grads, state, params)
    return (optax.apply_updates(params, updates), state), None

  (params, _), _ = jax.lax.scan(step, (params, state), None, length=steps)
  return codes_of(params)


def fit_scans(model: FaceModel, scans: Any, *, steps: int = 200, rounds: int = 3,
              learning_rate: float = 0.02, shape_prior: float = 1e-4, expr_prior: float = 1e-4,
              ridge: float = 1e-6, align: bool = True, batch_size: int = 256) -> Fit:
  """Fits codes (and a rigid pose) of `model` to each scan; see the module docstring.

  Args:
    model: the frozen model (`code_kind` picks the code space).
    scans: `[N, V, 3]` scans in correspondence with the model, mm.
    steps: Adam steps per round.
    rounds: alignment + refinement rounds.
    learning_rate: Adam learning rate on the codes.
    shape_prior, expr_prior: Tikhonov weights (mm^2 per unit code^2) on Gaussian shape codes and
      on expression codes.
    ridge: regulariser of the least-squares start.
    align: rigidly align scans to the reconstruction (else keep them as given).
    batch_size: scans fitted at a time (memory).

  Returns:
    A `Fit`.
  """
  scans = np.asarray(scans, np.float32)
  if scans.ndim != 3 or scans.shape[1:] != (model.num_vertices, 3):
    raise ValueError(f"fit_scans: scans must be [N, {model.num_vertices}, 3], got {scans.shape}")
  model = jax.tree_util.tree_map(jnp.asarray, model)
  outputs = []
  for start in range(0, len(scans), batch_size):
    batch = jnp.asarray(scans[start:start + batch_size])
    s = e = target = None
    for round_index in range(rounds):
      # Round 0 fits the scans as given (they arrive roughly registered); later rounds first
      # align each scan to its current reconstruction.
      aligned = _align_rigid(batch, target) if align and round_index > 0 else batch
      if round_index == 0:
        codes = _least_squares_codes(model, aligned - model.mean, ridge)
        s, e = codes[:, :model.shape_dim], codes[:, model.shape_dim:]
      s, e = _refine(model, aligned, s, e, steps=steps, learning_rate=learning_rate,
                     shape_prior=shape_prior, expr_prior=expr_prior,
                     sphere_codes=model.code_kind == "sphere")
      target = decode(model, s, e)
    outputs.append((s, e, target, aligned))
  gather = lambda i: np.concatenate([np.asarray(o[i]) for o in outputs])
  return Fit(shape_codes=gather(0), expr_codes=gather(1), reconstruction=gather(2),
             aligned=gather(3))
