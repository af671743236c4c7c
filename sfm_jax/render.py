"""A differentiable triangle renderer in pure JAX (no custom kernels): CPU and GPU, jit and vmap.

Rendering is split the way differentiable rasterisers usually are:

1. `rasterize`: which triangle is nearest at each pixel centre (a z-buffer). This selection is
   discrete and carries no gradient. The default path is exact for triangles of any size: pixels
   are tested against triangles in chunks (`lax.scan`), keeping the running nearest hit per
   pixel. The window path (for dense meshes at small image sizes, where most triangles cover a
   pixel or less) tests each triangle only against a small window of pixels and resolves depth
   with a scatter-min of whole windows into a z-buffer padded by the largest window, sending the
   few larger triangles through a larger window and the rare huge ones through the exact path
   (whose image is one more window).
2. `barycentrics` / `interpolate`: with the selection fixed, barycentric coordinates are
   recomputed from the projected vertex positions, so interpolated colours, normals and depths
   are differentiable in positions and attributes (exactly so away from triangle edges).
3. `shade_sh`: Lambertian shading with 9 spherical-harmonics coefficients per colour channel.

Batches: every step takes leading dims `[...]` (meshes sharing one triangle list) and works on
the whole batch at once with flat indices into its `B H W` pixels and `B V` vertices. On CPU
this is several times faster than `vmap` of one mesh, whose gathers and scatters get batch
dimensions; both give the same fragments. Pixels that hit nothing read their corners out of
range (zeros, dropped from the gradient), so no single vertex collects a long chain of updates;
window candidates that cover nothing carry +inf, a no-op in the z-buffer's minimum.

Image conventions: vertices are given in pixel units, `x` to the right, `y` down, pixel (row i,
column j) has its centre at `(j + 0.5, i + 0.5)`; `z` is depth, smaller is nearer. Both triangle
windings are rasterised (no back-face culling: the nearest surface wins).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sfm_jax import geometry, parallel

Array = Any


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Fragments:
  """What the rasteriser found at each pixel.

  Attributes:
    triangle_id: `[..., H, W]` int32, the nearest triangle, -1 where none.
    depth: `[..., H, W]` depth of that hit (+inf where none).
    overflow: `[...]` int32, window mode only: triangles too large for the window beyond the
      `max_large` handled exactly (0 means the result is exact).
  """
  triangle_id: Array
  depth: Array
  overflow: Array = 0

  @property
  def mask(self) -> Array:
    """`[..., H, W]` float coverage (1 where a triangle was hit)."""
    return (self.triangle_id >= 0).astype(self.depth.dtype)


def _pixel_centres(height: int, width: int, dtype) -> tuple[Array, Array]:
  ys, xs = jnp.meshgrid(jnp.arange(height, dtype=dtype) + 0.5,
                        jnp.arange(width, dtype=dtype) + 0.5, indexing="ij")
  return xs.reshape(-1), ys.reshape(-1)


def _edge_weights(px, py, ax, ay, bx, by, cx, cy):
  """Unnormalised barycentric weights (signed areas) of points (px, py) in triangles abc."""
  w0 = (bx - px) * (cy - py) - (cx - px) * (by - py)
  w1 = (cx - px) * (ay - py) - (ax - px) * (cy - py)
  w2 = (ax - px) * (by - py) - (bx - px) * (ay - py)
  return w0, w1, w2


def _covered(w0, w1, w2):
  """(inside, signed area) of points with edge weights `w0, w1, w2`: inside for either winding,
  all weights sharing the sign of the (non-zero) area."""
  area = w0 + w1 + w2
  inside = (area != 0) & (((w0 >= 0) & (w1 >= 0) & (w2 >= 0) & (area > 0))
                          | ((w0 <= 0) & (w1 <= 0) & (w2 <= 0) & (area < 0)))
  return inside, area


def _flatten_batch(x: Array, trailing: int) -> tuple[Array, tuple]:
  """(`x` as `[B, *x.shape[-trailing:]]`, its leading shape `[...]`)."""
  lead = x.shape[:x.ndim - trailing]
  return x.reshape((-1,) + x.shape[x.ndim - trailing:]), lead


def rasterize(vertices: Array, triangles: Array, *, height: int, width: int,
              chunk: int = 256, window: int | None = None, max_large: int = 64,
              large_window: int | None = None, max_huge: int = 4) -> Fragments:
  """Z-buffer rasterisation of one mesh or a batch of meshes sharing `triangles`.

  Args:
    vertices: `[..., V, 3]` pixel-space positions (x right, y down) and depth (smaller is
      nearer). Leading dims are a batch, rendered in one program with flat indices (faster than
      `vmap`, whose batched scatters are slow on CPU; both give the same fragments).
    triangles: `[T, 3]` int.
    height, width: image size H, W (static).
    chunk: triangles tested per scan step in the exact path (memory `H W chunk`).
    window: None for the exact path (every pixel against every triangle: any triangle size).
      An int w selects the fast path for dense meshes: each triangle tests only the `w x w`
      pixels from the corner of its bounding box (clipped to the image), and the z-buffer is a
      scatter-min of those windows. Up to `max_large` triangles per mesh whose box does not fit
      are tested in a `large_window` window instead, and up to `max_huge` that fit neither take
      the exact path.
      `Fragments.overflow` counts the triangles left out (0 = the exact path's result).
    max_large: see `window`.
    large_window: default 4 w, at most the image (then no triangle is left to `max_huge`).
    max_huge: see `window`. The exact path costs `H W` tests per triangle, a window `w^2`.

  Returns:
    `Fragments` with `[..., H, W]` arrays. Not differentiable (use `barycentrics`/`interpolate`).
  """
  flat, lead = _flatten_batch(jax.lax.stop_gradient(vertices), 2)
  if window is not None:
    depth, triangle_id, overflow = _rasterize_window(
        flat, triangles, height=height, width=width, window=window, max_large=max_large,
        large_window=large_window, max_huge=max_huge, chunk=chunk)
  else:
    depth, triangle_id = jax.vmap(lambda v: _rasterize_exact(v, triangles, height=height,
                                                             width=width, chunk=chunk))(flat)
    overflow = jnp.zeros(flat.shape[0], jnp.int32)
  return Fragments(triangle_id=triangle_id.reshape(lead + (height, width)),
                   depth=depth.reshape(lead + (height, width)), overflow=overflow.reshape(lead))


def _rasterize_exact(vertices, triangles, *, height, width, chunk, ids=None):
  """Flat `[H W]` (depth, triangle id) testing every pixel against every triangle (or against
  the triangles `ids`, reporting their original ids)."""
  dtype = vertices.dtype
  px, py = _pixel_centres(height, width, dtype)
  if ids is not None:
    triangles = triangles[ids]
  num_triangles = triangles.shape[0]
  chunk = min(chunk, num_triangles)
  padded = -(-num_triangles // chunk) * chunk
  corners = vertices[triangles]  # [T, 3, 3]
  # Padding triangles are degenerate (zero area) and never cover a pixel.
  corners = jnp.concatenate([corners, jnp.zeros((padded - num_triangles, 3, 3), dtype)])
  corners = corners.reshape(padded // chunk, chunk, 3, 3)
  offsets = jnp.arange(padded // chunk) * chunk

  def body(carry, inputs):
    best_depth, best_id = carry
    tri, offset = inputs  # [chunk, 3, 3]
    ax, ay, az = (tri[:, 0, i][None] for i in range(3))
    bx, by, bz = (tri[:, 1, i][None] for i in range(3))
    cx, cy, cz = (tri[:, 2, i][None] for i in range(3))
    w0, w1, w2 = _edge_weights(px[:, None], py[:, None], ax, ay, bx, by, cx, cy)  # [P, chunk]
    inside, area = _covered(w0, w1, w2)
    safe_area = jnp.where(area != 0, area, 1.0)
    depth = (w0 * az + w1 * bz + w2 * cz) / safe_area
    depth = jnp.where(inside, depth, jnp.inf)
    local = jnp.argmin(depth, axis=1)
    chunk_depth = jnp.take_along_axis(depth, local[:, None], axis=1)[:, 0]
    closer = chunk_depth < best_depth
    return (jnp.where(closer, chunk_depth, best_depth),
            jnp.where(closer, (local + offset).astype(jnp.int32), best_id)), None

  init = (jnp.full(px.shape, jnp.inf, dtype), jnp.full(px.shape, -1, jnp.int32))
  (depth, triangle_id), _ = jax.lax.scan(body, init, (corners, offsets))
  if ids is not None:
    padded_ids = jnp.concatenate([ids.astype(jnp.int32), jnp.full((padded - num_triangles,), -1,
                                                                  jnp.int32)])
    triangle_id = jnp.where(triangle_id >= 0, padded_ids[jnp.maximum(triangle_id, 0)], -1)
  return depth, triangle_id


def _first_where(mask: Array, count: int) -> Array:
  """`[B, count]` int32: per row of `mask` `[B, T]`, the indices of its first `count` True
  entries, in order; slots beyond the number of True entries hold 0 (callers mask them out)."""
  batch, num = mask.shape
  slot = jnp.cumsum(mask, axis=1) - 1
  row_start = (jnp.arange(batch) * count)[:, None]
  slot = jnp.where(mask & (slot < count), slot + row_start, batch * count)  # out of range: dropped
  every = jnp.broadcast_to(jnp.arange(num, dtype=jnp.int32), (batch, num))
  return jnp.zeros(batch * count, jnp.int32).at[slot.reshape(-1)].set(
      every.reshape(-1), mode="drop").reshape(batch, count)


def _window_hits(tri, col0, row0, drawn, *, window, height, width):
  """`[B, n, w, w]` depths of each triangle `tri [B, n, 3, 3]` at the `window x window` pixel
  centres from `(row0, col0)` (`[B, n]`), +inf where not covered, outside the image or not
  `drawn`."""
  offsets = jnp.arange(window)
  cols = col0[..., None, None] + offsets[None, None, :]  # [B, n, 1, w]
  rows = row0[..., None, None] + offsets[None, :, None]  # [B, n, w, 1]
  px, py = cols.astype(tri.dtype) + 0.5, rows.astype(tri.dtype) + 0.5
  corner = lambda k, axis: tri[..., k, axis][..., None, None]
  w0, w1, w2 = _edge_weights(px, py, corner(0, 0), corner(0, 1), corner(1, 0), corner(1, 1),
                             corner(2, 0), corner(2, 1))
  inside, area = _covered(w0, w1, w2)
  inside &= (cols < width) & (rows < height) & drawn[..., None, None]  # boxes start inside
  depth = (w0 * corner(0, 2) + w1 * corner(1, 2) + w2 * corner(2, 2)) / jnp.where(
      area != 0, area, 1.0)
  return jnp.where(inside, depth, jnp.inf)


# A window `[h, w]` of an image buffer `[B, H', W']` at (mesh, row, column) `[N, 3]`.
_WINDOW_SCATTER = jax.lax.ScatterDimensionNumbers(
    update_window_dims=(1, 2), inserted_window_dims=(0,), scatter_dims_to_operand_dims=(0, 1, 2))
_WINDOW_GATHER = jax.lax.GatherDimensionNumbers(
    offset_dims=(1, 2), collapsed_slice_dims=(0,), start_index_map=(0, 1, 2))


def _window_starts(row0, col0, *, height, width):
  """`[B n, 3]` (mesh, row, column) of windows from `row0, col0 [B, n]`, clipped into the image:
  a window that can cover a pixel already starts inside it, and one that cannot (all +inf) may
  then land anywhere; from inside, every window fits the buffer padded by the largest window."""
  batch, count = row0.shape
  mesh = jnp.broadcast_to(jnp.arange(batch, dtype=jnp.int32)[:, None], (batch, count))
  return jnp.stack([mesh, jnp.minimum(row0, height - 1), jnp.minimum(col0, width - 1)],
                   -1).reshape(-1, 3)


def _scatter_min_windows(buffer, starts, values):
  """`buffer [B, H', W']` with the windows `values [B, n, h, w]` min-combined in at `starts`
  `[B n, 3]` (`_window_starts`). One update per window, not per pixel: fewer, wider
  read-modify-writes."""
  return jax.lax.scatter_min(buffer, starts, values.reshape((-1,) + values.shape[-2:]),
                             _WINDOW_SCATTER, mode=jax.lax.GatherScatterMode.PROMISE_IN_BOUNDS)


def _gather_windows(buffer, starts, shape):
  """`[B n, h, w]`: the windows of `shape` `(h, w)` of `buffer [B, H', W']` at `starts`."""
  return jax.lax.gather(buffer, starts, _WINDOW_GATHER, slice_sizes=(1,) + tuple(shape),
                        mode=jax.lax.GatherScatterMode.PROMISE_IN_BOUNDS)


def _rasterize_window(vertices, triangles, *, height, width, window, max_large, large_window,
                      max_huge, chunk):
  """`[B, H W]` depth and triangle id, `[B]` overflow of `vertices [B, V, 3]`: each tier's
  candidates (a window per triangle; the whole image for the exact tier) go into one z-buffer of
  the batch `[B, H', W']` by a windowed scatter-min, and the fragments are that scatter's output
  (nothing elementwise that XLA would recompute inside every gather that reads them)."""
  dtype = vertices.dtype
  batch, num_triangles = vertices.shape[0], triangles.shape[0]
  tri = vertices[:, triangles]  # [B, T, 3, 3]
  # The pixels a triangle can cover, clipped to the image. Pixel j's centre is j + 0.5: the
  # covered columns of [lo, hi] are ceil(lo - .5)..floor(hi - .5).
  col0 = jnp.maximum(jnp.ceil(jnp.min(tri[..., 0], axis=-1) - 0.5).astype(jnp.int32), 0)
  row0 = jnp.maximum(jnp.ceil(jnp.min(tri[..., 1], axis=-1) - 0.5).astype(jnp.int32), 0)
  col1 = jnp.minimum(jnp.floor(jnp.max(tri[..., 0], axis=-1) - 0.5).astype(jnp.int32), width - 1)
  row1 = jnp.minimum(jnp.floor(jnp.max(tri[..., 1], axis=-1) - 0.5).astype(jnp.int32),
                     height - 1)
  span = jnp.maximum(col1 - col0, row1 - row0) + 1  # <= 0: off the image
  large_window = min(large_window or 4 * window, max(height, width))
  small = span <= window
  large = ~small & (span <= large_window)
  huge = span > large_window
  chosen = _first_where(large, min(max_large, num_triangles))  # [B, max_large]
  pick = lambda x: jnp.take_along_axis(x, chosen, axis=1)
  every = jnp.broadcast_to(jnp.arange(num_triangles, dtype=jnp.int32), (batch, num_triangles))
  starts = lambda rows, cols: _window_starts(rows, cols, height=height, width=width)
  # Per tier: (candidate depths [B, n, h, w], +inf where none; their triangle ids [B, n, 1 or h,
  # 1 or w]; window starts [B n, 3]).
  tiers = [(_window_hits(tri, col0, row0, small, window=window, height=height, width=width),
            every[..., None, None], starts(row0, col0)),
           (_window_hits(jnp.take_along_axis(tri, chosen[..., None, None], axis=1), pick(col0),
                         pick(row0), pick(large), window=large_window, height=height,
                         width=width),
            chosen[..., None, None], starts(pick(row0), pick(col0)))]
  overflow = jnp.maximum(jnp.sum(large, axis=1) - chosen.shape[1], 0)
  if large_window < max(height, width):  # static: boxes can exceed the larger window
    chosen = _first_where(huge, min(max_huge, num_triangles))
    if chosen.shape[1]:  # static: `max_huge=0` leaves every huge triangle to the overflow
      exact_depth, exact_id = jax.vmap(lambda v, ids: _rasterize_exact(
          v, triangles, height=height, width=width, chunk=chunk, ids=ids))(vertices, chosen)
      # Only hits of huge triangles count (unused slots repeat triangle 0). The whole image is
      # this tier's one window per mesh.
      from_huge = (exact_id >= 0) & jnp.take_along_axis(huge, jnp.maximum(exact_id, 0), axis=1)
      image = lambda x: x.reshape(batch, 1, height, width)
      tiers.append((image(jnp.where(from_huge, exact_depth, jnp.inf)), image(exact_id),
                    starts(jnp.zeros((batch, 1), jnp.int32), jnp.zeros((batch, 1), jnp.int32))))
    overflow += jnp.maximum(jnp.sum(huge, axis=1) - chosen.shape[1], 0)
  # The z-buffer padded by the largest window (cropped below), so every window fits.
  largest = max(window, large_window)
  padded = (batch, height + largest - 1, width + largest - 1)
  depth = jnp.full(padded, jnp.inf, dtype)
  for hit_depth, _, at in tiers:
    depth = _scatter_min_windows(depth, at, hit_depth)
  # Equal depths (a pixel centre on a shared edge): the lowest triangle id wins, as in the exact
  # path. Ids as uint32, where -1 is the largest value: no hit is the scatter's initial value,
  # and the result needs only a bitcast back to int32.
  no_hit = jnp.asarray(-1, jnp.int32).astype(jnp.uint32)
  triangle_id = jnp.full(padded, no_hit, jnp.uint32)
  for hit_depth, ids, at in tiers:
    shape = hit_depth.shape[-2:]
    winner = jnp.isfinite(hit_depth) & (hit_depth == _gather_windows(depth, at, shape).reshape(
        hit_depth.shape))
    triangle_id = _scatter_min_windows(triangle_id, at,
                                       jnp.where(winner, ids.astype(jnp.uint32), no_hit))
  pixels = height * width
  triangle_id = jax.lax.bitcast_convert_type(triangle_id[:, :height, :width],
                                             jnp.int32).reshape(batch, pixels)
  depth = depth[:, :height, :width].reshape(batch, pixels)
  return depth, triangle_id, overflow.astype(jnp.int32)


def _pixel_corners(triangles: Array, fragments: Fragments, num_vertices: int) -> tuple[Array,
                                                                                     Array]:
  """(`[B, P, 3]` rows of each pixel's triangle corners in the batch's `[B V]` vertex rows, `[B,
  P]` hit) for fragments `[..., H, W]` flattened to B meshes of P pixels. Where no triangle the
  rows are out of range (`B V`): read them with `_corner_values`, which gives zeros there and
  whose gradient drops them (instead of adding zeros to one vertex, one after another)."""
  ids = fragments.triangle_id.reshape(-1, fragments.triangle_id.shape[-2]
                                      * fragments.triangle_id.shape[-1])
  hit = ids >= 0
  mesh_start = (jnp.arange(ids.shape[0]) * num_vertices)[:, None, None]
  rows = jnp.asarray(triangles)[jnp.maximum(ids, 0)] + mesh_start
  return jnp.where(hit[..., None], rows, ids.shape[0] * num_vertices), hit


def _corner_values(values: Array, rows: Array) -> Array:
  """`values[rows]` of `values [N, ...]` (rows from `_pixel_corners`), zeros for out-of-range
  rows; as one gather without the negative-index handling of `values.at[rows]` (the rows are
  never negative), which XLA would evaluate for every gathered element."""
  numbers = jax.lax.GatherDimensionNumbers(
      offset_dims=tuple(range(rows.ndim, rows.ndim + values.ndim - 1)), collapsed_slice_dims=(0,),
      start_index_map=(0,))
  return jax.lax.gather(values, rows[..., None], numbers, slice_sizes=(1,) + values.shape[1:],
                        mode=jax.lax.GatherScatterMode.FILL_OR_DROP, fill_value=0)


def barycentrics(vertices: Array, triangles: Array, fragments: Fragments) -> Array:
  """`[..., H, W, 3]` barycentric coordinates of each pixel centre in its triangle, recomputed
  from `vertices` `[..., V, 3]` (the fragments' leading dims; differentiable in them; zeros where
  no triangle)."""
  height, width = fragments.triangle_id.shape[-2:]
  flat, lead = _flatten_batch(vertices, 2)
  corners, hit = _pixel_corners(triangles, fragments, flat.shape[1])
  x, y = flat[..., 0].reshape(-1), flat[..., 1].reshape(-1)
  px, py = _pixel_centres(height, width, vertices.dtype)
  w0, w1, w2 = _edge_weights(px, py, *(_corner_values(coordinate, corners[..., k])
                                       for k in range(3) for coordinate in (x, y)))
  area = w0 + w1 + w2
  safe_area = jnp.where(hit & (area != 0), area, 1.0)
  weights = jnp.stack([w0, w1, w2], -1) / safe_area[..., None]
  weights = jnp.where(hit[..., None], weights, 0.0)
  return weights.reshape(lead + (height, width, 3))


def interpolate(attributes: Array, triangles: Array, fragments: Fragments,
                weights: Array) -> Array:
  """Per-pixel attributes `[..., H, W, C]` from per-vertex `attributes` `[..., V, C]` and
  barycentric `weights` `[..., H, W, 3]` (zeros where no triangle; the fragments' leading dims).
  Differentiable in both."""
  height, width = fragments.triangle_id.shape[-2:]
  flat, lead = _flatten_batch(attributes, 2)
  batch, num_vertices, channels = flat.shape
  corners, _ = _pixel_corners(triangles, fragments, num_vertices)
  corner_values = _corner_values(flat.reshape(batch * num_vertices, channels), corners)
  values = jnp.einsum("bpk,bpkc->bpc", weights.reshape(batch, -1, 3), corner_values)
  return values.reshape(lead + (height, width, channels))


# Real spherical-harmonics basis constants up to band 2 (Ramamoorthi & Hanrahan 2001), with the
# Lambertian kernel's band factors (pi, 2 pi / 3, pi / 4) folded in.
_SH_CONSTANTS = np.array([
    0.282095 * np.pi,
    0.488603 * 2 * np.pi / 3, 0.488603 * 2 * np.pi / 3, 0.488603 * 2 * np.pi / 3,
    1.092548 * np.pi / 4, 1.092548 * np.pi / 4, 0.315392 * np.pi / 4,
    1.092548 * np.pi / 4, 0.546274 * np.pi / 4])


def _sh_terms(x: Array, y: Array, z: Array) -> list:
  """The 9 basis functions of `sh_basis` at unit normals given per component (arrays `[...]`)."""
  terms = [jnp.ones_like(x), y, z, x, x * y, y * z, 3 * z * z - 1, x * z, x * x - y * y]
  # Python floats: weakly typed, so the terms keep the normals' dtype (float32 or float64).
  return [term * float(constant) for term, constant in zip(terms, _SH_CONSTANTS)]


def sh_basis(normals: Array) -> Array:
  """`[..., 9]` Lambertian-convolved SH basis at unit normals `[..., 3]` (order: 1, y, z, x, xy,
  yz, 3z^2 - 1, xz, x^2 - y^2)."""
  return jnp.stack(_sh_terms(normals[..., 0], normals[..., 1], normals[..., 2]), -1)


def shade_sh(albedo: Array, normals: Array, sh_coefficients: Array) -> Array:
  """Lambertian shading `albedo * irradiance(n)`.

  Args:
    albedo: `[..., 3]` in [0, 1].
    normals: `[..., 3]` (normalised here).
    sh_coefficients: `[..., 9, 3]` lighting per colour channel (`[1, 0...]` * 1/pi-ish is
      ambient), its leading dims broadcast against the points'.

  Everything is computed per component and per colour channel, on `[...]` arrays: a contraction
  over 9 with 3 outputs is far slower as an `einsum` on CPU, and so are the products and
  reductions over a trailing axis of 3 (and their gradients).
  """
  terms = _sh_terms(*geometry.unit_components(normals))
  return jnp.stack([albedo[..., channel] * sum(term * sh_coefficients[..., k, channel]
                                               for k, term in enumerate(terms))
                    for channel in range(3)], -1)


def render(vertices_px: Array, triangles: Array, albedo: Array, normals_model: Array,
           sh_coefficients: Array, *, height: int, width: int,
           background: Array | float = 0.0, window: int | None = None,
           max_large: int = 64, large_window: int | None = None,
           max_huge: int = 4, groups: int = 1) -> tuple[Array, Array, Fragments]:
  """Renders one mesh, or a batch (leading dims `[...]`, the same in every argument but
  `triangles`): rasterise, interpolate albedo and normals, shade, composite.

  Args:
    vertices_px: `[..., V, 3]` projected vertices (pixels, y down; depth).
    triangles: `[T, 3]`.
    albedo: `[..., V, 3]` per-vertex albedo.
    normals_model: `[..., V, 3]` per-vertex normals in the lighting frame (camera-aligned).
    sh_coefficients: `[..., 9, 3]`.
    height, width: image size.
    background: colour where no triangle is hit.
    window, max_large, large_window, max_huge: rasteriser mode (see `rasterize`; `window=None`:
      exact for any triangle size).
    groups: render a batch `[B, V, 3]` as this many independent groups of meshes (when it
      divides B, `background` is a number and the batch has one leading dimension; otherwise
      as one program). The result is the same. On
      CPU, XLA runs the groups' scatters and gathers side by side and on smaller buffers: the
      stage-2 `demo` step on 2 cores was 7% faster with 4, and took 10 s to compile instead of
      7. Mesh b goes to group b mod `groups`, so a batch sharded over devices along B splits
      into groups on each device without moving data.

  Returns:
    (`[..., H, W, 3]` image, `[..., H, W]` coverage mask, the fragments).
  """
  settings = dict(height=height, width=width, background=background, window=window,
                  max_large=max_large, large_window=large_window, max_huge=max_huge)
  batch = vertices_px.shape[0] if vertices_px.ndim == 3 else 0
  if groups > 1 and batch % groups == 0 and jnp.ndim(background) == 0:
    split = lambda x: parallel.split_groups(x, groups)
    parts = [render(v, triangles, a, n, sh, **settings) for v, a, n, sh in zip(
        split(vertices_px), split(albedo), split(normals_model), split(sh_coefficients))]
    return jax.tree.map(lambda *x: parallel.join_groups(list(x)), *parts)
  fragments = rasterize(vertices_px, triangles, height=height, width=width, window=window,
                        max_large=max_large, large_window=large_window, max_huge=max_huge)
  weights = barycentrics(vertices_px, triangles, fragments)
  # Albedo and normals interpolated as one 6-channel table: one corner gather, and one batched
  # `[3] x [3, 6]` product per pixel (XLA:CPU's cost is per pixel, hardly per channel).
  attributes = interpolate(jnp.concatenate([albedo, normals_model], -1), triangles, fragments,
                           weights)
  pixel_albedo, pixel_normals = attributes[..., :3], attributes[..., 3:]
  colour = shade_sh(pixel_albedo, pixel_normals, sh_coefficients[..., None, None, :, :])
  mask = fragments.mask[..., None]
  return colour * mask + (1 - mask) * background, fragments.mask, fragments


def vertex_visibility(vertices_px: Array, fragments: Fragments, *, tolerance: float) -> Array:
  """`[..., V]` bool: each vertex of `vertices_px` `[..., V, 3]` lies inside the image and is not
  behind the z-buffer (`fragments` `[..., H, W]`) at its pixel by more than `tolerance` (depth
  units). For landmark and vertex-sampling losses."""
  height, width = fragments.depth.shape[-2:]
  flat, lead = _flatten_batch(vertices_px, 2)
  col = jnp.floor(flat[..., 0]).astype(jnp.int32)
  row = jnp.floor(flat[..., 1]).astype(jnp.int32)
  inside = (col >= 0) & (col < width) & (row >= 0) & (row < height)
  pixel = jnp.clip(row, 0, height - 1) * width + jnp.clip(col, 0, width - 1)
  mesh_start = (jnp.arange(flat.shape[0]) * (height * width))[:, None]
  depth = fragments.depth.reshape(-1)[pixel + mesh_start]
  return (inside & (flat[..., 2] <= depth + tolerance)).reshape(lead + flat.shape[1:2])
