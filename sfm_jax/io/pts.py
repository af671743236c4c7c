"""iBUG `.pts` landmark files (the common 68-point annotation format):

    version: 1
    n_points:  68
    {
    x1 y1
    ...
    }

Coordinates are pixels (x right, y down; iBUG files are 1-based by convention, which this module
leaves untouched). Errors name the file and the line.
"""

from __future__ import annotations

import os

import numpy as np

from sfm_jax.errors import InputError
from sfm_jax.io.atomic import atomic_write


def read_pts(path: str | os.PathLike) -> np.ndarray:
  """Reads a `.pts` file into `[n_points, 2]` float32.

  Raises:
    ValueError: naming the file and line for a missing header, a bad `n_points`, missing
      braces, a point that is not two finite numbers, or a count that differs from `n_points`.
  """
  path = os.fspath(path)
  try:
    with open(path, encoding="utf-8") as f:
      lines = f.read().splitlines()
  except UnicodeDecodeError:
    raise InputError(f"{path}: not a text .pts file") from None
  content = [(i + 1, line.strip()) for i, line in enumerate(lines) if line.strip()]
  header = {}
  position = 0
  while position < len(content) and ":" in content[position][1]:
    key, value = content[position][1].split(":", 1)
    header[key.strip()] = value.strip()
    position += 1
  if "n_points" not in header:
    raise InputError(f"{path}: line 1: missing 'n_points:' header")
  try:
    count = int(header["n_points"])
  except ValueError:
    raise InputError(f"{path}: bad n_points {header['n_points']!r}") from None
  if position >= len(content) or content[position][1] != "{":
    line = content[position][0] if position < len(content) else len(lines)
    raise InputError(f"{path}: line {line}: expected '{{' after the header")
  points = []
  for line_no, text in content[position + 1:]:
    if text == "}":
      break
    parts = text.split()
    try:
      values = [float(p) for p in parts]
    except ValueError:
      values = []
    if len(values) != 2 or not np.all(np.isfinite(values)):
      raise InputError(f"{path}: line {line_no}: expected two finite numbers, got {text!r}")
    points.append(values)
  else:
    raise InputError(f"{path}: missing closing '}}'")
  if len(points) != count:
    raise InputError(f"{path}: n_points is {count} but {len(points)} points are listed")
  return np.asarray(points, np.float32).reshape(count, 2)


def write_pts(path: str | os.PathLike, points: np.ndarray) -> None:
  """Writes `[N, 2]` points as a `.pts` file (atomically)."""
  points = np.asarray(points, np.float64)
  if points.ndim != 2 or points.shape[1] != 2 or not np.all(np.isfinite(points)):
    raise InputError(f"{os.fspath(path)}: points must be finite [N, 2], got {points.shape}")
  lines = ["version: 1", f"n_points: {len(points)}", "{"]
  lines += [f"{x:.6f} {y:.6f}" for x, y in points] + ["}"]
  with atomic_write(path, "w") as f:
    f.write("\n".join(lines) + "\n")
