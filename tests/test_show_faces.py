import numpy as np

from experiments import show_faces
from sfm_jax import face_world, viz
from sfm_jax import model as fm


def test_world_picture_has_a_face_per_cell():
  picture, names = show_faces.world_picture(identities=2, resolution=16, seed=0, size=40, yaw=0.0)
  assert names[0] == "neutral" and len(names) == 1 + len(face_world.EXPRESSIONS)
  assert picture.shape == (2 * 40 + 3 * 4, len(names) * 40 + (len(names) + 1) * 4, 3)
  for row in range(2):
    for col in range(len(names)):
      top, left = 4 + row * 44, 4 + col * 44
      cell = picture[top:top + 40, left:left + 40]
      assert 0.2 < np.mean(np.any(cell < 0.99, axis=-1)) < 0.95  # a face, not empty or full


def test_model_picture_shows_mean_and_plus_minus_three_sd(tmp_path):
  model = face_world.toy_model(num_shape=3, num_expr=1, resolution=16).replace(code_kind="gaussian")
  path = tmp_path / "toy.npz"
  fm.save_model(path, model)
  picture, loaded = show_faces.model_picture(str(path), components=2, expressions=1, size=32,
                                             yaw=0.0)
  assert picture.shape == (3 * 32 + 4 * 4, 3 * 32 + 4 * 4, 3)
  mean = np.asarray(model.mean, np.float64)
  first = np.asarray(model.shape_basis[0], np.float64)
  faces = [mean - 3 * first, mean, mean + 3 * first]
  extent_faces = [[mean - 3 * model.shape_basis[k], mean, mean + 3 * model.shape_basis[k]]
                  for k in range(2)] + [[mean - model.expr_basis[0], mean,
                                         mean + model.expr_basis[0]]]
  extent = 1.15 * float(np.max(np.ptp(np.array(extent_faces)[..., :2].reshape(9, -1, 2),
                                      axis=1)))
  centre = 0.5 * (mean.min(0) + mean.max(0))
  for col, face in enumerate(faces):
    expected = viz.shade_mesh(face, model.triangles, size=32, extent_mm=extent, center=centre)
    np.testing.assert_allclose(picture[4:36, 4 + col * 36:36 + col * 36], expected, atol=1e-5)
