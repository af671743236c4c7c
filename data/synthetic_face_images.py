"""TFDS builder `synthetic_face_images`: rendered face-world images (the embedded 2D data).

Splits by identity (`train` and `test` identities are disjoint). Written as array_record, read
with `as_data_source()`; images are stored as zlib-compressed uint8 tensors (no PIL needed).

Each example: `image [S, S, 3]` uint8, `landmarks [68, 2]` float32 pixels (x right, y down),
`visible [68]` bool, `identity` int32 (-1 for unlabelled images), `image_index` (position in the
split's generation order); ground truth for evaluation only: `true_identity`, `neutral [V, 3]`,
`expression`, `rotation` (pitch, yaw, roll), `scale`, `translation`, `light [9, 3]`.
"""

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from sfm_jax import face_world
from sfm_jax.sources.images import to_uint8, world_image_chunks
from sfm_jax.sources.splits import split_seed


@dataclasses.dataclass
class ImageWorldConfig(tfds.core.BuilderConfig):
  image_size: int = 96
  resolution: int = 48
  train_identities: int = 200
  test_identities: int = 50
  images_per_identity: int = 6
  unlabelled_fraction: float = 0.1
  occluder_probability: float = 0.2
  seed: int = 0


class SyntheticFaceImages(tfds.core.GeneratorBasedBuilder):
  """Rendered face-world images with landmarks and identities, split by identity."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = [
      ImageWorldConfig(name="demo", description="96 px, 48x48 mesh, 200 + 50 identities x 6"),
      ImageWorldConfig(name="large", description="224 px, 96x96 mesh, 2000 + 500 identities x 8",
                       image_size=224, resolution=96, train_identities=2000,
                       test_identities=500, images_per_identity=8),
      ImageWorldConfig(name="tiny", description="48 px, 16x16 mesh, 4 + 2 identities x 3 (tests)",
                       image_size=48, resolution=16, train_identities=4, test_identities=2,
                       images_per_identity=3),
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    config = self.builder_config
    size, num_vertices = config.image_size, config.resolution ** 2
    template = face_world.face_template(config.resolution)
    tensor = lambda shape, dtype=np.float32: tfds.features.Tensor(shape=shape, dtype=dtype)
    return tfds.core.DatasetInfo(
        builder=self, description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(size, size, 3), dtype=np.uint8,
                                          encoding=tfds.features.Encoding.ZLIB),
            "landmarks": tensor((68, 2)), "visible": tensor((68,), np.bool_),
            "identity": tfds.features.Scalar(dtype=np.int32),
            "true_identity": tfds.features.Scalar(dtype=np.int32),
            "image_index": tfds.features.Scalar(dtype=np.int64),
            "neutral": tensor((num_vertices, 3)),
            "expression": tensor((len(face_world.EXPRESSIONS),)), "rotation": tensor((3,)),
            "scale": tfds.features.Scalar(dtype=np.float32), "translation": tensor((2,)),
            "light": tensor((9, 3)),
        }),
        metadata=tfds.core.MetadataDict(triangles=template.triangles.tolist(),
                                        landmarks=template.landmarks.tolist()))

  def _split_generators(self, dl_manager):
    del dl_manager
    config = self.builder_config
    return {"train": self._generate_examples(config.train_identities,
                                             split_seed(config.seed, "train"), 0),
            "test": self._generate_examples(config.test_identities,
                                            split_seed(config.seed, "test"),
                                            config.train_identities)}

  def _generate_examples(self, num_identities, seed, identity_offset):
    """The examples of `sfm_jax.sources.images.world_image_chunks` (the in-memory source's)."""
    config = self.builder_config
    for start, images in world_image_chunks(
        face_world.FaceWorld(resolution=config.resolution), num_identities,
        config.images_per_identity, seed, image_size=config.image_size,
        unlabelled_fraction=config.unlabelled_fraction,
        occluder_probability=config.occluder_probability, identity_offset=identity_offset):
      for i in range(len(images.identity)):
        key = start * config.images_per_identity + i
        yield key, {
            "image": to_uint8(images.images[i]), "landmarks": images.landmarks[i],
            "visible": images.visible[i], "identity": images.identity[i],
            "true_identity": images.true_identity[i], "image_index": key,
            "neutral": images.neutral[i], "expression": images.expression[i],
            "rotation": images.rotation[i], "scale": images.scale[i],
            "translation": images.translation[i], "light": images.light[i]}
