"""Property-based checks (hypothesis) where they pay:

- `project` and every spherical term are finite in value and gradient for any float32 free
  vectors (zeros, tiny and huge norms), repeated labels and label -1;
- the mesh, `.pts` and model-file readers raise nothing but their documented `ValueError`
  (`InputError`) on random bytes and on truncations of valid files.

Examples: the spherical property checks 10^4 problems in the suite (`default` profile: 200 drawn
examples of 50 problems, each example one vmapped call) and 10^5 with `HYPOTHESIS_PROFILE=slow`;
each reader property 300 (random bytes) or 200 (truncations, two reads each) per file kind, 10x
with `slow`.
"""

import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from sfm_jax import losses, sphere
from sfm_jax import model as fm
from sfm_jax.io import read_obj, read_ply, read_pts, write_obj, write_ply, write_pts

settings.register_profile("default", max_examples=10_000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("slow", max_examples=100_000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
_READER_SCALE = 10 if os.environ.get("HYPOTHESIS_PROFILE") == "slow" else 1
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

B, K, C = 6, 4, 3
PROBLEMS = 50  # problems per drawn example, checked by one vmapped call
SCALES = (0.0, 1e-38, 1e-30, 1e-6, 1.0, 1e6, 1e30, 3e38)


def _value_and_grads(z, labels, prototypes):
  def total(z, prototypes):
    s = sphere.project(z, 2.0)
    u = s / 2.0
    return (losses.cosface_loss(u, labels, prototypes)
            + losses.arcface_loss(u, labels, prototypes)
            + losses.spherical_center_loss(u, labels, prototypes)
            + losses.isotropy_kl(s, 2.0) + losses.ring_loss(s, 2.0)
            # The soft sphere's ring acts on free codes; its square overflows float32 beyond
            # norms of ~1e19, so it is checked on codes of norm up to ~1e18.
            + losses.ring_loss(jnp.clip(z, -1e18, 1e18), 2.0))
  value, grads = jax.value_and_grad(total, argnums=(0, 1))(z, prototypes)
  return value, grads, sphere.project(z, 2.0)


# Each problem alone (vmap keeps the problems independent): `[P, ...]` in, `[P, ...]` out.
_check_problems = jax.jit(jax.vmap(_value_and_grads))

free_vectors = st.tuples(
    hnp.arrays(np.float32, (PROBLEMS, B, K), elements=st.floats(-1.0, 1.0, width=32)),
    hnp.arrays(np.float32, (PROBLEMS, B), elements=st.sampled_from(SCALES)))


@settings(max_examples=max(1, settings().max_examples // PROBLEMS))
@given(free_vectors, hnp.arrays(np.int32, (PROBLEMS, B), elements=st.integers(-1, C - 1)),
       hnp.arrays(np.float32, (PROBLEMS, C, K), elements=st.floats(-1.0, 1.0, width=32)))
def test_spherical_terms_are_finite_in_value_and_gradient(vectors, labels, prototypes):
  base, scales = vectors
  z = base * scales[..., None]
  value, (grad_z, grad_prototypes), s = _check_problems(
      jnp.asarray(z), jnp.asarray(labels), jnp.asarray(prototypes))
  assert np.all(np.isfinite(np.asarray(value)))
  assert np.all(np.isfinite(np.asarray(grad_z))) and np.all(np.isfinite(grad_prototypes))
  s = np.asarray(s)
  assert np.all(np.isfinite(s)) and np.all(np.linalg.norm(s, axis=-1) <= 2.0 * (1 + 1e-5))


def _valid_files():
  """One small valid file per reader: {reader: bytes} (written in a temporary folder, removed)."""
  with tempfile.TemporaryDirectory(prefix="sfm_valid_") as directory:
    return _write_valid_files(directory)


def _write_valid_files(directory):
  vertices = np.array([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0]], np.float32)
  triangles = np.array([[0, 1, 2], [1, 3, 2]], np.int32)
  write_obj(os.path.join(directory, "m.obj"), vertices, triangles)
  write_ply(os.path.join(directory, "m.ply"), vertices, triangles)
  write_pts(os.path.join(directory, "m.pts"), np.arange(136, dtype=np.float64).reshape(68, 2))
  model = fm.FaceModel(mean=vertices, shape_basis=np.ones((2, 4, 3), np.float32),
                       expr_basis=np.zeros((0, 4, 3), np.float32),
                       radius=np.asarray(1.0, np.float32), triangles=triangles,
                       landmarks=-np.ones(68, np.int32))
  fm.save_model(os.path.join(directory, "m.npz"), model)
  return {name: open(os.path.join(directory, f"m.{ext}"), "rb").read()
          for name, ext in (("obj", "obj"), ("ply", "ply"), ("pts", "pts"), ("model", "npz"))}


READERS = {"obj": read_obj, "ply": read_ply, "pts": read_pts, "model": fm.load_model}
_VALID = _valid_files()


def _read(kind, data):
  with tempfile.TemporaryDirectory() as directory:
    path = os.path.join(directory, f"f.{'npz' if kind == 'model' else kind}")
    with open(path, "wb") as f:
      f.write(data)
    try:
      READERS[kind](path)
    except ValueError:
      pass  # the documented error (InputError); anything else fails the property


@pytest.mark.parametrize("kind", sorted(READERS))
@settings(max_examples=300 * _READER_SCALE)
@given(data=st.binary(max_size=400))
def test_readers_raise_only_their_error_on_random_bytes(kind, data):
  _read(kind, data)


@pytest.mark.parametrize("kind", sorted(READERS))
@settings(max_examples=200 * _READER_SCALE)
@given(cut=st.floats(0.0, 1.0), flip=st.integers(0, 255))
def test_readers_raise_only_their_error_on_truncated_or_corrupted_files(kind, cut, flip):
  valid = _VALID[kind]
  end = int(cut * len(valid))
  _read(kind, valid[:end])
  if end < len(valid):
    _read(kind, valid[:end] + bytes([valid[end] ^ flip]) + valid[end + 1:])
