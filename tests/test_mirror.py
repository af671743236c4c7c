"""Left-right mirroring (`sfm_jax.mirror`, `Split.mirrored`, `data.mirror`): the landmark
correspondence, vertex maps, and mirrored images checked against the renderer itself."""

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from sfm_jax import face_world, mirror, stage1
from sfm_jax.errors import InputError
from sfm_jax.face_world.images import _view_renderer
from sfm_jax.io import write_png, write_pts
from sfm_jax.io.mesh import write_mesh
from sfm_jax.sources import images as image_sources

MIDLINE = [8, 27, 28, 29, 30, 33, 51, 57, 62, 66]


def test_ibug_mirror_is_the_left_right_correspondence():
  partner = mirror.IBUG_MIRROR
  np.testing.assert_array_equal(partner[partner], np.arange(68))
  assert np.flatnonzero(partner == np.arange(68)).tolist() == MIDLINE
  # Outer and inner eye corners, mouth corners, jaw ends, brow ends, nostril wings.
  for a, b in ((36, 45), (39, 42), (48, 54), (0, 16), (17, 26), (31, 35), (60, 64), (37, 44),
               (41, 46), (65, 67)):
    assert partner[a] == b and partner[b] == a


@pytest.mark.parametrize("resolution", [12, 13])
def test_vertex_map_finds_the_face_world_grid_mirror(resolution):
  template = face_world.face_template(resolution)
  np.testing.assert_array_equal(mirror.vertex_map(template.vertices), template.mirror)
  shifted = template.vertices + [20.0, 0.0, 0.0]  # symmetric about x = 20, not x = 0
  with pytest.raises(InputError, match="symmetric about x = 0"):
    mirror.vertex_map(shifted)


def test_landmarks_mirror_exactly_on_odd_grids_only():
  odd, even = face_world.face_template(13), face_world.face_template(12)
  np.testing.assert_array_equal(mirror.landmark_mismatch(odd.landmarks, odd.mirror,
                                                         odd.vertices), 0.0)
  mismatch = mirror.landmark_mismatch(even.landmarks, even.mirror, even.vertices)
  assert np.flatnonzero(mismatch > 0).tolist() == MIDLINE
  # A midline landmark's vertex and its mirror partner are neighbours across the midline.
  v = even.vertices
  for i in MIDLINE:
    expected = np.linalg.norm(v[even.landmarks[i]] - v[even.mirror[even.landmarks[i]]])
    assert mismatch[i] == pytest.approx(expected) and expected > 0
  # Blended points, each landmark 0.7 its vertex + 0.3 the next vertex to the subject's left.
  # The template is symmetric, so the mirrored face is the template itself, and a flipped
  # point is 0.7 its vertex + 0.3 the next vertex to the *right*: they differ by 0.3 times the
  # distance between a landmark vertex's two row neighbours.
  # (Landmarks on the rim columns keep their own vertex twice: no blend, no mismatch.)
  inner = (odd.landmarks % 13 > 0) & (odd.landmarks % 13 < 12)
  assert 50 < inner.sum() < 68
  index = np.stack([odd.landmarks, np.where(inner, odd.landmarks + 1, odd.landmarks)], -1)
  blended = mirror.landmark_mismatch(index, odd.mirror, odd.vertices,
                                     np.broadcast_to([0.7, 0.3], (68, 2)))
  v = odd.vertices.astype(np.float64)
  expected = np.where(inner, 0.3 * np.linalg.norm(
      v[np.minimum(odd.landmarks + 1, 168)] - v[odd.landmarks - 1], axis=-1), 0.0)
  np.testing.assert_allclose(blended, expected, rtol=1e-6, atol=1e-9)
  undefined = odd.landmarks.copy()
  undefined[36] = -1
  out = mirror.landmark_mismatch(undefined, odd.mirror, odd.vertices)
  assert np.isnan(out[[36, 45]]).all() and np.isfinite(np.delete(out, [36, 45])).all()


def test_mirrored_face_under_mirrored_pose_renders_the_flipped_image():
  """The renderer's picture of the mirrored face, posed by the mirrored rotation (pitch kept,
  yaw and roll negated) and translation (x -> S - x), has the landmarks `mirror.landmarks_2d`
  gives for the flipped picture (to float rounding), and its pixels to within what the cells'
  diagonals, which lean the other way in the mirrored mesh, change."""
  size, template = 64, face_world.face_template(13)
  x, y = template.vertices[:, 0], template.vertices[:, 1]
  face = template.vertices + np.stack([0 * x, 0 * x, 4.0 * np.sin(x / 25.0 + y / 40.0)], -1)
  albedo = np.stack([0.5 + 0.3 * x / 75.0, 0.5 - 0.2 * y / 100.0, 0.5 + 0 * x], -1)  # smooth,
  # left and right different
  light = np.zeros((9, 3))
  light[0] = 3.0  # ambient only: no direction to mirror
  mirrored = mirror.vertices(face, template.mirror)
  inputs = [(np.array([0.2, 0.5, 0.15]), face, albedo, [30.0, 33.0]),
            (np.array([0.2, -0.5, -0.15]), mirrored, albedo[template.mirror], [size - 30.0, 33.0])]
  views = []
  for rotation, mesh, colours, translation in inputs:
    args = [rotation, mesh - mesh.mean(0), 0.3, np.array(translation), colours, light]
    vertices_px, image, mask, _, _ = _view_renderer(size, None)(
        *[jnp.asarray(np.asarray(a)[None], jnp.float32) for a in args],
        jnp.asarray(template.triangles))
    views.append((np.asarray(vertices_px[0]), np.asarray(image[0]), np.asarray(mask[0])))
  (px, image, mask), (px_m, image_m, mask_m) = views
  landmarks = px[template.landmarks, :2]
  np.testing.assert_allclose(mirror.landmarks_2d(landmarks, size), px_m[template.landmarks, :2],
                             atol=2e-4)
  flipped, flipped_mask = image[:, ::-1], mask[:, ::-1]
  assert np.mean(flipped_mask != mask_m) < 0.002
  both = (flipped_mask > 0) & (mask_m > 0)
  assert both.sum() > 1000
  assert np.abs(flipped - image_m)[both].mean() < 0.003  # measured 0.0006
  assert np.abs(image - image_m)[both].mean() > 0.2  # unflipped: 0.41 (the two sides differ)


def _split(rng, n=4, size=16, vertices=13 * 13):
  template = face_world.face_template(13)
  neutral = template.vertices + rng.normal(size=(n, vertices, 3)).astype(np.float32)
  return image_sources.Split(
      images=rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
      landmarks=rng.uniform(0, size, (n, 68, 2)).astype(np.float32),
      visible=rng.uniform(size=(n, 68)) < 0.8, identity=np.array([0, 0, 1, -1], np.int32),
      neutral=neutral, posed=neutral + 1.0, names=[f"r{i}" for i in range(n)],
      neutral_weight=np.array([1, 0, 1, 1], np.float32)), template


def test_split_mirrored_flips_pixels_landmarks_and_truth(rng):
  split, template = _split(rng)
  out = split.mirrored(template.mirror, identity_offset=5)
  np.testing.assert_array_equal(out.images[:, 3, 4], split.images[:, 3, 16 - 1 - 4])
  for row in range(4):
    for i in range(68):
      j = mirror.IBUG_MIRROR[i]
      assert out.landmarks[row, i, 0] == pytest.approx(16 - split.landmarks[row, j, 0])
      assert out.landmarks[row, i, 1] == split.landmarks[row, j, 1]
      assert out.visible[row, i] == split.visible[row, j]
    for v in (0, 7, 100):
      x, y, z = split.neutral[row, template.mirror[v]]
      np.testing.assert_array_equal(out.neutral[row, v], [-x, y, z])
  np.testing.assert_array_equal(out.identity, [5, 5, 6, -1])
  np.testing.assert_array_equal(out.weights("neutral"), [1, 0, 1, 1])
  assert out.names == ["r0:mirrored", "r1:mirrored", "r2:mirrored", "r3:mirrored"]
  twice = out.mirrored(template.mirror, identity_offset=-5)
  for field in ("images", "landmarks", "visible", "identity", "neutral", "posed"):
    np.testing.assert_allclose(getattr(twice, field), getattr(split, field), atol=1e-5)
  with pytest.raises(InputError, match="vertex mirror map"):
    split.mirrored(None, identity_offset=5)
  joined = image_sources.join_splits([split, out])
  assert len(joined) == 8 and joined.names[4] == "r0:mirrored"
  np.testing.assert_array_equal(joined.weights("neutral"), [1, 0, 1, 1, 1, 0, 1, 1])


def _tiny_world(resolution):
  from experiments.configs import stage2 as stage2_configs
  config = stage2_configs.get_config("tiny").data
  config.resolution, config.mirror = resolution, True
  return config


def test_data_mirror_adds_every_training_image_as_a_person_of_its_own():
  config = _tiny_world(13)
  data = image_sources.load(config, seed=0)
  config.mirror = False
  plain = image_sources.load(config, seed=0)
  n = len(plain.train)
  assert len(data.train) == 2 * n and len(data.test) == len(plain.test)
  expected = plain.train.mirrored(face_world.face_template(13).mirror,
                                  identity_offset=plain.num_classes)
  for field in ("images", "landmarks", "visible", "identity", "neutral", "posed"):
    np.testing.assert_array_equal(getattr(data.train, field)[:n], getattr(plain.train, field))
    np.testing.assert_array_equal(getattr(data.train, field)[n:], getattr(expected, field))
  assert data.num_classes == 2 * plain.num_classes
  np.testing.assert_array_equal(data.test.images, plain.test.images)
  assert "mirror image of every training image" in data.description
  with pytest.raises(InputError, match=r"\[8, 27, 28, 29, 30, 33, 51, 57, 62, 66\].*odd "
                                       r"data\.resolution"):
    image_sources.load(_tiny_world(12), seed=0)


def test_photo_folder_mirror_uses_the_model_vertex_map(tmp_path):
  """Photos: annotations mirrored whatever the model; their 3D truth through the vertex map of
  the stage-1 model's mean (here a face-world PCA model on the 13 x 13 grid)."""
  world = face_world.FaceWorld(resolution=13)
  scans = face_world.make_scans(8, 2, seed=0, world=world, noise_mm=0.0)
  init = stage1.pca_init(scans.vertices, scans.identity, num_shape=3, num_expr=2)
  model = stage1.pca_model(init, triangles=scans.triangles, landmarks=scans.landmarks)
  images = face_world.make_images(10, 2, seed=2, world=world, image_size=48,
                                  occluder_probability=0.0)
  lines = ["path,identity,mesh,neutral"]
  for i in range(20):
    write_png(tmp_path / f"p{i:02d}.png", images.images[i])
    write_pts(tmp_path / f"p{i:02d}.pts", images.landmarks[i])
    write_mesh(tmp_path / f"n{i:02d}.ply", images.neutral[i], model.triangles)
    lines.append(f"p{i:02d}.png,person{images.true_identity[i]},n{i:02d}.ply,n{i:02d}.ply")
  (tmp_path / "meta.csv").write_text("\n".join(lines) + "\n")
  config = ml_collections.ConfigDict(dict(
      source="folder", image_dir=str(tmp_path), image_size=32, test_fraction=0.5,
      crop_margin=0.25, skip_bad=False, allow_outside_paths=False, photo_meshes="all",
      mirror=True))
  data = image_sources.load(config, seed=0, model=model)
  partner = mirror.vertex_map(np.asarray(model.mean))
  np.testing.assert_array_equal(partner, world.template.mirror)
  n = len(data.train) // 2
  np.testing.assert_array_equal(data.train.images[n:], data.train.images[:n, :, ::-1])
  np.testing.assert_allclose(data.train.neutral[n:],
                             mirror.vertices(data.train.neutral[:n], partner), atol=0)
  with pytest.raises(InputError, match="needs the stage-1 model"):
    image_sources.load(config, seed=0)
  config.photo_meshes = "held_out"  # 2D-only training photos need no model
  assert len(image_sources.load(config, seed=0).train) == 2 * n
