"""Triangle meshes in OBJ and PLY (ASCII, binary little- and big-endian), with per-vertex colour.

Readers return a `Mesh` of numpy arrays and raise `ValueError` naming the file and the line (text)
or element (binary) for malformed input: truncated data, wrong counts, bad indices, non-finite
numbers, polygons other than triangles. Writers validate first and write atomically.

Positions keep their precision on a round trip: float32 arrays are written with 9 significant
digits (text) or as `float` (PLY binary), float64 with 17 digits or as `double`, which reproduce the
stored value exactly. Colours are floats in [0, 1] in memory and 8-bit in PLY files.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from sfm_jax.errors import InputError
from sfm_jax.io.atomic import atomic_write


@dataclasses.dataclass(frozen=True)
class Mesh:
  """A triangle mesh.

  Attributes:
    vertices: `[V, 3]` float positions (mm by this project's convention).
    triangles: `[T, 3]` int32, 0-based, counter-clockwise seen from outside. `T` may be 0.
    colors: `[V, 3]` float32 in [0, 1], or None.
  """
  vertices: np.ndarray
  triangles: np.ndarray
  colors: np.ndarray | None = None


def _float_format(dtype: np.dtype) -> str:
  return "%.17g" if np.dtype(dtype) == np.float64 else "%.9g"


def _validated(vertices, triangles, colors, path: str):
  """Checks writer inputs; returns (vertices, triangles [T, 3] int64, colors or None)."""
  vertices = np.asarray(vertices)
  if vertices.ndim != 2 or vertices.shape[1] != 3 or not np.issubdtype(vertices.dtype, np.floating):
    raise InputError(f"{path}: vertices must be a float [V, 3] array, got {vertices.dtype} "
                     f"{vertices.shape}")
  if not np.all(np.isfinite(vertices)):
    bad = int(np.argwhere(~np.isfinite(vertices))[0, 0])
    raise InputError(f"{path}: vertex {bad} is not finite: {vertices[bad]}")
  if vertices.dtype not in (np.float32, np.float64):
    vertices = vertices.astype(np.float32)
  triangles = np.zeros((0, 3), np.int64) if triangles is None else np.asarray(triangles)
  if triangles.ndim != 2 or triangles.shape[1] != 3 or not np.issubdtype(triangles.dtype, np.integer):
    raise InputError(f"{path}: triangles must be an integer [T, 3] array, got {triangles.dtype} "
                     f"{triangles.shape}")
  if triangles.size and (triangles.min() < 0 or triangles.max() >= len(vertices)):
    bad = int(np.argwhere((triangles < 0) | (triangles >= len(vertices)))[0, 0])
    raise InputError(f"{path}: triangle {bad} {triangles[bad].tolist()} indexes outside "
                     f"[0, {len(vertices)})")
  if colors is not None:
    colors = np.asarray(colors, np.float32)
    if colors.shape != vertices.shape or not np.all(np.isfinite(colors)):
      raise InputError(f"{path}: colors must be finite [V, 3] = {vertices.shape}, got {colors.shape}")
  return vertices, triangles.astype(np.int64), colors


def _check_read_triangles(triangles: np.ndarray, num_vertices: int, path: str, where) -> None:
  """Raises for indices outside [0, V); `where(i)` names triangle i's line or element."""
  bad = np.flatnonzero(np.any((triangles < 0) | (triangles >= num_vertices), axis=1))
  if bad.size:
    i = int(bad[0])
    raise InputError(f"{path}: {where(i)}: vertex index out of range in face "
                     f"{triangles[i].tolist()} (0-based; the mesh has {num_vertices} vertices)")


# ---------------------------------------------------------------------------------------------
# OBJ


def write_obj(path: str | os.PathLike, vertices, triangles=None, *, colors=None) -> None:
  """Writes an OBJ file (`v x y z [r g b]`, `f a b c` 1-based) atomically.

  Args:
    path: destination.
    vertices: `[V, 3]` float.
    triangles: `[T, 3]` int, 0-based, or None for a point cloud.
    colors: optional `[V, 3]` in [0, 1], written as the common `v x y z r g b` extension.
  """
  path = os.fspath(path)
  vertices, triangles, colors = _validated(vertices, triangles, colors, path)
  fmt = _float_format(vertices.dtype)
  if colors is None:
    vertex_lines = [f"v {fmt % x} {fmt % y} {fmt % z}" for x, y, z in vertices.tolist()]
  else:
    vertex_lines = [f"v {fmt % x} {fmt % y} {fmt % z} {r:.6g} {g:.6g} {b:.6g}"
                    for (x, y, z), (r, g, b) in zip(vertices.tolist(), colors.tolist())]
  face_lines = [f"f {a} {b} {c}" for a, b, c in (triangles + 1).tolist()]
  with atomic_write(path, "w") as f:
    f.write(f"# sfm_jax OBJ: {len(vertices)} vertices, {len(triangles)} triangles\n")
    f.write("\n".join(vertex_lines + face_lines))
    f.write("\n")


def _parse_floats(tokens, path, line_no, what):
  try:
    values = [float(t) for t in tokens]
  except ValueError:
    raise InputError(f"{path}: line {line_no}: cannot parse {what} {' '.join(tokens)!r}") from None
  if not all(np.isfinite(values)):
    raise InputError(f"{path}: line {line_no}: non-finite {what} {' '.join(tokens)!r}")
  return values


def read_obj(path: str | os.PathLike, *, dtype=np.float32) -> Mesh:
  """Reads an OBJ triangle mesh (positions, optional `v x y z r g b` colours, triangular faces).

  Texture coordinates, normals, groups and materials are ignored; face tokens may be `i`, `i/t`,
  `i//n` or `i/t/n`, with negative (relative) indices.

  Raises:
    ValueError: naming the file and line for unparsable or non-finite numbers, missing
      coordinates, faces with other than 3 vertices, or indices out of range; or for a file
      with no vertices, or with colours on only some vertices.
  """
  path = os.fspath(path)
  positions, colours, faces, face_lines = [], [], [], []
  colour_lines = 0
  try:
    with open(path, "r", encoding="utf-8", errors="replace") as f:
      for line_no, line in enumerate(f, start=1):
        tokens = line.split()
        if not tokens or tokens[0].startswith("#"):
          continue
        keyword = tokens[0]
        if keyword == "v":
          if len(tokens) not in (4, 5, 7, 8):
            raise InputError(f"{path}: line {line_no}: a vertex needs 3 coordinates (optionally "
                             f"followed by r g b), got {len(tokens) - 1} numbers")
          values = _parse_floats(tokens[1:], path, line_no, "vertex")
          positions.append(values[:3])
          if len(values) >= 6:
            colours.append(values[3:6] if len(values) in (6, 7) else values[4:7])
            colour_lines += 1
          else:
            colours.append(None)
        elif keyword == "f":
          corners = tokens[1:]
          if len(corners) != 3:
            raise InputError(f"{path}: line {line_no}: face with {len(corners)} vertices; "
                             "triangles are required")
          face = []
          for corner in corners:
            head = corner.split("/")[0]
            try:
              index = int(head)
            except ValueError:
              raise InputError(f"{path}: line {line_no}: bad vertex index {corner!r}") from None
            if index == 0:
              raise InputError(f"{path}: line {line_no}: vertex index 0 (OBJ indices start at 1)")
            face.append(index - 1 if index > 0 else len(positions) + index)
          faces.append(face)
          face_lines.append(line_no)
  except UnicodeError as e:  # pragma: no cover - errors="replace" makes this unlikely
    raise InputError(f"{path}: not a text OBJ file ({e})") from None
  if not positions:
    raise InputError(f"{path}: no vertices ('v' lines) found")
  if 0 < colour_lines < len(positions):
    first = next(i for i, c in enumerate(colours) if c is None)
    raise InputError(f"{path}: vertex {first} has no colour but {colour_lines} others do")
  triangles = np.asarray(faces, np.int64).reshape(-1, 3)
  _check_read_triangles(triangles, len(positions), path, lambda i: f"line {face_lines[i]}")
  return Mesh(vertices=np.asarray(positions, np.float64).astype(dtype),
              triangles=triangles.astype(np.int32),
              colors=np.asarray(colours, np.float32) if colour_lines else None)


# ---------------------------------------------------------------------------------------------
# PLY

_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}


_LINES = "__line_numbers__"  # key under which the ASCII reader keeps each element's line numbers


@dataclasses.dataclass
class _Element:
  name: str
  count: int
  # (name, numpy type) for scalars; (name, count type, item type) for lists.
  properties: list = dataclasses.field(default_factory=list)

  @property
  def has_list(self) -> bool:
    return any(len(p) == 3 for p in self.properties)


def _read_ply_header(data: bytes, path: str):
  end = data.find(b"end_header")
  if not data.startswith(b"ply") or end < 0:
    raise InputError(f"{path}: not a PLY file (no 'ply' magic or no 'end_header')")
  body_start = data.index(b"\n", end) + 1 if b"\n" in data[end:] else len(data)
  lines = data[:end].decode("ascii", errors="replace").splitlines()
  fmt, elements = None, []
  for line_no, line in enumerate(lines, start=1):
    tokens = line.split()
    if not tokens or tokens[0] in ("ply", "comment", "obj_info"):
      continue
    if tokens[0] == "format":
      if len(tokens) != 3 or tokens[1] not in ("ascii", "binary_little_endian", "binary_big_endian"):
        raise InputError(f"{path}: line {line_no}: unsupported format {line.strip()!r}")
      fmt = tokens[1]
    elif tokens[0] == "element":
      try:
        elements.append(_Element(tokens[1], int(tokens[2])))
      except (IndexError, ValueError):
        raise InputError(f"{path}: line {line_no}: bad element line {line.strip()!r}") from None
      if elements[-1].count < 0:
        raise InputError(f"{path}: line {line_no}: negative element count")
    elif tokens[0] == "property":
      if not elements:
        raise InputError(f"{path}: line {line_no}: property before any element")
      try:
        if tokens[1] == "list":
          elements[-1].properties.append((tokens[4], _PLY_TYPES[tokens[2]], _PLY_TYPES[tokens[3]]))
        else:
          elements[-1].properties.append((tokens[2], _PLY_TYPES[tokens[1]]))
      except (IndexError, KeyError):
        raise InputError(f"{path}: line {line_no}: bad property line {line.strip()!r}") from None
    else:
      raise InputError(f"{path}: line {line_no}: unknown header keyword {tokens[0]!r}")
  if fmt is None:
    raise InputError(f"{path}: PLY header has no 'format' line")
  return fmt, elements, body_start, len(lines) + 1


def _element_columns(element: _Element, rows: dict, path: str, where) -> dict:
  """Checks an element's decoded columns are finite; returns them."""
  for name, column in rows.items():
    if column.dtype.kind == "f" and not np.all(np.isfinite(column)):
      i = int(np.argwhere(~np.isfinite(column.reshape(len(column), -1)))[0, 0])
      raise InputError(f"{path}: {where(element, i)}: non-finite value in property {name!r}")
  return rows


def _triangle_mesh_size(elements, byte_order: str) -> int | None:
  """Bytes the body needs if every list has 3 items (None when an element has several lists)."""
  total = 0
  for element in elements:
    if element.has_list and len(element.properties) > 1:
      return None
    if element.has_list:
      _, count_t, item_t = element.properties[0]
      total += element.count * (np.dtype(count_t).itemsize + 3 * np.dtype(item_t).itemsize)
    else:
      total += element.count * np.dtype([(n, byte_order + t) for n, t in element.properties]).itemsize
  return total


def _read_binary_elements(body: bytes, elements, byte_order: str, path: str) -> dict:
  out, pos = {}, 0
  where = lambda element, i: f"element '{element.name}' {i}"
  needed = _triangle_mesh_size(elements, byte_order)
  size_hint = ("" if needed in (None, len(body)) else
               f" (the data is {len(body)} bytes but the header's counts need {needed} for a "
               "triangle mesh: counts and data disagree)")
  for element in elements:
    if not element.has_list:
      dtype = np.dtype([(name, byte_order + t) for name, t in element.properties])
      size = dtype.itemsize * element.count
      if pos + size > len(body):
        raise InputError(f"{path}: truncated in element '{element.name}': needs {size} bytes, "
                         f"{len(body) - pos} left")
      array = np.frombuffer(body, dtype, element.count, pos)
      pos += size
      out[element.name] = _element_columns(
          element, {name: array[name] for name, _ in element.properties}, path, where)
      continue
    # Elements with lists: fast path when every list has 3 items (triangles), else item by item.
    if len(element.properties) == 1:
      name, count_t, item_t = element.properties[0]
      dtype = np.dtype([("n", byte_order + count_t), ("items", byte_order + item_t, (3,))])
      available = (len(body) - pos) // dtype.itemsize
      array = np.frombuffer(body, dtype, min(available, element.count), pos)
      wrong = np.flatnonzero(array["n"] != 3)
      if wrong.size:
        i = int(wrong[0])
        raise InputError(f"{path}: element '{element.name}' {i} has {int(array['n'][i])} "
                         f"vertices; triangles are required{size_hint}")
      if available < element.count:
        raise InputError(f"{path}: truncated in element '{element.name}': {element.count} "
                         f"expected, data ends after {available}")
      pos += dtype.itemsize * element.count
      out[element.name] = {name: array["items"]}
      continue
    columns = {p[0]: [] for p in element.properties}
    for i in range(element.count):
      for prop in element.properties:
        try:
          if len(prop) == 2:
            item = np.dtype(byte_order + prop[1])
            columns[prop[0]].append(np.frombuffer(body, item, 1, pos)[0])
            pos += item.itemsize
          else:
            count_t, item_t = np.dtype(byte_order + prop[1]), np.dtype(byte_order + prop[2])
            n = int(np.frombuffer(body, count_t, 1, pos)[0])
            pos += count_t.itemsize
            columns[prop[0]].append(np.frombuffer(body, item_t, n, pos))
            pos += item_t.itemsize * n
        except ValueError:
          raise InputError(f"{path}: truncated in element '{element.name}' {i}") from None
    out[element.name] = columns
  if pos != len(body):
    raise InputError(f"{path}: {len(body) - pos} bytes after the last element; the header's "
                     "counts do not match the data")
  return out


def _read_ascii_elements(body: bytes, elements, first_line: int, path: str) -> dict:
  lines = body.decode("ascii", errors="replace").splitlines()
  out, cursor = {}, 0

  def next_line():
    nonlocal cursor
    while cursor < len(lines) and not lines[cursor].strip():
      cursor += 1
    if cursor >= len(lines):
      return None, None
    cursor += 1
    return first_line + cursor, lines[cursor - 1].split()

  for element in elements:
    columns = {p[0]: [] for p in element.properties}
    line_numbers = []
    for i in range(element.count):
      line_no, tokens = next_line()
      line_numbers.append(line_no)
      if tokens is None:
        raise InputError(f"{path}: truncated: element '{element.name}' expects {element.count} "
                         f"lines, the file ends after {i}")
      k = 0
      try:
        for prop in element.properties:
          if len(prop) == 2:
            value = np.array(tokens[k], dtype=prop[1]) if prop[1][0] != "f" else float(tokens[k])
            columns[prop[0]].append(value)
            k += 1
          else:
            n = int(tokens[k])
            if element.name == "face" and n != 3:
              raise InputError(f"{path}: line {line_no}: face with {n} vertices; triangles are "
                               "required")
            columns[prop[0]].append([int(t) for t in tokens[k + 1:k + 1 + n]])
            if len(columns[prop[0]][-1]) != n:
              raise IndexError
            k += 1 + n
      except (IndexError, ValueError, OverflowError) as e:
        if isinstance(e, ValueError) and str(e).startswith(path):
          raise
        raise InputError(f"{path}: line {line_no}: cannot parse element '{element.name}' {i}: "
                         f"{' '.join(tokens)!r}") from None
      if k != len(tokens):
        raise InputError(f"{path}: line {line_no}: element '{element.name}' {i} has "
                         f"{len(tokens) - k} extra values; the header's properties do not match")
      for name, column in columns.items():
        if column and isinstance(column[-1], float) and not np.isfinite(column[-1]):
          raise InputError(f"{path}: line {line_no}: non-finite value in property {name!r}")
    out[element.name] = {name: (np.asarray(c) if c and not isinstance(c[0], list) else c)
                         for name, c in columns.items()}
    out[element.name][_LINES] = line_numbers
  line_no, tokens = next_line()
  if tokens is not None:
    raise InputError(f"{path}: line {line_no}: data after the last element; the header's counts "
                     "do not match the data")
  return out


def read_ply(path: str | os.PathLike, *, dtype=np.float32) -> Mesh:
  """Reads a PLY triangle mesh (ASCII or binary): `x y z`, optional `red green blue`, and faces.

  Raises:
    ValueError: naming the file and the line (ASCII) or element (binary) for truncated data,
      counts that do not match the data, non-finite coordinates, faces with other than 3
      vertices, or indices out of range.
  """
  path = os.fspath(path)
  with open(path, "rb") as f:
    data = f.read()
  fmt, elements, body_start, first_line = _read_ply_header(data, path)
  by_name = {e.name: e for e in elements}
  if "vertex" not in by_name:
    raise InputError(f"{path}: no 'vertex' element")
  vertex_props = {p[0] for p in by_name["vertex"].properties}
  if not {"x", "y", "z"} <= vertex_props:
    raise InputError(f"{path}: element 'vertex' lacks x, y or z properties")
  body = data[body_start:]
  if fmt == "ascii":
    columns = _read_ascii_elements(body, elements, first_line, path)
  else:
    columns = _read_binary_elements(body, elements, "<" if fmt.endswith("little_endian") else ">",
                                    path)
  vertex = columns["vertex"]
  # Stacking in the stored type, then one cast, keeps float32 -> float32 bit-exact.
  vertices = np.stack([np.asarray(vertex[k]) for k in "xyz"], axis=1).astype(dtype)
  colors = None
  if {"red", "green", "blue"} <= vertex_props:
    rgb = np.stack([np.asarray(vertex[k]) for k in ("red", "green", "blue")], axis=1)
    colors = (rgb.astype(np.float32) / 255.0 if rgb.dtype.kind in "ui"
              else rgb.astype(np.float32))
  triangles = np.zeros((0, 3), np.int64)
  if "face" in columns:
    face_cols = columns["face"]
    key = "vertex_indices" if "vertex_indices" in face_cols else "vertex_index"
    if key not in face_cols:
      raise InputError(f"{path}: element 'face' has no 'vertex_indices' list")
    triangles = np.asarray(face_cols[key], np.int64).reshape(-1, 3)
  if fmt == "ascii" and "face" in columns:
    where = lambda i: f"line {columns['face'][_LINES][i]}"
  else:
    where = lambda i: f"element 'face' {i}"
  _check_read_triangles(triangles, len(vertices), path, where)
  return Mesh(vertices=vertices, triangles=triangles.astype(np.int32), colors=colors)


def write_ply(path: str | os.PathLike, vertices, triangles=None, *, colors=None,
              binary: bool = True) -> None:
  """Writes a PLY file atomically: binary little-endian (default) or ASCII.

  Float32 positions are stored as `float`, float64 as `double`, so a binary round trip is
  bit-exact. Colours in [0, 1] are stored as `uchar` red/green/blue.
  """
  path = os.fspath(path)
  vertices, triangles, colors = _validated(vertices, triangles, colors, path)
  float_t = "double" if vertices.dtype == np.float64 else "float"
  header = ["ply", f"format {'binary_little_endian' if binary else 'ascii'} 1.0",
            "comment written by sfm_jax", f"element vertex {len(vertices)}",
            f"property {float_t} x", f"property {float_t} y", f"property {float_t} z"]
  if colors is not None:
    header += ["property uchar red", "property uchar green", "property uchar blue"]
    rgb = np.round(np.clip(colors, 0.0, 1.0) * 255.0).astype(np.uint8)
  header += [f"element face {len(triangles)}", "property list uchar int vertex_indices",
             "end_header"]
  with atomic_write(path, "wb") as f:
    f.write(("\n".join(header) + "\n").encode("ascii"))
    if binary:
      fields = [(k, "<" + vertices.dtype.str[1:]) for k in "xyz"]
      if colors is not None:
        fields += [(k, "u1") for k in ("red", "green", "blue")]
      vertex = np.empty(len(vertices), np.dtype(fields))
      for axis, k in enumerate("xyz"):
        vertex[k] = vertices[:, axis]
      if colors is not None:
        for axis, k in enumerate(("red", "green", "blue")):
          vertex[k] = rgb[:, axis]
      f.write(vertex.tobytes())
      face = np.empty(len(triangles), np.dtype([("n", "u1"), ("items", "<i4", (3,))]))
      face["n"] = 3
      face["items"] = triangles
      f.write(face.tobytes())
    else:
      fmt = _float_format(vertices.dtype)
      if colors is None:
        lines = [f"{fmt % x} {fmt % y} {fmt % z}" for x, y, z in vertices.tolist()]
      else:
        lines = [f"{fmt % x} {fmt % y} {fmt % z} {r} {g} {b}"
                 for (x, y, z), (r, g, b) in zip(vertices.tolist(), rgb.tolist())]
      lines += [f"3 {a} {b} {c}" for a, b, c in triangles.tolist()]
      f.write(("\n".join(lines) + "\n").encode("ascii"))


def read_mesh(path: str | os.PathLike, *, dtype=np.float32) -> Mesh:
  """Reads an `.obj` or `.ply` file by extension."""
  ext = os.path.splitext(os.fspath(path))[1].lower()
  if ext == ".obj":
    return read_obj(path, dtype=dtype)
  if ext == ".ply":
    return read_ply(path, dtype=dtype)
  raise InputError(f"{os.fspath(path)}: unknown mesh extension {ext!r} (expected .obj or .ply)")


def write_mesh(path: str | os.PathLike, vertices, triangles=None, *, colors=None) -> None:
  """Writes an `.obj` or `.ply` (binary) file by extension."""
  ext = os.path.splitext(os.fspath(path))[1].lower()
  if ext == ".obj":
    write_obj(path, vertices, triangles, colors=colors)
  elif ext == ".ply":
    write_ply(path, vertices, triangles, colors=colors)
  else:
    raise InputError(f"{os.fspath(path)}: unknown mesh extension {ext!r} (expected .obj or .ply)")

