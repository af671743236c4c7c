"""TFDS builder `face_scan_folder`: a user's scan folder (see `sfm_jax.io.scan_folder`).

Reads the folder given as `manual_dir` and splits it by identity: a stable hash of each subject
name sends all of its scans to `train` or to `test` (about `test_fraction` of the identities), so
the splits never share a person. Unlabelled scans go to `train`.

  builder = FaceScanFolder(data_dir=DIR, file_format="array_record",
                           config=FaceScanFolderConfig(name="default", test_fraction=0.2))
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=SCANS))

or, the same in one call: `sfm_jax.sources.tfds.build(FaceScanFolder, data_dir=DIR,
config=..., manual_dir=SCANS)`.

Examples: `vertices [V, 3]`, `identity` (label, -1 unlabelled), `identity_name`, `expression`,
`path`. The topology (`triangles`, `landmarks`, `identity_names`) is in `info.metadata`.
"""

import dataclasses
import logging

import numpy as np
import tensorflow_datasets as tfds

from sfm_jax.io import scan_folder
from sfm_jax.sources.splits import identity_in_test


@dataclasses.dataclass
class FaceScanFolderConfig(tfds.core.BuilderConfig):
  test_fraction: float = 0.2
  split_seed: int = 0


class FaceScanFolder(tfds.core.GeneratorBasedBuilder):
  """A scan folder from `manual_dir`, split by identity."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = [FaceScanFolderConfig(name="default")]
  MANUAL_DOWNLOAD_INSTRUCTIONS = ("Point manual_dir at a scan folder: meta.csv (path,identity"
                                  "[,expression]) and OBJ/PLY meshes in correspondence.")

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "vertices": tfds.features.Tensor(shape=(None, 3), dtype=np.float32),
            "identity": tfds.features.Scalar(dtype=np.int32),
            "identity_name": tfds.features.Text(),
            "expression": tfds.features.Text(),
            "path": tfds.features.Text(),
        }),
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    folder = scan_folder.read_scan_folder(dl_manager.manual_dir)
    config = self.builder_config
    self.info.metadata.update(
        triangles=folder.triangles.tolist(),
        landmarks=None if folder.landmarks is None else folder.landmarks.tolist(),
        identity_names=list(folder.identity_names))
    in_test = np.array([folder.identity[i] >= 0 and identity_in_test(
        folder.identity_names[folder.identity[i]], config.test_fraction, config.split_seed)
                        for i in range(len(folder.paths))])
    parts = {"train": np.flatnonzero(~in_test), "test": np.flatnonzero(in_test)}
    for name in [k for k, v in parts.items() if not len(v)]:
      logging.warning("face_scan_folder: split %r is empty (too few identities for "
                      "test_fraction %s); it is omitted", name, config.test_fraction)
    return {name: self._generate_examples(folder, indices) for name, indices in parts.items()
            if len(indices)}

  def _generate_examples(self, folder, indices):
    for i in indices:
      label = int(folder.identity[i])
      yield int(i), {
          "vertices": folder.vertices[i].astype(np.float32),
          "identity": label,
          "identity_name": folder.identity_names[label] if label >= 0 else "",
          "expression": folder.expression[i] if folder.expression is not None else "",
          "path": folder.paths[i],
      }
