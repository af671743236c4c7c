"""PNG writing with no imaging dependency (zlib + struct), atomically."""

from __future__ import annotations

import os
import struct
import zlib

import numpy as np

from sfm_jax.io.atomic import atomic_write


def _chunk(kind: bytes, payload: bytes) -> bytes:
  crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
  return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def encode_png(image: np.ndarray) -> bytes:
  """Encodes an 8-bit image as PNG bytes.

  Args:
    image: `[H, W]` (grey), `[H, W, 3]` (RGB) or `[H, W, 4]` (RGBA); uint8, or floats in [0, 1]
      (clipped, then rounded).
  """
  image = np.asarray(image)
  if image.dtype != np.uint8:
    if not np.issubdtype(image.dtype, np.floating):
      raise ValueError(f"encode_png: expected uint8 or float image, got dtype {image.dtype}")
    image = np.round(np.clip(np.nan_to_num(image), 0.0, 1.0) * 255.0).astype(np.uint8)
  if image.ndim == 2:
    image = image[:, :, None]
  if image.ndim != 3 or image.shape[2] not in (1, 3, 4) or 0 in image.shape[:2]:
    raise ValueError(f"encode_png: expected [H, W], [H, W, 3] or [H, W, 4], got {image.shape}")
  height, width, channels = image.shape
  colour_type = {1: 0, 3: 2, 4: 6}[channels]
  header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
  # Each scanline starts with filter type 0 (none).
  raw = np.concatenate([np.zeros((height, 1), np.uint8), image.reshape(height, -1)], axis=1)
  return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header)
          + _chunk(b"IDAT", zlib.compress(raw.tobytes(), 6)) + _chunk(b"IEND", b""))


def write_png(path: str | os.PathLike, image: np.ndarray) -> None:
  """Writes `image` (see `encode_png`) to `path` atomically."""
  data = encode_png(image)
  with atomic_write(path, "wb") as f:
    f.write(data)


def read_png(path: str | os.PathLike) -> np.ndarray:
  """Reads an 8-bit, non-interlaced PNG as written by `write_png` (any of the five filters).

  Returns `[H, W, C]` uint8. Meant for tests and round trips, not as a general decoder.
  """
  path = os.fspath(path)
  with open(path, "rb") as f:
    data = f.read()
  if data[:8] != b"\x89PNG\r\n\x1a\n":
    raise ValueError(f"{path}: not a PNG file")
  pos, idat, header = 8, [], None
  while pos < len(data):
    (length,) = struct.unpack(">I", data[pos:pos + 4])
    kind = data[pos + 4:pos + 8]
    payload = data[pos + 8:pos + 8 + length]
    if len(payload) != length:
      raise ValueError(f"{path}: truncated {kind!r} chunk")
    if kind == b"IHDR":
      header = struct.unpack(">IIBBBBB", payload)
    elif kind == b"IDAT":
      idat.append(payload)
    pos += 12 + length
  if header is None:
    raise ValueError(f"{path}: no IHDR chunk")
  width, height, depth, colour_type, _, _, interlace = header
  channels = {0: 1, 2: 3, 6: 4, 4: 2}.get(colour_type)
  if depth != 8 or interlace != 0 or channels is None:
    raise ValueError(f"{path}: only 8-bit non-interlaced grey/RGB/RGBA PNGs are supported")
  raw = np.frombuffer(zlib.decompress(b"".join(idat)), np.uint8).reshape(height, 1 + width * channels)
  out = np.zeros((height, width * channels), np.int32)
  for row in range(height):
    kind, line = raw[row, 0], raw[row, 1:].astype(np.int32)
    prev = out[row - 1] if row else np.zeros_like(line)
    if kind == 0:
      out[row] = line
    elif kind == 2:
      out[row] = (line + prev) % 256
    else:  # Sub, Average and Paeth need the reconstructed left neighbour: go pixel by pixel.
      cur = np.zeros_like(line)
      for i in range(line.size):
        left = cur[i - channels] if i >= channels else 0
        up, up_left = prev[i], (prev[i - channels] if i >= channels else 0)
        if kind == 1:
          pred = left
        elif kind == 3:
          pred = (left + up) // 2
        else:
          p = left + up - up_left
          pa, pb, pc = abs(p - left), abs(p - up), abs(p - up_left)
          pred = left if (pa <= pb and pa <= pc) else (up if pb <= pc else up_left)
        cur[i] = (line[i] + pred) % 256
      out[row] = cur
  return out.astype(np.uint8).reshape(height, width, channels)
