"""TFDS builders build offline into a temporary folder and read back the exact arrays."""

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets", reason="TFDS is in the data extra")

from data import pipeline  # noqa: E402
from data.face_scan_folder import FaceScanFolder, FaceScanFolderConfig, identity_in_test  # noqa
from data.synthetic_face_scans import SyntheticFaceScans  # noqa: E402
from sfm_jax import synth  # noqa: E402
from sfm_jax.io import scan_folder  # noqa: E402


@pytest.fixture(scope="module")
def tiny_builder(tmp_path_factory):
  return pipeline.build(SyntheticFaceScans, data_dir=str(tmp_path_factory.mktemp("tfds")),
                        config="tiny")


def _expected_split(config, num_identities, seed, offset):
  """The generator's draws, restated: 50 identities per `make_scans` call."""
  parts = []
  for start in range(0, num_identities, 50):
    parts.append(synth.make_scans(min(50, num_identities - start), config.scans_per_identity,
                                  seed * 100003 + start,
                                  world=synth.FaceWorld(resolution=config.resolution),
                                  noise_mm=config.noise_mm, identity_offset=offset + start))
  return {field: np.concatenate([getattr(p, field) for p in parts])
          for field in ("vertices", "neutral", "identity", "expression")}


def test_synthetic_scans_read_back_exactly(tiny_builder):
  config = tiny_builder.builder_config
  for split, (count, seed, offset) in {
      "train": (config.train_identities, config.seed * 2 + 1, 0),
      "test": (config.test_identities, config.seed * 2 + 2, config.train_identities)}.items():
    got = pipeline.load_all(tiny_builder.as_data_source(split))
    expected = _expected_split(config, count, seed, offset)
    assert len(got["scan_index"]) == count * config.scans_per_identity
    order = np.argsort(got["scan_index"])
    np.testing.assert_array_equal(got["scan_index"][order], np.arange(len(order)))
    for field, array in expected.items():
      np.testing.assert_array_equal(got[field][order], array, err_msg=f"{split}/{field}")
  metadata = tiny_builder.info.metadata
  template = synth.face_template(config.resolution)
  np.testing.assert_array_equal(np.asarray(metadata["triangles"]), template.triangles)
  np.testing.assert_array_equal(np.asarray(metadata["landmarks"]), template.landmarks)


def test_synthetic_split_identities_are_disjoint(tiny_builder):
  train = set(pipeline.load_all(tiny_builder.as_data_source("train"))["identity"].tolist())
  test = set(pipeline.load_all(tiny_builder.as_data_source("test"))["identity"].tolist())
  assert train and test and not train & test


def test_scan_folder_builder_round_trip_and_identity_split(tmp_path):
  scans = synth.make_scans(12, 2, seed=3, world=synth.FaceWorld(resolution=12))
  names = [f"subject{i:02d}" for i in scans.identity]
  folder = tmp_path / "scans"
  scan_folder.write_scan_folder(folder, scans.vertices, names, triangles=scans.triangles,
                                landmarks=scans.landmarks, expression=["e"] * len(names))
  builder = pipeline.build(FaceScanFolder, data_dir=str(tmp_path / "tfds"),
                           config=FaceScanFolderConfig(name="split", test_fraction=0.3),
                           manual_dir=str(folder))
  splits = {s: pipeline.load_all(builder.as_data_source(s)) for s in ("train", "test")}
  seen = []
  for split, examples in splits.items():
    for path, vertices, name in zip(examples["path"], examples["vertices"],
                                    examples["identity_name"]):
      index = int(path.split("/")[-1].split(".")[0])
      np.testing.assert_array_equal(vertices, scans.vertices[index])
      assert name == names[index]
      assert identity_in_test(name, 0.3) == (split == "test")
      seen.append(index)
  assert sorted(seen) == list(range(len(names)))  # every scan exactly once
  assert set(splits["train"]["identity_name"]).isdisjoint(splits["test"]["identity_name"])
  assert len(splits["test"]["path"]) > 0 and len(splits["train"]["path"]) > 0
  np.testing.assert_array_equal(np.asarray(builder.info.metadata["triangles"]), scans.triangles)


def test_numpy_batches_shard_shuffle_and_cover():
  source = [{"x": np.full(2, i), "i": i} for i in range(10)]
  batches = list(pipeline.numpy_batches(source, 3, seed=1, epochs=2))
  assert len(batches) == 6 and batches[0]["x"].shape == (3, 2)
  first_epoch = np.concatenate([b["i"] for b in batches[:3]])
  assert len(set(first_epoch.tolist())) == 9  # no repeats within an epoch; 1 dropped
  again = list(pipeline.numpy_batches(source, 3, seed=1, epochs=2))
  assert all(np.array_equal(a["i"], b["i"]) for a, b in zip(batches, again))
  shards = [np.concatenate([b["i"] for b in pipeline.numpy_batches(
      source, 1, seed=4, shard_index=k, shard_count=3)]) for k in range(3)]
  assert sorted(np.concatenate(shards).tolist()) == list(range(10))
  assert all(set(a.tolist()).isdisjoint(b.tolist()) for a in shards for b in shards if a is not b)
  with pytest.raises(ValueError, match="empty"):
    next(pipeline.numpy_batches([], 2))
