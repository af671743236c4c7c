"""Stage-2 data: rendered face-world images (in memory or through the TFDS builder) or a user's
photo folder; and the image reading and landmark-framed crops every image path uses.

Every source gives training images with contiguous identity labels [0, C) (-1 unlabelled) and
held-out images of identities never seen in training, all `S x S` (folder photos are cropped
around their landmarks and resampled). Images stay uint8 in host memory; `Split.batch` makes float
batches. `world_image_chunks` and `photo_folder_entries` are what the TFDS builders in `data/`
wrap, so the builders and the in-memory sources give the same examples.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import os

import numpy as np

from sfm_jax import face_world, imaging, mirror
from sfm_jax.errors import InputError, NoFaceError
from sfm_jax.io import read_pts
from sfm_jax.io import row_store
from sfm_jax.io.mesh import read_mesh
from sfm_jax.io.scan_folder import read_scan_meta
from sfm_jax.progress import Progress, in_tenths
from sfm_jax.sources.splits import (
  CHUNK_IDENTITIES,
  chunk_seed,
  identity_in_test,
  relabel,
  split_seed,
)

SOURCES = ("world", "tfds", "folder")
TRUTH_BLOCK_ROWS = 256  # rows of 3D truth per float64 pass (posed truth, the mean face)


@dataclasses.dataclass(frozen=True)
class Split:
  images: np.ndarray            # [N, S, S, 3] uint8
  landmarks: np.ndarray         # [N, 68, 2] float32 pixels (x right, y down)
  visible: np.ndarray           # [N, 68] bool
  identity: np.ndarray          # [N] int32, -1 unlabelled
  neutral: np.ndarray | None    # [N, V, 3] ground-truth neutral shape (mm), None: no 3D truth
  posed: np.ndarray | None      # [N, V, 3] ground truth with the expression (model space, mm)
  names: list                   # [N] a name per image (file path or world index)
  neutral_weight: np.ndarray | None = None  # [N] 1 where `neutral` is known, 0 where its row
  posed_weight: np.ndarray | None = None    # is a placeholder (None: all known)

  def __len__(self) -> int:
    return len(self.images)

  @property
  def has_truth(self) -> bool:
    return self.neutral is not None and self.posed is not None

  def with_landmark_noise(self, std: float, rng: np.random.Generator) -> Split:
    """The same rows with Gaussian noise of `std` pixels added to each landmark coordinate
    (`std * rng.standard_normal`, so one generator state gives one draw whatever the std)."""
    noisy = self.landmarks + std * rng.standard_normal(self.landmarks.shape)
    return dataclasses.replace(self, landmarks=noisy.astype(self.landmarks.dtype))

  def mirrored(self, partner: np.ndarray | None, *, identity_offset: int) -> Split:
    """The mirror images of these rows (`sfm_jax.mirror`): pixels flipped left-right, landmarks
    flipped and relabelled, 3D truth reflected and re-indexed by `partner` (`[V]` vertex mirror
    map; may be None only without 3D truth), labels moved by `identity_offset` (a mirrored face
    is another person; unlabelled rows stay -1), names suffixed `:mirrored`."""
    if self.has_truth and partner is None:
      raise InputError("mirroring rows with 3D truth needs the model's vertex mirror map")
    size = self.images.shape[2]
    reflect = lambda x: None if x is None else mirror.vertices(x, partner)
    return dataclasses.replace(
        self, images=self.images[:, :, ::-1].copy(),
        landmarks=mirror.landmarks_2d(self.landmarks, size),
        visible=self.visible[:, mirror.IBUG_MIRROR],
        identity=np.where(self.identity >= 0, self.identity + identity_offset,
                          -1).astype(self.identity.dtype),
        neutral=reflect(self.neutral), posed=reflect(self.posed),
        names=[f"{name}:mirrored" for name in self.names])

  def without_truth(self) -> Split:
    """The same images with no 3D truth (2D-only rows)."""
    return dataclasses.replace(self, neutral=None, posed=None, neutral_weight=None,
                               posed_weight=None)

  def weights(self, key: str) -> np.ndarray:
    """`[N]` float32: 1 where the `key` ("neutral" or "posed") truth is known."""
    given = getattr(self, f"{key}_weight")
    return np.ones(len(self), np.float32) if given is None else given

  def batch(self, index: np.ndarray) -> dict:
    """The stage-2 training batch of rows `index` (images as float32 in [0, 1]); with the 3D
    ground truth (`neutral`, `posed`, and their `[B]` `neutral_weight`, `posed_weight`: 0 where
    a row's truth is unknown) where the split has it."""
    batch = {"images": self.images[index].astype(np.float32) / 255.0,
             "landmarks": self.landmarks[index], "visible": self.visible[index],
             "identity": self.identity[index]}
    if self.has_truth:
      batch.update(neutral=self.neutral[index], posed=self.posed[index],
                   neutral_weight=self.weights("neutral")[index],
                   posed_weight=self.weights("posed")[index])
    return batch


def join_splits(parts: list[Split]) -> Split:
  """The rows of `parts` (all with 3D truth or all without) one after another."""
  if len({p.has_truth for p in parts}) > 1:
    raise ValueError("join_splits: parts with and without 3D truth")
  join = lambda name: np.concatenate([getattr(p, name) for p in parts])
  truth = {}
  if parts[0].has_truth:
    truth = {"neutral": join("neutral"), "posed": join("posed"),
             "neutral_weight": np.concatenate([p.weights("neutral") for p in parts]),
             "posed_weight": np.concatenate([p.weights("posed") for p in parts])}
  return Split(images=join("images"), landmarks=join("landmarks"), visible=join("visible"),
               identity=join("identity"), names=[n for p in parts for n in p.names],
               **({"neutral": None, "posed": None} | truth))


def concat_batches(batches: list[dict], num_vertices: int) -> dict:
  """Row-wise concatenation of `Split.batch` results; where some parts carry 3D truth and others
  do not, the others get zero placeholders with weight 0."""
  with_truth = any("neutral" in b for b in batches)
  filled = []
  for b in batches:
    if with_truth and "neutral" not in b:
      n = len(b["images"])
      zeros = np.zeros((n, num_vertices, 3), np.float32)
      b = {**b, "neutral": zeros, "posed": zeros, "neutral_weight": np.zeros(n, np.float32),
           "posed_weight": np.zeros(n, np.float32)}
    filled.append(b)
  return {key: np.concatenate([b[key] for b in filled]) for key in filled[0]}


@dataclasses.dataclass(frozen=True)
class ImageData:
  train: Split
  test: Split                   # identities disjoint from training; for world data `identity`
                                # holds the true identity of every image (none unlabelled)
  image_size: int
  description: str
  scans: Split | None = None    # rendered scans (`rendered_scans.scan_split`), labels offset
                                # past the photos'; mixed into every training batch
  scan_fraction: float = 0.0    # share of each training batch taken from `scans`

  @property
  def num_classes(self) -> int:
    labels = [self.train.identity] + ([self.scans.identity] if self.scans is not None else [])
    return int(max(x.max() for x in labels)) + 1

  def scan_rows(self, batch_size: int) -> int:
    """How many rows of a global batch of `batch_size` come from the rendered scans."""
    return 0 if self.scans is None else int(round(self.scan_fraction * batch_size))

  def training_batch(self, step: int, rows, *, batch_size: int, seed: int) -> dict:
    """Rows `rows` (this process's slice) of the global training batch of `step`: its first
    `scan_rows` rows are rendered scans, the rest training images, each in the seeded order of
    `splits.batch_indices` (exact resume)."""
    from sfm_jax.sources.splits import batch_indices
    scan_rows = self.scan_rows(batch_size)
    photos = batch_indices(step, num_examples=len(self.train), batch_size=batch_size - scan_rows,
                           seed=seed)
    if scan_rows == 0:
      return self.train.batch(photos[rows])
    scans = batch_indices(step, num_examples=len(self.scans), batch_size=scan_rows,
                          seed=seed + 7919)
    rows = np.arange(batch_size)[rows]
    return concat_batches([self.scans.batch(scans[rows[rows < scan_rows]]),
                           self.train.batch(photos[rows[rows >= scan_rows] - scan_rows])],
                          self.scans.posed.shape[1])

  def training_neutral_mean(self, *, progress_label: str | None = None) -> np.ndarray | None:
    """`[V, 3]` the mean of the known neutral truth over training images and rendered scans
    (the `mean face` reference), None without any. With `progress_label`, a progress line per
    tenth of the rows read (at paper size the pass reads 16000 neutrals, about a minute)."""
    parts = [(s.neutral, s.weights("neutral")) for s in (self.train, self.scans)
             if s is not None and s.has_truth]
    total = sum(w.sum() for _, w in parts) if parts else 0
    if not total:
      return None
    block = TRUTH_BLOCK_ROWS  # float64 copies of a block of rows, not of the whole split
    blocks = [(x, w, i) for x, w in parts for i in range(0, len(x), block)]
    if progress_label is not None:
      counter = Progress(progress_label, total=sum(len(x) for x, _ in parts), unit="rows")
      blocks = in_tenths(blocks, counter, lambda b: min(block, len(b[0]) - b[2]))
    return sum(np.einsum("n,nvc->vc", w[i:i + block], x[i:i + block].astype(np.float64))
               for x, w, i in blocks) / total


def read_image(path: str) -> np.ndarray:
  """`[H, W, 3]` uint8 RGB of a PNG/JPEG/PPM (Pillow; grey and RGBA converted, EXIF orientation
  applied); `InputError` naming the file if it cannot be read."""
  from PIL import Image, ImageOps, UnidentifiedImageError
  try:
    with open(path, "rb") as f:
      data = f.read()
    with Image.open(io.BytesIO(data)) as image:
      return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
  except (OSError, UnidentifiedImageError, ValueError) as e:
    raise InputError(f"{path}: unreadable image ({e})") from None


PHOTO_EXTENSIONS = (".png", ".jpg", ".jpeg", ".ppm", ".bmp", ".tif", ".tiff", ".webp")


def list_files(spec: str, extensions: tuple = PHOTO_EXTENSIONS) -> list[str]:
  """The files `spec` names: a file, a folder (its files with one of `extensions`, sorted) or a
  glob; `InputError` when it names none."""
  import glob
  if os.path.isdir(spec):
    paths = sorted(p for p in glob.glob(os.path.join(spec, "*"))
                   if os.path.splitext(p)[1].lower() in extensions)
  elif any(c in spec for c in "*?["):
    paths = sorted(glob.glob(spec))
  else:
    paths = [spec] if os.path.exists(spec) else []
  if not paths:
    raise InputError(f"{spec}: no {'/'.join(extensions)} files found")
  return paths


def read_face_pts(pts_path: str) -> np.ndarray:
  """`[68, 2]` landmarks of a `.pts`; `InputError` naming the file for any other count."""
  points = read_pts(pts_path)
  if points.shape != (68, 2):
    raise InputError(f"{pts_path}: expected 68 points, got {len(points)}")
  return points


def face_suffixes(count: int) -> list[str]:
  """Output-name suffixes of a photo's faces, largest first: "" for a lone face, else
  "_face1", "_face2", ... (the names `experiments.detect` gives its `.pts`)."""
  return [""] if count == 1 else [f"_face{i + 1}" for i in range(count)]


def faces_in_photo(path: str, image: np.ndarray, *, largest_face: bool = False,
                   detect: bool = True) -> list[tuple[str, np.ndarray]]:
  """The faces of one photo as `[(suffix, [68, 2] landmarks)]`, largest first.

  The `.pts` beside the photo (`<stem>.pts`) wins: one face, suffix "". Else `<stem>_face1.pts`,
  `<stem>_face2.pts`, ... (what `experiments.detect` writes for several faces), suffixes
  "_face1", ... Else, with `detect`, dlib finds them (`sfm_jax.landmarks.detect`): one face gets
  suffix "", several "_face1", ... `largest_face` keeps only the first. An empty list means no
  face was found; a bad `.pts` raises `InputError` naming it.
  """
  stem = os.path.splitext(path)[0]
  if os.path.isfile(stem + ".pts"):
    return [("", read_face_pts(stem + ".pts"))]
  numbered = []
  while os.path.isfile(f"{stem}_face{len(numbered) + 1}.pts"):
    suffix = f"_face{len(numbered) + 1}"
    numbered.append((suffix, read_face_pts(stem + suffix + ".pts")))
  if not numbered and detect:
    from sfm_jax import landmarks as landmark_detection
    found = landmark_detection.detect(image)
    numbered = list(zip(face_suffixes(len(found)), found))
  if largest_face and numbered:
    numbered = [("", numbered[0][1])]
  return numbered


def load_annotated(folder: str, relative: str, *, detect: bool = True
                   ) -> tuple[np.ndarray, np.ndarray]:
  """(image, `[68, 2]` landmarks) of one photo-folder entry: the `.pts` beside the photo, else
  (with `detect`) the largest face dlib finds (remembered per file for this process).
  `InputError` naming the bad file; `NoFaceError` when detection finds no face."""
  path = os.path.join(folder, relative)
  if not os.path.isfile(path):
    raise InputError(f"{path}: missing image")
  pts_path = os.path.splitext(path)[0] + ".pts"
  image = read_image(path)
  if os.path.isfile(pts_path) or not detect:
    if not os.path.isfile(pts_path):
      raise InputError(f"{pts_path}: missing landmark file for {relative}")
    return image, read_face_pts(pts_path)
  faces = _detected(os.path.abspath(path), os.path.getmtime(path), image)
  if len(faces) == 0:
    raise NoFaceError(f"{path}: no face found (no .pts beside it, and dlib found none)")
  return image, faces[0]


_DETECTIONS: dict = {}


def _detected(path: str, mtime: float, image: np.ndarray) -> np.ndarray:
  """`landmarks.detect(image)`, computed once per (file, modification time) in this process
  (photo folders are checked, then read)."""
  key = (path, mtime)
  if key not in _DETECTIONS:
    from sfm_jax import landmarks as landmark_detection
    _DETECTIONS[key] = landmark_detection.detect(image)
  return _DETECTIONS[key]


@dataclasses.dataclass(frozen=True)
class PhotoFolder:
  """A checked photo folder. `splits`: split name -> `[(row, relative path, identity name)]`
  (only non-empty splits); `labels`: identity name -> label; `skipped`: one message per photo
  left out (`skip_bad`); `meshes`: relative path -> {"mesh": OBJ/PLY of the face as
  photographed, "neutral": its person's neutral face} for the photos whose `meta.csv` row names
  them (optional columns `mesh`, `neutral`; paths relative to the folder, in the model's
  topology)."""
  splits: dict
  labels: dict
  skipped: list
  meshes: dict = dataclasses.field(default_factory=dict)


MESH_COLUMNS = ("mesh", "neutral")


def photo_folder_entries(folder: str, *, test_fraction: float, split_seed: int = 0,
                         skip_bad: bool = False, allow_outside: bool = False) -> PhotoFolder:
  """Reads `meta.csv`, checks every photo and its `.pts` (a bad one raises `InputError` naming
  it, or with `skip_bad` is skipped and counted; a photo without `.pts` gets dlib's landmarks
  of its largest face, or when none is found is always skipped and counted), and splits by
  identity (`splits.identity_in_test`; unlabelled photos train)."""
  folder = os.fspath(folder)
  paths, identities, columns = read_scan_meta(folder, allow_outside=allow_outside,
                                              optional=MESH_COLUMNS, path_columns=MESH_COLUMNS)
  meshes = {}
  for row, relative in enumerate(paths):
    given = {key: columns[key][row] for key in columns if columns[key][row]}
    for key, mesh in given.items():
      if not os.path.isfile(os.path.join(folder, mesh)):
        raise InputError(f"{os.path.join(folder, 'meta.csv')}: line {row + 2}: {key} mesh "
                         f"{mesh!r} does not exist")
    if given:
      meshes[relative] = given
  names = sorted({n for n in identities if n})
  entries, skipped = [], []
  for index, (relative, name) in enumerate(zip(paths, identities)):
    try:
      load_annotated(folder, relative)  # validate everything before using anything
    except ValueError as e:
      if not skip_bad and not isinstance(e, NoFaceError):
        raise
      skipped.append(str(e))
      logging.warning("photo folder: skipping %s", e)
      continue
    entries.append((index, relative, name))
  if skipped:
    logging.warning("photo folder: skipped %d of %d images", len(skipped), len(paths))
  test = [e for e in entries if identity_in_test(e[2], test_fraction, split_seed)]
  train = [e for e in entries if e not in test]
  splits = {name: part for name, part in (("train", train), ("test", test)) if part}
  return PhotoFolder(splits=splits, labels={name: i for i, name in enumerate(names)},
                     skipped=skipped, meshes=meshes)


def world_image_chunks(world: face_world.FaceWorld, num_identities: int,
                       images_per_identity: int, seed: int, *, image_size: int,
                       unlabelled_fraction: float, occluder_probability: float,
                       identity_offset: int = 0):
  """Yields `(start, face_world.Images)` for identities `[start, start + CHUNK_IDENTITIES)` in
  turn, each chunk seeded by `chunk_seed(seed, start)`."""
  for start in range(0, num_identities, CHUNK_IDENTITIES):
    yield start, face_world.make_images(
        min(CHUNK_IDENTITIES, num_identities - start), images_per_identity,
        chunk_seed(seed, start), world=world, image_size=image_size,
        unlabelled_fraction=unlabelled_fraction, occluder_probability=occluder_probability,
        identity_offset=identity_offset + start)


def to_uint8(image: np.ndarray) -> np.ndarray:
  """Float RGB in [0, 1] -> uint8 (rounded)."""
  return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def _posed(template, neutral: np.ndarray, expression: np.ndarray, *,
           rows_per_block: int | None = None) -> np.ndarray:
  """Face-world ground truth with the expression applied (model space, float32): `[N, V, 3]`
  from `neutral` `[N, V, 3]` and `expression` `[N, X]`, computed in float64 a block of rows at a
  time, so the float64 temporaries stay a block's size whatever N."""
  fields = face_world.expression_fields(template)
  rows_per_block = rows_per_block or TRUTH_BLOCK_ROWS
  posed = np.empty(neutral.shape, np.float32)
  for start in range(0, len(neutral), rows_per_block):
    block = slice(start, start + rows_per_block)
    posed[block] = face_world.apply_expressions(template, neutral[block].astype(np.float64),
                                                expression[block].astype(np.float64), fields)
  return posed


# The face world's per-image arrays and their row stores with `data.stream` (`_world_split`):
# the three large ones stay on disk and are read a batch at a time, the rest are read whole.
STORE_FILES = {"images": ("u8", np.uint8), "neutral": ("f32", np.float32),
               "posed": ("f32", np.float32), "landmarks": ("f32", np.float32),
               "visible": ("bool", np.bool_), "identity": ("i32", np.int32)}
STORED_ON_DISK = ("images", "neutral", "posed")
STORE_FORMAT = 2  # bump when the rows a face-world store holds change for the same settings


def world_store_key(config, count: int, seed: int, offset: int, *, test: bool) -> str:
  """The data key of a streamed face-world split (`io.row_store`): the settings its images
  depend on, with the split's size, seed and first identity."""
  settings = {"resolution": config.resolution, "image_size": config.image_size,
              "images_per_identity": config.images_per_identity,
              "unlabelled_fraction": 0.0 if test else config.unlabelled_fraction,
              "occluder_probability": config.occluder_probability}
  text = json.dumps([settings, count, seed, offset, test, STORE_FORMAT], sort_keys=True)
  return hashlib.sha256(text.encode()).hexdigest()


def _world_chunks(world, config, count: int, seed: int, offset: int, *, test: bool):
  """Yields each chunk of `world_image_chunks` as its rows of the split's arrays: uint8
  `images`, `landmarks`, `visible`, `identity` (before relabelling), `neutral`, float32 `posed`."""
  for _, chunk in world_image_chunks(
      world, count, config.images_per_identity, seed, image_size=config.image_size,
      unlabelled_fraction=0.0 if test else config.unlabelled_fraction,
      occluder_probability=config.occluder_probability, identity_offset=offset):
    yield {"images": to_uint8(chunk.images), "landmarks": chunk.landmarks,
           "visible": chunk.visible,
           "identity": chunk.true_identity if test else chunk.identity,
           "neutral": chunk.neutral,
           "posed": _posed(world.template, chunk.neutral, chunk.expression)}


def _world_split(config, count: int, seed: int, offset: int, *, test: bool,
                 store_dir: str | None = None, role: str = "") -> Split:
  """`count` face-world identities x `config.images_per_identity` images.

  In memory (`store_dir` None) the large arrays (uint8 images, neutral and posed truth) are
  filled chunk by chunk into their final buffers, so the host holds them plus one chunk of
  `world_image_chunks`, never a second copy. With `store_dir` (`data.stream`) every array goes
  to the row store `<store_dir>/<role>_<array>.<type>` instead, a chunk at a time, and the
  split's `images`, `neutral` and `posed` are those stores (`io.row_store.RowStore`: read a
  batch at a time); stores that already hold this split (`world_store_key`) are reused, and
  the rows are the in-memory ones, bit for bit.
  """
  world = face_world.FaceWorld(resolution=config.resolution)
  total = count * config.images_per_identity
  names = [f"world_{offset * config.images_per_identity + i:05d}" for i in range(total)]
  chunks = _world_chunks(world, config, count, seed, offset, test=test)
  if store_dir:
    arrays = _world_stores(chunks, store_dir, role, total,
                           world_store_key(config, count, seed, offset, test=test))
  else:
    size, vertices = config.image_size, world.template.vertices.shape
    arrays = {"images": np.empty((total, size, size, 3), np.uint8),
              "neutral": np.empty((total,) + vertices, np.float32),
              "posed": np.empty((total,) + vertices, np.float32)}
    small = {"landmarks": [], "visible": [], "identity": []}
    row = 0
    for chunk in chunks:
      rows = slice(row, row + len(chunk["images"]))
      for field in STORED_ON_DISK:
        arrays[field][rows] = chunk[field]
      for field, parts in small.items():
        parts.append(chunk[field])
      row = rows.stop
    arrays |= {field: np.concatenate(parts) for field, parts in small.items()}
  identity = arrays["identity"] if test else relabel(arrays["identity"])
  return Split(images=arrays["images"], landmarks=arrays["landmarks"],
               visible=arrays["visible"], identity=identity.astype(np.int32),
               neutral=arrays["neutral"], posed=arrays["posed"], names=names)


def _world_stores(chunks, store_dir: str, role: str, total: int, key: str) -> dict:
  """The split's arrays from its row stores in `store_dir` (`STORE_FILES`): reused when every
  one holds data `key`, else written from `chunks` (progress lines), then opened; the small
  arrays are read whole, `STORED_ON_DISK` stay stores. Labels are stored as drawn (training
  labels are relabelled on load, like the in-memory ones)."""
  paths = {field: os.path.join(store_dir, f"{role}_{field}.{suffix}")
           for field, (suffix, _) in STORE_FILES.items()}
  stores = {field: row_store.open_row_store(path, key) for field, path in paths.items()}
  if any(store is None for store in stores.values()):
    progress = Progress(f"writing {role} images and 3D truth to {store_dir}:", total=total,
                        unit="images")
    with contextlib.ExitStack() as stack:
      writers = {field: stack.enter_context(row_store.RowStoreWriter(
          path, key=key, dtype=STORE_FILES[field][1])) for field, path in paths.items()}
      for chunk in in_tenths(chunks, progress, lambda chunk: len(chunk["images"])):
        for field, writer in writers.items():
          writer.append(chunk[field])
    stores = {field: writer.store for field, writer in writers.items()}
  return {field: store if field in STORED_ON_DISK else np.asarray(store)
          for field, store in stores.items()}


def _tfds_split(config, split: str, *, test: bool) -> Split:
  from sfm_jax.sources import tfds
  from sfm_jax.sources.scans import _builder
  builder = tfds.build(_builder("synthetic_face_images", "SyntheticFaceImages"),
                       data_dir=config.tfds_data_dir, config=config.tfds_config)
  examples = tfds.load_all(builder.as_data_source(split))
  size = examples["image"].shape[1]
  if size != config.image_size:
    raise InputError(f"tfds config {config.tfds_config!r} has {size} px images but "
                     f"data.image_size is {config.image_size}")
  return Split(images=examples["image"], landmarks=examples["landmarks"],
               visible=examples["visible"],
               identity=(examples["true_identity"] if test
                         else relabel(examples["identity"])).astype(np.int32),
               neutral=examples["neutral"],
               posed=_posed(face_world.face_template(config.resolution), examples["neutral"],
                            examples["expression"]),
               names=[f"{split}_{i:05d}" for i in examples["image_index"]])


def _folder_truth(config, folder: PhotoFolder, relatives: list) -> dict:
  """The photo folder's 3D truth of `relatives` as Split fields: {} when no photo names a mesh;
  else `neutral`/`posed` `[N, V, 3]` (zeros where unknown) with their `[N]` weights."""
  given = [folder.meshes.get(relative, {}) for relative in relatives]
  if not any(given):
    return {}
  arrays = {}
  for key, field in (("neutral", "neutral"), ("mesh", "posed")):
    rows = [read_mesh(os.path.join(config.image_dir, g[key])).vertices if key in g else None
            for g in given]
    shapes = {r.shape for r in rows if r is not None}
    if len(shapes) > 1:
      raise InputError(f"{config.image_dir}: the {key} meshes of meta.csv differ in vertex count "
                       f"({sorted(s[0] for s in shapes)}); they must share the model's topology")
    shape = shapes.pop() if shapes else None
    arrays[field] = rows, shape
  shape = arrays["neutral"][1] or arrays["posed"][1]
  out = {}
  for field, (rows, _) in arrays.items():
    out[field] = np.stack([np.zeros(shape, np.float32) if r is None else r.astype(np.float32)
                           for r in rows])
    out[f"{field}_weight"] = np.array([r is not None for r in rows], np.float32)
  return out


def _folder_split(config, folder: PhotoFolder, split: str, *, test: bool) -> Split:
  images, landmarks, identity, names = [], [], [], []
  for _, relative, name in folder.splits[split]:
    image, points = load_annotated(config.image_dir, relative)
    box = imaging.landmark_box(points, margin=config.crop_margin)
    images.append(to_uint8(imaging.crop(image, box, config.image_size)))
    landmarks.append(box.to_crop(points, config.image_size).astype(np.float32))
    identity.append(folder.labels[name] if name else -1)
    names.append(relative)
  identity = np.asarray(identity, np.int32)
  truth = {"neutral": None, "posed": None, **_folder_truth(config, folder, names)}
  return Split(images=np.stack(images), landmarks=np.stack(landmarks),
               visible=np.ones((len(images), 68), bool),
               identity=identity if test else relabel(identity), names=names, **truth)


def _folder(config) -> ImageData:
  if not config.image_dir:
    raise InputError("data.source='folder' needs --config.data.image_dir=DIR")
  if not os.path.isfile(os.path.join(config.image_dir, "meta.csv")):
    raise InputError(f"{os.path.join(config.image_dir, 'meta.csv')}: missing; an image folder "
                     "needs meta.csv (header `path,identity`) and a .pts beside each image")
  # Read in place every run: never stale after the photos change, nothing written into the
  # user's folder.
  folder = photo_folder_entries(config.image_dir, test_fraction=config.test_fraction,
                                skip_bad=config.skip_bad,
                                allow_outside=config.get("allow_outside_paths", False))
  if "train" not in folder.splits or "test" not in folder.splits:
    raise InputError(f"{config.image_dir}: needs images of several identities so that some can "
                     f"be held out (got splits {sorted(folder.splits)} at test_fraction "
                     f"{config.test_fraction})")
  train = _folder_split(config, folder, "train", test=False)
  test = _folder_split(config, folder, "test", test=True)
  skipped = f", {len(folder.skipped)} skipped" if folder.skipped else ""
  photo_meshes = config.get("photo_meshes", "all")
  if photo_meshes not in ("all", "held_out"):
    raise InputError(f"data.photo_meshes must be 'all' or 'held_out', got {photo_meshes!r}")
  if photo_meshes == "held_out":  # the training photos stay 2D-only
    train = train.without_truth()
  truth = ""
  if test.has_truth and not np.all(test.weights("neutral") == 1):
    # 3D columns average over every held-out photo: they need every neutral mesh.
    logging.warning("photo folder: only %d of %d held-out photos name a neutral mesh; the "
                    "evaluation reports no 3D error", int(test.weights("neutral").sum()),
                    len(test))
    test = test.without_truth()
  if train.has_truth or test.has_truth:
    truth = (f"; 3D truth for {int(train.weights('posed').sum())} / "
             f"{int(train.weights('neutral').sum())} training photos (mesh / neutral)"
             if train.has_truth else "") + ("; held-out neutral meshes"
                                             if test.has_truth else "")
  return ImageData(train=train, test=test, image_size=config.image_size,
                   description=f"photo folder {config.image_dir} ({len(train)} train / "
                               f"{len(test)} held-out images{skipped}{truth})")


PRETRAIN_SOURCES = ("auto", "world", "scans")


def pretrain_source(config) -> str:
  """"world" or "scans": what identity pretraining renders (`config.pretrain.source`; "auto" is
  the scans when `config.data.scan_dir` is set, else the face world)."""
  source = config.pretrain.source
  if source not in PRETRAIN_SOURCES:
    raise InputError(f"pretrain.source must be one of {PRETRAIN_SOURCES}, got {source!r}")
  if source == "auto":
    return "scans" if config.data.get("scan_dir") else "world"
  if source == "scans" and not config.data.get("scan_dir"):
    raise InputError("pretrain.source='scans' needs data.scan_dir")
  return source


def pretrain_split(config, *, seed: int, model=None, store_dir: str | None = None) -> Split:
  """Rendered images for identity pretraining, every image labelled, at the stage's image size
  (`pretrain_source`):

  - world: `config.pretrain.identities` fresh face-world identities (their own seed, so none is
    a training or held-out person) x `config.pretrain.images_per_identity`;
  - scans: the people of `config.data.scan_dir` that stage 2 trains on (`rendered_scans.
    scan_split`: stage 1's held-out identities left out), `config.pretrain.scan_views` renders
    per scan under their own seed's pose, light and albedo; needs `model` (the stage-1 model).

  With `data.stream`, face-world pretraining images go to row stores in `store_dir` (`load`).
  """
  data = config.data.copy_and_resolve_references()
  if pretrain_source(config) == "scans":
    from sfm_jax.sources import rendered_scans
    if model is None:
      raise InputError("pretraining on data.scan_dir needs the stage-1 model")
    data.scan_views = config.pretrain.scan_views
    return rendered_scans.scan_split(data, model, seed=split_seed(seed, "pretrain"))
  data.images_per_identity, data.unlabelled_fraction = config.pretrain.images_per_identity, 0.0
  return _world_split(data, config.pretrain.identities, split_seed(seed, "pretrain"), 0,
                      test=False, store_dir=_store_dir(data, store_dir), role="pretrain")


def _store_dir(config, store_dir: str | None) -> str | None:
  """The folder of the face world's row stores with `config.stream` (checked), else None."""
  if not config.get("stream", False):
    return None
  if config.source != "world":
    raise InputError(f"data.stream streams the rendered face world (data.source='world'), not "
                     f"data.source={config.source!r}")
  if config.get("mirror"):
    raise InputError("data.mirror holds the mirror image of every training image in memory; "
                     "it does not stream (data.stream=False, or data.mirror=False)")
  if not store_dir:
    raise InputError("data.stream=True needs a folder for the image stores (the stage-2 "
                     "workdir)")
  return store_dir


def load(config, *, seed: int, model=None, store_dir: str | None = None) -> ImageData:
  """The config's `data` section -> train and held-out images; with `config.scan_dir`, plus the
  rendered scans of that folder (in the topology of `model`, the stage-1 model) mixed into every
  training batch at `config.scan_fraction`.

  With `config.stream` (face world only) the images and their 3D truth are written once to row
  stores in `store_dir` and read a batch at a time (`_world_split`); stores of the same data are
  reused.
  """
  if config.source not in SOURCES:
    raise InputError(f"data.source must be one of {SOURCES}, got {config.source!r}")
  store_dir = _store_dir(config, store_dir)
  data = (_folder(config) if config.source == "folder"
          else _rendered(config, seed, store_dir))
  if config.get("scan_dir"):
    data = _with_scans(config, data, seed=seed, model=model)
  return _with_mirror_images(config, data, model) if config.get("mirror") else data


def _with_scans(config, data: ImageData, *, seed: int, model) -> ImageData:
  from sfm_jax.sources import rendered_scans
  if model is None:
    raise InputError("data.scan_dir needs the stage-1 model (its topology and landmarks)")
  if not 0 < config.scan_fraction < 1:
    raise InputError(f"data.scan_fraction must be in (0, 1), got {config.scan_fraction}")
  scans = rendered_scans.scan_split(config, model, seed=split_seed(seed, "scans"))
  scans = dataclasses.replace(scans, identity=np.where(
      scans.identity >= 0, scans.identity + data.num_classes, -1).astype(np.int32))
  return dataclasses.replace(
      data, scans=scans, scan_fraction=config.scan_fraction,
      description=(f"{data.description}; {config.scan_fraction:.0%} of every training batch "
                   f"from {len(scans)} renders of scans of "
                   f"{len(np.unique(scans.identity[scans.identity >= 0]))} identities from "
                   f"{config.scan_dir} ({int(scans.weights('neutral').sum())} with a known "
                   "neutral)"))


def mirror_map(config, model, *, scans: bool = False) -> np.ndarray:
  """`[V]` the vertex mirror map for mirroring `config`'s images (`sfm_jax.mirror`): the
  face-world template's for world and tfds data, else `mirror.vertex_map` of `model`'s mean.

  `InputError` where rendered landmarks, the face world's and (`scans`) the scan renders', would
  not mirror exactly onto the model's (`mirror.landmark_mismatch`): the face world's even grids,
  whose midline lies between two vertex columns. Photo annotations mark the face itself, so
  their flip is exact whatever the model. The scan renders' jaw points, blended by arc length
  along the jaw lines, mirror only nearly; how nearly is logged.
  """
  if config.source in ("world", "tfds"):
    template = face_world.face_template(config.resolution)
    partner, mesh = template.mirror, template.vertices
    mirror.check_landmarks_mirror(template.landmarks, partner, mesh, hint=(
        f"; the face world's {config.resolution} x {config.resolution} grid has its midline "
        "between two vertex columns: use an odd data.resolution (and a stage-1 model trained "
        "on it)"))
  elif model is None:
    raise InputError("mirroring this data needs the stage-1 model (its topology)")
  else:
    mesh = np.asarray(model.mean, np.float64).reshape(-1, 3)
    partner = mirror.model_vertex_map(model, check_landmarks=scans)
  if scans:
    from sfm_jax.sources import rendered_scans
    index, weights = rendered_scans.landmark_blend(model)
    blend = mirror.landmark_mismatch(index, partner, mesh, weights)
    if np.nanmax(blend, initial=0.0) > 1e-6:
      logging.warning("mirroring: flipped scan renders' landmarks %s lie up to %.3g mm from "
                      "the model's on the mirrored face", np.flatnonzero(blend > 1e-6).tolist(),
                      np.nanmax(blend))
  return partner


def _with_mirror_images(config, data: ImageData, model) -> ImageData:
  """`data` plus the mirror image of every training image and scan render (`Split.mirrored`,
  vertex map `mirror_map`), as people of their own."""
  partner = None  # (face-world and TFDS images always carry 3D truth)
  if data.train.has_truth or data.scans is not None:
    partner = mirror_map(config, model, scans=data.scans is not None)
  offset = data.num_classes
  flip = lambda split: join_splits([split, split.mirrored(
      partner if split.has_truth else None, identity_offset=offset)])
  scans = None if data.scans is None else flip(data.scans)
  return dataclasses.replace(
      data, train=flip(data.train), scans=scans,
      description=f"{data.description}; with the mirror image of every training image"
                  f"{' and scan render' if scans is not None else ''} (people of their own)")


def _rendered(config, seed: int, store_dir: str | None = None) -> ImageData:
  """Face-world images, in memory (or in row stores in `store_dir`) or through the TFDS
  builder."""
  if config.source == "tfds":
    train, test = _tfds_split(config, "train", test=False), _tfds_split(config, "test", test=True)
    what = f"TFDS synthetic_face_images/{config.tfds_config}"
  else:
    train = _world_split(config, config.train_identities, split_seed(seed, "train"), 0,
                         test=False, store_dir=store_dir, role="train")
    test = _world_split(config, config.test_identities, split_seed(seed, "test"),
                        config.train_identities, test=True, store_dir=store_dir, role="test")
    what = "rendered face world"
  description = (f"{what}: {config.image_size} px, {len(train)} training images "
                 f"({np.sum(train.identity < 0)} unlabelled), {len(test)} held-out images of "
                 f"{len(np.unique(test.identity))} unseen identities")
  return ImageData(train=train, test=test, image_size=config.image_size, description=description)
