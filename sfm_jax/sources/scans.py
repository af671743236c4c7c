"""Stage-1 data: the face world (in memory or through its TFDS builder), scans sampled from a
published model (the Surrey model, or any Basel / FLAME / FaceScape / Surrey file), or a scan
folder. `load(config.data, seed=...)` picks the source a config names.

Every source gives training scans with contiguous identity labels [0, C) and held-out scans of
identities never seen in training (design section 6), plus the topology. `world_scan_chunks` is
the generator both the in-memory face world and the `synthetic_face_scans` builder draw from, so
one seed gives the same scans either way.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from sfm_jax import face_world
from sfm_jax.errors import InputError
from sfm_jax.io import scan_folder
from sfm_jax.io.models import load_face_model
from sfm_jax.sources.splits import (
  CHUNK_IDENTITIES,
  chunk_seed,
  identity_in_test,
  relabel,
  split_seed,
)

SOURCES = ("world", "tfds", "surrey", "model", "folder")


@dataclasses.dataclass(frozen=True)
class ScanData:
  train_scans: np.ndarray      # [N, V, 3] float32
  train_identity: np.ndarray   # [N] int32 in [0, C) (or -1)
  test_scans: np.ndarray       # [M, V, 3]
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


def world_scans(world: face_world.FaceWorld, num_identities: int, scans_per_identity: int,
                seed: int, *, noise_mm: float, identity_offset: int = 0) -> face_world.Scans:
  """All chunks of `world_scan_chunks`, concatenated."""
  chunks = list(world_scan_chunks(world, num_identities, scans_per_identity, seed,
                                  noise_mm=noise_mm, identity_offset=identity_offset))
  joined = {name: np.concatenate([getattr(c, name) for c in chunks])
            for name in ("vertices", "identity", "expression", "neutral", "identity_directions")}
  return dataclasses.replace(chunks[0], **joined)


def _world(config, seed: int) -> ScanData:
  world = face_world.FaceWorld(resolution=config.resolution)
  train = world_scans(world, config.train_identities, config.scans_per_identity,
                      split_seed(seed, "train"), noise_mm=config.noise_mm)
  test = world_scans(world, config.test_identities, config.scans_per_identity,
                     split_seed(seed, "test"), noise_mm=config.noise_mm,
                     identity_offset=config.train_identities)
  return ScanData(train.vertices, train.identity, test.vertices, test.identity, train.triangles,
                  train.landmarks, train.mirror,
                  f"face world {config.resolution}x{config.resolution} grid "
                  f"({world.template.vertices.shape[0]} vertices), {config.train_identities} + "
                  f"{config.test_identities} identities x {config.scans_per_identity} scans, "
                  f"noise {config.noise_mm} mm")


def _tfds(config) -> ScanData:
  from sfm_jax.sources import tfds
  builder_cls = _builder("synthetic_face_scans", "SyntheticFaceScans")
  builder = tfds.build(builder_cls, data_dir=config.tfds_data_dir, config=config.tfds_config)
  train = tfds.load_all(builder.as_data_source("train"))
  test = tfds.load_all(builder.as_data_source("test"))
  meta = builder.info.metadata
  return ScanData(train["vertices"], relabel(train["identity"]), test["vertices"],
                  test["identity"].astype(np.int32), np.asarray(meta["triangles"], np.int32),
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


def sample_people(model, num_identities: int, scans_per_identity: int, seed: int, *,
                  noise_mm: float, identity_offset: int = 0, neutral_fraction: float = 0.2,
                  expression_scale: float = 1.0, identity_tail_df: float = 0.0,
                  neutral_first: bool = False) -> SampledScans:
  """Scans sampled from a Gaussian model (e.g. the Surrey model with its blendshapes):
  identities `z ~ N(0, I)`, 1-2 expression components per scan with weights in [0.2, 1]
  (blendshapes at partial strength; for Gaussian expression bases, up to one sd) times
  `expression_scale`, then the scanner.

  `identity_tail_df > 2` draws identities from a multivariate Student t with that many degrees
  of freedom instead, scaled to unit variance per component: the same spread, heavier tails
  (a few people far from the mean). Its extra draws come from their own stream, so the other
  numbers are those of the Gaussian case. `neutral_first` makes every person's first scan
  neutral (its expression weights zeroed; the random draws are unchanged).
  """
  rng = np.random.default_rng(seed)
  z = identity_codes(rng, num_identities, model.shape_dim, seed=seed, tail_df=identity_tail_df)
  neutral = np.asarray(model.mean, np.float64) + np.einsum(
      "ik,kvc->ivc", z, np.asarray(model.shape_basis, np.float64))
  identity = np.repeat(np.arange(num_identities), scans_per_identity)
  weights = face_world.sample_expression_weights(rng, len(identity), model.expr_dim,
                                                 neutral_fraction=neutral_fraction, max_active=2)
  if neutral_first:
    weights[::scans_per_identity] = 0.0
  faces = neutral[identity] + np.einsum("nx,xvc->nvc", expression_scale * weights,
                                        np.asarray(model.expr_basis, np.float64))
  faces = face_world.apply_scanner(rng, faces, noise_mm=noise_mm, misalignment_degrees=1.0,
                              misalignment_mm=1.0)
  return SampledScans(scans=faces.astype(np.float32),
                      identity=(identity + identity_offset).astype(np.int32),
                      neutral=neutral[identity].astype(np.float32),
                      expression=(expression_scale * weights).astype(np.float32))


def sample_scans(model, num_identities: int, scans_per_identity: int, seed: int,
                 **options) -> tuple[np.ndarray, np.ndarray]:
  """(`[N, V, 3]` scans, `[N]` identities) of `sample_people` (same arguments)."""
  sampled = sample_people(model, num_identities, scans_per_identity, seed, **options)
  return sampled.scans, sampled.identity


def _sampled(config, seed: int, path: str, key: str) -> ScanData:
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
  train, train_id = sample_scans(model, config.train_identities, config.scans_per_identity,
                                 split_seed(seed, "train"), **options)
  test, test_id = sample_scans(model, config.test_identities, config.scans_per_identity,
                               split_seed(seed, "test"), identity_offset=config.train_identities,
                               **options)
  return ScanData(train, train_id, test, test_id, np.asarray(model.triangles),
                  np.asarray(model.landmarks), None,
                  f"samples of {path} ({model.num_vertices} vertices, {model.shape_dim} "
                  f"Gaussian components, {model.expr_dim} expression components), "
                  f"{config.train_identities} + {config.test_identities} identities x "
                  f"{config.scans_per_identity} scans, noise {config.noise_mm} mm"
                  + (f", expressions x{scale}" if scale != 1 else "")
                  + (f", Student-t identities (df {df})" if df else ""),
                  contour=None if model.contour is None else np.asarray(model.contour))


def _folder(config) -> ScanData:
  if not config.scan_dir:
    raise InputError("data.scan_dir is not set: pass --config.data.scan_dir=DIR (a scan folder "
                     "with meta.csv; see README)")
  if not os.path.isdir(config.scan_dir):
    raise InputError(f"data.scan_dir: {config.scan_dir} is not a folder")
  folder = scan_folder.read_scan_folder(
      config.scan_dir, allow_outside=config.get("allow_outside_paths", False))
  names = folder.identity_names
  test = np.array([label >= 0 and identity_in_test(names[label], config.test_fraction)
                   for label in folder.identity])
  if not test.any() or test.all():
    raise InputError(f"{config.scan_dir}: the identity split (test_fraction "
                     f"{config.test_fraction}) left no training or no test identities")
  landmarks = (folder.landmarks if folder.landmarks is not None
               else -np.ones(68, np.int32))
  return ScanData(folder.vertices[~test], relabel(folder.identity[~test]),
                  folder.vertices[test], folder.identity[test], folder.triangles, landmarks,
                  None, f"scan folder {config.scan_dir}: {len(folder.paths)} scans, "
                  f"{len(names)} identities", contour=folder.contour)


def load(config, *, seed: int) -> ScanData:
  """The data that `config` (a `data` ConfigDict) names."""
  if config.source not in SOURCES:
    raise InputError(f"data.source must be one of {SOURCES}, got {config.source!r}")
  if config.source == "world":
    return _world(config, seed)
  if config.source == "tfds":
    return _tfds(config)
  if config.source == "surrey":
    return _sampled(config, seed, config.surrey_dir, "surrey_dir")
  if config.source == "model":
    return _sampled(config, seed, config.model_path, "model_path")
  return _folder(config)
