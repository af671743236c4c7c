"""Third-party 3D morphable models, loaded offline into a `FaceModel`.

Each loader returns a Gaussian model (`code_kind="gaussian"`): the PCA basis is scaled by the
components' standard deviations, so codes are about N(0, I) and `radius` is `sqrt(K)`, the typical
norm of such a code. Units are converted to millimetres. Where a format carries no iBUG-68
landmark map, `landmarks` is 68 times -1.

| format | loader | file |
|---|---|---|
| Basel Face Model 2009 | `load_basel2009` | `01_MorphableModel.mat` (micrometres) |
| Basel Face Model 2017/2019 | `load_basel2017` | `model2017-1_*.h5`, `model2019_*.h5` (statismo) |
| FLAME 2020/2023 | `load_flame` | `generic_model.pkl`, `flame2023.pkl` (metres; chumpy not needed) |
| FaceScape bilinear | `load_facescape` | `facescape_bm_v*.npz` |
| Surrey Face Model | `load_surrey` | `sfm_shape_3448.bin` (+ blendshapes, iBUG map) |

`load_face_model(path)` picks the loader from the file.
"""

from __future__ import annotations

import os
import pickle
import re
import struct

import numpy as np

from sfm_jax.model import FaceModel, validate_model_arrays

NUM_LANDMARKS = 68


def _gaussian_model(path: str, mean, shape_basis, expr_basis, triangles, landmarks=None,
                    albedo_mean=None, albedo_basis=None) -> FaceModel:
  """Assembles and validates a Gaussian `FaceModel` (arrays already in mm, `[K, V, 3]` bases)."""
  num_vertices = mean.shape[0]
  if expr_basis is None:
    expr_basis = np.zeros((0, num_vertices, 3), np.float32)
  if landmarks is None:
    landmarks = -np.ones(NUM_LANDMARKS, np.int32)
  arrays = dict(mean=np.asarray(mean, np.float32), shape_basis=np.asarray(shape_basis, np.float32),
                expr_basis=np.asarray(expr_basis, np.float32),
                radius=np.asarray(np.sqrt(shape_basis.shape[0]), np.float32),
                triangles=np.asarray(triangles, np.int32), landmarks=np.asarray(landmarks, np.int32),
                format_version=np.asarray(1), code_kind=np.asarray("gaussian"))
  if albedo_mean is not None:
    arrays.update(albedo_mean=np.asarray(albedo_mean, np.float32),
                  albedo_basis=np.asarray(albedo_basis, np.float32))
  validate_model_arrays(arrays, source=path)
  return FaceModel(mean=arrays["mean"], shape_basis=arrays["shape_basis"],
                   expr_basis=arrays["expr_basis"], radius=arrays["radius"],
                   triangles=arrays["triangles"], landmarks=arrays["landmarks"],
                   albedo_mean=arrays.get("albedo_mean"), albedo_basis=arrays.get("albedo_basis"),
                   code_kind="gaussian")


def _columns_to_basis(columns: np.ndarray, scale: np.ndarray) -> np.ndarray:
  """`[3V, K]` vertex-interleaved columns times per-column scale -> `[K, V, 3]`."""
  return (columns * scale[None, :]).T.reshape(columns.shape[1], -1, 3)


def _require(arrays, keys, path):
  for key in keys:
    if key not in arrays:
      raise ValueError(f"{path}: key '{key}': missing")


def _check_counts(path, key, array, rows):
  if array.shape[0] != rows:
    raise ValueError(f"{path}: key '{key}': expected {rows} rows, got shape {array.shape}")


# ---------------------------------------------------------------------------------------------
# Basel Face Model 2009 (.mat).


def load_basel2009(path: str | os.PathLike, *, num_shape: int | None = None,
                   with_albedo: bool = True) -> FaceModel:
  """Basel Face Model 2009 (`01_MorphableModel.mat`).

  Keys: `shapeMU [3V, 1]`, `shapePC [3V, K]`, `shapeEV [K, 1]` (standard deviations), `tl [T, 3]`
  (1-based), optional `texMU`, `texPC`, `texEV` (0-255). Coordinates are micrometres; returned in
  mm. No expression basis (E = 0).
  """
  import scipy.io  # scipy ships with jax

  path = os.fspath(path)
  try:
    mat = scipy.io.loadmat(path)
  except Exception as e:  # scipy raises several types for non-.mat input
    raise ValueError(f"{path}: not a readable .mat file ({e})") from None
  _require(mat, ("shapeMU", "shapePC", "shapeEV", "tl"), path)
  mean = np.asarray(mat["shapeMU"], np.float64).reshape(-1)
  columns = np.asarray(mat["shapePC"], np.float64)
  std = np.asarray(mat["shapeEV"], np.float64).reshape(-1)
  _check_counts(path, "shapePC", columns, mean.size)
  if std.size != columns.shape[1]:
    raise ValueError(f"{path}: key 'shapeEV': {std.size} values for {columns.shape[1]} components")
  k = columns.shape[1] if num_shape is None else min(num_shape, columns.shape[1])
  triangles = np.asarray(mat["tl"], np.int64) - 1
  albedo_mean = albedo_basis = None
  if with_albedo and all(key in mat for key in ("texMU", "texPC", "texEV")):
    tex_columns = np.asarray(mat["texPC"], np.float64)
    _check_counts(path, "texPC", tex_columns, mean.size)
    albedo_mean = np.asarray(mat["texMU"], np.float64).reshape(-1, 3) / 255.0
    albedo_basis = _columns_to_basis(tex_columns,
                                     np.asarray(mat["texEV"], np.float64).reshape(-1)) / 255.0
  micrometres = 1e-3
  return _gaussian_model(path, mean.reshape(-1, 3) * micrometres,
                         _columns_to_basis(columns[:, :k], std[:k]) * micrometres, None,
                         triangles, albedo_mean=albedo_mean, albedo_basis=albedo_basis)


# ---------------------------------------------------------------------------------------------
# Basel Face Model 2017 / 2019 (statismo .h5).


def _statismo_part(h5, group: str, path: str, k: int | None):
  """(mean [V, 3], basis [K, V, 3] scaled by std) of a statismo model group."""
  try:
    mean = np.asarray(h5[f"{group}/model/mean"], np.float64).reshape(-1)
    columns = np.asarray(h5[f"{group}/model/pcaBasis"], np.float64)
    variance = np.asarray(h5[f"{group}/model/pcaVariance"], np.float64).reshape(-1)
  except KeyError as e:
    raise ValueError(f"{path}: key '{group}/model': missing ({e})") from None
  _check_counts(path, f"{group}/model/pcaBasis", columns, mean.size)
  if variance.size != columns.shape[1]:
    raise ValueError(f"{path}: key '{group}/model/pcaVariance': {variance.size} values for "
                     f"{columns.shape[1]} components")
  if np.any(variance < 0):
    raise ValueError(f"{path}: key '{group}/model/pcaVariance': negative variances")
  k = columns.shape[1] if k is None else min(k, columns.shape[1])
  return mean.reshape(-1, 3), _columns_to_basis(columns[:, :k], np.sqrt(variance[:k]))


def load_basel2017(path: str | os.PathLike, *, num_shape: int | None = None,
                   num_expr: int | None = None, with_albedo: bool = True) -> FaceModel:
  """Basel Face Model 2017/2019 in the statismo HDF5 layout (needs `h5py`, extra `data`).

  Groups `shape`, optional `expression` and `color`, each with `model/mean [3V]`,
  `model/pcaBasis [3V, K]` (orthonormal columns) and `model/pcaVariance [K]` (variances);
  triangles in `shape/representer/cells [3, T]` (0-based). Coordinates are mm. The expression
  model's mean (about zero) is added to the shape mean.
  """
  try:
    import h5py
  except ImportError as e:  # pragma: no cover - h5py is in the `data` extra
    raise ImportError("load_basel2017 needs h5py: pip install -e '.[data]'") from e
  path = os.fspath(path)
  try:
    h5 = h5py.File(path, "r")
  except OSError as e:
    raise ValueError(f"{path}: not a readable HDF5 file ({e})") from None
  with h5:
    mean, shape_basis = _statismo_part(h5, "shape", path, num_shape)
    if "shape/representer/cells" not in h5:
      raise ValueError(f"{path}: key 'shape/representer/cells': missing")
    cells = np.asarray(h5["shape/representer/cells"], np.int64)
    # Statismo stores cells as [3, T]; accept [T, 3] only when it cannot be that layout.
    triangles = cells.T if cells.shape[0] == 3 else cells
    expr_basis = None
    if "expression" in h5:
      expr_mean, expr_basis = _statismo_part(h5, "expression", path, num_expr)
      if expr_mean.shape != mean.shape:
        raise ValueError(f"{path}: key 'expression/model/mean': {expr_mean.shape[0]} vertices, "
                         f"shape has {mean.shape[0]}")
      mean = mean + expr_mean
    albedo_mean = albedo_basis = None
    if with_albedo and "color" in h5:
      albedo_mean, albedo_basis = _statismo_part(h5, "color", path, None)
  return _gaussian_model(path, mean, shape_basis, expr_basis, triangles,
                         albedo_mean=albedo_mean, albedo_basis=albedo_basis)


# ---------------------------------------------------------------------------------------------
# FLAME (.pkl, without chumpy).


class _ChumpyArray:
  """Stands in for `chumpy.ch.Ch` while unpickling: keeps the pickled state, exposes its array."""

  def __init__(self, *args, **kwargs):
    self.state = {}

  def __setstate__(self, state):
    self.state = state if isinstance(state, dict) else {"x": state}

  def __array__(self, dtype=None, copy=None):
    value = self.state.get("x", self.state.get("a"))
    return np.asarray(value, dtype)


# Harmless constructors that protocol-2 pickles (Python 2 and 3) of numpy/scipy data refer to.
_SAFE_GLOBALS = {(module, name) for module in ("builtins", "__builtin__")
                 for name in ("object", "set", "frozenset", "list", "dict", "tuple", "slice")}
_SAFE_GLOBALS |= {("copy_reg", "_reconstructor"), ("copyreg", "_reconstructor"),
                  ("_codecs", "encode")}
_NUMPY_NAMES = {"_reconstruct", "scalar", "ndarray", "dtype"}  # array reconstruction only


class _FlameUnpickler(pickle.Unpickler):
  """Allows only numpy array reconstruction, scipy.sparse matrices and chumpy (mapped to
  `_ChumpyArray`): a pickle naming anything else is refused, not executed."""

  def find_class(self, module, name):
    if module.startswith("chumpy"):
      return _ChumpyArray
    numpy_array = module.split(".")[0] == "numpy" and name in _NUMPY_NAMES
    sparse_matrix = module.startswith("scipy.sparse") and name[0].isalpha() and "matrix" in name
    if numpy_array or sparse_matrix or (module, name) in _SAFE_GLOBALS:
      return super().find_class(module, name)
    raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a FLAME file")


def load_flame(path: str | os.PathLike, *, num_shape: int = 300,
               num_expr: int | None = None) -> FaceModel:
  """FLAME model pickle (`generic_model.pkl`, `flame2023.pkl`), loaded without chumpy.

  Keys used: `v_template [V, 3]`, `shapedirs [V, 3, K + E]` (identity components first, then
  expression; already in units of one standard deviation), `f [T, 3]` (0-based). Metres -> mm.
  Only numpy arrays, scipy sparse matrices and chumpy objects are unpickled (anything else is
  refused).
  """
  path = os.fspath(path)
  try:
    with open(path, "rb") as f:
      data = _FlameUnpickler(f, encoding="latin1").load()
  except (pickle.UnpicklingError, EOFError, AttributeError, ValueError, TypeError) as e:
    raise ValueError(f"{path}: not a readable FLAME pickle ({e})") from None
  if not isinstance(data, dict):
    raise ValueError(f"{path}: expected a dict of arrays, got {type(data).__name__}")
  _require(data, ("v_template", "shapedirs", "f"), path)
  template = np.asarray(data["v_template"], np.float64)
  directions = np.asarray(data["shapedirs"], np.float64)
  if template.ndim != 2 or template.shape[1] != 3:
    raise ValueError(f"{path}: key 'v_template': expected [V, 3], got {template.shape}")
  if directions.ndim != 3 or directions.shape[:2] != template.shape:
    raise ValueError(f"{path}: key 'shapedirs': expected [{template.shape[0]}, 3, K], got "
                     f"{directions.shape}")
  k = min(num_shape, directions.shape[2])
  e_total = directions.shape[2] - k
  e = e_total if num_expr is None else min(num_expr, e_total)
  metres = 1e3
  basis = np.moveaxis(directions, 2, 0) * metres  # [K + E, V, 3]
  return _gaussian_model(path, template * metres, basis[:k], basis[k:k + e],
                         np.asarray(data["f"], np.int64))


# ---------------------------------------------------------------------------------------------
# FaceScape bilinear model (.npz).


def load_facescape(path: str | os.PathLike, *, num_shape: int | None = None,
                   front_only: bool = False) -> FaceModel:
  """FaceScape bilinear model (`facescape_bm_v1.6_*.npz`), linearised at the neutral expression.

  Keys: `shape_bm_core [3V, I, X]` (vertices = core . id . exp), `id_mean [I]`, `id_var [I]`,
  `fv_indices [T, 3]` (1-based in the releases; 0-based accepted), optional `lm_list_v16` (68
  landmark vertices). The neutral expression is `exp = e_0`; expression j >= 1 is taken as an
  offset blendshape, so the expression basis is `core . id_mean . e_j`, j = 1..X-1, at the mean
  identity. Identity components are scaled by `sqrt(id_var)` around `core . id_mean . e_0`.
  `front_only` keeps the frontal face region (`v_indices_front`, `fv_indices_front`).
  """
  path = os.fspath(path)
  try:
    with np.load(path, allow_pickle=False) as npz:
      data = {key: npz[key] for key in npz.files}
  except Exception as e:
    raise ValueError(f"{path}: not a readable .npz file ({e})") from None
  _require(data, ("shape_bm_core", "id_mean", "id_var", "fv_indices"), path)
  core = np.asarray(data["shape_bm_core"], np.float64)
  id_mean = np.asarray(data["id_mean"], np.float64).reshape(-1)
  id_var = np.asarray(data["id_var"], np.float64).reshape(-1)
  if core.ndim != 3 or core.shape[0] % 3 or core.shape[1] != id_mean.size:
    raise ValueError(f"{path}: key 'shape_bm_core': expected [3V, {id_mean.size}, X], got "
                     f"{core.shape}")
  if id_var.shape != id_mean.shape or np.any(id_var < 0):
    raise ValueError(f"{path}: key 'id_var': expected {id_mean.size} non-negative variances")
  neutral_core = core[:, :, 0]  # [3V, I]
  mean = neutral_core @ id_mean
  k = id_mean.size if num_shape is None else min(num_shape, id_mean.size)
  order = np.argsort(-id_var)[:k]  # strongest identity directions first
  shape_basis = _columns_to_basis(neutral_core[:, order], np.sqrt(id_var[order]))
  expr_at_mean = np.einsum("vie,i->ve", core, id_mean)  # [3V, X]
  expr_basis = expr_at_mean[:, 1:].T.reshape(core.shape[2] - 1, -1, 3)
  faces = np.asarray(data["fv_indices"], np.int64)
  if faces.ndim != 2 or faces.shape[1] != 3:
    raise ValueError(f"{path}: key 'fv_indices': expected [T, 3] triangles, got {faces.shape}")
  num_vertices = core.shape[0] // 3
  one_based = faces.min() >= 1 and faces.max() <= num_vertices
  triangles = faces - 1 if one_based else faces
  landmarks = (np.asarray(data["lm_list_v16"], np.int64).reshape(-1)
               if "lm_list_v16" in data else None)
  if landmarks is not None and landmarks.size != NUM_LANDMARKS:
    landmarks = None
  mean = mean.reshape(-1, 3)
  if front_only:
    _require(data, ("v_indices_front", "fv_indices_front"), path)
    keep = np.asarray(data["v_indices_front"], np.int64).reshape(-1)
    keep = keep - 1 if keep.min() >= 1 and keep.max() <= num_vertices else keep
    remap = -np.ones(num_vertices, np.int64)
    remap[keep] = np.arange(keep.size)
    front = np.asarray(data["fv_indices_front"], np.int64)
    front = front - 1 if one_based else front
    triangles = remap[front]
    if landmarks is not None:
      landmarks = np.where(landmarks >= 0, remap[np.clip(landmarks, 0, None)], -1)
    mean, shape_basis, expr_basis = mean[keep], shape_basis[:, keep], expr_basis[:, keep]
  return _gaussian_model(path, mean, shape_basis, expr_basis, triangles, landmarks)


# ---------------------------------------------------------------------------------------------
# Surrey Face Model (cereal .bin, eos release).


class _Reader:
  """Little-endian reader over bytes that names the file and offset when data runs out."""

  def __init__(self, data: bytes, path: str):
    self.data, self.pos, self.path = data, 0, path

  def take(self, size: int, what: str) -> bytes:
    if self.pos + size > len(self.data):
      raise ValueError(f"{self.path}: truncated while reading {what} at byte {self.pos} "
                       f"(needs {size} bytes, {len(self.data) - self.pos} left)")
    chunk = self.data[self.pos:self.pos + size]
    self.pos += size
    return chunk

  def unpack(self, fmt: str, what: str):
    return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), what))

  def matrix(self, what: str) -> np.ndarray:
    rows, cols = self.unpack("ii", what)
    if rows < 0 or cols < 0:
      raise ValueError(f"{self.path}: {what}: negative matrix size {rows} x {cols}")
    values = np.frombuffer(self.take(4 * rows * cols, what), "<f4")
    return values.reshape(cols, rows).T  # column-major on disk

  def string(self, what: str) -> str:
    (length,) = self.unpack("Q", what)
    return self.take(length, what).decode("utf-8", errors="replace")


def read_surrey_shape(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                         np.ndarray]:
  """Raw arrays of `sfm_shape_*.bin`: mean `[3V]`, orthonormal basis `[3V, K]`, eigenvalues
  (variances) `[K]`, triangles `[T, 3]` (0-based)."""
  path = os.fspath(path)
  with open(path, "rb") as f:
    reader = _Reader(f.read(), path)
  (version,) = reader.unpack("I", "class version")
  if version > 10:
    raise ValueError(f"{path}: class version {version} is not a Surrey morphable model file")
  mean = reader.matrix("mean").reshape(-1)
  basis = reader.matrix("orthonormal basis")
  eigenvalues = reader.matrix("eigenvalues").reshape(-1)
  (count,) = reader.unpack("Q", "triangle count")
  triangles = np.frombuffer(reader.take(12 * count, "triangles"), "<i4").reshape(count, 3)
  if basis.shape[0] != mean.size or eigenvalues.size != basis.shape[1]:
    raise ValueError(f"{path}: inconsistent sizes: mean {mean.size}, basis {basis.shape}, "
                     f"eigenvalues {eigenvalues.size}")
  if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(basis))
          and np.all(np.isfinite(eigenvalues))):
    raise ValueError(f"{path}: non-finite values in the shape model")
  return mean, basis, eigenvalues, triangles.astype(np.int64)


def read_surrey_blendshapes(path: str | os.PathLike) -> tuple[list, np.ndarray]:
  """`expression_blendshapes_*.bin`: names and offsets `[X, 3V]` from the neutral mean."""
  path = os.fspath(path)
  with open(path, "rb") as f:
    reader = _Reader(f.read(), path)
  (count,) = reader.unpack("Q", "blendshape count")
  names, offsets = [], []
  for i in range(count):
    names.append(reader.string(f"blendshape {i} name"))
    offsets.append(reader.matrix(f"blendshape {i} ({names[-1]})").reshape(-1))
  if reader.pos != len(reader.data):
    raise ValueError(f"{path}: {len(reader.data) - reader.pos} unexpected bytes after "
                     f"{count} blendshapes")
  return names, np.stack(offsets) if offsets else np.zeros((0, 0), np.float32)


def read_surrey_landmarks(path: str | os.PathLike, num_vertices: int) -> np.ndarray:
  """`ibug_to_sfm.txt` -> `[68]` vertex indices (-1 unset).

  Reads the TOML table `[landmark_mappings]` (`landmark = vertex`, landmarks 1-based, vertices
  0-based); other tables (contours) are skipped.
  """
  path = os.fspath(path)
  landmarks = -np.ones(NUM_LANDMARKS, np.int32)
  section = None
  with open(path, encoding="utf-8") as f:
    for line_no, line in enumerate(f, start=1):
      content = line.split("#")[0].strip()
      if content.startswith("[") and content.endswith("]") and "=" not in content:
        section = content.strip("[] ")
        continue
      if not content or section != "landmark_mappings":
        continue
      match = re.fullmatch(r"(\d+)\s*=\s*(\d+)", content)
      if not match:
        raise ValueError(f"{path}: line {line_no}: expected 'landmark = vertex', got {content!r}")
      number, vertex = int(match.group(1)), int(match.group(2))
      if not 1 <= number <= NUM_LANDMARKS or vertex >= num_vertices:
        raise ValueError(f"{path}: line {line_no}: landmark {number} -> vertex {vertex} out of "
                         f"range (landmarks 1-68, vertices < {num_vertices})")
      landmarks[number - 1] = vertex
  return landmarks


def load_surrey(path: str | os.PathLike, *, blendshapes: str | os.PathLike | None = "auto",
                landmarks: str | os.PathLike | None = "auto",
                num_shape: int | None = None) -> FaceModel:
  """The Surrey Face Model (`sfm_shape_3448.bin`) with its expression blendshapes and iBUG map.

  Args:
    path: the shape model `.bin` (or the folder holding it).
    blendshapes: `expression_blendshapes_<V>.bin`; "auto" looks beside the model, None skips.
    landmarks: `ibug_to_sfm.txt`; "auto" looks beside the model, None skips.
    num_shape: keep the first K components.
  """
  path = os.fspath(path)
  if os.path.isdir(path):
    candidates = sorted(n for n in os.listdir(path) if re.fullmatch(r"sfm_shape_\d+\.bin", n))
    if not candidates:
      raise ValueError(f"{path}: no sfm_shape_<V>.bin in this folder")
    path = os.path.join(path, candidates[0])
  folder = os.path.dirname(path)
  mean, basis, eigenvalues, triangles = read_surrey_shape(path)
  num_vertices = mean.size // 3
  k = basis.shape[1] if num_shape is None else min(num_shape, basis.shape[1])
  shape_basis = _columns_to_basis(basis[:, :k].astype(np.float64),
                                  np.sqrt(np.clip(eigenvalues[:k], 0, None)))
  if blendshapes == "auto":
    auto = os.path.join(folder, f"expression_blendshapes_{num_vertices}.bin")
    blendshapes = auto if os.path.isfile(auto) else None
  expr_basis = None
  if blendshapes is not None:
    _, offsets = read_surrey_blendshapes(blendshapes)
    if offsets.shape[1] != mean.size:
      raise ValueError(f"{os.fspath(blendshapes)}: blendshapes have {offsets.shape[1] // 3} "
                       f"vertices, the model {num_vertices}")
    expr_basis = offsets.reshape(len(offsets), -1, 3)
  if landmarks == "auto":
    auto = os.path.join(folder, "ibug_to_sfm.txt")
    landmarks = auto if os.path.isfile(auto) else None
  landmark_map = read_surrey_landmarks(landmarks, num_vertices) if landmarks else None
  return _gaussian_model(path, mean.reshape(-1, 3), shape_basis, expr_basis, triangles,
                         landmark_map)


# ---------------------------------------------------------------------------------------------


def load_face_model(path: str | os.PathLike, **kwargs) -> FaceModel:
  """Loads any supported model file: our `.npz` model files, FaceScape `.npz`, Basel `.mat` /
  `.h5`, FLAME `.pkl`, Surrey `.bin` (or a folder holding one)."""
  from sfm_jax.model import load_model

  path = os.fspath(path)
  ext = os.path.splitext(path)[1].lower()
  if os.path.isdir(path) or ext == ".bin":
    return load_surrey(path, **kwargs)
  if ext == ".mat":
    return load_basel2009(path, **kwargs)
  if ext in (".h5", ".hdf5"):
    return load_basel2017(path, **kwargs)
  if ext == ".pkl":
    return load_flame(path, **kwargs)
  if ext == ".npz":
    try:
      with np.load(path, allow_pickle=False) as npz:
        is_facescape = "shape_bm_core" in npz.files
    except Exception as e:
      raise ValueError(f"{path}: not a readable .npz file ({e})") from None
    return load_facescape(path, **kwargs) if is_facescape else load_model(path, **kwargs)
  raise ValueError(f"{path}: unknown model format {ext!r} (expected .npz, .mat, .h5, .pkl, .bin)")
