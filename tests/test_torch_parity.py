"""JAX vs an independent PyTorch implementation: values and gradients to 1e-6 relative (float64),
and a full stage-1 optimisation step to 1e-5 (float32)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip(
    "torch", reason="PyTorch not installed: pip install torch==2.13.0 (extra 'torch')")

from experiments.benchmarks import torch_ref  # noqa: E402
from sfm_jax import geometry, losses, sphere, stage1  # noqa: E402
from sfm_jax.model import FaceModel, decode, decode_stacked  # noqa: E402
from sfm_jax.train_state import TrainState, jit_train_step  # noqa: E402

RTOL = 1e-6


def _close(jax_value, torch_value, rtol=RTOL):
  """`torch_value` None is an unused parameter's gradient: JAX gives zeros there."""
  expected = (np.zeros(np.shape(jax_value)) if torch_value is None
              else torch_value.detach().numpy())
  np.testing.assert_allclose(np.asarray(jax_value), expected, rtol=rtol,
                             atol=rtol * max(np.max(np.abs(expected)), 1e-300))


def _torch(*arrays):
  return [torch.tensor(np.asarray(a), dtype=torch.float64, requires_grad=True) for a in arrays]


def _compare(jax_fn, torch_fn, arrays, labels=None):
  """Value and gradient w.r.t. every array of `jax_fn(*arrays[, labels])` vs `torch_fn`."""
  extra = () if labels is None else (jnp.asarray(labels),)
  value, grads = jax.value_and_grad(lambda *a: jax_fn(*a, *extra),
                                    argnums=tuple(range(len(arrays))))(*map(jnp.asarray, arrays))
  tensors = _torch(*arrays)
  extra_t = () if labels is None else (torch.tensor(labels),)
  torch_value = torch_fn(*tensors, *extra_t)
  torch_value.backward()
  _close(value, torch_value)
  for g, t in zip(grads, tensors):
    _close(g, t.grad)


LABELS = np.array([0, 2, -1, 1, 2, -1, 0])


def _identity_inputs(rng, b=7, k=6, c=3):
  return rng.normal(size=(b, k)), rng.normal(size=(c, k))


@pytest.mark.parametrize("name", ["cosface", "arcface", "center"])
def test_identity_terms(x64, rng, name):
  u, w = _identity_inputs(rng)
  jax_fn = {"cosface": lambda u, w, y: losses.cosface_loss(u, y, w),
            "arcface": lambda u, w, y: losses.arcface_loss(u, y, w),
            "center": lambda u, w, y: losses.spherical_center_loss(u, y, w)}[name]
  torch_fn = {"cosface": lambda u, w, y: torch_ref.cosface_loss(u, y, w),
              "arcface": lambda u, w, y: torch_ref.arcface_loss(u, y, w),
              "center": lambda u, w, y: torch_ref.spherical_center_loss(u, y, w)}[name]
  _compare(jax_fn, torch_fn, [u, w], LABELS)
  # The ArcFace fallback branch: samples opposite their prototype.
  if name == "arcface":
    _compare(jax_fn, torch_fn, [-w[LABELS.clip(0)] + 0.01 * rng.normal(size=u.shape), w], LABELS)
  # Only unlabelled samples: both exactly 0.
  none = -np.ones(7, np.int64)
  assert float(jax_fn(jnp.asarray(u), jnp.asarray(w), jnp.asarray(none))) == 0.0
  assert torch_fn(*_torch(u, w), torch.tensor(none)).item() == 0.0


def test_isotropy_ring_and_project(x64, rng):
  s = rng.normal(size=(9, 5)) * 2
  _compare(lambda s, r: losses.isotropy_kl(s, r), torch_ref.isotropy_kl, [s, np.array(1.7)])
  _compare(lambda s, r: losses.ring_loss(s, r), torch_ref.ring_loss, [s, np.array(1.7)])
  weights = rng.normal(size=(4, 5))
  for norm in (1.0, 1e-3, 2e-6, 5e-7, 0.0):  # including below the floor and exactly zero
    direction = rng.normal(size=(4, 5))
    z = norm * direction / np.linalg.norm(direction, axis=1, keepdims=True)
    _compare(lambda z, r: jnp.sum(weights * sphere.project(z, r)),
             lambda z, r: (torch.tensor(weights) * torch_ref.project(z, r)).sum(),
             [z, np.array(2.5)])


def test_decode_landmarks_and_regularisers(x64, rng):
  v, k, e, b = 8, 3, 2, 4
  arrays = [rng.normal(size=(v, 3)), rng.normal(size=(k, v, 3)), rng.normal(size=(e, v, 3)),
            rng.normal(size=(b, k)), rng.normal(size=(b, e))]
  target = rng.normal(size=(b, v, 3))
  face = lambda m, sb, eb: FaceModel(mean=m, shape_basis=sb, expr_basis=eb, radius=1.0,
                                     triangles=np.zeros((0, 3), np.int32),
                                     landmarks=np.zeros(0, np.int32))
  _compare(lambda m, sb, eb, s, x: losses.vertex_loss(decode(face(m, sb, eb), s, x), target),
           lambda m, sb, eb, s, x: torch_ref.vertex_loss(torch_ref.decode(m, sb, eb, s, x),
                                                         torch.tensor(target)), arrays)
  stacked = [rng.normal(size=(v, 3)), rng.normal(size=(k + e, v, 3)), rng.normal(size=(b, k + e))]
  _compare(lambda m, w, c: losses.vertex_loss(decode_stacked(m, w, c), target),
           lambda m, w, c: torch_ref.vertex_loss(torch_ref.decode_stacked(m, w, c),
                                                 torch.tensor(target)), stacked)
  predicted, annotated = rng.normal(size=(3, 10, 2)) * 20, rng.normal(size=(3, 10, 2)) * 20
  visible = (rng.uniform(size=(3, 10)) > 0.3).astype(float)
  _compare(lambda p: losses.landmark_loss(p, annotated, visible=visible),
           lambda p: torch_ref.landmark_loss(p, torch.tensor(annotated), torch.tensor(visible)),
           [predicted])
  basis = rng.normal(size=(4, 6, 3))
  _compare(lambda w: losses.basis_orthogonality(w, scale_invariant=True),
           torch_ref.cosine_orthogonality, [basis])
  triangles = np.array([[0, 1, 2], [1, 3, 2], [2, 3, 4], [3, 5, 4]])
  edges = geometry.mesh_edges(triangles)
  _compare(lambda w: losses.laplacian_smoothness(w, edges),
           lambda w: (torch_ref.uniform_laplacian(w, torch.tensor(edges, dtype=torch.long))
                      ** 2).sum(-1).mean(), [basis])
  mirror = np.array([1, 0, 2, 4, 3, 5])
  _compare(lambda w: losses.symmetry_loss(w, mirror),
           lambda w: torch_ref.symmetry_loss(w, torch.tensor(mirror)), [basis])


@pytest.mark.parametrize("code_kind", ["sphere", "gaussian"])
def test_full_stage1_step_matches(rng, code_kind):
  v, k, e, n, c, b = 20, 4, 3, 12, 3, 8
  triangles = np.array([[i, i + 1, i + 2] for i in range(v - 2)])
  init = stage1.PCAInit(mean=rng.normal(size=(v, 3)) * 30, shape_basis=rng.normal(size=(k, v, 3)),
                        expr_basis=rng.normal(size=(e, v, 3)), shape_codes=rng.normal(size=(n, k)),
                        expr_codes=rng.normal(size=(n, e)), radius=2.0, shape_std=np.ones(k),
                        expr_std=np.ones(e))
  identity = np.array([0, 1, 2, -1] * 3, np.int32)
  objective = stage1.Objective(code_kind=code_kind, weight_orthogonality=0.1,
                               weight_smoothness=0.1, weight_symmetry=0.1, weight_shape_prior=0.01)
  mirror = np.arange(v)[::-1].copy()
  lrs = {"basis": 1e-3, "codes": 1e-2, "prototypes": 2e-2, "centers": 3e-2}
  params = stage1.init_params(init, identity, c, seed=0)
  loss_fn = stage1.make_loss_fn(objective, radius=init.radius, triangles=triangles, mirror=mirror)
  tx = stage1.make_optimizer(lr_basis=lrs["basis"], lr_codes=lrs["codes"],
                             lr_prototypes=lrs["prototypes"], lr_centers=lrs["centers"])
  state = TrainState.create(params=params, tx=tx, loss_fn=loss_fn, seed=0)
  reference = torch_ref.Stage1(jax.tree_util.tree_map(np.asarray, params), radius=init.radius,
                               settings=vars(objective), edges=geometry.mesh_edges(triangles),
                               mirror=mirror)
  optimizer = torch.optim.Adam(reference.groups(lrs))
  scans = (init.mean + rng.normal(size=(n, v, 3))).astype(np.float32)
  # The full objective's gradients agree before any step (Adam's first update is nearly
  # -lr * sign(g), so comparing parameters alone would not check gradient magnitudes).
  index = np.arange(b, dtype=np.int32)
  batch = {"scans": scans[index], "identity": identity[index], "index": index}
  grads = jax.grad(lambda p: loss_fn(p, {}, batch, None)[0])(params)
  loss, _ = reference(torch.tensor(scans[index]), torch.tensor(identity[index], dtype=torch.long),
                      torch.tensor(index, dtype=torch.long))
  loss.backward()
  for got, expected in ((stage1.model_arrays(grads)["shape_basis"], reference.shape_basis.grad),
                        (stage1.model_arrays(grads)["expr_basis"], reference.expr_basis.grad),
                        (grads["model"]["mean"], reference.mean.grad),
                        (grads["codes"]["z"], reference.z.grad),
                        (grads["prototypes"], reference.prototypes.grad),
                        (grads["centers"], reference.centers.grad)):
    _close(got, expected, rtol=1e-4)
  for step in range(3):
    index = rng.permutation(n)[:b].astype(np.int32)
    batch = {"scans": scans[index], "identity": identity[index], "index": index}
    state, metrics = jit_train_step(state, batch)
    optimizer.zero_grad()
    loss, _ = reference(torch.tensor(scans[index]), torch.tensor(identity[index],
                                                                 dtype=torch.long),
                        torch.tensor(index, dtype=torch.long))
    loss.backward()
    optimizer.step()
    np.testing.assert_allclose(metrics["loss"], loss.item(), rtol=1e-5)
  got = state.params
  for name, expected in (("mean", reference.mean), ("shape_basis", reference.shape_basis),
                         ("expr_basis", reference.expr_basis)):
    _close(stage1.model_arrays(got)[name], expected, rtol=1e-5)
  _close(got["codes"]["z"], reference.z, rtol=1e-5)
  _close(got["codes"]["e"], reference.e, rtol=1e-5)
  _close(got["prototypes"], reference.prototypes, rtol=1e-5)
  _close(got["centers"], reference.centers, rtol=1e-5)
