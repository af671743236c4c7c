import numpy as np

from experiments import show_faces
from sfm_jax import face_world
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


def _silhouette_box(cell):
  """(left, right, top, bottom) pixel bounds of the non-white pixels of a cell."""
  rows, cols = np.nonzero(np.any(cell < 0.99, axis=-1))
  return cols.min(), cols.max() + 1, rows.min(), rows.max() + 1


def test_model_picture_shows_mean_and_plus_minus_three_sd(tmp_path):
  """Rows: component 1, component 2, expression 1; columns -3 sd, mean, +3 sd. Checked against
  the meshes' own extents (mean plus or minus 3 sd of that component): every cell is drawn at
  one common pixels-per-mm scale (so sizes can be compared), and the largest face fits its cell
  with a margin."""
  model = face_world.toy_model(num_shape=3, num_expr=1, resolution=16).replace(code_kind="gaussian")
  # Component 1 scales the face by 10% per sd (0.7x to 1.3x at 3 sd): one scale per cell would
  # draw all three the same size.
  centred = np.asarray(model.mean) - np.asarray(model.mean).mean(0)
  model = model.replace(shape_basis=np.asarray(model.shape_basis).copy())
  model.shape_basis[0] = 0.1 * centred
  path = tmp_path / "toy.npz"
  fm.save_model(path, model)
  size, pad = 64, 4
  picture, _ = show_faces.model_picture(str(path), components=2, expressions=1, size=size,
                                        yaw=0.0)
  assert picture.shape == (3 * size + 4 * pad, 3 * size + 4 * pad, 3)
  mean = np.asarray(model.mean, np.float64)
  offsets = [3 * np.asarray(model.shape_basis[0]), 3 * np.asarray(model.shape_basis[1]),
             np.asarray(model.expr_basis[0])]
  scales, widths = [], []
  for row, offset in enumerate(offsets):
    for col, face in enumerate([mean - offset, mean, mean + offset]):
      top, left = pad + row * (size + pad), pad + col * (size + pad)
      x0, x1, y0, y1 = _silhouette_box(picture[top:top + size, left:left + size])
      assert x0 > 0 and y0 > 0 and x1 < size and y1 < size  # the whole face, with a border
      extent = np.ptp(face[:, :2], axis=0)
      scales.append([(x1 - x0) / extent[0], (y1 - y0) / extent[1]])
      widths.append(max(x1 - x0, y1 - y0))
  scales = np.array(scales)
  # One scale for all nine cells, to the pixel: a 1-pixel rounding on ~50 pixels is 2-3%.
  assert np.ptp(scales) / np.mean(scales) < 0.06, scales
  # The largest face spans most of its cell (the framing leaves a margin but does not waste it).
  assert 0.75 * size < max(widths) < size


def test_column_titles_sit_above_their_columns_and_leave_the_grid_untouched():
  from sfm_jax import viz
  cells = [np.full((40, 60, 3), 0.5) for _ in range(6)]
  grid = viz.image_grid(cells, columns=3, pad=4)
  titled = viz.with_column_titles(grid, ["a", "", "two\nlines"], width=60, pad=4, height=30)
  assert titled.shape == (30 + grid.shape[0], grid.shape[1], 3)
  np.testing.assert_array_equal(titled[30:], grid)
  ink = (titled[:30] < 0.5).any(axis=(0, 2))  # dark text pixels per header column
  spans = [slice(4 + c * 64, 4 + c * 64 + 60) for c in range(3)]
  assert ink[spans[0]].any() and not ink[spans[1]].any() and ink[spans[2]].any()
  assert ink[spans[2]].sum() > ink[spans[0]].sum()  # the longer title covers more columns
  assert not ink[:4].any() and not ink[-4:].any()  # the outer pads stay white


def test_curve_of_one_logged_step_is_drawn():
  """A run logged once (e.g. 4 steps, logged every 200) still shows its point: a plain line of
  one point would leave the panel empty."""
  from sfm_jax import viz
  blue = np.array([0x1F, 0x77, 0xB4]) / 255  # matplotlib's first line colour

  def series_pixels(x, y):
    picture = viz.plot_curves([("loss", {"sfm": (x, y)})])[..., :3]
    return int(np.sum(np.all(np.abs(picture - blue) < 0.08, axis=-1)))

  legend_only = series_pixels([], [])  # the legend's line sample is the same colour
  one_point = series_pixels([4], [2.5])
  assert one_point > legend_only + 10, (one_point, legend_only)
  two_points = series_pixels([0, 4], [1.0, 2.5])  # lines are unmarked as before
  assert two_points > legend_only + 10
