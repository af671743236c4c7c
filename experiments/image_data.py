"""Stage-2 data from a config: rendered face-world images (in memory or through the TFDS
builder) or a user's photo folder.

Every source gives training images with contiguous identity labels [0, C) (-1 unlabelled) and
held-out images of identities never seen in training, all `S x S` (folder photos are cropped
around their landmarks and resampled). Images stay uint8 in host memory; `batch` makes float
batches.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile

import numpy as np

from sfm_jax import imaging, synth

SOURCES = ("world", "tfds", "folder")


@dataclasses.dataclass(frozen=True)
class Split:
  images: np.ndarray            # [N, S, S, 3] uint8
  landmarks: np.ndarray         # [N, 68, 2] float32 pixels (x right, y down)
  visible: np.ndarray           # [N, 68] bool
  identity: np.ndarray          # [N] int32, -1 unlabelled
  neutral: np.ndarray | None    # [N, V, 3] ground-truth neutral shape (mm), world data only
  names: list                   # [N] a name per image (file path or world index)

  def __len__(self) -> int:
    return len(self.images)

  def batch(self, index: np.ndarray) -> dict:
    """The stage-2 training batch of rows `index` (images as float32 in [0, 1])."""
    return {"images": self.images[index].astype(np.float32) / 255.0,
            "landmarks": self.landmarks[index], "visible": self.visible[index],
            "identity": self.identity[index]}


@dataclasses.dataclass(frozen=True)
class ImageData:
  train: Split
  test: Split                   # identities disjoint from training; for world data `identity`
                                # holds the true identity of every image (none unlabelled)
  image_size: int
  description: str

  @property
  def num_classes(self) -> int:
    return int(self.train.identity.max()) + 1


def _relabel(identity: np.ndarray) -> np.ndarray:
  out = -np.ones(len(identity), np.int32)
  known = identity >= 0
  _, out[known] = np.unique(identity[known], return_inverse=True)
  return out


def _world_split(config, count: int, seed: int, offset: int, *, test: bool) -> Split:
  images = synth.make_images(
      count, config.images_per_identity, seed,
      world=synth.FaceWorld(resolution=config.resolution), image_size=config.image_size,
      unlabelled_fraction=0.0 if test else config.unlabelled_fraction,
      occluder_probability=config.occluder_probability, identity_offset=offset)
  return Split(images=np.round(np.clip(images.images, 0, 1) * 255).astype(np.uint8),
               landmarks=images.landmarks, visible=images.visible,
               identity=images.true_identity if test else _relabel(images.identity),
               neutral=images.neutral,
               names=[f"world_{offset * config.images_per_identity + i:05d}"
                      for i in range(len(images.identity))])


def _tfds_split(config, split: str, *, test: bool) -> Split:
  from data import pipeline
  from data.synthetic_face_images import SyntheticFaceImages
  builder = pipeline.build(SyntheticFaceImages, data_dir=config.tfds_data_dir,
                           config=config.tfds_config)
  examples = pipeline.load_all(builder.as_data_source(split))
  size = examples["image"].shape[1]
  if size != config.image_size:
    raise ValueError(f"tfds config {config.tfds_config!r} has {size} px images but "
                     f"data.image_size is {config.image_size}")
  return Split(images=examples["image"], landmarks=examples["landmarks"],
               visible=examples["visible"],
               identity=(examples["true_identity"] if test
                         else _relabel(examples["identity"])).astype(np.int32),
               neutral=examples["neutral"],
               names=[f"{split}_{i:05d}" for i in examples["image_index"]])


def _folder_split(config, examples: dict, *, test: bool) -> Split:
  images, landmarks = [], []
  for image, points in zip(examples["image"], examples["landmarks"]):
    box = imaging.landmark_box(points, margin=config.crop_margin)
    crop = imaging.crop(image, box, config.image_size)
    images.append(np.round(crop * 255).astype(np.uint8))
    landmarks.append(box.to_crop(points, config.image_size).astype(np.float32))
  identity = np.asarray(examples["identity"], np.int32)
  return Split(images=np.stack(images), landmarks=np.stack(landmarks),
               visible=np.ones((len(images), 68), bool),
               identity=identity if test else _relabel(identity), neutral=None,
               names=list(examples["path"]))


def _folder(config) -> ImageData:
  from data import pipeline
  from data.face_image_folder import FaceImageFolder, FaceImageFolderConfig
  if not config.image_dir:
    raise ValueError("data.source='folder' needs --config.data.image_dir=DIR")
  if not os.path.isfile(os.path.join(config.image_dir, "meta.csv")):
    raise ValueError(f"{os.path.join(config.image_dir, 'meta.csv')}: missing; an image folder "
                     "needs meta.csv (header `path,identity`) and a .pts beside each image")
  builder_config = FaceImageFolderConfig(
      name=f"split{round(config.test_fraction * 1000)}_{'skip' if config.skip_bad else 'strict'}",
      test_fraction=config.test_fraction, skip_bad=config.skip_bad)
  # Built afresh into a temporary folder every run: never stale after the photos change, and
  # nothing is written into the user's folder.
  with tempfile.TemporaryDirectory(prefix="sfm_photos_") as data_dir:
    builder = pipeline.build(FaceImageFolder, data_dir=data_dir, config=builder_config,
                             manual_dir=config.image_dir)
    splits = {name: pipeline.load_all(builder.as_data_source(name))
              for name in builder.info.splits}
  if "train" not in splits or "test" not in splits:
    raise ValueError(f"{config.image_dir}: needs images of several identities so that some can "
                     f"be held out (got splits {sorted(splits)} at test_fraction "
                     f"{config.test_fraction})")
  train = _folder_split(config, splits["train"], test=False)
  test = _folder_split(config, splits["test"], test=True)
  return ImageData(train=train, test=test, image_size=config.image_size,
                   description=f"photo folder {config.image_dir} ({len(train)} train / "
                               f"{len(test)} held-out images)")


def load(config, *, seed: int) -> ImageData:
  """The config's `data` section -> train and held-out images."""
  if config.source not in SOURCES:
    raise ValueError(f"data.source must be one of {SOURCES}, got {config.source!r}")
  if config.source == "folder":
    return _folder(config)
  if config.source == "tfds":
    train, test = _tfds_split(config, "train", test=False), _tfds_split(config, "test", test=True)
    what = f"TFDS synthetic_face_images/{config.tfds_config}"
  else:
    train = _world_split(config, config.train_identities, 2 * seed + 1, 0, test=False)
    test = _world_split(config, config.test_identities, 2 * seed + 2, config.train_identities,
                        test=True)
    what = "rendered face world"
  description = (f"{what}: {config.image_size} px, {len(train)} training images "
                 f"({np.sum(train.identity < 0)} unlabelled), {len(test)} held-out images of "
                 f"{len(np.unique(test.identity))} unseen identities")
  return ImageData(train=train, test=test, image_size=config.image_size, description=description)
