"""TFDS builders build offline into a temporary folder and read back the exact arrays."""

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets", reason="TFDS is in the data extra")

from data.face_scan_folder import FaceScanFolder, FaceScanFolderConfig  # noqa
from data.synthetic_face_scans import SyntheticFaceScans  # noqa: E402
from sfm_jax import face_world  # noqa: E402
from sfm_jax.io import scan_folder  # noqa: E402
from sfm_jax.sources import scans as scan_sources  # noqa: E402
from sfm_jax.sources import splits as split_lib  # noqa: E402
from sfm_jax.sources import tfds as tfds_io  # noqa: E402


@pytest.fixture(scope="module")
def tiny_builder(tmp_path_factory):
  return tfds_io.build(SyntheticFaceScans, data_dir=str(tmp_path_factory.mktemp("tfds")),
                        config="tiny")


def _expected_split(config, num_identities, seed, offset):
  """The generator's draws, restated: 25 identities per `make_scans` call."""
  parts = []
  for start in range(0, num_identities, 25):
    parts.append(face_world.make_scans(min(25, num_identities - start), config.scans_per_identity,
                                  seed * 100003 + start,
                                  world=face_world.FaceWorld(resolution=config.resolution),
                                  noise_mm=config.noise_mm, identity_offset=offset + start))
  return {field: np.concatenate([getattr(p, field) for p in parts])
          for field in ("vertices", "neutral", "identity", "expression")}


def test_synthetic_scans_read_back_exactly(tiny_builder):
  config = tiny_builder.builder_config
  for split, (count, seed, offset) in {
      "train": (config.train_identities, config.seed * 2 + 1, 0),
      "test": (config.test_identities, config.seed * 2 + 2, config.train_identities)}.items():
    got = tfds_io.load_all(tiny_builder.as_data_source(split))
    expected = _expected_split(config, count, seed, offset)
    assert len(got["scan_index"]) == count * config.scans_per_identity
    order = np.argsort(got["scan_index"])
    np.testing.assert_array_equal(got["scan_index"][order], np.arange(len(order)))
    for field, array in expected.items():
      np.testing.assert_array_equal(got[field][order], array, err_msg=f"{split}/{field}")
  metadata = tiny_builder.info.metadata
  template = face_world.face_template(config.resolution)
  np.testing.assert_array_equal(np.asarray(metadata["triangles"]), template.triangles)
  np.testing.assert_array_equal(np.asarray(metadata["landmarks"]), template.landmarks)


def test_world_source_in_memory_equals_the_builder(tiny_builder):
  """One seed derivation: the `world` source gives the builder's scans for the same seed."""
  import ml_collections
  config = tiny_builder.builder_config
  data_config = ml_collections.ConfigDict(dict(
      source="world", resolution=config.resolution, train_identities=config.train_identities,
      test_identities=config.test_identities, scans_per_identity=config.scans_per_identity,
      noise_mm=config.noise_mm))
  data = scan_sources.load(data_config, seed=config.seed)
  for split, scans, identity in (("train", data.train_scans, data.train_identity),
                                 ("test", data.test_scans, data.test_identity)):
    got = tfds_io.load_all(tiny_builder.as_data_source(split))
    order = np.argsort(got["scan_index"])
    np.testing.assert_array_equal(got["vertices"][order], scans)
    np.testing.assert_array_equal(got["identity"][order], identity)


def test_tfds_source_streamed_equals_in_memory(tiny_builder, tmp_path):
  """`data.stream` with the TFDS source: the records go through the scan stores unchanged."""
  import ml_collections
  data_config = ml_collections.ConfigDict(dict(
      source="tfds", tfds_config="tiny", tfds_data_dir=str(tiny_builder.data_dir).split(
          "/synthetic_face_scans/")[0], stream=False))
  in_memory = scan_sources.load(data_config, seed=0)
  data_config.stream = True
  streamed = scan_sources.load(data_config, seed=0, store_dir=str(tmp_path))
  for a, b in ((in_memory.train_scans, streamed.train_scans),
               (in_memory.test_scans, streamed.test_scans)):
    np.testing.assert_array_equal(b[np.arange(len(a))], a)
  np.testing.assert_array_equal(streamed.train_identity, in_memory.train_identity)
  np.testing.assert_array_equal(streamed.test_identity, in_memory.test_identity)
  got = tfds_io.load_all(tiny_builder.as_data_source("train"))  # and both are the records
  np.testing.assert_array_equal(in_memory.train_scans, got["vertices"])


def test_synthetic_split_identities_are_disjoint(tiny_builder):
  train = set(tfds_io.load_all(tiny_builder.as_data_source("train"))["identity"].tolist())
  test = set(tfds_io.load_all(tiny_builder.as_data_source("test"))["identity"].tolist())
  assert train and test and not train & test


def test_scan_folder_builder_round_trip_and_identity_split(tmp_path):
  scans = face_world.make_scans(12, 2, seed=3, world=face_world.FaceWorld(resolution=12))
  names = [f"subject{i:02d}" for i in scans.identity]
  folder = tmp_path / "scans"
  scan_folder.write_scan_folder(folder, scans.vertices, names, triangles=scans.triangles,
                                landmarks=scans.landmarks, expression=["e"] * len(names))
  builder = tfds_io.build(FaceScanFolder, data_dir=str(tmp_path / "tfds"),
                           config=FaceScanFolderConfig(name="split", test_fraction=0.3),
                           manual_dir=str(folder))
  splits = {s: tfds_io.load_all(builder.as_data_source(s)) for s in ("train", "test")}
  seen = []
  for split, examples in splits.items():
    for path, vertices, name in zip(examples["path"], examples["vertices"],
                                    examples["identity_name"]):
      index = int(path.split("/")[-1].split(".")[0])
      np.testing.assert_array_equal(vertices, scans.vertices[index])
      assert name == names[index]
      assert split_lib.identity_in_test(name, 0.3) == (split == "test")
      seen.append(index)
  assert sorted(seen) == list(range(len(names)))  # every scan exactly once
  assert set(splits["train"]["identity_name"]).isdisjoint(splits["test"]["identity_name"])
  assert len(splits["test"]["path"]) > 0 and len(splits["train"]["path"]) > 0
  np.testing.assert_array_equal(np.asarray(builder.info.metadata["triangles"]), scans.triangles)


def test_stack_examples_and_split_bookkeeping():
  stacked = tfds_io.stack_examples([{"x": np.full(2, i), "name": f"n{i}".encode()} for i in range(3)])
  np.testing.assert_array_equal(stacked["x"], [[0, 0], [1, 1], [2, 2]])
  assert stacked["name"] == ["n0", "n1", "n2"]
  np.testing.assert_array_equal(split_lib.relabel(np.array([7, -1, 3, 7, 9])), [1, -1, 0, 1, 2])
  assert [split_lib.split_seed(4, s) for s in ("train", "test")] == [9, 10]
