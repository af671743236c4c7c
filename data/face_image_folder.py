"""TFDS builder `face_image_folder`: a user's face photos with 68 iBUG landmarks each.

The folder (`manual_dir`):

    meta.csv            header `path,identity`; `path` relative to the folder; `identity` a
                        subject name, or empty for images without an identity label
    <images>            PNG or JPEG (read with Pillow, extra `data`)
    <image>.pts         beside each image, same name with `.pts`: 68 points (iBUG format);
                        where it is missing, dlib's landmarks of the largest face (the
                        `photos` extra); a photo without a face is skipped and counted

Splits by identity with a stable hash of the subject name (`test_fraction`); unlabelled images go
to `train`. A corrupt or unreadable image or a bad `.pts` raises `ValueError` naming the file,
or, with the config's `skip_bad=True`, is skipped and counted (`info.metadata["skipped"]` and
the log).
"""

import dataclasses
import logging
import os

import numpy as np
import tensorflow_datasets as tfds

from sfm_jax.sources.images import load_annotated, photo_folder_entries


@dataclasses.dataclass
class FaceImageFolderConfig(tfds.core.BuilderConfig):
  test_fraction: float = 0.2
  split_seed: int = 0
  skip_bad: bool = False


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
    config = self.builder_config
    folder = photo_folder_entries(os.fspath(dl_manager.manual_dir),
                                  test_fraction=config.test_fraction,
                                  split_seed=config.split_seed, skip_bad=config.skip_bad)
    self.info.metadata.update(identity_names=list(folder.labels), skipped=folder.skipped)
    for name in {"train", "test"} - set(folder.splits):
      logging.warning("face_image_folder: split %r is empty (too few identities for "
                      "test_fraction %s); it is omitted", name, config.test_fraction)
    return {name: self._generate_examples(os.fspath(dl_manager.manual_dir), part, folder.labels)
            for name, part in folder.splits.items()}

  def _generate_examples(self, folder, entries, label):
    for index, relative, name in entries:
      image, landmarks = load_annotated(folder, relative)
      yield index, {"image": image, "landmarks": landmarks,
                    "identity": label[name] if name else -1, "identity_name": name,
                    "path": relative}
