"""Stage-1 data from a config: the face world, its TFDS builder, scans sampled from a published
model (the Surrey model, or any Basel / FLAME / FaceScape / Surrey file), or a scan folder.

Every source gives training scans with contiguous identity labels [0, C) and held-out scans of
identities never seen in training (design section 6), plus the topology.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from sfm_jax import synth
from sfm_jax.io import formats, scan_folder

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

  @property
  def num_classes(self) -> int:
    return int(self.train_identity.max()) + 1


def _relabel(identity: np.ndarray) -> np.ndarray:
  """Contiguous labels in order of first appearance; -1 stays -1."""
  out = -np.ones(len(identity), np.int32)
  known = identity >= 0
  _, out[known] = np.unique(identity[known], return_inverse=True)
  return out


def _world(config, seed: int) -> ScanData:
  world = synth.FaceWorld(resolution=config.resolution)
  kwargs = dict(world=world, noise_mm=config.noise_mm)
  train = synth.make_scans(config.train_identities, config.scans_per_identity, 2 * seed + 1,
                           **kwargs)
  test = synth.make_scans(config.test_identities, config.scans_per_identity, 2 * seed + 2,
                          identity_offset=config.train_identities, **kwargs)
  return ScanData(train.vertices, train.identity, test.vertices, test.identity, train.triangles,
                  train.landmarks, train.mirror,
                  f"face world {config.resolution}x{config.resolution} grid "
                  f"({world.template.vertices.shape[0]} vertices), {config.train_identities} + "
                  f"{config.test_identities} identities x {config.scans_per_identity} scans, "
                  f"noise {config.noise_mm} mm")


def _tfds(config) -> ScanData:
  from data import pipeline
  from data.synthetic_face_scans import SyntheticFaceScans

  builder = pipeline.build(SyntheticFaceScans, data_dir=config.tfds_data_dir,
                           config=config.tfds_config)
  train = pipeline.load_all(builder.as_data_source("train"))
  test = pipeline.load_all(builder.as_data_source("test"))
  meta = builder.info.metadata
  return ScanData(train["vertices"], _relabel(train["identity"]), test["vertices"],
                  test["identity"].astype(np.int32), np.asarray(meta["triangles"], np.int32),
                  np.asarray(meta["landmarks"], np.int32), np.asarray(meta["mirror"], np.int32),
                  f"TFDS synthetic_face_scans/{config.tfds_config} in {config.tfds_data_dir}")


def sample_scans(model, num_identities: int, scans_per_identity: int, seed: int, *,
                 noise_mm: float, identity_offset: int = 0, neutral_fraction: float = 0.2):
  """Scans sampled from a Gaussian model (e.g. the Surrey model with its blendshapes):
  identities `z ~ N(0, I)`, 1-2 expression components per scan with weights in [0.2, 1]
  (blendshapes at partial strength; for Gaussian expression bases, up to one sd), then the
  scanner."""
  rng = np.random.default_rng(seed)
  z = rng.normal(size=(num_identities, model.shape_dim))
  neutral = np.asarray(model.mean, np.float64) + np.einsum(
      "ik,kvc->ivc", z, np.asarray(model.shape_basis, np.float64))
  identity = np.repeat(np.arange(num_identities), scans_per_identity)
  weights = np.zeros((len(identity), model.expr_dim))
  for n in range(len(identity)):
    if rng.uniform() >= neutral_fraction and model.expr_dim:
      active = rng.choice(model.expr_dim, size=rng.integers(1, 3), replace=False)
      weights[n, active] = rng.uniform(0.2, 1.0, size=len(active))
  faces = neutral[identity] + np.einsum("nx,xvc->nvc", weights,
                                        np.asarray(model.expr_basis, np.float64))
  faces = synth.apply_scanner(rng, faces, noise_mm=noise_mm, misalignment_degrees=1.0,
                              misalignment_mm=1.0)
  return faces.astype(np.float32), (identity + identity_offset).astype(np.int32)


def _sampled(config, seed: int, path: str, key: str) -> ScanData:
  """Scans sampled from the model file at `path` (config key `key` for error messages)."""
  if not path or not os.path.exists(path):
    raise ValueError(f"data.{key}: {path!r} does not exist (a model file or the Surrey folder)")
  model = formats.load_face_model(path)
  if model.code_kind != "gaussian":
    raise ValueError(f"data.{key}: {path} is a {model.code_kind} model; scans are sampled from "
                     "Gaussian models (published 3DMMs, or a baseline.npz)")
  train, train_id = sample_scans(model, config.train_identities, config.scans_per_identity,
                                 2 * seed + 1, noise_mm=config.noise_mm)
  test, test_id = sample_scans(model, config.test_identities, config.scans_per_identity,
                               2 * seed + 2, noise_mm=config.noise_mm,
                               identity_offset=config.train_identities)
  return ScanData(train, train_id, test, test_id, np.asarray(model.triangles),
                  np.asarray(model.landmarks), None,
                  f"samples of {path} ({model.num_vertices} vertices, {model.shape_dim} "
                  f"Gaussian components, {model.expr_dim} expression components), "
                  f"{config.train_identities} + {config.test_identities} identities x "
                  f"{config.scans_per_identity} scans, noise {config.noise_mm} mm")


def _folder(config) -> ScanData:
  from data.face_scan_folder import identity_in_test

  if not config.scan_dir:
    raise ValueError("data.scan_dir is not set: pass --config.data.scan_dir=DIR (a scan folder "
                     "with meta.csv; see README)")
  if not os.path.isdir(config.scan_dir):
    raise ValueError(f"data.scan_dir: {config.scan_dir} is not a folder")
  folder = scan_folder.read_scan_folder(config.scan_dir)
  names = folder.identity_names
  test = np.array([label >= 0 and identity_in_test(names[label], config.test_fraction)
                   for label in folder.identity])
  if not test.any() or test.all():
    raise ValueError(f"{config.scan_dir}: the identity split (test_fraction "
                     f"{config.test_fraction}) left no training or no test identities")
  landmarks = (folder.landmarks if folder.landmarks is not None
               else -np.ones(68, np.int32))
  return ScanData(folder.vertices[~test], _relabel(folder.identity[~test]),
                  folder.vertices[test], folder.identity[test], folder.triangles, landmarks,
                  None, f"scan folder {config.scan_dir}: {len(folder.paths)} scans, "
                  f"{len(names)} identities")


def load(config, *, seed: int) -> ScanData:
  """The data that `config` (a `data` ConfigDict) names."""
  if config.source not in SOURCES:
    raise ValueError(f"data.source must be one of {SOURCES}, got {config.source!r}")
  if config.source == "world":
    return _world(config, seed)
  if config.source == "tfds":
    return _tfds(config)
  if config.source == "surrey":
    return _sampled(config, seed, config.surrey_dir, "surrey_dir")
  if config.source == "model":
    return _sampled(config, seed, config.model_path, "model_path")
  return _folder(config)
