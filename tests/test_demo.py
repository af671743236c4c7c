import os
import subprocess
import sys

import numpy as np
import pytest

from sfm_jax import model as fm
from sfm_jax.io import read_obj, read_png

pytestmark = pytest.mark.slow  # subprocesses

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_demo_writes_meshes_on_the_sphere_and_a_picture(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "experiments.demo", "--config=experiments/configs/demo.py:small",
       f"--workdir={tmp_path}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  model = fm.load_model(tmp_path / "model.npz")
  basis = np.concatenate([model.shape_basis, model.expr_basis]).reshape(
      model.shape_dim + model.expr_dim, -1).astype(np.float64)
  for i in range(4):
    mesh = read_obj(tmp_path / "faces" / f"face_{i:02d}.obj")
    np.testing.assert_array_equal(mesh.triangles, model.triangles)
    # Recover the codes by least squares: the mesh lies in the model's span and its shape code
    # has norm R (it was sampled on the sphere).
    offset = (mesh.vertices - model.mean).reshape(-1).astype(np.float64)
    codes, *_ = np.linalg.lstsq(basis.T, offset, rcond=None)
    assert np.max(np.abs(basis.T @ codes - offset)) < 1e-3
    np.testing.assert_allclose(np.linalg.norm(codes[:model.shape_dim]), model.radius, rtol=1e-4)
  picture = read_png(tmp_path / "faces.png")
  assert picture.shape == (2 * 96 + 3 * 4, 4 * 96 + 5 * 4, 3)
  face_pixels = np.any(picture < 250, axis=-1).mean()
  assert 0.2 < face_pixels < 0.9  # faces drawn, background still visible
