import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sfm_jax import geometry, networks, sphere


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
