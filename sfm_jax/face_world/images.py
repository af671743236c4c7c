"""The 2D face world: rendered images of face-world identities with pose, SH light, albedo,
camera jitter, clutter and occluders, with 68 landmarks, their visibility and identity labels."""

from __future__ import annotations

import dataclasses
import functools

import jax.numpy as jnp
import numpy as np

from sfm_jax import camera as camera_lib
from sfm_jax import geometry
from sfm_jax.face_world.expressions import (
  EXPRESSIONS,
  apply_expressions,
  sample_expression_weights,
)
from sfm_jax.face_world.identities import FaceWorld, identity_albedo
from sfm_jax.sources.splits import padded_batches


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
  """Clutter: a smooth colour gradient plus random rectangles and discs."""
  ys, xs = np.meshgrid(np.linspace(0, 1, size), np.linspace(0, 1, size), indexing="ij")
  c0, c1 = rng.uniform(0.1, 0.9, 3), rng.uniform(0.1, 0.9, 3)
  angle = rng.uniform(0, 2 * np.pi)
  t = np.clip(0.5 + (np.cos(angle) * (xs - 0.5) + np.sin(angle) * (ys - 0.5)), 0, 1)[..., None]
  image = c0 * (1 - t) + c1 * t
  for _ in range(rng.integers(3, 9)):
    colour = rng.uniform(0, 1, 3)
    x0, y0 = rng.uniform(-0.1, 1.0, 2)
    w, h = rng.uniform(0.05, 0.4, 2)
    if rng.uniform() < 0.5:
      inside = (xs > x0) & (xs < x0 + w) & (ys > y0) & (ys < y0 + h)
    else:
      inside = (xs - x0) ** 2 + (ys - y0) ** 2 < (w / 2) ** 2
    image[inside] = colour
  return image + rng.normal(scale=0.02, size=image.shape)


@dataclasses.dataclass(frozen=True)
class Images:
  """Rendered face-world images with annotations and ground truth.

  Attributes:
    images: `[N, S, S, 3]` float32 RGB in [0, 1].
    landmarks: `[N, 68, 2]` float32 iBUG landmarks in pixels (x right, y down).
    visible: `[N, 68]` bool, not self-occluded and not under an occluder.
    identity: `[N]` int32 label, -1 for unlabelled images.
    true_identity: `[N]` int32 identity even where the label is hidden (evaluation only).
    identity_directions: `[I, D]` identity codes (ground truth).
    neutral: `[N, V, 3]` neutral mesh of each image's identity (mm).
    expression: `[N, X]` expression weights.
    rotation: `[N, 3]` (pitch, yaw, roll) radians; scale `[N]` pixels per mm; translation `[N, 2]`.
    light: `[N, 9, 3]` SH lighting.
    mask: `[N, S, S]` face coverage (before occluders).
  """
  images: np.ndarray
  landmarks: np.ndarray
  visible: np.ndarray
  identity: np.ndarray
  true_identity: np.ndarray
  identity_directions: np.ndarray
  neutral: np.ndarray
  expression: np.ndarray
  rotation: np.ndarray
  scale: np.ndarray
  translation: np.ndarray
  light: np.ndarray
  mask: np.ndarray


@functools.lru_cache(maxsize=8)
def _view_renderer(size: int, window: int | None):
  """One jitted program per image size and rasteriser (cached: every batch reuses it) that
  photographs a batch: pose, weak-perspective projection, vertex normals, render, visibility."""
  import jax

  from sfm_jax import render as render_lib

  def views(rotation, centred, scale, translation, albedo, light, triangles):
    vertices_px, camera = camera_lib.weak_perspective(
        centred, geometry.euler_to_matrix(rotation), scale, translation)
    normals = geometry.vertex_normals(camera, triangles)
    image, mask, fragments = render_lib.render(vertices_px, triangles, albedo, normals, light,
                                               height=size, width=size, window=window)
    visible = render_lib.vertex_visibility(vertices_px, fragments, tolerance=2.0)
    return vertices_px, image, mask, visible, fragments.overflow

  return jax.jit(views)


def _render_batch(inputs: tuple, triangles, size: int) -> tuple:
  """(`[B, V, 3]` projected vertices, images, masks, vertex visibility) of one batch: `inputs`
  are `_view_renderer`'s per-view arguments. The fast window rasteriser; a batch where any
  triangle fits neither of its paths (`overflow`) is redone with the exact one, so the images
  are always the exact renders."""
  *outputs, overflow = _view_renderer(size, 4)(*inputs, triangles)
  if np.any(np.asarray(overflow)):
    *outputs, _ = _view_renderer(size, None)(*inputs, triangles)
  return tuple(np.asarray(x) for x in outputs)


@dataclasses.dataclass(frozen=True)
class Views:
  """Rendered views of given meshes (`render_views`); fields as in `Images`."""
  images: np.ndarray
  landmarks: np.ndarray
  visible: np.ndarray
  rotation: np.ndarray
  scale: np.ndarray
  translation: np.ndarray
  light: np.ndarray
  mask: np.ndarray


def render_views(faces: np.ndarray, albedo: np.ndarray, rng: np.random.Generator, *,
                 triangles: np.ndarray, landmark_vertices: np.ndarray,
                 landmark_weights: np.ndarray | None = None, image_size: int,
                 occluder_probability: float, max_yaw_degrees: float = 70.0,
                 max_pitch_roll_degrees: float = 25.0, batch_size: int = 32) -> Views:
  """Photographs model-space faces: a random pose, SH light, weak-perspective camera with scale
  and translation jitter, cluttered background and optional occluder per face.

  Args:
    faces: `[N, V, 3]` meshes (mm, model space), one image each.
    albedo: `[N, V, 3]` per-vertex albedo in [0, 1].
    rng: the random stream (pose, light, background, occluders, in that order).
    triangles: `[T, 3]`.
    landmark_vertices: `[68]` the vertex of each landmark, or `[68, P]` vertices whose
      `landmark_weights` `[68, P]` blend gives it (e.g. a point along the jaw line); a
      landmark's visibility is that of its most weighted vertex.
    image_size: S (square images).
    occluder_probability: chance of a random rectangle over the face.
    batch_size: views rendered per call of one compiled program (`splits.padded_batches`:
      fewer views, a power of two).

  Returns:
    `Views`: images `[N, S, S, 3]` float32, landmarks `[N, 68, 2]` (pixels, x right, y down),
    visible `[N, 68]`, rotation `[N, 3]` (pitch, yaw, roll), scale `[N]`, translation `[N, 2]`,
    light `[N, 9, 3]`, mask `[N, S, S]`.
  """
  count = len(faces)
  index = np.asarray(landmark_vertices).reshape(68, -1)
  blend = (np.ones(index.shape) if landmark_weights is None
           else np.asarray(landmark_weights, np.float64).reshape(index.shape))
  rotation = np.deg2rad(np.stack([rng.uniform(-max_pitch_roll_degrees, max_pitch_roll_degrees,
                                              count),
                                  rng.uniform(-max_yaw_degrees, max_yaw_degrees, count),
                                  rng.uniform(-max_pitch_roll_degrees, max_pitch_roll_degrees,
                                              count)], -1))
  scale = camera_lib.nominal_scale(image_size) * rng.uniform(0.85, 1.15, count)
  translation = image_size * (0.5 + rng.uniform(-0.06, 0.06, (count, 2)))
  light = np.zeros((count, 9, 3))
  light[:, 0] = rng.uniform(0.75, 1.1, (count, 1)) / (0.282095 * np.pi) * rng.uniform(
      0.9, 1.1, (count, 3))
  light[:, 1:4] = rng.normal(scale=0.25, size=(count, 3, 1)) / (0.488603 * 2 * np.pi / 3)
  light[:, 4:] = rng.normal(scale=0.05, size=(count, 5, 1)) / (np.pi / 4)
  centred = (faces - faces.mean(axis=1, keepdims=True)).astype(np.float32)
  per_view = (rotation, centred, scale, translation, albedo, light)
  mesh = jnp.asarray(triangles)
  vertices_px = np.zeros(faces.shape, np.float64)
  images = np.zeros((count, image_size, image_size, 3), np.float32)
  masks = np.zeros((count, image_size, image_size), np.float32)
  vertex_visible = np.zeros((count, faces.shape[1]), bool)
  # Batches of one size, the last padded with copies of the last view (one compiled program);
  # each view's render depends on its own inputs only.
  for rows, kept in padded_batches(count, batch_size):
    inputs = tuple(jnp.asarray(x[rows], jnp.float32) for x in per_view)
    projected, rendered, mask, visible = _render_batch(inputs, mesh, image_size)
    sl = rows[:kept]
    vertices_px[sl], images[sl], masks[sl] = projected[:kept], rendered[:kept], mask[:kept]
    vertex_visible[sl] = visible[:kept]
  landmarks = np.einsum("nlpc,lp->nlc", vertices_px[:, index, :2], blend)
  visible = vertex_visible[:, index[np.arange(68), np.argmax(blend, axis=1)]]
  for n in range(count):
    background = _background(rng, image_size)
    mask = masks[n][..., None]
    images[n] = np.clip(images[n] * mask + background * (1 - mask), 0, 1)
    if rng.uniform() < occluder_probability:
      w, h = rng.integers(image_size // 6, image_size // 3, 2)
      x0, y0 = (translation[n] + rng.uniform(-0.25, 0.25, 2) * image_size).astype(int)
      x0, y0 = np.clip([x0 - w // 2, y0 - h // 2], 0, image_size - 1)
      images[n, y0:y0 + h, x0:x0 + w] = rng.uniform(0, 1, 3)
      inside = ((landmarks[n, :, 0] >= x0) & (landmarks[n, :, 0] < x0 + w)
                & (landmarks[n, :, 1] >= y0) & (landmarks[n, :, 1] < y0 + h))
      visible[n] &= ~inside
  return Views(images=images, landmarks=landmarks.astype(np.float32), visible=visible,
               rotation=rotation.astype(np.float32), scale=scale.astype(np.float32),
               translation=translation.astype(np.float32), light=light.astype(np.float32),
               mask=masks)


def make_images(num_identities: int, images_per_identity: int, seed: int, *,
                world: FaceWorld = FaceWorld(resolution=48), image_size: int = 96,
                unlabelled_fraction: float = 0.1, occluder_probability: float = 0.2,
                max_yaw_degrees: float = 70.0, max_pitch_roll_degrees: float = 25.0,
                identity_offset: int = 0, batch_size: int = 32) -> Images:
  """Renders `images_per_identity` images of each of `num_identities` random identities.

  Every image: a random expression (as in `make_scans`), a pose with yaw up to
  `max_yaw_degrees` and pitch/roll up to `max_pitch_roll_degrees`, random SH lighting and
  identity albedo, a weak-perspective camera with scale and translation jitter, a cluttered
  background and, with `occluder_probability`, an occluding patch (`render_views`). A fraction
  `unlabelled_fraction` of images get identity -1 (like a landmark-only data set).
  """
  rng = np.random.default_rng(seed)
  template = world.template
  directions = world.sample_identities(rng, num_identities)
  neutral_ids = world.neutral_shapes(directions)
  albedo_ids = identity_albedo(template, rng, num_identities)
  true_identity = np.repeat(np.arange(num_identities), images_per_identity)
  count = len(true_identity)
  weights = sample_expression_weights(rng, count, len(EXPRESSIONS), neutral_fraction=0.3,
                                      max_active=2)
  neutral = neutral_ids[true_identity]
  faces = apply_expressions(template, neutral, weights)
  views = render_views(faces, albedo_ids[true_identity], rng, triangles=template.triangles,
                       landmark_vertices=template.landmarks, image_size=image_size,
                       occluder_probability=occluder_probability,
                       max_yaw_degrees=max_yaw_degrees,
                       max_pitch_roll_degrees=max_pitch_roll_degrees, batch_size=batch_size)
  identity = (true_identity + identity_offset).astype(np.int32)
  identity = np.where(rng.uniform(size=count) < unlabelled_fraction, -1, identity)
  return Images(images=views.images, landmarks=views.landmarks, visible=views.visible,
                identity=identity.astype(np.int32),
                true_identity=(true_identity + identity_offset).astype(np.int32),
                identity_directions=directions.astype(np.float32),
                neutral=neutral.astype(np.float32), expression=weights.astype(np.float32),
                rotation=views.rotation, scale=views.scale, translation=views.translation,
                light=views.light, mask=views.mask)
