import flax.linen as nn
import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np
import pytest

from sfm_jax import geometry, networks, parallel, sphere


@pytest.mark.parametrize("depth,expected", [("resnet18", 11_176_512), ("resnet50", 23_508_032)])
def test_backbones_have_the_standard_sizes(depth, expected):
  # torchvision's resnet18 / resnet50 minus their 1000-class classifier.
  stages, bottleneck = networks.RESNETS[depth]
  backbone = networks.Backbone(stages, bottleneck)
  shapes = jax.eval_shape(lambda: backbone.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)),
                                                train=False))
  assert networks.parameter_count(shapes["params"]) == expected


def test_encoder_outputs_and_initial_predictions():
  encoder = networks.Encoder(shape_dim=8, expr_dim=5, albedo_dim=3, depth="resnet10", width=8)
  images = jax.random.uniform(jax.random.key(1), (4, 64, 64, 3))
  variables = encoder.init(jax.random.key(0), images, train=False)
  out = encoder.apply(variables, images, train=False)
  shapes = {k: v.shape for k, v in out.items()}
  assert shapes == {"z": (4, 8), "expression": (4, 5), "albedo": (4, 3), "rotation": (4, 6),
                    "translation": (4, 2), "scale": (4,), "light": (4, 9, 3)}
  # Untrained heads predict the neutral, frontal, evenly lit face at unit scale.
  np.testing.assert_allclose(out["expression"], 0.0)
  np.testing.assert_allclose(geometry.rotation_6d_to_matrix(out["rotation"]),
                             np.broadcast_to(np.eye(3), (4, 3, 3)), atol=1e-6)
  np.testing.assert_allclose(out["scale"], 1.0, rtol=1e-6)
  np.testing.assert_allclose(out["light"][:, 0], 1.0 / (0.282095 * np.pi), rtol=1e-6)
  # The shape head gives directions: different images, different codes, all on the sphere.
  s = sphere.project(out["z"], 3.0)
  np.testing.assert_allclose(jnp.linalg.norm(s, axis=1), 3.0, rtol=1e-5)
  assert float(jnp.max(jnp.abs(out["z"][0] - out["z"][1]))) > 0


def test_shape_head_scale_scales_the_initial_kernel_not_the_sphere_codes():
  """`shape_head_scale` multiplies the shape head's initial kernel (the same draw; 1 is LeCun
  normal, flax's default for Dense); the SFM codes R z / |z| at initialisation do not change."""
  images = jax.random.uniform(jax.random.key(1), (4, 64, 64, 3))
  init = lambda **kw: networks.Encoder(shape_dim=8, expr_dim=5, depth="resnet10", width=8,
                                       **kw).init(jax.random.key(0), images, train=False)
  default, half = init(), init(shape_head_scale=0.5)
  kernel = default["params"]["z"]["kernel"]
  np.testing.assert_allclose(half["params"]["z"]["kernel"], 0.5 * kernel, rtol=1e-6)
  fan_in = kernel.shape[0]  # LeCun normal: std 1 / sqrt(fan_in) (truncated at 2 std)
  assert 0.8 < float(jnp.std(kernel)) * np.sqrt(fan_in) < 1.0
  apply = lambda v: networks.Encoder(shape_dim=8, expr_dim=5, depth="resnet10", width=8).apply(
      v, images, train=False)["z"]
  np.testing.assert_allclose(sphere.project(apply(half), 3.0), sphere.project(apply(default), 3.0),
                             rtol=1e-5, atol=1e-6)


def test_batch_norm_statistics_update_only_in_training():
  encoder = networks.Encoder(shape_dim=4, expr_dim=2, depth="resnet10", width=8)
  images = jax.random.uniform(jax.random.key(2), (3, 32, 32, 3))
  variables = encoder.init(jax.random.key(0), images, train=False)
  _, updates = encoder.apply(variables, images, train=True, mutable=["batch_stats"])
  before = jax.tree_util.tree_leaves(variables["batch_stats"])
  after = jax.tree_util.tree_leaves(updates["batch_stats"])
  assert any(not np.allclose(a, b) for a, b in zip(before, after))
  # Evaluation mode uses the running averages and is deterministic.
  first = encoder.apply(variables, images, train=False)
  second = encoder.apply(variables, images, train=False)
  np.testing.assert_array_equal(first["z"], second["z"])
  with pytest.raises(ValueError, match="depth must be one of"):
    networks.Encoder(shape_dim=4, expr_dim=2, depth="resnet7").init(jax.random.key(0), images)


def test_landmark_descriptor_and_a_landmark_reading_encoder():
  rng = np.random.default_rng(0)
  points = rng.uniform(10, 50, size=(2, 68, 2))
  d = np.asarray(networks.landmark_descriptor(jnp.asarray(points), image_size=64))
  # Shape part: centred, unit RMS radius; then the centre (fraction around the middle) and the
  # radius (fraction of the image).
  shape = d[:, :136].reshape(2, 68, 2)
  np.testing.assert_allclose(shape.mean(1), 0, atol=1e-6)
  np.testing.assert_allclose(np.sqrt(np.mean(np.sum(shape ** 2, -1), 1)), 1, rtol=1e-5)
  np.testing.assert_allclose(d[:, 136:138], points.mean(1) / 64 - 0.5, rtol=1e-5, atol=1e-6)
  rms = np.sqrt(np.mean(np.sum((points - points.mean(1, keepdims=True)) ** 2, -1), 1))
  np.testing.assert_allclose(d[:, 138], rms / 64, rtol=1e-5)
  # Moved and scaled landmarks keep the shape part.
  moved = np.asarray(networks.landmark_descriptor(jnp.asarray(points * 0.5 + 7), image_size=64))
  np.testing.assert_allclose(moved[:, :136], d[:, :136], atol=1e-5)
  # An encoder with landmark_features reads them: different landmarks, different codes.
  encoder = networks.Encoder(shape_dim=4, expr_dim=2, depth="resnet10", width=8,
                             landmark_features=8)
  images = jnp.zeros((2, 32, 32, 3))
  variables = encoder.init(jax.random.key(0), images, landmarks=jnp.asarray(points))
  a = encoder.apply(variables, images, landmarks=jnp.asarray(points))["z"]
  b = encoder.apply(variables, images, landmarks=jnp.asarray(points[::-1]))["z"]
  assert not np.allclose(a, b) and np.allclose(a[0], b[1], atol=1e-5)
  with pytest.raises(ValueError, match="reads landmarks"):
    encoder.apply(variables, images)


def test_landmark_inputs_are_standardised_over_the_batch_in_training(rng):
  points = jnp.asarray(rng.uniform(10, 50, size=(6, 68, 2)))
  images = jnp.zeros((6, 32, 32, 3))
  trunk = networks.Trunk("resnet10", 8, landmark_features=8)
  variables = trunk.init(jax.random.key(0), images, landmarks=points)
  _, updates = trunk.apply(variables, images, train=True, landmarks=points,
                           mutable=["batch_stats"])
  descriptor = np.asarray(networks.landmark_descriptor(points, image_size=32), np.float64)
  stats = updates["batch_stats"]["landmarks_norm"]
  # Running statistics move 10% of the way from (0, 1) to the batch's mean and variance.
  np.testing.assert_allclose(stats["mean"], 0.1 * descriptor.mean(0), rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(stats["var"], 0.9 + 0.1 * descriptor.var(0), rtol=1e-4)
  # The MLP reads the standardised values: its first layer, applied by hand, gives the same
  # hidden units as the module.
  standard = (descriptor - descriptor.mean(0)) / np.sqrt(descriptor.var(0) + 1e-5)
  dense = variables["params"]["landmarks_1"]
  hidden = np.maximum(standard @ np.asarray(dense["kernel"]) + np.asarray(dense["bias"]), 0)
  dense = variables["params"]["landmarks_2"]
  hidden = np.maximum(hidden @ np.asarray(dense["kernel"]) + np.asarray(dense["bias"]), 0)
  features, _ = trunk.apply(variables, images, train=True, landmarks=points,
                            mutable=["batch_stats"])
  np.testing.assert_allclose(features[:, -8:], hidden, rtol=1e-3, atol=1e-4)


def test_whitening_statistics_decorrelate_the_training_descriptors(rng):
  points = rng.uniform(10, 50, size=(400, 68, 2))
  points[:, :, 1] += 0.5 * points[:, :, :1].mean(1)  # correlated coordinates
  descriptor = np.asarray(networks.landmark_descriptor(jnp.asarray(points), image_size=64),
                          np.float64)
  variances = np.linalg.eigvalsh(np.cov(descriptor, rowvar=False, bias=True))
  for regularisation in (1e-9, 1e-2):
    stats = networks.whitening_statistics(points, image_size=64, regularisation=regularisation)
    white = (descriptor - stats["mean"]) @ stats["matrix"].astype(np.float64)
    np.testing.assert_allclose(white.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(stats["matrix"], stats["matrix"].T, atol=1e-5)  # ZCA: symmetric
    # Each direction of variance l ends with variance l / (l + regularisation * max l).
    expected = variances / (variances + regularisation * variances.max())
    np.testing.assert_allclose(np.linalg.eigvalsh(np.cov(white, rowvar=False, bias=True)),
                               expected, atol=2e-3)
  assert expected.min() < 0.5  # the regularisation damps the smallest directions


def test_whitening_trunk_uses_fixed_statistics_and_passes_the_descriptor_on(rng):
  points = jnp.asarray(rng.uniform(10, 50, size=(6, 68, 2)))
  images = jnp.zeros((6, 32, 32, 3))
  trunk = networks.Trunk("resnet10", 8, landmark_features=8, landmark_norm="whiten",
                         landmark_linear=True)
  variables = trunk.init(jax.random.key(0), images, landmarks=points)
  stats = networks.whitening_statistics(rng.uniform(10, 50, size=(200, 68, 2)), image_size=32)
  variables["batch_stats"]["landmarks_whitening"] = stats
  features, updates = trunk.apply(variables, images, train=True, landmarks=points,
                                  mutable=["batch_stats"])
  for key in ("mean", "matrix"):  # training leaves them as they were set
    np.testing.assert_array_equal(updates["batch_stats"]["landmarks_whitening"][key], stats[key])
  descriptor = np.asarray(networks.landmark_descriptor(points, image_size=32), np.float64)
  white = (descriptor - stats["mean"]) @ stats["matrix"]
  assert features.shape[1] == 8 * 8 + 8 + networks.DESCRIPTOR_SIZE
  np.testing.assert_allclose(features[:, -networks.DESCRIPTOR_SIZE:], white, rtol=1e-4,
                             atol=1e-4)
  dense = variables["params"]["landmarks_1"]
  hidden = np.maximum(white @ np.asarray(dense["kernel"]) + np.asarray(dense["bias"]), 0)
  dense = variables["params"]["landmarks_2"]
  hidden = np.maximum(hidden @ np.asarray(dense["kernel"]) + np.asarray(dense["bias"]), 0)
  np.testing.assert_allclose(features[:, -networks.DESCRIPTOR_SIZE - 8:-networks.DESCRIPTOR_SIZE],
                             hidden, rtol=1e-3, atol=1e-4)
  with pytest.raises(ValueError, match="landmark_norm must be one of"):
    networks.Trunk("resnet10", 8, landmark_features=8, landmark_norm="pca").init(
        jax.random.key(0), images, landmarks=points)


@pytest.mark.parametrize("linear", [False, True])
def test_shape_from_landmarks_ignores_the_pixels_but_not_the_landmarks(rng, linear):
  encoder = networks.Encoder(shape_dim=4, expr_dim=2, depth="resnet10", width=8,
                             landmark_features=8, shape_from_landmarks=True,
                             landmark_linear=linear)
  points = jnp.asarray(rng.uniform(10, 30, size=(2, 68, 2)))
  images = jnp.asarray(rng.uniform(size=(2, 32, 32, 3)))
  variables = encoder.init(jax.random.key(0), images, landmarks=points)
  z = lambda images, points: encoder.apply(variables, images, landmarks=points)["z"]
  np.testing.assert_allclose(z(images[::-1], points), z(images, points), rtol=1e-6)
  assert not np.allclose(z(images, points[::-1]), z(images, points))
  # The kernel of the shape head has one row per landmark feature (the MLP's, then the
  # descriptor's).
  assert variables["params"]["z"]["kernel"].shape == (8 + linear * networks.DESCRIPTOR_SIZE, 4)
  with pytest.raises(ValueError, match="landmark_features"):
    networks.Encoder(shape_dim=4, expr_dim=2, depth="resnet10", width=8,
                     shape_from_landmarks=True).init(jax.random.key(0), images)


@pytest.mark.parametrize("size", [(9, 12), (8, 7)])  # odd and even sides
def test_stem_max_pool_equals_flax_max_pool_in_value_and_gradient(rng, size):
  x = jnp.asarray(rng.normal(size=(2, *size, 3)), jnp.float32)  # no ties
  weights = jnp.asarray(rng.normal(size=(2, (size[0] + 1) // 2, (size[1] + 1) // 2, 3)),
                        jnp.float32)
  flax_pool = lambda x: nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
  np.testing.assert_array_equal(networks.max_pool_3x3_stride_2(x), flax_pool(x))
  grad = lambda pool: jax.grad(lambda x: jnp.sum(weights * pool(x)))(x)
  np.testing.assert_allclose(grad(networks.max_pool_3x3_stride_2), grad(flax_pool), atol=1e-6)
  # Each output's gradient lands on its window's maximum: a hand-made window.
  one = jnp.zeros((1, 3, 3, 1)).at[0, 2, 1, 0].set(5.0)
  np.testing.assert_array_equal(jax.grad(lambda x: networks.max_pool_3x3_stride_2(x)[0, 1, 0, 0])(one),
                                (one == 5.0).astype(jnp.float32))


@pytest.mark.parametrize("shape", [(3, 5, 4, 6), (7, 5)])
@pytest.mark.parametrize("train", [True, False])
def test_batch_norm_equals_flax_batch_norm_in_values_statistics_and_gradients(x64, rng, shape,
                                                                              train):
  # `networks.BatchNorm` replaces `nn.BatchNorm` in the encoder; same variables (so checkpoints
  # carry over), same outputs, running statistics and gradients, in float64.
  x = jnp.asarray(rng.normal(1.5, 2.0, size=shape))
  weights = jnp.asarray(rng.normal(size=shape))
  ours = networks.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                            param_dtype=jnp.float64)
  theirs = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                        param_dtype=jnp.float64)
  variables = theirs.init(jax.random.key(0), x)
  ours_variables = ours.init(jax.random.key(0), x)
  assert jax.tree.map(jnp.shape, ours_variables) == jax.tree.map(jnp.shape, variables)
  # Non-trivial scale, bias and running statistics.
  channels = shape[-1]
  variables = {"params": {"scale": jnp.asarray(rng.uniform(0.5, 2.0, channels)),
                          "bias": jnp.asarray(rng.normal(size=channels))},
               "batch_stats": {"mean": jnp.asarray(rng.normal(size=channels)),
                               "var": jnp.asarray(rng.uniform(0.5, 2.0, channels))}}

  def loss(module, params, x):
    y, updates = module.apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                              mutable=["batch_stats"])
    return jnp.sum(weights * y), (y, updates["batch_stats"])

  (ours_loss, (ours_y, ours_stats)), ours_grads = jax.value_and_grad(
      lambda p, x: loss(ours, p, x), argnums=(0, 1), has_aux=True)(variables["params"], x)
  (_, (their_y, their_stats)), their_grads = jax.value_and_grad(
      lambda p, x: loss(theirs, p, x), argnums=(0, 1), has_aux=True)(variables["params"], x)
  np.testing.assert_allclose(ours_y, their_y, rtol=1e-12, atol=1e-12)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-11),
               (ours_stats, ours_grads), (their_stats, their_grads))
  # And against the closed form, written here.
  rows = np.asarray(x).reshape(-1, channels)
  scale, bias = (np.asarray(variables["params"][k]) for k in ("scale", "bias"))
  if train:
    mean, var = rows.mean(axis=0), rows.var(axis=0)
    np.testing.assert_allclose(ours_stats["mean"],
                               0.9 * variables["batch_stats"]["mean"] + 0.1 * mean, rtol=1e-12)
    np.testing.assert_allclose(ours_stats["var"],
                               0.9 * variables["batch_stats"]["var"] + 0.1 * var, rtol=1e-12)
  else:
    mean, var = (np.asarray(variables["batch_stats"][k]) for k in ("mean", "var"))
    jax.tree.map(np.testing.assert_array_equal, ours_stats, variables["batch_stats"])
  expected = (rows - mean) / np.sqrt(var + 1e-5) * scale + bias
  np.testing.assert_allclose(np.asarray(ours_y).reshape(-1, channels), expected, rtol=1e-10,
                             atol=1e-12)
  jax.test_util.check_grads(lambda p, x: loss(ours, p, x)[0], (variables["params"], x), order=1,
                            modes=("rev",))


def test_batch_norm_variance_survives_a_mean_far_above_the_spread_in_float32(rng):
  # Landmark pixel coordinates: mean ~100, spread ~0.1. The one-pass E[x^2] - E[x]^2 loses about
  # 1e4 * float32 epsilon relative; two passes keep the numpy (float64) variance to ~1e-5.
  rows = rng.normal(100.0, 0.1, size=(256, 4))
  x = jnp.asarray(rows, jnp.float32)
  module = networks.BatchNorm(momentum=0.0)  # running statistics = this batch's
  variables = module.init(jax.random.key(0), x)
  y, updates = module.apply(variables, x, mutable=["batch_stats"])
  rows32 = np.asarray(x, np.float64)
  np.testing.assert_allclose(updates["batch_stats"]["var"], rows32.var(axis=0), rtol=1e-4)
  np.testing.assert_allclose(y, (rows32 - rows32.mean(0)) / np.sqrt(rows32.var(0) + 1e-5),
                             rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("groups", [1, 2, 3, 5])
def test_split_groups_puts_row_b_in_group_b_mod_groups_and_join_inverts_it(groups):
  x = np.arange(12 * 2 * 3).reshape(12, 2, 3)
  parts = parallel.split_groups(x, groups)
  if 12 % groups:  # does not divide the batch: one group, the batch itself
    assert len(parts) == 1 and parts[0] is x
  else:
    assert len(parts) == groups
    for group, part in enumerate(parts):
      np.testing.assert_array_equal(part, x[group::groups])
  np.testing.assert_array_equal(parallel.join_groups(parts), x)


@pytest.mark.parametrize("train", [True, False])
def test_batch_norm_of_groups_is_batch_norm_of_the_whole_batch(x64, rng, train):
  # The groups of one batch (`parallel.split_groups`) normalised together: each group's rows of
  # the whole batch's output, the same running statistics and the same gradients.
  x = jnp.asarray(rng.normal(1.5, 2.0, size=(6, 3, 2, 5)))
  weights = jnp.asarray(rng.normal(size=x.shape))
  module = networks.BatchNorm(use_running_average=not train, momentum=0.9,
                              param_dtype=jnp.float64)
  variables = module.init(jax.random.key(0), x)
  params = {"scale": jnp.asarray(rng.uniform(0.5, 2.0, 5)), "bias": jnp.asarray(rng.normal(size=5))}

  def loss(params, x, groups):
    parts = parallel.split_groups(x, groups) if groups > 1 else x
    y, updates = module.apply({"params": params, "batch_stats": variables["batch_stats"]}, parts,
                              mutable=["batch_stats"])
    y = parallel.join_groups(y) if groups > 1 else y
    return jnp.sum(weights * y), (y, updates["batch_stats"])

  (_, whole), whole_grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(params, x, 1)
  for groups in (2, 3):
    (_, grouped), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(params, x,
                                                                                  groups)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12),
                 (grouped, grads), (whole, whole_grads))


@pytest.mark.parametrize("bottleneck", [False, True])
def test_batch_groups_change_the_speed_not_the_encoder(x64, bottleneck):
  """The backbone run as 2 groups of the batch is the same network: the same variables (so
  checkpoints and encoder files carry over), outputs, BatchNorm statistics and gradients as one
  group, in float64. Basic blocks through the whole encoder (resnet10, landmark branch), the
  bottleneck blocks through a backbone of one block per stage."""
  images = jax.random.uniform(jax.random.key(1), (4, 32, 32, 3), jnp.float64)
  landmarks = jax.random.uniform(jax.random.key(2), (4, 68, 2), jnp.float64, 4.0, 28.0)
  if bottleneck:
    make = lambda groups: networks.Backbone((1, 1, 1, 1), True, 4, jnp.float64,
                                            batch_groups=groups)
    inputs = lambda train: dict(x=images, train=train)
  else:
    make = lambda groups: networks.Encoder(
        shape_dim=4, expr_dim=2, albedo_dim=2, depth="resnet10", width=4, landmark_features=8,
        landmark_norm="batch", dtype=jnp.float64, batch_groups=groups)
    inputs = lambda train: dict(images=images, train=train, landmarks=landmarks)
  init = lambda groups: jax.jit(lambda: make(groups).init(jax.random.key(0), **inputs(False)))()
  initial = init(1)
  variables = jax.tree.map(lambda v: v.astype(jnp.float64), initial)

  def step(groups):
    def loss(params):
      out, updates = make(groups).apply(
          {"params": params, "batch_stats": variables["batch_stats"]}, **inputs(True),
          mutable=["batch_stats"])
      return sum(jnp.sum(jnp.sin(x)) for x in jax.tree.leaves(out)), (out, updates)
    (_, outputs), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"])
    return outputs, grads

  jax.tree.map(np.testing.assert_array_equal, init(2), initial)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-12),
               step(2), step(1))
