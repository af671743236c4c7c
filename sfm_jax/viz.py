"""Pictures for people: shaded mesh previews, image grids and plots (not differentiable).

`shade_mesh` is a small z-buffer rasteriser used for PNGs of faces (demo output, model and data
previews). The differentiable renderer used in training is `sfm_jax.render`.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from sfm_jax import geometry

SKIN = np.array([0.86, 0.72, 0.62])
BACKGROUND = np.array([1.0, 1.0, 1.0])


def _rotation_y(degrees: float) -> np.ndarray:
  a = np.deg2rad(degrees)
  return np.array([[np.cos(a), 0.0, np.sin(a)], [0.0, 1.0, 0.0], [-np.sin(a), 0.0, np.cos(a)]])


def shade_mesh(vertices: np.ndarray, triangles: np.ndarray, *, size: int = 256,
               yaw_degrees: float = 0.0, colors: np.ndarray | None = None,
               extent_mm: float | None = None, center: np.ndarray | None = None) -> np.ndarray:
  """Renders a mesh seen from +z (orthographic), Gouraud-shaded with a head light and a key light.

  Args:
    vertices: `[V, 3]` model space (x left of the subject, y up, z toward the viewer), mm.
    triangles: `[T, 3]` int.
    size: output side in pixels.
    yaw_degrees: turn the mesh about the vertical axis before viewing.
    colors: optional `[V, 3]` albedo in [0, 1] (default: a skin tone).
    extent_mm: side of the square viewed (default: fit the mesh with a margin). Give the same value
      for several meshes to compare their sizes.
    center: `[3]` point at the picture centre (default: the bounding box centre).

  Returns:
    `[size, size, 3]` float image in [0, 1], white background.
  """
  vertices = np.asarray(vertices, np.float64)
  triangles = np.asarray(triangles)
  if center is None:
    center = 0.5 * (vertices.min(0) + vertices.max(0))
  rotated = (vertices - center) @ _rotation_y(yaw_degrees).T
  if extent_mm is None:
    extent_mm = 1.1 * float(np.max(rotated.max(0)[:2] - rotated.min(0)[:2]))
  scale = size / extent_mm
  # Pixel coordinates: column right, row down; depth toward the viewer is +z.
  px = rotated[:, 0] * scale + size / 2.0
  py = size / 2.0 - rotated[:, 1] * scale
  normals = np.asarray(geometry.vertex_normals(jnp.asarray(rotated, jnp.float32),
                                               jnp.asarray(triangles)), np.float64)
  light_dirs = np.array([[0.0, 0.0, 1.0], [-0.5, 0.6, 0.62]])
  light_dirs /= np.linalg.norm(light_dirs, axis=1, keepdims=True)
  intensity = 0.25 + 0.45 * np.clip(normals @ light_dirs[0], 0, 1) + 0.4 * np.clip(
      normals @ light_dirs[1], 0, 1)
  albedo = np.broadcast_to(SKIN if colors is None else np.asarray(colors), vertices.shape)
  vertex_rgb = np.clip(albedo * intensity[:, None], 0.0, 1.0)

  depth = np.full(size * size, -np.inf)
  owner = np.full(size * size, -1, np.int64)
  weights_out = np.zeros((size * size, 3))
  tri_x, tri_y, tri_z = px[triangles], py[triangles], rotated[:, 2][triangles]
  # Every triangle tests the same small window of candidate pixels around its bounding box;
  # triangles are processed in chunks so the window arrays stay small for big triangles.
  x0 = np.floor(tri_x.min(1)).astype(np.int64)
  y0 = np.floor(tri_y.min(1)).astype(np.int64)
  window = int(np.ceil(max(np.max(tri_x.max(1) - x0), np.max(tri_y.max(1) - y0), 1.0))) + 1
  offsets = np.stack(np.meshgrid(np.arange(window), np.arange(window)), -1).reshape(-1, 2)
  chunk = max(1, 2_000_000 // (window * window))
  for start in range(0, len(triangles), chunk):
    sl = slice(start, start + chunk)
    cx = x0[sl, None] + offsets[None, :, 0]
    cy = y0[sl, None] + offsets[None, :, 1]
    sx, sy = cx + 0.5, cy + 0.5  # pixel centres
    ax, ay = tri_x[sl, 0:1], tri_y[sl, 0:1]
    bx, by = tri_x[sl, 1:2], tri_y[sl, 1:2]
    qx, qy = tri_x[sl, 2:3], tri_y[sl, 2:3]
    area = (bx - ax) * (qy - ay) - (qx - ax) * (by - ay)
    area = np.where(np.abs(area) < 1e-12, np.nan, area)
    w0 = ((bx - sx) * (qy - sy) - (qx - sx) * (by - sy)) / area
    w1 = ((qx - sx) * (ay - sy) - (ax - sx) * (qy - sy)) / area
    w2 = 1.0 - w0 - w1
    inside = ((w0 >= 0) & (w1 >= 0) & (w2 >= 0) & (cx >= 0) & (cx < size) & (cy >= 0)
              & (cy < size))
    z = w0 * tri_z[sl, 0:1] + w1 * tri_z[sl, 1:2] + w2 * tri_z[sl, 2:3]
    tri_index, cand = np.nonzero(inside)
    pixel = cy[tri_index, cand] * size + cx[tri_index, cand]
    z_hit = z[tri_index, cand]
    # Keep the nearest hit per pixel: sort by (pixel, -z) and take each pixel's first entry.
    order = np.lexsort((-z_hit, pixel))
    pixel, z_hit = pixel[order], z_hit[order]
    first = np.ones(len(pixel), bool)
    first[1:] = pixel[1:] != pixel[:-1]
    pixel, z_hit = pixel[first], z_hit[first]
    chosen = order[first]
    closer = z_hit > depth[pixel]
    pixel, chosen = pixel[closer], chosen[closer]
    depth[pixel] = z_hit[closer]
    owner[pixel] = start + tri_index[chosen]
    weights_out[pixel] = np.stack([w0, w1, w2], -1)[tri_index[chosen], cand[chosen]]
  image = np.tile(BACKGROUND, (size * size, 1))
  hit = owner >= 0
  corner_rgb = vertex_rgb[triangles[owner[hit]]]  # [P, 3 corners, 3 channels]
  image[hit] = np.einsum("pk,pkc->pc", weights_out[hit], corner_rgb)
  return image.reshape(size, size, 3)


def image_grid(images: list[np.ndarray], *, columns: int, pad: int = 4,
               background: float = 1.0) -> np.ndarray:
  """Tiles equally sized `[H, W, 3]` images row by row into one image with `pad` pixels between."""
  if not images:
    raise ValueError("image_grid: no images")
  height, width = images[0].shape[:2]
  rows = -(-len(images) // columns)
  grid = np.full((rows * height + (rows + 1) * pad, columns * width + (columns + 1) * pad, 3),
                 background, np.float64)
  for i, image in enumerate(images):
    r, c = divmod(i, columns)
    top, left = pad + r * (height + pad), pad + c * (width + pad)
    grid[top:top + height, left:left + width] = image
  return grid


def with_column_titles(grid: np.ndarray, titles: list[str], *, width: int, pad: int = 4,
                       height: int = 30) -> np.ndarray:
  """`grid` (an `image_grid` of cells `width` pixels wide) with a white strip of `height` pixels
  on top naming each column, the text (one or two lines) centred over its column."""
  figure = _canvas(grid.shape[1] / 100.0, height / 100.0)
  for column, title in enumerate(titles):
    centre = pad + column * (width + pad) + width / 2.0
    figure.text(centre / grid.shape[1], 0.5, title, ha="center", va="center", fontsize=8,
                linespacing=1.1)
  header = _figure_to_image(figure)[:height, :grid.shape[1]]
  return np.concatenate([header, grid], axis=0)


def component_grid(model, *, components: int = 4, expressions: int = 2, size: int = 160,
                   yaw_degrees: float = 25.0) -> np.ndarray:
  """A model at a glance: one row per shape component (-3 sd | mean | +3 sd), then expression
  components at -1 | 0 | +1 (one blendshape at full weight, or one sd).

  For sphere models a "standard deviation" is R / sqrt(K): the spread of one coordinate of codes
  spread uniformly over the sphere. Returns a float image.
  """
  sd = 1.0 if model.code_kind == "gaussian" else float(model.radius) / np.sqrt(model.shape_dim)
  mean = np.asarray(model.mean, np.float64)
  rows = []
  for k in range(min(components, model.shape_dim)):
    offset = 3.0 * sd * np.asarray(model.shape_basis[k], np.float64)
    rows.append([mean - offset, mean, mean + offset])
  for k in range(min(expressions, model.expr_dim)):
    offset = np.asarray(model.expr_basis[k], np.float64)
    rows.append([mean - offset, mean, mean + offset])
  faces = np.array(rows).reshape(-1, mean.shape[0], 3)
  extent = 1.15 * float(np.max(np.ptp(faces[..., :2], axis=1)))
  centre = 0.5 * (mean.min(0) + mean.max(0))
  images = [shade_mesh(f, model.triangles, size=size, yaw_degrees=yaw_degrees, extent_mm=extent,
                       center=centre) for f in faces]
  return image_grid(images, columns=3)


def _canvas(width: float, height: float):
  """A figure of `width` x `height` inches at 100 dpi on its own Agg canvas: no pyplot state, so
  a notebook's backend and open figures are left alone."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  figure = Figure(figsize=(width, height), dpi=100)
  FigureCanvasAgg(figure)
  return figure


def _figure(columns: int, width: float, height: float):
  """(figure, axes row): `columns` panels of `width` x `height` inches (`_canvas`)."""
  figure = _canvas(width * columns, height)
  return figure, figure.subplots(1, columns, squeeze=False)[0]


def _figure_to_image(figure) -> np.ndarray:
  figure.canvas.draw()
  return np.asarray(figure.canvas.buffer_rgba())[..., :3].astype(np.float64) / 255.0


def plot_curves(panels: list, *, log_y: tuple = (), x_label: str = "step",
                markers: bool = False) -> np.ndarray:
  """Line plots side by side. `panels`: list of `(title, {label: (x, y)})`; titles in `log_y` get
  a logarithmic y axis; `markers` marks each point (a series of one point is always marked: as
  a line it would draw nothing, e.g. a short run's one logged step). Returns a float image."""
  figure, axes = _figure(len(panels), 4.2, 3.4)
  for axis, (title, series) in zip(axes, panels):
    for label, (x, y) in series.items():
      marked = markers or len(x) == 1
      axis.plot(x, y, label=label, linewidth=1.4, marker="o" if marked else None, markersize=4)
    axis.set_title(title, fontsize=10)
    axis.set_xlabel(x_label)
    if title in log_y:
      axis.set_yscale("log")
      _plain_log_ticks(axis.yaxis)
    axis.grid(alpha=0.3)
    if series:  # even one line is named: a panel may hold one of several models or terms
      axis.legend(fontsize=8)
  figure.tight_layout()
  return _figure_to_image(figure)


def _plain_log_ticks(scale) -> None:
  """A logarithmic axis `scale` ticked at 1-2-5 steps with plain numbers (0.2, 5, 20)."""
  from matplotlib import ticker
  scale.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
  scale.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
  scale.set_minor_formatter(ticker.NullFormatter())


def plot_loglog(rows: list) -> np.ndarray:
  """Log-log line plots in a grid. `rows`: list of rows, each a list of panels
  `(title, x label, y label, {label: (x, y)})`; points are marked. Returns a float image."""
  from matplotlib import ticker
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  plain = ticker.FuncFormatter(lambda value, _: f"{value:g}")
  columns = max(len(row) for row in rows)
  figure = Figure(figsize=(4.0 * columns, 3.3 * len(rows)), dpi=100)
  FigureCanvasAgg(figure)
  axes = figure.subplots(len(rows), columns, squeeze=False)
  for axes_row, row in zip(axes, rows):
    for axis, (title, x_label, y_label, series) in zip(axes_row, row):
      for label, (x, y) in series.items():
        axis.plot(x, y, marker="o", markersize=4, linewidth=1.4, label=label)
      axis.set_xscale("log")
      axis.set_yscale("log")
      # Ticks people can read: x at the measured values, y at 1-2-5 steps, plain numbers.
      ticks = []
      for value in sorted({v for x, _ in series.values() for v in x}):
        if not ticks or value > ticks[-1] * 1.1:  # near-equal values share a tick
          ticks.append(value)
      axis.set_xticks(ticks)
      axis.xaxis.set_major_formatter(plain)
      axis.xaxis.set_minor_formatter(ticker.NullFormatter())
      _plain_log_ticks(axis.yaxis)
      axis.set_title(title, fontsize=10)
      axis.set_xlabel(x_label)
      axis.set_ylabel(y_label)
      axis.grid(alpha=0.3, which="both")
      axis.legend(fontsize=8)
    for axis in axes_row[len(row):]:
      axis.set_visible(False)
  figure.tight_layout()
  return _figure_to_image(figure)


def plot_codes_2d(panels: list, *, max_identities: int = 12) -> np.ndarray:
  """Codes projected to 2D, coloured by identity, one panel per model.

  `panels`: list of `(title, codes [N, K], labels [N])`. Codes are normalised to unit length
  (identity is compared by angle) and projected on their own two leading principal axes; the
  first `max_identities` identities are drawn. Returns a float image.
  """
  from matplotlib import colormaps
  figure, axes = _figure(len(panels), 4.4, 4.2)
  for axis, (title, codes, labels) in zip(axes, panels):
    labels = np.asarray(labels)
    keep = np.isin(labels, np.unique(labels)[:max_identities])
    unit = codes / np.maximum(np.linalg.norm(codes, axis=1, keepdims=True), 1e-12)
    centred = unit - unit.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    xy = centred @ vt[:2].T
    colours = colormaps["tab20"](np.searchsorted(np.unique(labels[keep]), labels[keep]) % 20)
    axis.scatter(xy[keep, 0], xy[keep, 1], c=colours, s=22, edgecolors="k", linewidths=0.3)
    axis.set_title(title, fontsize=10)
    axis.set_xticks([])
    axis.set_yticks([])
  figure.tight_layout()
  return _figure_to_image(figure)


def draw_landmarks(image: np.ndarray, landmarks: np.ndarray, visible: np.ndarray | None = None,
                   *, radius: int = 1) -> np.ndarray:
  """A copy of `image` `[H, W, 3]` with landmarks `[L, 2]` (pixels, x right, y down) drawn as
  small squares: green where visible, red where not."""
  out = np.array(image, np.float64, copy=True)
  height, width = out.shape[:2]
  visible = np.ones(len(landmarks), bool) if visible is None else np.asarray(visible, bool)
  for (x, y), seen in zip(np.asarray(landmarks), visible):
    col, row = int(np.floor(x)), int(np.floor(y))
    if 0 <= col < width and 0 <= row < height:
      out[max(row - radius, 0):row + radius + 1, max(col - radius, 0):col + radius + 1] = (
          (0.1, 1.0, 0.1) if seen else (1.0, 0.1, 0.1))
  return out


def reconstruction_overlay(image: np.ndarray, rendered: np.ndarray, mask: np.ndarray,
                           predicted: np.ndarray | None = None,
                           target: np.ndarray | None = None, *, alpha: float = 0.75,
                           radius: int = 0) -> np.ndarray:
  """The rendered reconstruction `[S, S, 3]` blended (`alpha`) over `image` where `mask` `[S, S]`
  covers it, with `target` landmarks in green and `predicted` ones in red (`[68, 2]`, pixels;
  NaN rows skipped)."""
  weight = alpha * np.asarray(mask, np.float64)[..., None]
  out = np.asarray(image, np.float64) * (1 - weight) + np.asarray(rendered, np.float64) * weight
  if target is not None:
    target = np.asarray(target)
    out = draw_landmarks(out, target[np.all(np.isfinite(target), 1)], radius=radius)
  if predicted is not None:
    predicted = np.asarray(predicted)
    keep = np.all(np.isfinite(predicted), 1)
    out = draw_landmarks(out, predicted[keep], np.zeros(keep.sum(), bool), radius=radius)
  return out
