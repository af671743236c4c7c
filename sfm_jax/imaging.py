"""Image-space helpers for the stage-2 inputs: square crops around a face and their resampling.

Pixel coordinates follow the renderer's convention (`render.py`): x right, y down, pixel (row i,
column j) covers `[j, j + 1) x [i, i + 1)` with its centre at `(j + 0.5, i + 0.5)`. A `CropBox`
`(x0, y0, side)` is a square in those continuous coordinates; cropping it to `size` pixels maps
a point `p` to `(p - (x0, y0)) * size / side` and back with `to_image`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from sfm_jax.errors import InputError


@dataclasses.dataclass(frozen=True)
class CropBox:
  x0: float
  y0: float
  side: float

  def to_crop(self, points: np.ndarray, size: int) -> np.ndarray:
    """`[..., 2]` image pixels -> crop pixels."""
    return (np.asarray(points, np.float64) - (self.x0, self.y0)) * (size / self.side)

  def to_image(self, points: np.ndarray, size: int) -> np.ndarray:
    """`[..., 2]` crop pixels -> image pixels."""
    return np.asarray(points, np.float64) * (self.side / size) + (self.x0, self.y0)

  def as_array(self) -> np.ndarray:
    return np.array([self.x0, self.y0, self.side])


def landmark_box(landmarks: np.ndarray, *, margin: float = 0.25) -> CropBox:
  """The square around the landmarks' bounding box `[68, 2]`, enlarged by `margin` times its
  larger side on every side (the forehead lies above the iBUG points: the box is shifted up by
  half the margin)."""
  landmarks = np.asarray(landmarks, np.float64)
  low, high = landmarks.min(0), landmarks.max(0)
  side = float((high - low).max() * (1.0 + 2.0 * margin))
  if not side > 0:
    raise InputError("landmark_box: the landmarks span no area")
  centre = (low + high) / 2.0 - np.array([0.0, 0.5 * margin * (high - low).max()])
  return CropBox(float(centre[0] - side / 2), float(centre[1] - side / 2), side)


def full_box(height: int, width: int) -> CropBox:
  """The largest centred square of an image."""
  side = float(min(height, width))
  return CropBox((width - side) / 2.0, (height - side) / 2.0, side)


def crop(image: np.ndarray, box: CropBox, size: int) -> np.ndarray:
  """`[size, size, C]` float32 bilinear resampling of `image` `[H, W, C]` (uint8 -> [0, 1])
  inside `box`; samples outside the image are 0. When shrinking by more than 2x the image is
  box-filtered first (no aliasing)."""
  image = np.asarray(image)
  data = image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image.astype(
      np.float32)
  step = box.side / size
  factor = int(np.floor(step / 2.0)) if step >= 4.0 else 1
  x0, y0 = box.x0, box.y0
  if factor > 1:  # average factor x factor blocks; coordinates scale by 1 / factor
    h, w = (data.shape[0] // factor) * factor, (data.shape[1] // factor) * factor
    data = data[:h, :w].reshape(h // factor, factor, w // factor, factor, -1).mean((1, 3))
    x0, y0, step = x0 / factor, y0 / factor, step / factor
  centres = (np.arange(size) + 0.5) * step
  xs, ys = x0 + centres - 0.5, y0 + centres - 0.5  # continuous index of the sample
  return _bilinear(data, ys, xs)


def _bilinear(data: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
  height, width = data.shape[:2]
  y_lo, x_lo = np.floor(ys).astype(int), np.floor(xs).astype(int)
  wy, wx = (ys - y_lo)[:, None, None], (xs - x_lo)[None, :, None]
  padded = np.pad(data, ((1, 1), (1, 1), (0, 0)))  # one ring of zeros outside the image
  rows = lambda y: np.clip(y + 1, 0, height + 1)
  cols = lambda x: np.clip(x + 1, 0, width + 1)
  # Indices beyond the ring are clamped onto it (zeros), so far-outside samples are 0 too.
  top = padded[rows(y_lo)][:, cols(x_lo)] * (1 - wx) + padded[rows(y_lo)][:, cols(x_lo + 1)] * wx
  bottom = (padded[rows(y_lo + 1)][:, cols(x_lo)] * (1 - wx)
            + padded[rows(y_lo + 1)][:, cols(x_lo + 1)] * wx)
  return (top * (1 - wy) + bottom * wy).astype(np.float32)
