import numpy as np
import pytest

from sfm_jax import imaging
from sfm_jax.io import load_tree, save_tree


def test_crop_of_the_whole_image_is_the_image():
  image = np.random.default_rng(0).integers(0, 256, (20, 20, 3)).astype(np.uint8)
  out = imaging.crop(image, imaging.full_box(20, 20), 20)
  np.testing.assert_allclose(out, image / 255.0, atol=1e-6)


def test_halving_a_nearest_upscaled_image_gives_it_back():
  image = np.random.default_rng(1).uniform(size=(9, 9, 3)).astype(np.float32)
  upscaled = image.repeat(2, 0).repeat(2, 1)
  np.testing.assert_allclose(imaging.crop(upscaled, imaging.full_box(18, 18), 9), image,
                             atol=1e-6)


def test_box_filter_path_for_large_shrinks_averages_blocks():
  image = np.random.default_rng(2).uniform(size=(32, 32, 3)).astype(np.float32)
  out = imaging.crop(image, imaging.full_box(32, 32), 4)  # 8x: 4x4 blocks, then bilinear 2->1
  blocks = image.reshape(4, 8, 4, 8, 3).mean((1, 3))
  np.testing.assert_allclose(out, blocks, atol=1e-5)


def test_crop_matches_direct_bilinear_sampling_and_pads_with_zero():
  rng = np.random.default_rng(3)
  image = rng.uniform(size=(10, 12, 3)).astype(np.float32)
  box = imaging.CropBox(x0=-2.3, y0=1.7, side=7.0)
  out = imaging.crop(image, box, 5)

  def sample(x, y):  # continuous coordinates, pixel centres at k + 0.5, zero outside
    fx, fy = x - 0.5, y - 0.5
    x0, y0 = int(np.floor(fx)), int(np.floor(fy))
    value = np.zeros(3)
    for dx in (0, 1):
      for dy in (0, 1):
        xi, yi = x0 + dx, y0 + dy
        w = (1 - abs(fx - xi)) * (1 - abs(fy - yi))
        if 0 <= xi < 12 and 0 <= yi < 10:
          value += w * image[yi, xi]
    return value

  for i in range(5):
    for j in range(5):
      x, y = box.to_image(np.array([j + 0.5, i + 0.5]), 5)
      np.testing.assert_allclose(out[i, j], sample(x, y), atol=1e-6)


def test_landmark_box_contains_the_landmarks_and_maps_round_trip():
  points = np.random.default_rng(4).uniform(30, 70, (68, 2))
  box = imaging.landmark_box(points, margin=0.25)
  inside = box.to_crop(points, 64)
  assert inside.min() > 0 and inside.max() < 64
  np.testing.assert_allclose(box.to_image(inside, 64), points, atol=1e-9)
  with pytest.raises(ValueError, match="no area"):
    imaging.landmark_box(np.zeros((68, 2)))


def test_tree_file_round_trip_and_errors(tmp_path):
  tree = {"params": {"a": {"kernel": np.arange(6.0).reshape(2, 3)}, "b": np.float32(2)},
          "batch_stats": {"mean": np.ones(3, np.float32)}}
  save_tree(tmp_path / "t.npz", tree, {"depth": "resnet10", "width": 8})
  loaded, meta = load_tree(tmp_path / "t.npz")
  assert meta == {"depth": "resnet10", "width": 8}
  np.testing.assert_array_equal(loaded["params"]["a"]["kernel"], tree["params"]["a"]["kernel"])
  assert loaded["params"]["b"] == 2 and loaded["batch_stats"]["mean"].dtype == np.float32
  with pytest.raises(ValueError, match="no such file"):
    load_tree(tmp_path / "missing.npz")
  (tmp_path / "junk.npz").write_bytes(b"junk")
  with pytest.raises(ValueError, match="junk.npz: not a readable"):
    load_tree(tmp_path / "junk.npz")
  np.savez(tmp_path / "plain.npz", x=np.zeros(2))
  with pytest.raises(ValueError, match="__metadata__' missing"):
    load_tree(tmp_path / "plain.npz")
  with pytest.raises(ValueError, match="without '/'"):
    save_tree(tmp_path / "bad.npz", {"a/b": np.zeros(1)})
  assert not (tmp_path / "bad.npz").exists()
