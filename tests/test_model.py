import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sfm_jax import face_world
from sfm_jax import model as fm


def _random_model(rng, v=7, k=4, e=3, albedo=False):
  return fm.FaceModel(
      mean=rng.normal(size=(v, 3)).astype(np.float32),
      shape_basis=rng.normal(size=(k, v, 3)).astype(np.float32),
      expr_basis=rng.normal(size=(e, v, 3)).astype(np.float32),
      radius=np.asarray(2.0, np.float32),
      triangles=np.array([[0, 1, 2], [2, 3, 4], [4, 5, 6]], np.int32),
      landmarks=np.array([0, -1, 6], np.int32),
      albedo_mean=rng.uniform(size=(v, 3)).astype(np.float32) if albedo else None,
      albedo_basis=rng.normal(size=(2, v, 3)).astype(np.float32) if albedo else None,
  )


def test_decode_equals_mean_plus_basis_contractions(x64, rng):
  m = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64) if a.dtype.kind == "f" else a,
                             _random_model(rng))
  s, e = rng.normal(size=(5, 4)), rng.normal(size=(5, 3))
  expected = (m.mean[None] + (s @ m.shape_basis.reshape(4, -1)).reshape(5, 7, 3)
              + (e @ m.expr_basis.reshape(3, -1)).reshape(5, 7, 3))
  np.testing.assert_allclose(fm.decode(m, s, e), expected, rtol=1e-12)
  neutral = m.mean[None] + np.einsum("bk,kvc->bvc", s, m.shape_basis)
  np.testing.assert_allclose(fm.decode(m, s), neutral, rtol=1e-12)
  np.testing.assert_allclose(jax.jit(fm.decode)(m, s, e), expected, rtol=1e-12)


def test_decode_bf16_compute_is_close_and_accumulates_in_float32(rng):
  m = _random_model(rng, v=50, k=16, e=8)
  s, e = rng.normal(size=(3, 16)).astype(np.float32), rng.normal(size=(3, 8)).astype(np.float32)
  exact = np.asarray(fm.decode(m, s, e), np.float64)
  low = fm.decode(m, s, e, compute_dtype=jnp.bfloat16)
  assert low.dtype == jnp.float32
  # bf16 inputs carry ~3 significant digits; errors scale with sqrt(K + E) terms of size ~1.
  assert np.max(np.abs(np.asarray(low) - exact)) < 0.1
  # Accumulation: with many terms, the bf16 product must equal the exact (float64) product of
  # the bf16-rounded inputs to float32 accuracy; a bf16 accumulator would be ~1e-2 off.
  big = _random_model(rng, v=40, k=512, e=0)
  codes = rng.normal(size=(2, 512)).astype(np.float32)
  low = np.asarray(fm.decode(big, codes, compute_dtype=jnp.bfloat16), np.float64)
  to_bf16 = lambda x: np.asarray(jnp.asarray(x, jnp.bfloat16).astype(jnp.float32), np.float64)
  product = np.einsum("bk,kvc->bvc", to_bf16(codes), to_bf16(big.shape_basis))
  expected = np.asarray(big.mean, np.float64) + product
  assert np.max(np.abs(low - expected)) < 1e-3 * np.max(np.abs(product))


def test_decode_gradient_matches_basis(rng):
  m = _random_model(rng)
  s = jnp.asarray(rng.normal(size=(1, 4)), jnp.float32)
  jac = jax.jacfwd(lambda s: fm.decode(m, s))(s)  # [1, V, 3, 1, K]
  np.testing.assert_allclose(jac[0, :, :, 0, :], np.moveaxis(m.shape_basis, 0, -1), rtol=1e-6)


def test_add_to_each_derivatives_are_those_of_the_broadcast_add(x64, rng):
  from jax.test_util import check_grads
  batch, row = rng.normal(size=(4, 5, 3)), rng.normal(size=(5, 3))
  np.testing.assert_array_equal(fm.add_to_each(batch, row), batch + row)
  weights = rng.normal(size=(4, 5, 3))
  loss = lambda b, r: jnp.sum(weights * fm.add_to_each(b, r) ** 2)
  d_batch, d_row = jax.grad(loss, argnums=(0, 1))(batch, row)
  np.testing.assert_allclose(d_batch, 2 * weights * (batch + row), rtol=1e-12)
  np.testing.assert_allclose(d_row, np.sum(2 * weights * (batch + row), 0), rtol=1e-12)
  # One argument differentiated at a time (the other's tangent is a symbolic zero).
  np.testing.assert_allclose(jax.grad(loss, argnums=0)(batch, row), d_batch, rtol=1e-12)
  np.testing.assert_allclose(jax.grad(loss, argnums=1)(batch, row), d_row, rtol=1e-12)
  _, tangent = jax.jvp(lambda r: fm.add_to_each(batch, r), (row,), (weights[0],))
  np.testing.assert_allclose(tangent, np.broadcast_to(weights[0], batch.shape), rtol=1e-12)
  check_grads(jax.jit(loss), (batch, row), order=2, modes=("fwd", "rev"))


def test_decode_derivatives_in_codes_and_bases_are_those_of_the_products(x64, rng):
  """`decode`'s basis gradient has its own rule (the codes transposed and materialised); it
  must give the plain product's derivatives in every mode and order, with either argument held
  fixed."""
  from jax.test_util import check_grads
  m = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64) if a.dtype.kind == "f" else a,
                             _random_model(rng))
  s, e = rng.normal(size=(5, 4)), rng.normal(size=(5, 3))
  weights = rng.normal(size=(5, 7, 3))

  def loss(shape_basis, expr_basis, s, e):
    faces = fm.decode(m.replace(shape_basis=shape_basis, expr_basis=expr_basis), s, e)
    return jnp.sum(weights * faces ** 2)

  args = (m.shape_basis, m.expr_basis, s, e)
  grads = jax.grad(loss, argnums=(0, 1, 2, 3))(*args)
  residual = 2 * weights * np.asarray(fm.decode(m, s, e))  # d loss / d faces, [B, V, 3]
  flat = residual.reshape(5, -1)
  np.testing.assert_allclose(grads[0], (s.T @ flat).reshape(4, 7, 3), rtol=1e-12)
  np.testing.assert_allclose(grads[1], (e.T @ flat).reshape(3, 7, 3), rtol=1e-12)
  np.testing.assert_allclose(grads[2], flat @ m.shape_basis.reshape(4, -1).T, rtol=1e-12)
  np.testing.assert_allclose(grads[3], flat @ m.expr_basis.reshape(3, -1).T, rtol=1e-12)
  for argnum in range(4):  # the others' tangents are symbolic zeros
    np.testing.assert_allclose(jax.grad(loss, argnums=argnum)(*args), grads[argnum], rtol=1e-12)
  check_grads(jax.jit(loss), args, order=2, modes=("fwd", "rev"))


def test_decode_stacked_equals_decode_and_has_the_products_derivatives(x64, rng):
  """Stage 1's layout: `[s | e]` against the stacked bases is `decode` of the separate ones,
  and its gradients in mean, bases and codes are the plain products' (numpy, then
  `check_grads` to second order)."""
  from jax.test_util import check_grads
  m = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64) if a.dtype.kind == "f" else a,
                             _random_model(rng))
  s, e = rng.normal(size=(5, 4)), rng.normal(size=(5, 3))
  bases = np.asarray(fm.stack_bases(m.shape_basis, m.expr_basis))
  np.testing.assert_array_equal(bases, np.concatenate([m.shape_basis, m.expr_basis]))
  codes = np.concatenate([s, e], axis=1)
  expected = m.mean[None] + np.einsum("bk,kvc->bvc", codes, bases)
  np.testing.assert_allclose(fm.decode_stacked(m.mean, bases, codes), expected, rtol=1e-12)
  np.testing.assert_allclose(fm.decode_stacked(m.mean, bases, codes), fm.decode(m, s, e),
                             rtol=1e-12)
  weights = rng.normal(size=(5, 7, 3))
  loss = lambda mean, bases, codes: jnp.sum(weights * fm.decode_stacked(mean, bases, codes) ** 2)
  grads = jax.grad(loss, argnums=(0, 1, 2))(m.mean, bases, codes)
  flat = (2 * weights * expected).reshape(5, -1)
  np.testing.assert_allclose(grads[0], flat.sum(0).reshape(7, 3), rtol=1e-12)
  np.testing.assert_allclose(grads[1], (codes.T @ flat).reshape(7, 7, 3), rtol=1e-12)
  np.testing.assert_allclose(grads[2], flat @ bases.reshape(7, -1).T, rtol=1e-12)
  check_grads(jax.jit(loss), (m.mean, bases, codes), order=2, modes=("fwd", "rev"))


@pytest.mark.parametrize("albedo", [False, True])
def test_model_file_round_trip(tmp_path, rng, albedo):
  m = _random_model(rng, albedo=albedo)
  path = tmp_path / "model.npz"
  fm.save_model(path, m)
  loaded = fm.load_model(path)
  for name in ("mean", "shape_basis", "expr_basis", "radius", "triangles", "landmarks",
               "albedo_mean", "albedo_basis"):
    a, b = getattr(m, name), getattr(loaded, name)
    assert (a is None) == (b is None), name
    if a is not None:
      np.testing.assert_array_equal(a, b, err_msg=name)
  assert loaded.code_kind == "sphere"
  gaussian = m.replace(code_kind="gaussian")
  fm.save_model(path, gaussian)
  assert fm.load_model(path).code_kind == "gaussian"


def _write_npz(path, arrays):
  np.savez(path, **arrays)
  return str(path)


def _good_arrays(rng):
  m = _random_model(rng)
  arrays = {n: np.asarray(getattr(m, n)) for n in ("mean", "shape_basis", "expr_basis", "radius",
                                                    "triangles", "landmarks")}
  arrays.update(format_version=np.asarray(1), code_kind=np.asarray("sphere"))
  return arrays


@pytest.mark.parametrize("key,mutate,message", [
    ("mean", lambda a: a.pop("mean"), "missing"),
    ("shape_basis", lambda a: a.update(shape_basis=a["shape_basis"][:, :5]), "expected"),
    ("expr_basis", lambda a: a.update(expr_basis=a["expr_basis"].astype(np.int32)), "float"),
    ("mean", lambda a: a["mean"].__setitem__((2, 1), np.nan), "non-finite"),
    ("triangles", lambda a: a["triangles"].__setitem__((1, 2), 7), "outside"),
    ("triangles", lambda a: a["triangles"].__setitem__((0, 0), -1), "outside"),
    ("landmarks", lambda a: a["landmarks"].__setitem__(0, 99), "indices"),
    ("format_version", lambda a: a.update(format_version=np.asarray(2)), "unknown version"),
    ("format_version", lambda a: a.pop("format_version"), "missing"),
    ("code_kind", lambda a: a.update(code_kind=np.asarray("banana")), "expected one of"),
    ("radius", lambda a: a.update(radius=np.asarray(-1.0, np.float32)), "positive"),
    ("albedo_basis", lambda a: a.update(albedo_mean=np.zeros((7, 3), np.float32)), "together"),
])
def test_bad_model_files_name_file_and_key(tmp_path, rng, key, mutate, message):
  arrays = _good_arrays(rng)
  mutate(arrays)
  path = _write_npz(tmp_path / "bad.npz", arrays)
  with pytest.raises(ValueError) as info:
    fm.load_model(path)
  text = str(info.value)
  assert path in text and f"'{key}'" in text and message in text, text


def test_unreadable_model_file_names_file(tmp_path):
  path = tmp_path / "junk.npz"
  path.write_bytes(b"this is not a zip archive")
  with pytest.raises(ValueError, match="junk.npz.*not a readable"):
    fm.load_model(path)


def test_save_refuses_bad_model_and_keeps_old_file(tmp_path, rng):
  path = tmp_path / "model.npz"
  good = _random_model(rng)
  fm.save_model(path, good)
  before = path.read_bytes()
  bad = good.replace(mean=np.full_like(good.mean, np.nan))
  with pytest.raises(ValueError, match="'mean'"):
    fm.save_model(path, bad)
  assert path.read_bytes() == before
  assert os.listdir(tmp_path) == ["model.npz"]


def test_toy_model_is_valid_and_faces_stay_on_sphere(tmp_path):
  m = face_world.toy_model(num_shape=6, num_expr=2, resolution=16)
  fm.save_model(tmp_path / "toy.npz", m)  # validates
  s = jax.random.normal(jax.random.key(0), (4, 6))
  s = s / jnp.linalg.norm(s, axis=-1, keepdims=True) * m.radius
  faces = np.asarray(fm.decode(m, s))
  # Toy shapes: smooth offsets of a few mm around a ~150 x 200 mm template.
  offsets = np.linalg.norm(faces - m.mean[None], axis=-1)
  assert 0.5 < offsets.mean() < 10.0 and offsets.max() < 40.0
