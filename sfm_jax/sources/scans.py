"""Stage-1 data: the face world (in memory or through its TFDS builder), scans sampled from a
published model (the Surrey model, or any Basel / FLAME / FaceScape / Surrey file), or a scan
folder. `load(config.data, seed=...)` picks the source a config names.

Every source gives training scans with contiguous identity labels [0, C) and held-out scans of
identities never seen in training (design section 6), plus the topology. `world_scan_chunks` is
the generator both the in-memory face world and the `synthetic_face_scans` builder draw from, so
one seed gives the same scans either way.

Every source produces its scans in chunks (`world_scan_chunks`, `sample_people_chunks`,
scan-folder meshes, TFDS records), joined in memory, or with `data.stream` (for sets larger than
host memory) written once to a scan store per split (`io.scan_store`) in the `store_dir` given
to `load`, so `ScanData.train_scans` and `test_scans` are `ScanStore`s that training and
evaluation read a batch at a time. The same seed and config give the same rows as in memory, bit
for bit; a store of the same data (same config, seed and, for folders, the same files) is reused
instead of rebuilt.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import numpy as np

from sfm_jax import face_world
from sfm_jax.errors import InputError
from sfm_jax.io import scan_folder, scan_store
from sfm_jax.io.models import load_face_model
from sfm_jax.progress import Progress, in_tenths
from sfm_jax.sources.splits import (
  CHUNK_IDENTITIES,
  chunk_seed,
  identity_in_test,
  relabel,
  split_seed,
)

SOURCES = ("world", "tfds", "surrey", "model", "folder")


STORE_FILES = {"train": "train_scans.f32", "test": "test_scans.f32"}


@dataclasses.dataclass(frozen=True)
class ScanData:
  train_scans: np.ndarray      # [N, V, 3] float32 (with data.stream an io.scan_store.ScanStore)
  train_identity: np.ndarray   # [N] int32 in [0, C) (or -1)
  test_scans: np.ndarray       # [M, V, 3] (with data.stream a ScanStore too)
  test_identity: np.ndarray    # [M] int32 (identities disjoint from training)
  triangles: np.ndarray        # [T, 3]
  landmarks: np.ndarray        # [68] (-1 undefined)
  mirror: np.ndarray | None    # [V] or None
  description: str
  contour: np.ndarray | None = None  # [2, C, W] jaw lines (`FaceModel.contour`) or None

  @property
  def num_classes(self) -> int:
    return int(self.train_identity.max()) + 1


def world_scan_chunks(world: face_world.FaceWorld, num_identities: int,
                      scans_per_identity: int, seed: int, *, noise_mm: float,
                      identity_offset: int = 0):
  """Yields `face_world.Scans` for identities `[start, start + CHUNK_IDENTITIES)` in turn, each
  chunk seeded by `chunk_seed(seed, start)`, labels offset by `identity_offset`."""
  for start in range(0, num_identities, CHUNK_IDENTITIES):
    yield face_world.make_scans(min(CHUNK_IDENTITIES, num_identities - start),
                                scans_per_identity, chunk_seed(seed, start), world=world,
                                noise_mm=noise_mm, identity_offset=identity_offset + start)


def _split_scans(chunks, store, total: int) -> tuple:
  """(scans `[N, V, 3]`, labels `[N]`) from `chunks`, a lazy iterable of (scans, labels) pairs
  of `total` scans in all: joined in memory when `store` is None, else the scan store
  `store = (path, key)`, reused when it already holds these data (the chunks are then never
  generated), or written with progress lines."""
  if store is None:
    scans, labels = zip(*chunks)
    return np.concatenate(scans), np.concatenate(labels)
  path, key = store
  opened = scan_store.open_scan_store(path, key)
  if opened is None:
    progress = Progress(f"writing the scan store {path}:", total=total, unit="scans")
    opened = scan_store.write_scan_store(
        path, in_tenths(chunks, progress, lambda chunk: len(chunk[0])), key=key)
  return opened, opened.identity


def _stores(config, seed: int, store_dir: str | None, *extra) -> dict:
  """{split: (store path, key of that split's data)} with `data.stream`, else {split: None}.
  The key hashes the data config, the seed, the split and `extra` (e.g. a folder's files)."""
  if not config.get("stream", False):
    return dict.fromkeys(STORE_FILES)
  if not store_dir:
    raise InputError("data.stream=True needs a folder for the scan store (the stage-1 workdir)")
  settings = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  stores = {}
  for split, name in STORE_FILES.items():
    text = json.dumps([settings, seed, split, list(extra), 1], sort_keys=True, default=str)
    stores[split] = os.path.join(store_dir, name), hashlib.sha256(text.encode()).hexdigest()
  return stores


def _generated_splits(config, seed: int, stores, chunks) -> dict:
  """{split: (scans, labels)} of a generated source: `chunks(count, data_seed, label_offset)`
  gives a split's (scans, labels) chunks; test labels follow the training ones."""
  return {split: _split_scans(chunks(count, split_seed(seed, split), offset), stores[split],
                              count * config.scans_per_identity)
          for split, count, offset in (
              ("train", config.train_identities, 0),
              ("test", config.test_identities, config.train_identities))}


def _world(config, seed: int, stores) -> ScanData:
  world = face_world.FaceWorld(resolution=config.resolution)
  splits = _generated_splits(config, seed, stores, lambda count, data_seed, offset: (
      (c.vertices, c.identity) for c in world_scan_chunks(
          world, count, config.scans_per_identity, data_seed, noise_mm=config.noise_mm,
          identity_offset=offset)))
  template = world.template
  return ScanData(*splits["train"], *splits["test"], template.triangles,
                  template.landmarks, template.mirror,
                  f"face world {config.resolution}x{config.resolution} grid "
                  f"({world.template.vertices.shape[0]} vertices), {config.train_identities} + "
                  f"{config.test_identities} identities x {config.scans_per_identity} scans, "
                  f"noise {config.noise_mm} mm")


def _tfds(config, seed: int, store_dir: str | None) -> ScanData:
  from sfm_jax.sources import tfds
  builder_cls = _builder("synthetic_face_scans", "SyntheticFaceScans")
  builder = tfds.build(builder_cls, data_dir=config.tfds_data_dir, config=config.tfds_config)
  sources = {split: builder.as_data_source(split) for split in STORE_FILES}
  stores = _stores(config, seed, store_dir, {k: len(v) for k, v in sources.items()})
  splits = {split: _split_scans(
      ((chunk["vertices"], chunk["identity"]) for chunk in tfds.iter_chunks(source)),
      stores[split], len(source)) for split, source in sources.items()}
  (train_scans, train_identity), (test_scans, test_identity) = splits["train"], splits["test"]
  meta = builder.info.metadata
  return ScanData(train_scans, relabel(train_identity), test_scans,
                  test_identity.astype(np.int32), np.asarray(meta["triangles"], np.int32),
                  np.asarray(meta["landmarks"], np.int32), np.asarray(meta["mirror"], np.int32),
                  f"TFDS synthetic_face_scans/{config.tfds_config} in {config.tfds_data_dir}")


def _builder(module: str, name: str):
  """A TFDS builder class from the checkout's `data/` folder (not installed with the package)."""
  import importlib
  try:
    return getattr(importlib.import_module(f"data.{module}"), name)
  except ImportError as e:
    raise InputError(f"data.source='tfds' needs the TFDS builders in the checkout's data/ "
                     f"folder and the `data` extra; run from the repository root ({e})") from None


def identity_codes(rng: np.random.Generator, count: int, dim: int, *, seed: int,
                   tail_df: float = 0.0) -> np.ndarray:
  """`[count, dim]` identity codes: `N(0, I)` from `rng`; with `tail_df > 2`, each row divided by
  `sqrt(chi2_df / (df - 2))` (a chi-square draw per identity from `default_rng([seed, 1])`): a
  multivariate Student t with unit variance per component."""
  z = rng.normal(size=(count, dim))
  if tail_df:
    chi2 = np.random.default_rng([seed, 1]).chisquare(tail_df, size=(count, 1))
    z = z * np.sqrt((tail_df - 2) / chi2)
  return z


@dataclasses.dataclass(frozen=True)
class SampledScans:
  """Scans sampled from a Gaussian model (`sample_people`), with what made them."""
  scans: np.ndarray             # [N, V, 3] float32, after the scanner (noise, misalignment)
  identity: np.ndarray          # [N] int32
  neutral: np.ndarray           # [N, V, 3] float32 the person's neutral shape (no scanner)
  expression: np.ndarray        # [N, E] expression weights (0 = neutral scan)


def sample_people_chunks(model, num_identities: int, scans_per_identity: int, seed: int, *,
                         noise_mm: float, identity_offset: int = 0,
                         neutral_fraction: float = 0.2, expression_scale: float = 1.0,
                         identity_tail_df: float = 0.0, neutral_first: bool = False,
                         chunk_identities: int = CHUNK_IDENTITIES):
  """`sample_people` (same arguments) as `SampledScans` of `chunk_identities` people at a time:
  the random draws that are small (codes, expression weights, scanner motions) are made for
  everyone first, then each chunk's faces and noise, so the chunks joined are exactly
  `sample_people`'s output and memory holds one chunk."""
  rng = np.random.default_rng(seed)
  z = identity_codes(rng, num_identities, model.shape_dim, seed=seed, tail_df=identity_tail_df)
  identity = np.repeat(np.arange(num_identities), scans_per_identity)
  weights = face_world.sample_expression_weights(rng, len(identity), model.expr_dim,
                                                 neutral_fraction=neutral_fraction, max_active=2)
  if neutral_first:
    weights[::scans_per_identity] = 0.0
  weights = expression_scale * weights
  rotations, shifts = face_world.scanner_motions(rng, len(identity), misalignment_degrees=1.0,
                                                 misalignment_mm=1.0)
  mean = np.asarray(model.mean, np.float64)
  shape_basis = np.asarray(model.shape_basis, np.float64)
  expr_basis = np.asarray(model.expr_basis, np.float64)
  for start in range(0, num_identities, chunk_identities):
    stop = min(start + chunk_identities, num_identities)
    rows = slice(start * scans_per_identity, stop * scans_per_identity)
    neutral = (mean + np.einsum("ik,kvc->ivc", z[start:stop], shape_basis))[
        identity[rows] - start]
    faces = neutral + np.einsum("nx,xvc->nvc", weights[rows], expr_basis)
    faces = face_world.scan_faces(rng, faces, rotations[rows], shifts[rows], noise_mm=noise_mm)
    yield SampledScans(scans=faces.astype(np.float32),
                       identity=(identity[rows] + identity_offset).astype(np.int32),
                       neutral=neutral.astype(np.float32),
                       expression=weights[rows].astype(np.float32))


def sample_people(model, num_identities: int, scans_per_identity: int, seed: int, *,
                  noise_mm: float, identity_offset: int = 0, neutral_fraction: float = 0.2,
                  expression_scale: float = 1.0, identity_tail_df: float = 0.0,
                  neutral_first: bool = False) -> SampledScans:
  """Scans sampled from a Gaussian model (e.g. the Surrey model with its blendshapes):
  identities `z ~ N(0, I)`, 1-2 expression components per scan with weights in [0.2, 1]
  (blendshapes at partial strength; for Gaussian expression bases, up to one sd) times
  `expression_scale`, then the scanner (`face_world.apply_scanner`: 1 degree, 1 mm, noise).

  `identity_tail_df > 2` draws identities from a multivariate Student t with that many degrees
  of freedom instead, scaled to unit variance per component: the same spread, heavier tails
  (a few people far from the mean). Its extra draws come from their own stream, so the other
  numbers are those of the Gaussian case. `neutral_first` makes every person's first scan
  neutral (its expression weights zeroed; the random draws are unchanged).
  """
  chunks = list(sample_people_chunks(
      model, num_identities, scans_per_identity, seed, noise_mm=noise_mm,
      identity_offset=identity_offset, neutral_fraction=neutral_fraction,
      expression_scale=expression_scale, identity_tail_df=identity_tail_df,
      neutral_first=neutral_first))
  return SampledScans(*(np.concatenate([getattr(c, f.name) for c in chunks])
                        for f in dataclasses.fields(SampledScans)))


def _sampled(config, seed: int, path: str, key: str, stores) -> ScanData:
  """Scans sampled from the model file at `path` (config key `key` for error messages)."""
  if not path or not os.path.exists(path):
    raise InputError(f"data.{key}: {path!r} does not exist (a model file or the Surrey folder)")
  model = load_face_model(path)
  if model.code_kind != "gaussian":
    raise InputError(f"data.{key}: {path} is a {model.code_kind} model; scans are sampled from "
                     "Gaussian models (published 3DMMs, or a baseline.npz)")
  scale, df = config.get("expression_scale", 1.0), config.get("identity_tail_df", 0.0)
  if not scale > 0 or not (df == 0 or df > 2):
    raise InputError(f"data.expression_scale must be > 0 (got {scale}) and data.identity_tail_df "
                     f"0 (Gaussian) or > 2 (got {df})")
  options = {"noise_mm": config.noise_mm, "expression_scale": scale, "identity_tail_df": df}
  splits = _generated_splits(config, seed, stores, lambda count, data_seed, offset: (
      (c.scans, c.identity) for c in sample_people_chunks(
          model, count, config.scans_per_identity, data_seed, identity_offset=offset,
          **options)))
  return ScanData(*splits["train"], *splits["test"], np.asarray(model.triangles),
                  np.asarray(model.landmarks), None,
                  f"samples of {path} ({model.num_vertices} vertices, {model.shape_dim} "
                  f"Gaussian components, {model.expr_dim} expression components), "
                  f"{config.train_identities} + {config.test_identities} identities x "
                  f"{config.scans_per_identity} scans, noise {config.noise_mm} mm"
                  + (f", expressions x{scale}" if scale != 1 else "")
                  + (f", Student-t identities (df {df})" if df else ""),
                  contour=None if model.contour is None else np.asarray(model.contour))


def _folder(config, seed: int, store_dir: str | None) -> ScanData:
  if not config.scan_dir:
    raise InputError("data.scan_dir is not set: pass --config.data.scan_dir=DIR (a scan folder "
                     "with meta.csv; see README)")
  if not os.path.isdir(config.scan_dir):
    raise InputError(f"data.scan_dir: {config.scan_dir} is not a folder")
  folder = scan_folder.read_scan_folder(
      config.scan_dir, allow_outside=config.get("allow_outside_paths", False),
      load_vertices=False)
  names = folder.identity_names
  test = np.array([label >= 0 and identity_in_test(names[label], config.test_fraction)
                   for label in folder.identity])
  if not test.any() or test.all():
    raise InputError(f"{config.scan_dir}: the identity split (test_fraction "
                     f"{config.test_fraction}) left no training or no test identities")
  landmarks = (folder.landmarks if folder.landmarks is not None
               else -np.ones(68, np.int32))
  rows = {"train": np.flatnonzero(~test), "test": np.flatnonzero(test)}

  def chunks(split):
    done = 0
    for chunk in scan_folder.iter_scans(config.scan_dir, folder.paths, rows[split],
                                        num_vertices=folder.vertices.shape[1]):
      yield chunk, folder.identity[rows[split][done:done + len(chunk)]]
      done += len(chunk)

  stores = _stores(config, seed, store_dir, _folder_signature(config.scan_dir, folder.paths))
  (train_scans, train_identity), (test_scans, test_identity) = (
      _split_scans(chunks(split), stores[split], len(rows[split])) for split in STORE_FILES)
  return ScanData(train_scans, relabel(train_identity), test_scans, test_identity,
                  folder.triangles, landmarks, None,
                  f"scan folder {config.scan_dir}: {len(folder.paths)} scans, "
                  f"{len(names)} identities", contour=folder.contour)


def _folder_signature(directory: str, paths: list[str]) -> str:
  """A hash of a scan folder's `meta.csv` and the size and modification time of every scan it
  lists: a changed file means a new store."""
  digest = hashlib.sha256()
  with open(os.path.join(directory, scan_folder.META), "rb") as f:
    digest.update(f.read())
  for relative in paths:
    info = os.stat(os.path.join(directory, relative))
    digest.update(f"{relative}:{info.st_size}:{info.st_mtime_ns};".encode())
  return digest.hexdigest()


def load(config, *, seed: int, store_dir: str | None = None) -> ScanData:
  """The data that `config` (a `data` ConfigDict) names. With `config.stream`, the training and
  held-out scans are scan stores in `store_dir` (see the module docstring)."""
  if config.source not in SOURCES:
    raise InputError(f"data.source must be one of {SOURCES}, got {config.source!r}")
  if config.source == "world":
    return _world(config, seed, _stores(config, seed, store_dir))
  if config.source == "tfds":
    return _tfds(config, seed, store_dir)
  if config.source in ("surrey", "model"):
    key = "surrey_dir" if config.source == "surrey" else "model_path"
    return _sampled(config, seed, config[key], key, _stores(config, seed, store_dir))
  return _folder(config, seed, store_dir)
