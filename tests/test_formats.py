import os
import pickle
import struct
import sys
import types

import numpy as np
import pytest
import scipy.io
import scipy.sparse

from sfm_jax import model as fm
from sfm_jax.io import models as formats
from tests.conftest import SURREY_DIR

V, K, T = 6, 4, 3


def _pca(rng, rows=3 * V, k=K):
  q, _ = np.linalg.qr(rng.normal(size=(rows, k)))
  return q  # orthonormal columns


TRIANGLES = np.array([[0, 1, 2], [2, 3, 4], [3, 4, 5]])


def _basis(columns, scale):
  """Independent restatement: component k, vertex v, axis c = columns[3 v + c, k] * scale[k]."""
  out = np.zeros((columns.shape[1], V, 3))
  for k in range(columns.shape[1]):
    for v in range(V):
      for c in range(3):
        out[k, v, c] = columns[3 * v + c, k] * scale[k]
  return out


def test_basel2009(tmp_path, rng):
  mean_um = rng.normal(size=(3 * V, 1)) * 5e4
  columns, std = _pca(rng), np.array([4e3, 3e3, 2e3, 1e3])
  tex_mean, tex_columns, tex_std = rng.uniform(0, 255, (3 * V, 1)), _pca(rng), np.arange(1.0, 5.0)
  path = tmp_path / "01_MorphableModel.mat"
  scipy.io.savemat(path, dict(shapeMU=mean_um, shapePC=columns, shapeEV=std[:, None],
                              tl=TRIANGLES + 1, texMU=tex_mean, texPC=tex_columns,
                              texEV=tex_std[:, None]))
  model = formats.load_basel2009(path)
  np.testing.assert_allclose(model.mean, mean_um.reshape(V, 3) / 1000, rtol=1e-6)
  np.testing.assert_allclose(model.shape_basis, _basis(columns, std) / 1000, rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_array_equal(model.triangles, TRIANGLES)
  np.testing.assert_allclose(model.albedo_mean, tex_mean.reshape(V, 3) / 255, rtol=1e-6)
  np.testing.assert_allclose(model.albedo_basis, _basis(tex_columns, tex_std) / 255, atol=1e-6)
  assert model.code_kind == "gaussian" and model.expr_dim == 0
  np.testing.assert_allclose(model.radius, 2.0)
  assert np.all(model.landmarks == -1)
  assert formats.load_face_model(path).shape_dim == K
  scipy.io.savemat(path, dict(shapeMU=mean_um, shapeEV=std[:, None], tl=TRIANGLES + 1))
  with pytest.raises(ValueError, match=r"01_MorphableModel\.mat: key 'shapePC': missing"):
    formats.load_basel2009(path)
  scipy.io.savemat(path, dict(shapeMU=mean_um, shapePC=columns[:-3], shapeEV=std[:, None],
                              tl=TRIANGLES + 1))
  with pytest.raises(ValueError, match=r"key 'shapePC': expected 18 rows"):
    formats.load_basel2009(path)


def _write_statismo(path, groups, cells):
  import h5py
  with h5py.File(path, "w") as h5:
    for name, (mean, columns, variance) in groups.items():
      h5[f"{name}/model/mean"] = mean.astype(np.float32)
      h5[f"{name}/model/pcaBasis"] = columns.astype(np.float32)
      h5[f"{name}/model/pcaVariance"] = variance.astype(np.float32)
    h5["shape/representer/cells"] = cells.astype(np.uint32)
    h5["shape/representer/points"] = groups["shape"][0].reshape(V, 3).T.astype(np.float32)


def test_basel2017(tmp_path, rng):
  pytest.importorskip("h5py", reason="h5py is in the data extra")
  shape = (rng.normal(size=3 * V) * 50, _pca(rng), np.array([16.0, 9.0, 4.0, 1.0]))
  expression = (rng.normal(size=3 * V) * 0.1, _pca(rng, k=2), np.array([4.0, 1.0]))
  color = (rng.uniform(size=3 * V), _pca(rng, k=3), np.array([0.04, 0.01, 0.0025]))
  path = tmp_path / "model2017-1_face12_nomouth.h5"
  _write_statismo(path, dict(shape=shape, expression=expression, color=color), TRIANGLES.T)
  model = formats.load_basel2017(path)
  np.testing.assert_allclose(model.mean, (shape[0] + expression[0]).reshape(V, 3), rtol=1e-5)
  np.testing.assert_allclose(model.shape_basis, _basis(shape[1], np.sqrt(shape[2])), atol=1e-5)
  expected_expr = np.zeros((2, V, 3))
  for k in range(2):
    expected_expr[k] = (expression[1][:, k] * np.sqrt(expression[2][k])).reshape(V, 3)
  np.testing.assert_allclose(model.expr_basis, expected_expr, atol=1e-6)
  np.testing.assert_allclose(model.albedo_mean, color[0].reshape(V, 3), rtol=1e-6)
  np.testing.assert_array_equal(model.triangles, TRIANGLES)
  assert formats.load_face_model(path).expr_dim == 2
  _write_statismo(path, dict(shape=(shape[0], shape[1], shape[2][:2])), TRIANGLES.T)
  with pytest.raises(ValueError, match=r"key 'shape/model/pcaVariance': 2 values for 4"):
    formats.load_basel2017(path)


def _fake_chumpy():
  """A stand-in `chumpy.ch.Ch` so the test can write a FLAME-style pickle without chumpy."""
  package, module = types.ModuleType("chumpy"), types.ModuleType("chumpy.ch")

  class Ch:
    def __init__(self, x):
      self.x = x

    def __getstate__(self):  # like chumpy: a state dict holding the array
      return {"x": self.x, "_dirty_vars": set()}

  Ch.__module__, Ch.__qualname__ = "chumpy.ch", "Ch"
  module.Ch = Ch
  package.ch = module
  return package, module, Ch


def test_flame_without_chumpy(tmp_path, rng, monkeypatch):
  package, module, ch = _fake_chumpy()
  template = rng.normal(size=(V, 3)) * 0.05  # metres
  directions = rng.normal(size=(V, 3, 7)) * 1e-3
  data = {"v_template": ch(template), "shapedirs": ch(directions), "f": TRIANGLES.astype(np.uint32),
          "J_regressor": scipy.sparse.csc_matrix(rng.uniform(size=(5, V))),
          "kintree_table": np.zeros((2, 5), np.int64)}
  path = tmp_path / "generic_model.pkl"
  monkeypatch.setitem(sys.modules, "chumpy", package)
  monkeypatch.setitem(sys.modules, "chumpy.ch", module)
  with open(path, "wb") as f:
    pickle.dump(data, f, protocol=2)
  monkeypatch.delitem(sys.modules, "chumpy")
  monkeypatch.delitem(sys.modules, "chumpy.ch")
  model = formats.load_flame(path, num_shape=4)
  np.testing.assert_allclose(model.mean, template * 1000, rtol=1e-6)
  np.testing.assert_allclose(model.shape_basis[2], directions[:, :, 2] * 1000, rtol=1e-5)
  np.testing.assert_allclose(model.expr_basis[1], directions[:, :, 5] * 1000, rtol=1e-5)
  assert model.shape_dim == 4 and model.expr_dim == 3
  np.testing.assert_array_equal(model.triangles, TRIANGLES)
  assert formats.load_face_model(path, num_shape=4).expr_dim == 3
  # Anything but numpy/scipy/chumpy is refused, naming the file.
  (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"f": os.getcwd}, protocol=2))
  with pytest.raises(ValueError, match=r"evil\.pkl: not a readable FLAME pickle.*refusing"):
    formats.load_flame(tmp_path / "evil.pkl")


def test_facescape_bilinear(tmp_path, rng):
  ids, exps = 3, 4
  core = rng.normal(size=(3 * V, ids, exps))
  id_mean, id_var = rng.normal(size=ids), np.array([0.5, 2.0, 1.0])
  landmarks = np.arange(68) % V
  path = tmp_path / "facescape_bm_v1.6_847_50_52_id_front.npz"
  np.savez(path, shape_bm_core=core, id_mean=id_mean, id_var=id_var, fv_indices=TRIANGLES + 1,
           lm_list_v16=landmarks)
  model = formats.load_facescape(path)
  # Neutral expression e0, at the mean identity: core . id_mean . e0.
  neutral = np.einsum("rie,i,e->r", core, id_mean, np.eye(exps)[0])
  np.testing.assert_allclose(model.mean, neutral.reshape(V, 3), rtol=1e-5, atol=1e-5)
  # Strongest identity direction first: variance 2.0 is index 1.
  np.testing.assert_allclose(model.shape_basis[0], (core[:, 1, 0] * np.sqrt(2.0)).reshape(V, 3),
                             rtol=1e-5, atol=1e-5)
  expr = np.einsum("rie,i->re", core, id_mean)
  np.testing.assert_allclose(model.expr_basis[2], expr[:, 3].reshape(V, 3), rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(model.triangles, TRIANGLES)
  np.testing.assert_array_equal(model.landmarks, landmarks)
  assert formats.load_face_model(path).expr_dim == exps - 1
  np.savez(path, shape_bm_core=core[:, :2], id_mean=id_mean, id_var=id_var,
           fv_indices=TRIANGLES + 1)
  with pytest.raises(ValueError, match=r"key 'shape_bm_core': expected \[3V, 3, X\]"):
    formats.load_facescape(path)


def _write_surrey(path, mean, basis, eigenvalues, triangles):
  def matrix(m):
    m = np.asarray(m, np.float32).reshape(m.shape[0], -1)
    return struct.pack("<ii", *m.shape) + m.T.astype("<f4").tobytes()  # column-major
  data = (struct.pack("<I", 1) + matrix(mean[:, None]) + matrix(basis)
          + matrix(eigenvalues[:, None]) + struct.pack("<Q", len(triangles))
          + np.asarray(triangles, "<i4").tobytes() + b"\x00" * 16)
  path.write_bytes(data)


def test_surrey_written_file_and_errors(tmp_path, rng):
  mean, basis, eigen = rng.normal(size=3 * V), _pca(rng), np.array([9.0, 4.0, 1.0, 0.25])
  path = tmp_path / "sfm_shape_6.bin"
  _write_surrey(path, mean, basis, eigen, TRIANGLES)
  model = formats.load_surrey(path)
  np.testing.assert_allclose(model.mean, mean.reshape(V, 3), rtol=1e-6)
  np.testing.assert_allclose(model.shape_basis, _basis(basis, np.sqrt(eigen)), atol=1e-6)
  np.testing.assert_array_equal(model.triangles, TRIANGLES)
  assert model.expr_dim == 0 and np.all(model.landmarks == -1)
  path.write_bytes(path.read_bytes()[:100])
  with pytest.raises(ValueError, match=r"sfm_shape_6\.bin: truncated while reading orthonormal"):
    formats.load_surrey(path)


SURREY_SHAPE = os.path.join(SURREY_DIR, "sfm_shape_3448.bin")


@pytest.mark.skipif(not os.path.isfile(SURREY_SHAPE),
                    reason=f"Surrey model not found at {SURREY_DIR} (shared data absent)")
def test_surrey_real_files(tmp_path):
  model = formats.load_surrey(SURREY_SHAPE)
  assert model.mean.shape == (3448, 3)
  assert model.shape_basis.shape == (63, 3448, 3)
  assert model.triangles.shape == (6736, 3)
  assert model.expr_basis.shape == (6, 3448, 3)
  mean, basis, eigenvalues, _ = formats.read_surrey_shape(SURREY_SHAPE)
  # Column-major reading is right exactly when the basis comes out orthonormal.
  np.testing.assert_allclose(basis.T.astype(np.float64) @ basis, np.eye(63), atol=1e-4)
  assert eigenvalues[0] == pytest.approx(56502, rel=0.01)  # the data README's value
  with open(SURREY_SHAPE, "rb") as f:
    raw = f.read(16)
  assert struct.unpack("<f", raw[12:16])[0] == pytest.approx(float(model.mean[0, 0]))
  names, offsets = formats.read_surrey_blendshapes(os.path.join(SURREY_DIR,
                                                                "expression_blendshapes_3448.bin"))
  assert names == ["anger", "disgust", "fear", "happiness", "sadness", "surprise"]
  per_vertex = np.linalg.norm(offsets.reshape(6, -1, 3), axis=-1).mean(1)
  assert 1.5 < per_vertex[4] < 3 and 8 < per_vertex[5] < 12  # sadness ~2 mm, surprise ~10 mm
  # iBUG map: 1-based landmark numbers; contour points and inner mouth corners undefined.
  assert model.landmarks[8] == 33 and model.landmarks[17] == 225  # chin bottom, right brow
  assert np.all(model.landmarks[:8] == -1) and (model.landmarks >= 0).sum() == 50
  # Faces from it: a 3-sd sample stays within a plausible range, and the model round-trips.
  fm.save_model(tmp_path / "surrey.npz", model)
  loaded = fm.load_model(tmp_path / "surrey.npz")
  np.testing.assert_array_equal(loaded.shape_basis, model.shape_basis)
  assert formats.load_face_model(SURREY_DIR).shape_dim == 63


def test_unknown_format(tmp_path):
  with pytest.raises(ValueError, match=r"model\.stl: unknown model format"):
    formats.load_face_model(tmp_path / "model.stl")
