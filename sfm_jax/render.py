"""A differentiable triangle renderer in pure JAX (no custom kernels): CPU and GPU, jit and vmap.

Rendering is split the way differentiable rasterisers usually are:

1. `rasterize`: which triangle is nearest at each pixel centre (a z-buffer). This selection is
   discrete and carries no gradient. The default path is exact for triangles of any size: pixels
   are tested against triangles in chunks (`lax.scan`), keeping the running nearest hit per
   pixel. The window path (for dense meshes at small image sizes, where most triangles cover a
   pixel or less) tests each triangle only against a small window of pixels and resolves depth
   with a scatter-min, sending the few larger triangles through a larger window and the rare
   huge ones through the exact path.
2. `barycentrics` / `interpolate`: with the selection fixed, barycentric coordinates are
   recomputed from the projected vertex positions, so interpolated colours, normals and depths
   are differentiable in positions and attributes (exactly so away from triangle edges).
3. `shade_sh`: Lambertian shading with 9 spherical-harmonics coefficients per colour channel.

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

from sfm_jax.sphere import normalize

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


def rasterize(vertices: Array, triangles: Array, *, height: int, width: int,
              chunk: int = 256, window: int | None = None, max_large: int = 64,
              large_window: int | None = None, max_huge: int = 4) -> Fragments:
  """Z-buffer rasterisation of one mesh (vmap it for batches).

  Args:
    vertices: `[V, 3]` pixel-space positions (x right, y down) and depth (smaller is nearer).
    triangles: `[T, 3]` int.
    height, width: image size H, W (static).
    chunk: triangles tested per scan step in the exact path (memory `H W chunk`).
    window: None for the exact path (every pixel against every triangle: any triangle size).
      An int w selects the fast path for dense meshes: each triangle tests only the `w x w`
      pixels from the corner of its bounding box (clipped to the image), and the z-buffer is a
      scatter-min. Up to `max_large` triangles whose box does not fit are tested in a
      `large_window` window instead, and up to `max_huge` that fit neither take the exact path.
      `Fragments.overflow` counts the triangles left out (0 = the exact path's result).
    max_large: see `window`.
    large_window: default 4 w, at most the image (then no triangle is left to `max_huge`).
    max_huge: see `window`. The exact path costs `H W` tests per triangle, a window `w^2`.

  Returns:
    `Fragments` with `[H, W]` arrays. Not differentiable (use `barycentrics`/`interpolate`).
  """
  vertices = jax.lax.stop_gradient(vertices)
  if window is not None:
    return _rasterize_window(vertices, triangles, height=height, width=width, window=window,
                             max_large=max_large, large_window=large_window, max_huge=max_huge,
                             chunk=chunk)
  depth, triangle_id = _rasterize_exact(vertices, triangles, height=height, width=width,
                                        chunk=chunk)
  return Fragments(triangle_id=triangle_id.reshape(height, width),
                   depth=depth.reshape(height, width), overflow=jnp.zeros((), jnp.int32))


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
    area = w0 + w1 + w2
    # Inside for either winding: all weights share the sign of the (non-zero) area.
    inside = (area != 0) & (((w0 >= 0) & (w1 >= 0) & (w2 >= 0) & (area > 0))
                            | ((w0 <= 0) & (w1 <= 0) & (w2 <= 0) & (area < 0)))
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
  """`[count]` int32: the indices of the first `count` True entries of `mask` `[T]`, in order;
  slots beyond the number of True entries hold 0 (callers mask them out)."""
  slot = jnp.cumsum(mask) - 1
  slot = jnp.where(mask & (slot < count), slot, count)  # `count` is out of range: dropped
  return jnp.zeros(count, jnp.int32).at[slot].set(
      jnp.arange(mask.shape[0], dtype=jnp.int32), mode="drop")


def _window_hits(tri, ids, col0, row0, drawn, *, window, height, width):
  """Each triangle `tri [n, 3, 3]` against the `window x window` pixels from `(row0, col0)`:
  flat (depth, +inf where not covered or not `drawn`; pixel index; triangle id) candidates."""
  offsets = jnp.arange(window)
  cols = col0[:, None, None] + offsets[None, None, :]  # [n, 1, w]
  rows = row0[:, None, None] + offsets[None, :, None]  # [n, w, 1]
  px, py = cols.astype(tri.dtype) + 0.5, rows.astype(tri.dtype) + 0.5
  corner = lambda k, axis: tri[:, k, axis][:, None, None]
  w0, w1, w2 = _edge_weights(px, py, corner(0, 0), corner(0, 1), corner(1, 0), corner(1, 1),
                             corner(2, 0), corner(2, 1))
  area = w0 + w1 + w2
  inside = (area != 0) & (((w0 >= 0) & (w1 >= 0) & (w2 >= 0) & (area > 0))
                          | ((w0 <= 0) & (w1 <= 0) & (w2 <= 0) & (area < 0)))
  inside &= (cols < width) & (rows < height) & drawn[:, None, None]  # boxes start inside
  depth = (w0 * corner(0, 2) + w1 * corner(1, 2) + w2 * corner(2, 2)) / jnp.where(
      area != 0, area, 1.0)
  depth = jnp.where(inside, depth, jnp.inf).reshape(-1)
  pixel = jnp.where(inside, rows * width + cols, 0).reshape(-1)
  ids = jnp.broadcast_to(ids[:, None, None], inside.shape).reshape(-1)
  return depth, pixel, ids


def _rasterize_window(vertices, triangles, *, height, width, window, max_large, large_window,
                      max_huge, chunk):
  dtype = vertices.dtype
  num_triangles = triangles.shape[0]
  tri = vertices[triangles]  # [T, 3, 3]
  # The pixels a triangle can cover, clipped to the image. Pixel j's centre is j + 0.5: the
  # covered columns of [lo, hi] are ceil(lo - .5)..floor(hi - .5).
  col0 = jnp.maximum(jnp.ceil(jnp.min(tri[..., 0], axis=1) - 0.5).astype(jnp.int32), 0)
  row0 = jnp.maximum(jnp.ceil(jnp.min(tri[..., 1], axis=1) - 0.5).astype(jnp.int32), 0)
  col1 = jnp.minimum(jnp.floor(jnp.max(tri[..., 0], axis=1) - 0.5).astype(jnp.int32), width - 1)
  row1 = jnp.minimum(jnp.floor(jnp.max(tri[..., 1], axis=1) - 0.5).astype(jnp.int32), height - 1)
  span = jnp.maximum(col1 - col0, row1 - row0) + 1  # <= 0: off the image
  large_window = min(large_window or 4 * window, max(height, width))
  small = span <= window
  large = ~small & (span <= large_window)
  huge = span > large_window
  every = jnp.arange(num_triangles, dtype=jnp.int32)
  chosen = _first_where(large, min(max_large, num_triangles))
  tiers = [_window_hits(tri, every, col0, row0, small, window=window, height=height, width=width),
           _window_hits(tri[chosen], chosen, col0[chosen], row0[chosen], large[chosen],
                        window=large_window, height=height, width=width)]
  depth = jnp.full((height * width,), jnp.inf, dtype)
  for hit_depth, pixel, _ in tiers:
    depth = depth.at[pixel].min(hit_depth)
  # Equal depths (a pixel centre on a shared edge): the lowest triangle id wins, as in the exact
  # path.
  big = jnp.iinfo(jnp.int32).max
  triangle_id = jnp.full((height * width,), big, jnp.int32)
  for hit_depth, pixel, ids in tiers:
    winner = jnp.isfinite(hit_depth) & (hit_depth == depth[pixel])
    triangle_id = triangle_id.at[pixel].min(jnp.where(winner, ids, big))
  triangle_id = jnp.where(triangle_id == big, -1, triangle_id)
  overflow = jnp.maximum(jnp.sum(large) - chosen.shape[0], 0)
  if large_window < max(height, width):  # static: boxes can exceed the larger window
    chosen = _first_where(huge, min(max_huge, num_triangles))
    exact_depth, exact_id = _rasterize_exact(vertices, triangles, height=height, width=width,
                                             chunk=chunk, ids=chosen)
    # Only hits of huge triangles count (unused slots repeat triangle 0).
    from_huge = (exact_id >= 0) & huge[jnp.maximum(exact_id, 0)]
    use_exact = from_huge & (exact_depth < depth)
    depth = jnp.where(use_exact, exact_depth, depth)
    triangle_id = jnp.where(use_exact, exact_id, triangle_id)
    overflow += jnp.maximum(jnp.sum(huge) - chosen.shape[0], 0)
  return Fragments(triangle_id=triangle_id.reshape(height, width),
                   depth=depth.reshape(height, width), overflow=overflow.astype(jnp.int32))


def barycentrics(vertices: Array, triangles: Array, fragments: Fragments) -> Array:
  """`[H, W, 3]` barycentric coordinates of each pixel centre in its triangle, recomputed from
  `vertices` `[V, 3]` (differentiable in them; zeros where no triangle)."""
  height, width = fragments.triangle_id.shape
  px, py = _pixel_centres(height, width, vertices.dtype)
  hit = fragments.triangle_id.reshape(-1) >= 0
  ids = jnp.maximum(fragments.triangle_id.reshape(-1), 0)
  tri = vertices[triangles[ids]]  # [P, 3, 3]
  w0, w1, w2 = _edge_weights(px, py, tri[:, 0, 0], tri[:, 0, 1], tri[:, 1, 0], tri[:, 1, 1],
                             tri[:, 2, 0], tri[:, 2, 1])
  area = w0 + w1 + w2
  safe_area = jnp.where(hit & (area != 0), area, 1.0)
  weights = jnp.stack([w0, w1, w2], -1) / safe_area[:, None]
  weights = jnp.where(hit[:, None], weights, 0.0)
  return weights.reshape(height, width, 3)


def interpolate(attributes: Array, triangles: Array, fragments: Fragments,
                weights: Array) -> Array:
  """Per-pixel attributes `[H, W, C]` from per-vertex `attributes` `[V, C]` and barycentric
  `weights` `[H, W, 3]` (zeros where no triangle). Differentiable in both."""
  height, width = fragments.triangle_id.shape
  ids = jnp.maximum(fragments.triangle_id.reshape(-1), 0)
  corner_values = attributes[triangles[ids]]  # [P, 3, C]
  values = jnp.einsum("pk,pkc->pc", weights.reshape(-1, 3), corner_values)
  return values.reshape(height, width, -1)


# Real spherical-harmonics basis constants up to band 2 (Ramamoorthi & Hanrahan 2001), with the
# Lambertian kernel's band factors (pi, 2 pi / 3, pi / 4) folded in.
_SH_CONSTANTS = np.array([
    0.282095 * np.pi,
    0.488603 * 2 * np.pi / 3, 0.488603 * 2 * np.pi / 3, 0.488603 * 2 * np.pi / 3,
    1.092548 * np.pi / 4, 1.092548 * np.pi / 4, 0.315392 * np.pi / 4,
    1.092548 * np.pi / 4, 0.546274 * np.pi / 4])


def sh_basis(normals: Array) -> Array:
  """`[..., 9]` Lambertian-convolved SH basis at unit normals `[..., 3]` (order: 1, y, z, x, xy,
  yz, 3z^2 - 1, xz, x^2 - y^2)."""
  x, y, z = normals[..., 0], normals[..., 1], normals[..., 2]
  basis = jnp.stack([jnp.ones_like(x), y, z, x, x * y, y * z, 3 * z * z - 1, x * z,
                     x * x - y * y], -1)
  return basis * jnp.asarray(_SH_CONSTANTS, normals.dtype)


def shade_sh(albedo: Array, normals: Array, sh_coefficients: Array) -> Array:
  """Lambertian shading `albedo * irradiance(n)`.

  Args:
    albedo: `[..., 3]` in [0, 1].
    normals: `[..., 3]` (normalised here).
    sh_coefficients: `[9, 3]` lighting per colour channel (`[1, 0...]` * 1/pi-ish is ambient).
  """
  return albedo * jnp.einsum("...k,kc->...c", sh_basis(normalize(normals)), sh_coefficients)


def render(vertices_px: Array, triangles: Array, albedo: Array, normals_model: Array,
           sh_coefficients: Array, *, height: int, width: int,
           background: Array | float = 0.0, window: int | None = None,
           max_large: int = 64, max_huge: int = 4) -> tuple[Array, Array, Fragments]:
  """Renders one mesh: rasterise, interpolate albedo and normals, shade, composite.

  Args:
    vertices_px: `[V, 3]` projected vertices (pixels, y down; depth).
    triangles: `[T, 3]`.
    albedo: `[V, 3]` per-vertex albedo.
    normals_model: `[V, 3]` per-vertex normals in the lighting frame (camera-aligned).
    sh_coefficients: `[9, 3]`.
    height, width: image size.
    background: colour where no triangle is hit.
    window, max_large, max_huge: rasteriser mode (see `rasterize`; `window=None`: exact for any
      triangle size).

  Returns:
    (`[H, W, 3]` image, `[H, W]` coverage mask, the fragments).
  """
  fragments = rasterize(vertices_px, triangles, height=height, width=width, window=window,
                        max_large=max_large, max_huge=max_huge)
  weights = barycentrics(vertices_px, triangles, fragments)
  pixel_albedo = interpolate(albedo, triangles, fragments, weights)
  pixel_normals = interpolate(normals_model, triangles, fragments, weights)
  colour = shade_sh(pixel_albedo, pixel_normals, sh_coefficients)
  mask = fragments.mask[..., None]
  return colour * mask + (1 - mask) * background, fragments.mask, fragments


def vertex_visibility(vertices_px: Array, fragments: Fragments, *, tolerance: float) -> Array:
  """`[V]` bool: each vertex lies inside the image and is not behind the z-buffer at its pixel
  by more than `tolerance` (depth units). For landmark and vertex-sampling losses."""
  height, width = fragments.depth.shape
  col = jnp.floor(vertices_px[:, 0]).astype(jnp.int32)
  row = jnp.floor(vertices_px[:, 1]).astype(jnp.int32)
  inside = (col >= 0) & (col < width) & (row >= 0) & (row < height)
  depth = fragments.depth[jnp.clip(row, 0, height - 1), jnp.clip(col, 0, width - 1)]
  return inside & (vertices_px[:, 2] <= depth + tolerance)
