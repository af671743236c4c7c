"""The camera: weak perspective to image pixels (the default of stage 2, fitting and the face
world's images) and a pinhole option.

Image convention: pixels with x to the right and y down, the origin at the top-left corner of
the top-left pixel; depth grows away from the viewer. A model-space face (mm; x to the subject's
left, y up, z toward the camera) is rotated into camera space, `c = R v`, and then

    x_px = scale * c_x + offset_x,   y_px = -scale * c_y + offset_y,   depth = -c_z

with `scale` in pixels per mm. The networks and the landmark fitter parameterise the scale
relative to `nominal_scale(S)` (a face 200 mm tall spans 75% of an `S x S` image) and the offset
as a fraction of the image around its centre (`face_camera`).
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from sfm_jax.geometry import rigid_transform

Array = Any

NOMINAL_FACE_HEIGHT_MM = 200.0


def nominal_scale(image_size: int, face_height_mm: float = NOMINAL_FACE_HEIGHT_MM) -> float:
  """Pixels per mm that make a face of `face_height_mm` span 75% of an `S x S` image."""
  return 0.75 * image_size / face_height_mm


def weak_perspective(vertices: Array, rotation: Array, scale: Array,
                     offset: Array) -> tuple[Array, Array]:
  """Scaled orthographic projection to pixels.

  Args:
    vertices: `[B, V, 3]` model-space points, mm (differentiable).
    rotation: `[B, 3, 3]` rotation matrices.
    scale: `[B]` pixels per mm.
    offset: `[B, 2]` pixel position of the model-space origin.

  Returns:
    (`[B, V, 3]` pixels x, y (y down) and depth (mm, larger = further), `[B, V, 3]` camera-space
    vertices `R v` in mm, for normals and shading).
  """
  # `R v` per component: 9 multiply-adds per vertex. As an einsum, XLA on CPU (0.10) ran B
  # batched [3, 3] x [3, V] products whose forward + backward took twice as long (stage-2 `demo`
  # shapes, [32, 2304, 3]: 2.1 against 1.1 ms).
  x, y, z = (vertices[..., k] for k in range(3))
  entry = lambda i, j: rotation[:, i, j][:, None]
  camera = [entry(i, 0) * x + entry(i, 1) * y + entry(i, 2) * z for i in range(3)]
  s = scale[:, None]
  pixels = jnp.stack([s * camera[0] + offset[:, None, 0], -s * camera[1] + offset[:, None, 1],
                      -camera[2]], -1)
  return pixels, jnp.stack(camera, -1)


def face_camera(scale: Array, translation: Array, *, image_size: int) -> tuple[Array, Array]:
  """(pixels per mm `[B]`, offset `[B, 2]` pixels) of the relative parameters the encoder and the
  landmark fitter predict: `scale` relative to `nominal_scale`, `translation` a fraction of the
  image size around its centre."""
  return nominal_scale(image_size) * scale, (0.5 + translation) * image_size


def pinhole(points: Array, rotation: Array, translation: Array, focal: Array,
            principal_point: Array) -> tuple[Array, Array]:
  """Perspective projection with the camera at the origin looking down -z (OpenGL convention).

  Camera-space points are `q = R p + t`; visible points have `q_z < 0`, and the projection is
  `f * q_xy / (-q_z) + c`.

  Args:
    points: `[B, V, 3]` model-space points, mm.
    rotation: `[B, 3, 3]`.
    translation: `[B, 3]` mm (e.g. `(0, 0, -distance)`).
    focal: `[B]` focal length in pixels.
    principal_point: `[B, 2]` pixels.

  Returns:
    (`[B, V, 2]` projected points, x right and y up, `[B, V]` depth `-q_z` in mm).
  """
  q = rigid_transform(points, rotation, translation)
  depth = -q[..., 2]
  projected = focal[:, None, None] * q[..., :2] / depth[..., None] + principal_point[:, None, :]
  return projected, depth
