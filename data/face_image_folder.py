"""TFDS builder `face_image_folder`: a user's face photos with 68 iBUG landmarks each.

The folder (`manual_dir`):

    meta.csv            header `path,identity`; `path` relative to the folder; `identity` a
                        subject name, or empty for images without an identity label
    <images>            PNG or JPEG (read with Pillow, extra `data`)
    <image>.pts         beside each image, same name with `.pts`: 68 points (iBUG format)

Splits by identity with a stable hash of the subject name (`test_fraction`); unlabelled images go
to `train`. A corrupt or unreadable image or a bad `.pts` raises `ValueError` naming the file,
or, with the config's `skip_bad=True`, is skipped and counted (`info.metadata["skipped"]` and
the log).
"""

import dataclasses
import io
import logging
import os

import numpy as np
import tensorflow_datasets as tfds

from data.face_scan_folder import identity_in_test
from sfm_jax.io import read_pts
from sfm_jax.io.scan_folder import read_scan_meta


@dataclasses.dataclass
class FaceImageFolderConfig(tfds.core.BuilderConfig):
  test_fraction: float = 0.2
  split_seed: int = 0
  skip_bad: bool = False


def read_image(path: str) -> np.ndarray:
  """`[H, W, 3]` uint8 RGB from a PNG/JPEG; `ValueError` naming the file if it cannot be read."""
  from PIL import Image, UnidentifiedImageError
  try:
    with open(path, "rb") as f:
      data = f.read()
    with Image.open(io.BytesIO(data)) as image:
      return np.asarray(image.convert("RGB"))
  except (OSError, UnidentifiedImageError, ValueError) as e:
    raise ValueError(f"{path}: unreadable image ({e})") from None


def load_annotated(folder: str, relative: str) -> tuple[np.ndarray, np.ndarray]:
  """(image, `[68, 2]` landmarks) of one entry; `ValueError` naming the bad file."""
  path = os.path.join(folder, relative)
  if not os.path.isfile(path):
    raise ValueError(f"{path}: missing image")
  pts_path = os.path.splitext(path)[0] + ".pts"
  if not os.path.isfile(pts_path):
    raise ValueError(f"{pts_path}: missing landmark file for {relative}")
  landmarks = read_pts(pts_path)
  if landmarks.shape != (68, 2):
    raise ValueError(f"{pts_path}: expected 68 points, got {len(landmarks)}")
  return read_image(path), landmarks


class FaceImageFolder(tfds.core.GeneratorBasedBuilder):
  """Face photos with landmarks from `manual_dir`, split by identity."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = [FaceImageFolderConfig(name="default")]
  MANUAL_DOWNLOAD_INSTRUCTIONS = ("Point manual_dir at a folder with meta.csv (path,identity), "
                                  "the images and a .pts file beside each image.")

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(None, None, 3), dtype=np.uint8,
                                          encoding=tfds.features.Encoding.ZLIB),
            "landmarks": tfds.features.Tensor(shape=(68, 2), dtype=np.float32),
            "identity": tfds.features.Scalar(dtype=np.int32),
            "identity_name": tfds.features.Text(),
            "path": tfds.features.Text(),
        }),
        metadata=tfds.core.MetadataDict())

  def _split_generators(self, dl_manager):
    folder = os.fspath(dl_manager.manual_dir)
    paths, identities, _ = read_scan_meta(folder)
    config = self.builder_config
    names = sorted({n for n in identities if n})
    label = {name: i for i, name in enumerate(names)}
    entries, skipped = [], []
    for index, (relative, name) in enumerate(zip(paths, identities)):
      try:
        load_annotated(folder, relative)  # validate everything before writing anything
      except ValueError as e:
        if not config.skip_bad:
          raise
        skipped.append(str(e))
        logging.warning("face_image_folder: skipping %s", e)
        continue
      entries.append((index, relative, name))
    if skipped:
      logging.warning("face_image_folder: skipped %d of %d images", len(skipped), len(paths))
    self.info.metadata.update(identity_names=names, skipped=skipped)
    test = [e for e in entries if identity_in_test(e[2], config.test_fraction, config.split_seed)]
    train = [e for e in entries if e not in test]
    splits = {name: part for name, part in (("train", train), ("test", test)) if part}
    for name in {"train", "test"} - set(splits):
      logging.warning("face_image_folder: split %r is empty (too few identities for "
                      "test_fraction %s); it is omitted", name, config.test_fraction)
    return {name: self._generate_examples(folder, part, label) for name, part in splits.items()}

  def _generate_examples(self, folder, entries, label):
    for index, relative, name in entries:
      image, landmarks = load_annotated(folder, relative)
      yield index, {"image": image, "landmarks": landmarks,
                    "identity": label[name] if name else -1, "identity_name": name,
                    "path": relative}
