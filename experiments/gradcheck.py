r"""Gradient check of every spherical term and of `project`, for users' own sizes and dtype.

  python -m experiments.gradcheck [--batch=16 --dim=32 --classes=10 --dtype=float64
      --unlabelled_fraction=0.25 --directions=4]

For each term: `jax.test_util.check_grads` (order 2, forward and reverse, pass/fail), the largest
absolute and relative error between the directional derivative (forward mode) and a central
finite difference over random directions, the agreement of reverse with forward mode, and, when
PyTorch is installed, the value and gradient against the independent PyTorch reference. `project`
is also checked at z = 0 and just above and below its norm floor. Exit status 1 if any fails.
"""

import sys

import numpy as np
from absl import flags

from experiments import cli

_BATCH = flags.DEFINE_integer("batch", 16, "B")
_DIM = flags.DEFINE_integer("dim", 32, "K, the code size")
_CLASSES = flags.DEFINE_integer("classes", 10, "C, identity classes")
_DTYPE = flags.DEFINE_enum("dtype", "float64", ["float64", "float32"], "Precision checked.")
_UNLABELLED = flags.DEFINE_float("unlabelled_fraction", 0.25, "Share of labels set to -1.")
_DIRECTIONS = flags.DEFINE_integer("directions", 4, "Random directions for finite differences.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the inputs.")

# (finite differences, PyTorch) relative tolerances per dtype.
TOLERANCES = {"float64": (1e-6, 1e-6), "float32": (3e-2, 1e-4)}


def _terms(jnp, losses, sphere, rng, dtype):
  b, k, c = _BATCH.value, _DIM.value, _CLASSES.value
  labels = rng.integers(0, c, b)
  labels[rng.uniform(size=b) < _UNLABELLED.value] = -1
  u = rng.normal(size=(b, k)).astype(dtype)
  w = rng.normal(size=(c, k)).astype(dtype)
  s = (rng.normal(size=(b, k)) * 2).astype(dtype)
  weights = rng.normal(size=(b, k)).astype(dtype)
  lab = jnp.asarray(labels)
  terms = {
      "cosface": (lambda u, w: losses.cosface_loss(u, lab, w, scale=8.0), (u, w)),
      "arcface": (lambda u, w: losses.arcface_loss(u, lab, w, scale=8.0), (u, w)),
      "center": (lambda u, w: losses.spherical_center_loss(u, lab, w), (u, w)),
      "isotropy": (lambda s: losses.isotropy_kl(s, 1.5), (s,)),
      "ring": (lambda s: losses.ring_loss(s, 1.5), (s,)),
      "project": (lambda z: jnp.sum(weights * sphere.project(z, 1.5)), (s,)),
  }
  torch_terms = {
      "cosface": lambda t, u, w: t.cosface_loss(u, _long(labels), w, 8.0),
      "arcface": lambda t, u, w: t.arcface_loss(u, _long(labels), w, 8.0),
      "center": lambda t, u, w: t.spherical_center_loss(u, _long(labels), w),
      "isotropy": lambda t, s: t.isotropy_kl(s, 1.5),
      "ring": lambda t, s: t.ring_loss(s, 1.5),
      "project": lambda t, z: (_tensor(weights) * t.project(z, 1.5)).sum(),
  }
  # project near its floor (1e-6) and at 0: checked on z = 1e-6 w, which keeps derivatives O(1).
  for label, norm in (("project |z|=0", 0.0), ("project |z|=0.5e-6", 0.5), ("project |z|=2e-6", 2.0)):
    direction = rng.normal(size=(b, k))
    w0 = (norm * direction / np.linalg.norm(direction, axis=1, keepdims=True)).astype(dtype)
    terms[label] = (lambda w: jnp.sum(weights * sphere.project(1e-6 * w, 1.5)), (w0,))
    torch_terms[label] = lambda t, w: (_tensor(weights) * t.project(1e-6 * w, 1.5)).sum()
  return terms, torch_terms


def _long(x):
  import torch
  return torch.tensor(np.asarray(x), dtype=torch.long)


def _tensor(x):
  import torch
  return torch.tensor(np.asarray(x))


def main(argv):
  del argv
  import jax
  if _DTYPE.value == "float64":
    jax.config.update("jax_enable_x64", True)
  import jax.numpy as jnp
  from jax.test_util import check_grads

  from sfm_jax import losses, sphere
  try:
    import torch

    from experiments.benchmarks import torch_ref
  except ImportError:
    torch_ref = None
  dtype = np.dtype(_DTYPE.value)
  fd_tol, torch_tol = TOLERANCES[_DTYPE.value]
  rng = np.random.default_rng(_SEED.value)
  terms, torch_terms = _terms(jnp, losses, sphere, rng, dtype)
  step = 1e-5 if dtype == np.float64 else 1e-2
  print(f"gradcheck: B={_BATCH.value} K={_DIM.value} C={_CLASSES.value} {_DTYPE.value}, "
        f"{_UNLABELLED.value:.0%} unlabelled; tolerances: finite differences {fd_tol:g}, "
        f"PyTorch {torch_tol:g} (relative)" + ("" if torch_ref else "; PyTorch not installed"))
  header = (f"{'term':<20}{'check_grads':>12}{'FD abs':>11}{'FD rel':>11}{'rev/fwd rel':>12}"
            f"{'torch abs':>11}{'torch rel':>11}  result")
  print(header)
  failed = False
  for name, (fn, args) in terms.items():
    args = tuple(jnp.asarray(a) for a in args)
    try:
      check_grads(fn, args, order=2, modes=("fwd", "rev"), eps=step,
                  atol=fd_tol * 10, rtol=fd_tol * 10)
      check = "pass"
    except AssertionError:
      check = "FAIL"
    fd_abs = fd_rel = consistency = 0.0
    grads = jax.grad(fn, argnums=tuple(range(len(args))))(*args)
    for _ in range(_DIRECTIONS.value):
      direction = tuple(jnp.asarray(rng.normal(size=a.shape).astype(dtype)) for a in args)
      _, directional = jax.jvp(fn, args, direction)
      plus = fn(*(a + step * d for a, d in zip(args, direction)))
      minus = fn(*(a - step * d for a, d in zip(args, direction)))
      finite = (plus - minus) / (2 * step)
      error = abs(float(directional) - float(finite))
      scale = max(abs(float(directional)), abs(float(finite)), 1e-12)
      fd_abs, fd_rel = max(fd_abs, error), max(fd_rel, error / scale)
      reverse = sum(float(jnp.sum(g * d)) for g, d in zip(grads, direction))
      consistency = max(consistency, abs(reverse - float(directional)) / scale)
    torch_abs = torch_rel = float("nan")
    ok = check == "pass" and fd_rel <= fd_tol and consistency <= fd_tol
    if torch_ref is not None:
      tensors = [torch.tensor(np.asarray(a), requires_grad=True) for a in args]
      value = torch_terms[name](torch_ref, *tensors)
      value.backward()
      pairs = [(float(fn(*args)), value.item())] + [
          (np.asarray(g), t.grad.numpy() if t.grad is not None else np.zeros(t.shape))
          for g, t in zip(grads, tensors)]
      torch_abs = max(float(np.max(np.abs(np.subtract(a, b)))) for a, b in pairs)
      torch_rel = max(float(np.max(np.abs(np.subtract(a, b)))) /
                      max(float(np.max(np.abs(b))), 1e-12) for a, b in pairs)
      ok = ok and torch_rel <= torch_tol
    failed |= not ok
    print(f"{name:<20}{check:>12}{fd_abs:>11.2e}{fd_rel:>11.2e}{consistency:>12.2e}"
          f"{torch_abs:>11.2e}{torch_rel:>11.2e}  {'ok' if ok else 'FAIL'}")
  print("all terms pass" if not failed else "some terms FAIL")
  sys.exit(1 if failed else 0)


if __name__ == "__main__":
  cli.run(main)
