"""Scan folders: the format stage 1 reads for a user's registered 3D scans.

Layout of a scan folder:

    meta.csv        header `path,identity` (optional third column `expression`); one row a scan;
                    `path` relative to the folder; `identity` a subject name or number (empty =
                    unlabelled); `expression` a free label such as `neutral` or `smile`
    <meshes>        OBJ or PLY files, all with the same vertex count and order (correspondence)
    template.obj    optional: the triangles (and a reference shape) of the common topology
    landmarks.txt   optional: 68 vertex indices (0-based, iBUG order), -1 where undefined;
                    whitespace or newline separated, `#` comments allowed
    contour.json    optional: `{"contour": [2][C][W]}` the jaw lines (`FaceModel.contour`:
                    vertex indices, -1 padded; side 0 the subject's right)

`write_scan_folder` writes meshes first and `meta.csv` last (each file atomically), so an
interrupted write never looks like a complete folder. `read_scan_folder` checks everything and
raises `ValueError` naming the offending file (and row).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os

import numpy as np

from sfm_jax.errors import InputError
from sfm_jax.io.atomic import atomic_write
from sfm_jax.io.mesh import read_mesh, read_obj, write_mesh, write_obj

META = "meta.csv"
TEMPLATE = "template.obj"
LANDMARKS = "landmarks.txt"
CONTOUR = "contour.json"


@dataclasses.dataclass(frozen=True)
class ScanFolder:
  """The contents of a scan folder.

  Attributes:
    vertices: `[N, V, 3]` scans, mm.
    identity: `[N]` int32 label in [0, len(identity_names)), -1 for unlabelled scans.
    identity_names: the subject name of each label (sorted; numerically if all are integers).
    expression: `[N]` expression labels, or None when `meta.csv` has no expression column.
    paths: `[N]` mesh paths relative to the folder.
    triangles: `[T, 3]` int32 (from `template.obj`, else from the first mesh).
    landmarks: `[68]` int32 vertex indices (-1 undefined), or None without `landmarks.txt`.
    contour: `[2, C, W]` int32 jaw lines, or None without `contour.json`.
  """
  vertices: np.ndarray
  identity: np.ndarray
  identity_names: list
  expression: list | None
  paths: list
  triangles: np.ndarray
  landmarks: np.ndarray | None
  contour: np.ndarray | None = None


def write_scan_folder(directory: str | os.PathLike, vertices, identity, *, triangles=None,
                      landmarks=None, expression=None, mesh_format: str = "ply",
                      names=None, contour=None) -> None:
  """Writes scans as a scan folder (created if needed).

  Args:
    directory: destination folder.
    vertices: `[N, V, 3]` scans, mm.
    identity: `[N]` identity labels (ints or strings; None or "" for unlabelled).
    triangles: `[T, 3]` common topology; written into each mesh and into `template.obj`.
    landmarks: `[68]` vertex indices (-1 undefined), written to `landmarks.txt`.
    contour: optional `[2, C, W]` jaw lines, written to `contour.json`.
    expression: optional `[N]` expression labels.
    mesh_format: "ply" (binary, bit-exact) or "obj".
    names: optional `[N]` file names (default `scans/00000.<format>` ...).
  """
  directory = os.fspath(directory)
  vertices = np.asarray(vertices)
  if vertices.ndim != 3 or vertices.shape[2] != 3:
    raise InputError(f"{directory}: vertices must be [N, V, 3], got {vertices.shape}")
  if len(identity) != len(vertices) or (expression is not None
                                        and len(expression) != len(vertices)):
    raise InputError(f"{directory}: identity/expression need one entry per scan "
                     f"({len(vertices)})")
  if mesh_format not in ("ply", "obj"):
    raise InputError(f"{directory}: mesh_format must be 'ply' or 'obj', got {mesh_format!r}")
  names = names or [os.path.join("scans", f"{i:05d}.{mesh_format}") for i in range(len(vertices))]
  if len(set(names)) != len(names):
    raise InputError(f"{directory}: scan file names must be unique")
  for name, scan in zip(names, vertices):
    path = os.path.join(directory, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_mesh(path, scan, triangles)
  if triangles is not None:
    write_obj(os.path.join(directory, TEMPLATE), vertices.mean(axis=0).astype(vertices.dtype),
              triangles)
  if landmarks is not None:
    with atomic_write(os.path.join(directory, LANDMARKS), "w") as f:
      f.write("# iBUG-68 landmark vertex indices (0-based, -1 undefined)\n")
      f.write("\n".join(str(int(i)) for i in np.asarray(landmarks)) + "\n")
  if contour is not None:
    with atomic_write(os.path.join(directory, CONTOUR), "w") as f:
      json.dump({"contour": np.asarray(contour).astype(int).tolist()}, f)
  buffer = io.StringIO()
  writer = csv.writer(buffer, lineterminator="\n")
  writer.writerow(["path", "identity"] + (["expression"] if expression is not None else []))
  for i, name in enumerate(names):
    label = "" if identity[i] is None else str(identity[i])
    writer.writerow([name.replace(os.sep, "/"), label]
                    + ([str(expression[i])] if expression is not None else []))
  with atomic_write(os.path.join(directory, META), "w") as f:
    f.write(buffer.getvalue())


def _label_order(names: set) -> list:
  if all(n.lstrip("-").isdigit() for n in names):
    return sorted(names, key=int)
  return sorted(names)


def read_scan_meta(directory: str | os.PathLike, *, allow_outside: bool = False,
                   optional: tuple = ("expression",), path_columns: tuple = ()
                   ) -> tuple[list, list, dict]:
  """Reads and checks `meta.csv`: (paths, identity strings, {column: strings} for each column of
  `optional` that the header names, in any order after `path,identity`).

  A path that leaves the folder (absolute, `..`, or a symlink out of it), in `path` or in a
  column of `path_columns` (an empty cell there means "none"), is refused with the line that
  names it, unless `allow_outside`: a folder should not make a program read any file its user
  can read.
  """
  directory = os.fspath(directory)
  root = os.path.realpath(directory)
  meta_path = os.path.join(directory, META)
  if not os.path.isfile(meta_path):
    raise InputError(f"{meta_path}: missing (a scan folder needs meta.csv with header "
                     "'path,identity')")
  with open(meta_path, newline="", encoding="utf-8") as f:
    rows = list(csv.reader(f))
  rows = [r for r in rows if any(cell.strip() for cell in r)]
  if not rows:
    raise InputError(f"{meta_path}: empty (expected a header 'path,identity' and one row a scan)")
  header = [h.strip() for h in rows[0]]
  extra = header[2:]
  if (header[:2] != ["path", "identity"] or len(set(extra)) != len(extra)
      or not set(extra) <= set(optional)):
    allowed = "".join(f"[,{name}]" for name in optional)
    raise InputError(f"{meta_path}: line 1: header must be 'path,identity{allowed}', "
                     f"got {','.join(header)!r}")
  if len(rows) == 1:
    raise InputError(f"{meta_path}: empty (a header but no scans)")

  def inside(path, line_no, column):
    target = os.path.realpath(os.path.join(directory, path))
    if not allow_outside and os.path.commonpath([root, target]) != root:
      raise InputError(f"{meta_path}: line {line_no}: {column} {path!r} leaves the folder "
                       f"({target}); keep the files inside it, or allow it explicitly "
                       "(allow_outside=True, --config.data.allow_outside_paths=True)")

  paths, identities, columns, seen = [], [], {name: [] for name in extra}, {}
  for line_no, row in enumerate(rows[1:], start=2):
    if len(row) != len(header):
      raise InputError(f"{meta_path}: line {line_no}: expected {len(header)} columns, got "
                       f"{len(row)}")
    path = row[0].strip()
    if not path:
      raise InputError(f"{meta_path}: line {line_no}: empty path")
    if path in seen:
      raise InputError(f"{meta_path}: line {line_no}: duplicate path {path!r} (first on line "
                       f"{seen[path]})")
    seen[path] = line_no
    inside(path, line_no, "path")
    paths.append(path)
    identities.append(row[1].strip())
    for name, cell in zip(extra, row[2:]):
      cell = cell.strip()
      if name in path_columns and cell:
        inside(cell, line_no, name)
      columns[name].append(cell)
  return paths, identities, columns


def read_landmarks_file(path: str, num_vertices: int) -> np.ndarray:
  """Reads `landmarks.txt`: 68 vertex indices in [-1, V)."""
  with open(path, encoding="utf-8") as f:
    tokens = [t for line in f for t in line.split("#")[0].split()]
  try:
    values = np.array([int(t) for t in tokens], np.int64)
  except ValueError:
    raise InputError(f"{path}: landmarks must be integers") from None
  if values.shape != (68,):
    raise InputError(f"{path}: expected 68 landmark indices, got {len(values)}")
  if values.min() < -1 or values.max() >= num_vertices:
    bad = int(np.argmax((values < -1) | (values >= num_vertices)))
    raise InputError(f"{path}: landmark {bad} = {values[bad]} is outside [-1, {num_vertices})")
  return values.astype(np.int32)


def read_contour_file(path: str, num_vertices: int) -> np.ndarray:
  """Reads `contour.json`: `[2, C, W]` vertex indices in [-1, V), the first of each row a vertex."""
  try:
    with open(path, encoding="utf-8") as f:
      contour = np.asarray(json.load(f)["contour"])
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise InputError(f"{path}: not a contour file ({type(e).__name__}: {e}); expected "
                     '{"contour": [2][C][W] vertex indices}') from None
  if (contour.ndim != 3 or contour.shape[0] != 2 or contour.size == 0
      or not np.issubdtype(contour.dtype, np.integer)):
    raise InputError(f"{path}: contour must be integers shaped [2, C, W], got {contour.dtype} "
                     f"{contour.shape}")
  if contour.min() < -1 or contour.max() >= num_vertices or np.any(contour[..., 0] < 0):
    raise InputError(f"{path}: contour indices must lie in [-1, {num_vertices}) with a vertex "
                     "first in every row")
  return contour.astype(np.int32)


def iter_scans(directory: str | os.PathLike, paths: list[str], rows=None, *, num_vertices: int,
               dtype=np.float32, chunk: int = 64):
  """Yields the vertices of the scans `paths[rows]` (`paths` as `read_scan_meta` lists them,
  relative to `directory`; default all rows) as arrays `[n, V, 3]` of up to `chunk` scans, in
  order. Every scan must have `num_vertices` vertices, the count of `paths[0]`. Raises
  `InputError` naming a missing or mismatched mesh and its `meta.csv` line."""
  directory = os.fspath(directory)
  scans = []
  for row in range(len(paths)) if rows is None else rows:
    path = os.path.join(directory, paths[row])
    if not os.path.isfile(path):
      raise InputError(f"{path}: missing (listed on line {row + 2} of {META})")
    vertices = read_mesh(path, dtype=dtype).vertices
    if vertices.shape != (num_vertices, 3):
      raise InputError(f"{path}: {len(vertices)} vertices, but {paths[0]} has "
                       f"{num_vertices}; scans must share vertex count and order")
    scans.append(vertices)
    if len(scans) == chunk:
      yield np.stack(scans)
      scans = []
  if scans:
    yield np.stack(scans)


def read_scan_folder(directory: str | os.PathLike, *, dtype=np.float32,
                     max_scans: int | None = None, allow_outside: bool = False,
                     load_vertices: bool = True) -> ScanFolder:
  """Reads a scan folder (see the module docstring). With `load_vertices=False` only the first
  mesh is read (`vertices` is then that one scan, `[1, V, 3]`); `iter_scans` reads the others
  when they are needed.

  Raises:
    ValueError: naming the file for a missing or empty `meta.csv`, a bad header or row, a
      duplicate path, a missing mesh, a mesh whose vertex count differs from the first one,
      non-finite coordinates or malformed meshes (the mesh readers name the line), and bad
      `template.obj` or `landmarks.txt`.
  """
  directory = os.fspath(directory)
  paths, identities, columns = read_scan_meta(directory, allow_outside=allow_outside)
  expressions = columns.get("expression")
  if max_scans is not None:
    paths, identities = paths[:max_scans], identities[:max_scans]
    expressions = expressions[:max_scans] if expressions is not None else None
  first_path = os.path.join(directory, paths[0])
  if not os.path.isfile(first_path):
    raise InputError(f"{first_path}: missing (listed on line 2 of {META})")
  first = read_mesh(first_path, dtype=dtype)
  num_vertices = len(first.vertices)
  vertices = (np.concatenate(list(iter_scans(directory, paths, num_vertices=num_vertices,
                                             dtype=dtype)))
              if load_vertices else first.vertices[None])
  triangles = first.triangles
  template_path = os.path.join(directory, TEMPLATE)
  if os.path.isfile(template_path):
    template = read_obj(template_path)
    if len(template.vertices) != num_vertices:
      raise InputError(f"{template_path}: {len(template.vertices)} vertices, but the scans have "
                       f"{num_vertices}")
    triangles = template.triangles
  landmarks_path = os.path.join(directory, LANDMARKS)
  landmarks = (read_landmarks_file(landmarks_path, num_vertices)
               if os.path.isfile(landmarks_path) else None)
  contour_path = os.path.join(directory, CONTOUR)
  contour = (read_contour_file(contour_path, num_vertices) if os.path.isfile(contour_path)
             else None)
  names = _label_order({n for n in identities if n})
  index = {name: i for i, name in enumerate(names)}
  identity = np.array([index[n] if n else -1 for n in identities], np.int32)
  return ScanFolder(vertices=vertices, identity=identity, identity_names=names,
                    expression=expressions, paths=paths, triangles=triangles, landmarks=landmarks,
                    contour=contour)
