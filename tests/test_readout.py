"""The landmark ridge read-out (`sfm_jax.readout`) against scikit-learn's ridge regression."""

import numpy as np
import pytest
from sklearn.linear_model import Ridge

from sfm_jax import readout
from sfm_jax.networks import landmark_descriptor_array
from sfm_jax.sources.images import Split

SIZE = 64


def _split(landmarks, neutral, identity, weight=None):
  n = len(landmarks)
  return Split(images=np.zeros((n, 1, 1, 3), np.uint8), landmarks=landmarks.astype(np.float32),
               visible=np.ones((n, 68), bool), identity=identity.astype(np.int32),
               neutral=neutral.astype(np.float32), posed=neutral.astype(np.float32),
               names=[str(i) for i in range(n)], neutral_weight=weight)


def _linear_data(rng, n, vertices, *, noise, coefficients):
  landmarks = rng.uniform(10, SIZE - 10, (n, 68, 2))
  x = landmark_descriptor_array(landmarks, image_size=SIZE)
  y = x @ coefficients + rng.normal(size=(n, vertices * 3)) * noise + 90.0
  return landmarks, y.reshape(n, vertices, 3), x


def _sklearn_fit(x, y, penalty):
  """sklearn's ridge on z-scored descriptors, its alpha scaled to our per-row penalty."""
  mean, sd = x.mean(0), x.std(0)
  model = Ridge(alpha=penalty * len(x)).fit((x - mean) / sd, y.reshape(len(y), -1))
  return lambda new: model.predict((new - mean) / sd)


def test_ridge_equals_sklearn_and_cross_validates_over_whole_identities():
  rng = np.random.default_rng(0)
  vertices = 40
  coefficients = rng.normal(size=(139, vertices * 3)) * 0.3
  landmarks, neutral, x = _linear_data(rng, 240, vertices, noise=2.0, coefficients=coefficients)
  identity = np.repeat(np.arange(80), 3)
  # Two splits (photos, rendered scans) of different people, and rows of unknown truth (weight
  # 0, garbage values) in the first one, which must be ignored.
  garbage = _split(rng.uniform(0, SIZE, (10, 68, 2)), rng.normal(size=(10, vertices, 3)) * 1e3,
                   np.full(10, 5))
  photos = _split(np.concatenate([landmarks[:150], garbage.landmarks]),
                  np.concatenate([neutral[:150], garbage.neutral]),
                  np.concatenate([identity[:150], garbage.identity]),
                  weight=np.r_[np.ones(150), np.zeros(10)].astype(np.float32))
  scans = _split(landmarks[150:], neutral[150:], identity[150:])
  ridge = readout.fit_landmark_ridge([photos, scans], image_size=SIZE, chunk=37, seed=3)

  fold = readout.fold_of_groups(identity, folds=5, seed=3)
  for person in range(80):  # a person's rows in one fold; 16 people per fold
    assert len(set(fold[identity == person])) == 1
  np.testing.assert_array_equal(np.bincount(fold[::3]), [16] * 5)
  for penalty in readout.PENALTIES:  # brute force: refit per fold with sklearn
    squared = 0.0
    for f in range(5):
      train, held_out = fold != f, fold == f
      predicted = _sklearn_fit(x[train], neutral[train], penalty)(x[held_out])
      squared += np.sum((predicted - neutral[held_out].reshape(held_out.sum(), -1)) ** 2)
    assert ridge.cv_errors[penalty] == pytest.approx(squared / 240 / vertices, rel=1e-6)
  assert ridge.penalty == min(ridge.cv_errors, key=ridge.cv_errors.get)
  new = rng.uniform(10, SIZE - 10, (7, 68, 2))
  new_x = landmark_descriptor_array(new, image_size=SIZE)
  expected = _sklearn_fit(x, neutral, ridge.penalty)(new_x)
  np.testing.assert_allclose(ridge.predict(new).reshape(7, -1), expected, atol=1e-4)


def test_ridge_recovers_a_linear_map_of_the_landmarks_on_unseen_rows():
  rng = np.random.default_rng(1)
  coefficients = rng.normal(size=(139, 30 * 3))
  landmarks, neutral, _ = _linear_data(rng, 400, 30, noise=1e-3, coefficients=coefficients)
  ridge = readout.fit_landmark_ridge([_split(landmarks, neutral, np.arange(400) // 2)],
                                     image_size=SIZE)
  assert ridge.penalty <= 1e-4  # nearly noise-free: the smallest penalties win
  new, truth, _ = _linear_data(rng, 20, 30, noise=0.0, coefficients=coefficients)
  scale = np.abs(truth - truth.mean(0)).mean()
  assert np.abs(ridge.predict(new) - truth).mean() < 0.02 * scale


def test_ridge_needs_rows_with_known_truth():
  rng = np.random.default_rng(2)
  split = _split(rng.uniform(0, SIZE, (4, 68, 2)), np.zeros((4, 5, 3)), np.arange(4),
                 weight=np.zeros(4, np.float32))
  with pytest.raises(ValueError, match="known neutral shape"):
    readout.fit_landmark_ridge([split], image_size=SIZE)
