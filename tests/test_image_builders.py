"""The image builders build offline into a temporary folder and read back the exact arrays."""

import csv

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets", reason="TFDS is in the data extra")
Image = pytest.importorskip("PIL.Image", reason="Pillow is in the data extra")

from data.face_image_folder import FaceImageFolder, FaceImageFolderConfig  # noqa: E402
from data.synthetic_face_images import SyntheticFaceImages  # noqa: E402
from sfm_jax import face_world  # noqa: E402
from sfm_jax.io import write_pts  # noqa: E402
from sfm_jax.sources import tfds as tfds_io  # noqa: E402
from sfm_jax.sources.images import to_uint8  # noqa: E402
from sfm_jax.sources.splits import identity_in_test  # noqa: E402


def test_synthetic_images_read_back_exactly(tmp_path):
  builder = tfds_io.build(SyntheticFaceImages, data_dir=str(tmp_path), config="tiny")
  config = builder.builder_config
  splits = {}
  for split, (count, seed, offset) in {
      "train": (config.train_identities, config.seed * 2 + 1, 0),
      "test": (config.test_identities, config.seed * 2 + 2, config.train_identities)}.items():
    got = tfds_io.load_all(builder.as_data_source(split))
    expected = face_world.make_images(count, config.images_per_identity, seed * 100003,
                                 world=face_world.FaceWorld(resolution=config.resolution),
                                 image_size=config.image_size,
                                 unlabelled_fraction=config.unlabelled_fraction,
                                 occluder_probability=config.occluder_probability,
                                 identity_offset=offset)
    order = np.argsort(got["image_index"])
    np.testing.assert_array_equal(got["image"][order], to_uint8(expected.images))
    np.testing.assert_array_equal(got["landmarks"][order], expected.landmarks)
    np.testing.assert_array_equal(got["visible"][order], expected.visible)
    np.testing.assert_array_equal(got["identity"][order], expected.identity)
    np.testing.assert_array_equal(got["neutral"][order], expected.neutral)
    splits[split] = set(got["true_identity"].tolist())
  assert splits["train"].isdisjoint(splits["test"])


def _photo_folder(folder, count=8):
  images = face_world.make_images(4, 2, seed=9, world=face_world.FaceWorld(resolution=16), image_size=40,
                             occluder_probability=0.0)
  names = ["ann", "ann", "bob", "bob", "cy", "dee", "", ""]
  rows = [["path", "identity"]]
  for i in range(count):
    Image.fromarray(to_uint8(images.images[i])).save(folder / f"img{i}.png")
    write_pts(folder / f"img{i}.pts", images.landmarks[i])
    rows.append([f"img{i}.png", names[i]])
  with open(folder / "meta.csv", "w", newline="") as f:
    csv.writer(f).writerows(rows)
  return images, names


def test_image_folder_round_trip_and_identity_split(tmp_path):
  folder = tmp_path / "photos"
  folder.mkdir()
  images, names = _photo_folder(folder)
  builder = tfds_io.build(FaceImageFolder, data_dir=str(tmp_path / "tfds"),
                           config=FaceImageFolderConfig(name="split", test_fraction=0.5),
                           manual_dir=str(folder))
  assert {identity_in_test(n, 0.5) for n in names if n} == {True, False}  # both splits used
  seen = []
  for split in ("train", "test"):
    got = tfds_io.load_all(builder.as_data_source(split))
    for k, path in enumerate(got["path"]):
      i = int(path[3:-4])
      np.testing.assert_array_equal(got["image"][k], to_uint8(images.images[i]))
      np.testing.assert_allclose(got["landmarks"][k], images.landmarks[i], atol=1e-5)
      assert got["identity_name"][k] == names[i]
      assert (got["identity"][k] == -1) == (names[i] == "")
      assert identity_in_test(names[i], 0.5) == (split == "test")
      seen.append(i)
  assert sorted(seen) == list(range(8))


def test_image_folder_bad_files(tmp_path):
  folder = tmp_path / "photos"
  folder.mkdir()
  _photo_folder(folder)
  (folder / "img3.png").write_bytes(b"not an image at all")
  with pytest.raises(ValueError, match=r"img3\.png: unreadable image"):
    tfds_io.build(FaceImageFolder, data_dir=str(tmp_path / "a"), manual_dir=str(folder),
                   config=FaceImageFolderConfig(name="strict"))
  builder = tfds_io.build(FaceImageFolder, data_dir=str(tmp_path / "b"), manual_dir=str(folder),
                           config=FaceImageFolderConfig(name="lenient", skip_bad=True))
  assert len(builder.info.metadata["skipped"]) == 1
  total = sum(len(builder.as_data_source(s)) for s in ("train", "test"))
  assert total == 7
  Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(folder / "img3.png")  # repaired
  (folder / "img5.pts").write_text("n_points: 68\n{\n1 2\n}\n")
  with pytest.raises(ValueError, match=r"img5\.pts: n_points is 68 but 1 points"):
    tfds_io.build(FaceImageFolder, data_dir=str(tmp_path / "c"), manual_dir=str(folder),
                   config=FaceImageFolderConfig(name="lenient2", skip_bad=False))
