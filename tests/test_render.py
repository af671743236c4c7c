import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sfm_jax import geometry, render

H = W = 48


def _numpy_inside(x, y, a, b, c):
  """Independent point-in-triangle test (orientation-agnostic cross products)."""
  def cross(p, q, rx, ry):
    return (q[0] - p[0]) * (ry - p[1]) - (q[1] - p[1]) * (rx - p[0])
  d0, d1, d2 = cross(a, b, x, y), cross(b, c, x, y), cross(c, a, x, y)
  return ((d0 >= 0) & (d1 >= 0) & (d2 >= 0)) | ((d0 <= 0) & (d1 <= 0) & (d2 <= 0))


def _pixel_grid():
  ys, xs = np.meshgrid(np.arange(H) + 0.5, np.arange(W) + 0.5, indexing="ij")
  return xs, ys


@pytest.mark.parametrize("winding", [1, -1])
def test_single_triangle_coverage_and_depth(winding):
  a, b, c = np.array([5.3, 7.1, 10.0]), np.array([40.2, 12.7, 20.0]), np.array([18.9, 44.4, 30.0])
  vertices = np.stack([a, b, c] if winding > 0 else [a, c, b]).astype(np.float32)
  fragments = render.rasterize(jnp.asarray(vertices), jnp.array([[0, 1, 2]]), height=H, width=W)
  xs, ys = _pixel_grid()
  inside = _numpy_inside(xs, ys, a, b, c)
  np.testing.assert_array_equal(np.asarray(fragments.triangle_id) >= 0, inside)
  area = 0.5 * abs((b[0] - a[0]) * (c[1] - a[1]) - (c[0] - a[0]) * (b[1] - a[1]))
  perimeter = sum(np.linalg.norm(p[:2] - q[:2]) for p, q in ((a, b), (b, c), (c, a)))
  assert abs(inside.sum() - area) < perimeter / 2  # coverage matches the analytic area
  # Depth is the plane through the three corners.
  normal = np.cross(b - a, c - a)
  plane = a[2] - (normal[0] * (xs - a[0]) + normal[1] * (ys - a[1])) / normal[2]
  np.testing.assert_allclose(np.asarray(fragments.depth)[inside], plane[inside], rtol=1e-5)
  assert np.all(np.isinf(np.asarray(fragments.depth)[~inside]))


def _cube(rotation, side=24.0, centre=(24.0, 24.0, 100.0)):
  corners = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)]) * side / 2
  faces = [[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1], [2, 3, 7],
           [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]]
  return corners @ rotation.T + np.array(centre), np.array(faces)


def test_cube_silhouette_depth_and_visibility():
  rotation = np.asarray(geometry.euler_to_matrix(np.array([0.4, 0.6, 0.2])), np.float64)
  vertices, faces = _cube(rotation)
  fragments = render.rasterize(jnp.asarray(vertices, jnp.float32), jnp.asarray(faces),
                               height=H, width=W)
  # Coverage: the projected convex hull's area (shoelace over the hull of the 8 corners).
  points = vertices[:, :2]
  hull = [int(np.argmin(points[:, 0]))]
  while True:  # gift wrapping
    candidate = (hull[-1] + 1) % 8
    for j in range(8):
      u, v = points[candidate] - points[hull[-1]], points[j] - points[hull[-1]]
      if u[0] * v[1] - u[1] * v[0] < 0:
        candidate = j
    if candidate == hull[0]:
      break
    hull.append(candidate)
  ring = points[hull]
  area = 0.5 * abs(np.sum(ring[:, 0] * np.roll(ring[:, 1], -1) - np.roll(ring[:, 0], -1)
                          * ring[:, 1]))
  perimeter = np.sum(np.linalg.norm(ring - np.roll(ring, -1, axis=0), axis=1))
  covered = int(np.sum(np.asarray(fragments.triangle_id) >= 0))
  assert abs(covered - area) < perimeter / 2
  # Depth at the centre pixel: the nearest intersection of the viewing ray with the cube (slabs).
  origin, direction = np.array([24.5, 24.5, 0.0]), np.array([0.0, 0.0, 1.0])
  local_origin = rotation.T @ (origin - np.array([24.0, 24.0, 100.0]))
  local_direction = rotation.T @ direction
  t1, t2 = (-12 - local_origin) / local_direction, (12 - local_origin) / local_direction
  t_near = np.max(np.minimum(t1, t2))
  np.testing.assert_allclose(float(fragments.depth[24, 24]), t_near, rtol=1e-5)
  # The corner nearest the viewer is visible, the farthest hidden.
  visible = np.asarray(render.vertex_visibility(jnp.asarray(vertices, jnp.float32), fragments,
                                                tolerance=1e-3))
  assert visible[np.argmin(vertices[:, 2])] and not visible[np.argmax(vertices[:, 2])]


@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
def test_nearest_surface_wins_whatever_the_order(order):
  near = [[10.0, 10.0, 5.0], [40.0, 12.0, 5.0], [20.0, 40.0, 5.0]]
  far = [[8.0, 8.0, 9.0], [44.0, 8.0, 9.0], [26.0, 44.0, 9.0]]
  vertices = jnp.asarray(np.array(near + far, np.float32))
  triangles = [[0, 1, 2], [3, 4, 5]]
  triangles = jnp.asarray(np.array([triangles[i] for i in order]))
  fragments = render.rasterize(vertices, triangles, height=H, width=W)
  near_index = order.index(0)
  assert int(fragments.triangle_id[20, 20]) == near_index
  assert float(fragments.depth[20, 20]) == 5.0
  assert int(fragments.triangle_id[9, 42]) == 1 - near_index  # only the far one covers this pixel


def _scene(rng):
  vertices = np.array([[6.0, 5.0, 10.0], [42.0, 8.0, 12.0], [10.0, 43.0, 11.0],
                       [44.0, 40.0, 14.0]], np.float32)
  triangles = jnp.array([[0, 1, 2], [1, 3, 2]])
  colours = rng.uniform(size=(4, 3)).astype(np.float32)
  normals = np.tile(np.array([0.0, 0.0, 1.0], np.float32), (4, 1)) + 0.2 * rng.normal(
      size=(4, 3)).astype(np.float32)
  light = np.zeros((9, 3), np.float32)
  light[0], light[2] = 0.8, 0.3
  return jnp.asarray(vertices), triangles, jnp.asarray(colours), jnp.asarray(normals), jnp.asarray(
      light)


def test_image_gradients_match_finite_differences(rng):
  vertices, triangles, colours, normals, light = _scene(rng)
  image, mask, fragments = render.render(vertices, triangles, colours, normals, light, height=H,
                                         width=W)
  weights = render.barycentrics(vertices, triangles, fragments)
  # Interior pixels: every barycentric weight clearly positive (small moves keep the selection).
  interior = np.asarray(jnp.min(weights, -1) > 0.08) & (np.asarray(mask) > 0)
  probe = jnp.asarray(rng.normal(size=(H, W, 3)).astype(np.float32) * interior[..., None])

  def objective(vertices, colours):
    return jnp.sum(probe * render.render(vertices, triangles, colours, normals, light, height=H,
                                         width=W)[0])

  grad_v, grad_c = jax.grad(objective, argnums=(0, 1))(vertices, colours)
  for argnum, grad, step in ((0, grad_v, 1e-2), (1, grad_c, 1e-2)):
    direction = jnp.asarray(rng.normal(size=(4, 3)).astype(np.float32))
    if argnum == 0:
      direction = direction.at[:, 2].set(0.0)  # depth moves do not change the image here
    args = [vertices, colours]
    plus, minus = list(args), list(args)
    plus[argnum] = args[argnum] + step * direction
    minus[argnum] = args[argnum] - step * direction
    finite = (objective(*plus) - objective(*minus)) / (2 * step)
    analytic = jnp.sum(grad * direction)
    assert abs(float(analytic)) > 1e-2  # the probe really sees this parameter
    np.testing.assert_allclose(float(analytic), float(finite), rtol=2e-3, atol=1e-3)


def test_shading_matches_the_published_irradiance_formula(rng):
  """Ramamoorthi & Hanrahan 2001, eq. 13: irradiance from the 9 lighting coefficients L_lm,
  with their published constants c1..c5 (not the code's per-band factors)."""
  c1, c2, c3, c4, c5 = 0.429043, 0.511664, 0.743125, 0.886227, 0.247708
  normals = rng.normal(size=(10, 3))
  normals /= np.linalg.norm(normals, axis=1, keepdims=True)
  albedo = rng.uniform(size=(10, 3))
  light = rng.normal(size=(9, 3))
  # Our coefficient order: L00, L1-1, L10, L11, L2-2, L2-1, L20, L21, L22.
  l00, l1m1, l10, l11, l2m2, l2m1, l20, l21, l22 = light
  x, y, z = (normals[:, k:k + 1] for k in range(3))
  irradiance = (c1 * l22 * (x * x - y * y) + c3 * l20 * z * z + c4 * l00 - c5 * l20
                + 2 * c1 * (l2m2 * x * y + l21 * x * z + l2m1 * y * z)
                + 2 * c2 * (l11 * x + l1m1 * y + l10 * z))
  np.testing.assert_allclose(render.shade_sh(albedo, normals * 3.0, light), albedo * irradiance,
                             rtol=2e-5, atol=2e-5)


def test_jit_eager_vmap_and_batch_agree(rng):
  vertices, triangles, colours, normals, light = _scene(rng)
  render_one = lambda v, c: render.render(v, triangles, c, normals, light, height=H, width=W)[0]
  eager = render_one(vertices, colours)
  # The compiled program may fuse multiply-adds: the same image up to float rounding.
  np.testing.assert_allclose(np.asarray(jax.jit(render_one)(vertices, colours)), np.asarray(eager),
                             rtol=1e-6, atol=1e-7)
  moved = vertices + jnp.array([3.0, -2.0, 1.0])
  stacked = jnp.stack([vertices, moved]), jnp.stack([colours, colours * 0.5])
  vmapped = jax.vmap(render_one)(*stacked)
  batched = jax.jit(lambda v, c: render.render(v, triangles, c, jnp.stack([normals] * 2),
                                               jnp.stack([light] * 2), height=H, width=W)[0])(
                                                   *stacked)
  render_jit = jax.jit(render_one)
  for k, (v, c) in enumerate(zip(*stacked)):
    one = render_jit(v, c)
    np.testing.assert_allclose(np.asarray(vmapped[k]), np.asarray(one), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.asarray(batched[k]), np.asarray(one), rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(np.asarray(batched[0]) * 0.5, np.asarray(
      render_jit(vertices, colours * 0.5)), rtol=1e-6, atol=1e-7)
  # Gradients of the batch (flat gathers, their scatters dropping the pixels that hit nothing)
  # are each mesh's own.
  probe = jnp.asarray(rng.normal(size=(2, H, W, 3)).astype(np.float32))
  batch_grads = jax.jit(jax.grad(lambda v, c: jnp.sum(probe * render.render(
      v, triangles, c, jnp.stack([normals] * 2), jnp.stack([light] * 2), height=H,
      width=W)[0]), argnums=(0, 1)))(*stacked)
  one_grad = jax.jit(jax.grad(lambda v, c, p: jnp.sum(p * render_one(v, c)), argnums=(0, 1)))
  for k, (v, c) in enumerate(zip(*stacked)):
    one = one_grad(v, c, probe[k])
    for batch_grad, grad in zip(batch_grads, one):
      assert float(jnp.max(jnp.abs(grad))) > 1e-2
      np.testing.assert_allclose(np.asarray(batch_grad[k]), np.asarray(grad), rtol=1e-5,
                                 atol=1e-5)


@pytest.mark.parametrize("window", [None, 4])
def test_a_batch_rendered_in_groups_is_the_batch_rendered_at_once(rng, window):
  """`groups`: mesh b goes to group b mod groups; the images, masks, fragments and gradients are
  those of one program (a count that does not divide the batch renders it as one)."""
  vertices, triangles, colours, normals, light = _scene(rng)
  shifts = jnp.asarray(rng.uniform(-3.0, 3.0, size=(6, 1, 3)).astype(np.float32))
  batch = (vertices[None] + shifts, colours[None] * jnp.linspace(0.4, 1.0, 6)[:, None, None],
           jnp.stack([normals] * 6), light[None] * jnp.linspace(0.5, 1.5, 6)[:, None, None])
  probe = jnp.asarray(rng.normal(size=(6, H, W, 3)).astype(np.float32))

  def rendered(groups):
    draw = lambda v, c: render.render(v, triangles, c, batch[2], batch[3], height=H, width=W,
                                      window=window, max_large=8, groups=groups)
    image, mask, fragments = jax.jit(draw)(*batch[:2])
    grads = jax.jit(jax.grad(lambda v, c: jnp.sum(probe * draw(v, c)[0]), argnums=(0, 1)))(
        *batch[:2])
    return image, mask, fragments, grads

  image, mask, fragments, grads = rendered(1)
  assert 0.05 < float(jnp.mean(mask)) < 0.95 and float(jnp.max(jnp.abs(grads[0]))) > 1e-2
  for groups in (3, 4):  # 4 does not divide 6
    g_image, g_mask, g_fragments, g_grads = rendered(groups)
    np.testing.assert_array_equal(np.asarray(g_fragments.triangle_id),
                                  np.asarray(fragments.triangle_id))
    np.testing.assert_array_equal(np.asarray(g_fragments.overflow), np.asarray(fragments.overflow))
    np.testing.assert_array_equal(np.asarray(g_mask), np.asarray(mask))
    np.testing.assert_allclose(np.asarray(g_image), np.asarray(image), rtol=1e-6, atol=1e-7)
    for g_grad, grad in zip(g_grads, grads):
      np.testing.assert_allclose(np.asarray(g_grad), np.asarray(grad), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("window", [None, 3])
def test_a_batch_rasterises_as_its_meshes_do_one_by_one(window):
  """Leading dims are a batch of meshes (flat scatters over the whole batch): the fragments,
  overflow counts and visibility are exactly those of each mesh alone."""
  from sfm_jax import face_world
  template = face_world.face_template(24)
  size = 40
  meshes = []
  for angles, shift in (([0.1, 0.4, 0.0], 0.0), ([-0.2, -0.6, 0.3], 3.5), ([0.0, 1.2, 0.0], -2.0)):
    rotation = np.asarray(geometry.euler_to_matrix(np.array(angles)), np.float64)
    v = template.vertices @ rotation.T * (0.9 * size / 200.0)
    meshes.append(np.stack([v[:, 0] + size / 2 + shift, -v[:, 1] + size / 2, -v[:, 2]], -1))
  meshes = jnp.asarray(np.stack(meshes).reshape(3, 1, -1, 3), jnp.float32)  # leading [3, 1]
  triangles = jnp.asarray(template.triangles)
  settings = dict(height=size, width=size, window=window, max_large=2, max_huge=1)

  @jax.jit
  def rasterise(vertices):  # the same function for one mesh and for the batch
    fragments = render.rasterize(vertices, triangles, **settings)
    return (fragments, render.vertex_visibility(vertices, fragments, tolerance=1.0),
            render.barycentrics(vertices, triangles, fragments))

  batch, visible, weights = rasterise(meshes)
  assert batch.triangle_id.shape == (3, 1, size, size) and batch.overflow.shape == (3, 1)
  for k in range(3):
    one, one_visible, one_weights = rasterise(meshes[k, 0])
    np.testing.assert_array_equal(np.asarray(batch.triangle_id[k, 0]), np.asarray(one.triangle_id))
    np.testing.assert_array_equal(np.asarray(batch.depth[k, 0]), np.asarray(one.depth))
    assert int(batch.overflow[k, 0]) == int(one.overflow)
    np.testing.assert_array_equal(np.asarray(visible[k, 0]), np.asarray(one_visible))
    np.testing.assert_allclose(np.asarray(weights[k, 0]), np.asarray(one_weights), rtol=1e-6,
                               atol=1e-6)
  assert np.unique(np.asarray(batch.triangle_id)).size > 100  # the meshes really cover pixels


def _clipped_box_spans(vertices, triangles, size):
  """The larger side, in pixels whose centres it can cover, of each triangle's box in the image."""
  corners = vertices[triangles]
  lo = np.maximum(np.ceil(corners[..., :2].min(1) - 0.5), 0)
  hi = np.minimum(np.floor(corners[..., :2].max(1) - 0.5), size - 1)
  return (hi - lo).max(1) + 1


def test_window_mode_equals_exact_mode(rng):
  from sfm_jax import face_world
  template = face_world.face_template(40)
  size = 48
  scale = 0.75 * size / 200.0
  v = template.vertices
  face = np.stack([v[:, 0] * scale + size / 2, -v[:, 1] * scale + size / 2, -v[:, 2]], -1)
  # A 2 x 2 grid of 7-pixel quads in front of the face: triangles for the larger window.
  ys, xs = np.meshgrid(np.arange(3) * 7.0 + 4.3, np.arange(3) * 7.0 + 27.6, indexing="ij")
  grid = np.stack([xs.ravel(), ys.ravel(), np.full(9, -60.0)], -1)
  quads = [[r * 3 + c, r * 3 + c + 1, r * 3 + c + 4] for r in range(2) for c in range(2)]
  quads += [[r * 3 + c, r * 3 + c + 4, r * 3 + c + 3] for r in range(2) for c in range(2)]
  rotation = np.asarray(geometry.euler_to_matrix(np.array([0.3, 0.5, 0.2])), np.float64)
  cube, faces = _cube(rotation, side=20.0, centre=(30.0, 20.0, -30.0))  # large, in front
  vertices = np.concatenate([face, grid, cube]).astype(np.float32)
  triangles = np.concatenate([template.triangles, np.array(quads) + len(face),
                              faces + len(face) + len(grid)])
  spans = _clipped_box_spans(vertices.astype(np.float64), triangles, size)
  large, huge = (spans > 3) & (spans <= 12), spans > 12  # window 3, large window 4 x 3
  num_large, num_huge = int(large.sum()), int(huge.sum())
  assert num_large >= 8 and num_huge >= 6  # every tier has work
  vertices, triangles = jnp.asarray(vertices), jnp.asarray(triangles)
  exact = jax.jit(functools.partial(render.rasterize, height=size, width=size))(vertices,
                                                                               triangles)
  seen = np.unique(np.asarray(exact.triangle_id))
  assert large[seen[seen >= 0]].any() and huge[seen[seen >= 0]].any()
  window_mode = lambda **settings: jax.jit(functools.partial(
      render.rasterize, height=size, width=size, window=3, **settings))(vertices, triangles)
  for settings in (dict(max_large=num_large, max_huge=num_huge),
                   dict(max_large=num_large + num_huge, large_window=size)):  # one window for all
    fast = window_mode(**settings)
    assert int(fast.overflow) == 0, settings
    np.testing.assert_array_equal(np.asarray(fast.triangle_id), np.asarray(exact.triangle_id))
    np.testing.assert_allclose(np.asarray(fast.depth), np.asarray(exact.depth), rtol=1e-6)
  # Too many triangles for either tier: every one left out is counted, not silently wrong.
  starved = window_mode(max_large=2, max_huge=3)
  assert int(starved.overflow) == (num_large - 2) + (num_huge - 3)
  # No exact tier (`max_huge=0`): every huge triangle is counted, and where the exact path's
  # nearest hit is not a huge triangle, the windows find the same one.
  windows_only = window_mode(max_large=num_large, max_huge=0)
  assert int(windows_only.overflow) == num_huge
  exact_id = np.asarray(exact.triangle_id)
  kept = (exact_id >= 0) & ~huge[np.maximum(exact_id, 0)]
  assert kept.sum() > 0.5 * (exact_id >= 0).sum()
  np.testing.assert_array_equal(np.asarray(windows_only.triangle_id)[kept], exact_id[kept])


@pytest.mark.parametrize("height, width, window, large_window", [(13, 17, 3, 6), (3, 5, 4, None)])
def test_window_mode_equals_exact_mode_for_triangles_across_the_image_border(height, width,
                                                                              window,
                                                                              large_window):
  """Triangles of every size, many of them partly or wholly outside a non-square image (and, in
  the second case, a window larger than the image): the windowed z-buffer, whose windows run
  into its padding at the right and bottom edges, finds the exact path's fragments."""
  rng = np.random.default_rng(7)
  num = 300
  centres = rng.uniform([-4, -4], [width + 4, height + 4], size=(num, 2))
  sizes = rng.choice([0.8, 1.6, 3.0, 5.0, 9.0], size=num)[:, None, None]
  corners = centres[:, None, :] + rng.uniform(-1, 1, size=(num, 3, 2)) * sizes
  depth = rng.uniform(1.0, 10.0, size=(num, 1, 1)) + rng.uniform(-0.3, 0.3, size=(num, 3, 1))
  vertices = jnp.asarray(np.concatenate([corners, depth], -1).reshape(-1, 3), jnp.float32)
  triangles = jnp.asarray(np.arange(3 * num).reshape(num, 3), jnp.int32)
  exact = render.rasterize(vertices, triangles, height=height, width=width)
  fast = jax.jit(functools.partial(render.rasterize, height=height, width=width, window=window,
                                   large_window=large_window, max_large=num, max_huge=num))(
      vertices, triangles)
  assert int(fast.overflow) == 0
  exact_id = np.asarray(exact.triangle_id)
  assert (exact_id >= 0).mean() > 0.9  # busy images, many triangles seen
  assert np.unique(exact_id).size >= min(20, height * width // 3)
  np.testing.assert_array_equal(np.asarray(fast.triangle_id), exact_id)
  np.testing.assert_allclose(np.asarray(fast.depth), np.asarray(exact.depth), rtol=1e-6)
