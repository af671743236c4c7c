"""TFDS builder `synthetic_face_scans`: registered scans from the procedural face world.

Splits by identity: `train` and `test` identities are disjoint (different draws on the identity
sphere and disjoint label ranges), so held-out evaluation never sees a training identity.
Written as array_record (no TensorFlow needed); read with `builder.as_data_source(split)`.

Each example: `vertices [V, 3]` float32 (mm), `neutral [V, 3]` float32 (ground truth), `identity`
int32, `expression [X]` float32 weights, `scan_index` (position in the split's generation order;
TFDS stores examples shuffled). The topology is in `builder.info.metadata`:
`triangles`, `landmarks`, `mirror`.

  builder = SyntheticFaceScans(config="demo", data_dir=DIR, file_format="array_record")
  builder.download_and_prepare()
  train = builder.as_data_source("train")
"""

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from sfm_jax import face_world
from sfm_jax.sources.scans import world_scan_chunks
from sfm_jax.sources.splits import split_seed


@dataclasses.dataclass
class ScanWorldConfig(tfds.core.BuilderConfig):
  resolution: int = 48
  train_identities: int = 120
  test_identities: int = 40
  scans_per_identity: int = 4
  noise_mm: float = 0.3
  seed: int = 0


class SyntheticFaceScans(tfds.core.GeneratorBasedBuilder):
  """Face-world scans with identity labels, split by identity."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = [
      ScanWorldConfig(name="demo", description="48x48 grid (2304 vertices), 120 + 40 identities, "
                      "4 scans each: stage-1 demo on a CPU."),
      ScanWorldConfig(name="tiny", description="16x16 grid, 12 + 6 identities: tests.",
                      resolution=16, train_identities=12, test_identities=6,
                      scans_per_identity=3),
      ScanWorldConfig(name="large", description="64x64 grid (4096 vertices), 2000 + 500 "
                      "identities, 5 scans each.", resolution=64, train_identities=2000,
                      test_identities=500, scans_per_identity=5),
  ]

  def _world(self) -> face_world.FaceWorld:
    return face_world.FaceWorld(resolution=self.builder_config.resolution)

  def _info(self) -> tfds.core.DatasetInfo:
    config = self.builder_config
    num_vertices = config.resolution ** 2
    template = self._world().template
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "vertices": tfds.features.Tensor(shape=(num_vertices, 3), dtype=np.float32),
            "neutral": tfds.features.Tensor(shape=(num_vertices, 3), dtype=np.float32),
            "identity": tfds.features.Scalar(dtype=np.int32),
            "expression": tfds.features.Tensor(shape=(len(face_world.EXPRESSIONS),), dtype=np.float32),
            "scan_index": tfds.features.Scalar(dtype=np.int64),
        }),
        metadata=tfds.core.MetadataDict(
            triangles=template.triangles.tolist(), landmarks=template.landmarks.tolist(),
            mirror=template.mirror.tolist(), expressions=list(face_world.EXPRESSIONS)),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # everything is generated
    config = self.builder_config
    return {
        "train": self._generate_examples(config.train_identities,
                                         split_seed(config.seed, "train"), 0),
        "test": self._generate_examples(config.test_identities, split_seed(config.seed, "test"),
                                        config.train_identities),
    }

  def _generate_examples(self, num_identities, seed, identity_offset):
    """The examples of `sfm_jax.sources.scans.world_scan_chunks` (the in-memory source's)."""
    config = self.builder_config
    key = 0
    for scans in world_scan_chunks(self._world(), num_identities, config.scans_per_identity,
                                   seed, noise_mm=config.noise_mm,
                                   identity_offset=identity_offset):
      for i in range(len(scans.identity)):
        yield key, {"vertices": scans.vertices[i], "neutral": scans.neutral[i],
                    "identity": scans.identity[i], "expression": scans.expression[i],
                    "scan_index": key}
        key += 1
