"""PNG encoding, writing (atomically) and reading, through Pillow."""

from __future__ import annotations

import io
import os

import numpy as np

from sfm_jax.errors import InputError
from sfm_jax.io.atomic import atomic_write


def _as_uint8(image: np.ndarray) -> np.ndarray:
  image = np.asarray(image)
  if image.dtype != np.uint8:
    if not np.issubdtype(image.dtype, np.floating):
      raise InputError(f"encode_png: expected uint8 or float image, got dtype {image.dtype}")
    image = np.round(np.clip(np.nan_to_num(image), 0.0, 1.0) * 255.0).astype(np.uint8)
  if image.ndim == 3 and image.shape[2] == 1:
    image = image[..., 0]
  if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)) or (
      0 in image.shape[:2]):
    raise InputError(f"encode_png: expected [H, W], [H, W, 3] or [H, W, 4], got {image.shape}")
  return image


def encode_png(image: np.ndarray) -> bytes:
  """Encodes an 8-bit image as PNG bytes.

  Args:
    image: `[H, W]` (grey), `[H, W, 3]` (RGB) or `[H, W, 4]` (RGBA); uint8, or floats in [0, 1]
      (clipped, then rounded).
  """
  from PIL import Image
  buffer = io.BytesIO()
  Image.fromarray(_as_uint8(image)).save(buffer, format="PNG")
  return buffer.getvalue()


def write_png(path: str | os.PathLike, image: np.ndarray) -> None:
  """Writes `image` (see `encode_png`) to `path` atomically."""
  data = encode_png(image)
  with atomic_write(path, "wb") as f:
    f.write(data)


def read_png(path: str | os.PathLike) -> np.ndarray:
  """Reads a PNG as `[H, W, C]` uint8 (C = 1 grey, 3 RGB, 4 RGBA); `InputError` naming the file
  when it is not a readable PNG."""
  from PIL import Image, UnidentifiedImageError
  path = os.fspath(path)
  try:
    with Image.open(path) as image:
      if image.format != "PNG":
        raise InputError(f"{path}: not a PNG file")
      if image.mode not in ("L", "RGB", "RGBA"):
        image = image.convert("RGBA" if "A" in image.mode else "RGB")
      array = np.asarray(image)
  except (OSError, UnidentifiedImageError) as e:
    raise InputError(f"{path}: not a readable PNG ({e})") from None
  return array[..., None] if array.ndim == 2 else array
