import numpy as np
import pytest

from sfm_jax import metrics


def _brute_silhouette(codes, labels):
  u = codes / np.linalg.norm(codes, axis=1, keepdims=True)
  d = 1 - u @ u.T
  out = []
  for i in range(len(u)):
    same = (labels == labels[i]) & (np.arange(len(u)) != i)
    if not same.any():
      out.append(0.0)
      continue
    a = d[i, same].mean()
    b = min(d[i, labels == c].mean() for c in set(labels) if c != labels[i])
    out.append((b - a) / max(a, b))
  return np.mean(out)


def test_silhouette_matches_definition(rng):
  codes = rng.normal(size=(30, 5))
  labels = rng.integers(0, 4, 30)
  labels[0] = 9  # a singleton cluster scores 0
  np.testing.assert_allclose(metrics.silhouette_cosine(codes, labels),
                             _brute_silhouette(codes, labels), rtol=1e-10)


def test_nmcd_hand_example():
  # Unit codes: identity 0 at +-10 degrees around x, identity 1 at +-10 degrees around y.
  t = np.deg2rad(10)
  codes = np.array([[np.cos(t), np.sin(t)], [np.cos(t), -np.sin(t)],
                    [np.sin(t), np.cos(t)], [-np.sin(t), np.cos(t)]])
  labels = np.array([0, 0, 1, 1])
  within = np.sin(t) ** 2  # squared distance to the centre (cos t, 0)
  between = 2 * np.cos(t) ** 2  # centres (cos t, 0) and (0, cos t)
  np.testing.assert_allclose(metrics.nmcd(codes * 7.0, labels), within / between, rtol=1e-12)


def test_verification_is_perfect_for_separated_and_chance_for_random(rng):
  centres = rng.normal(size=(8, 16))
  labels = np.repeat(np.arange(8), 5)
  tight = centres[labels] + 0.01 * rng.normal(size=(40, 16))
  assert metrics.verification_accuracy(tight, labels) == 1.0
  random_codes = rng.normal(size=(400, 16))
  random_labels = np.repeat(np.arange(100), 4)
  assert abs(metrics.verification_accuracy(random_codes, random_labels) - 0.5) < 0.08


def test_verification_of_twins_scores_the_known_best_threshold(rng):
  """20 identities in 10 pairs of twins (a pair shares one code exactly; pairs point in
  well-separated directions), every image at its identity's code: same-identity pairs have
  cosine 1, different-identity pairs cosine 1 for twins and below 0.2 otherwise. The best
  threshold lies in (0.2, 1) and misjudges exactly the twin pairs, so the accuracy is
  1 - (twin pairs) / (all pairs); with a threshold chosen per fold it is that to within the
  fold-size rounding."""
  directions = np.linalg.qr(rng.normal(size=(16, 10)))[0].T  # 10 orthonormal directions
  codes_of_identity = np.repeat(directions, 2, axis=0)  # identities 2k and 2k+1 are twins
  labels = np.repeat(np.arange(20), 4)
  codes = codes_of_identity[labels] * rng.uniform(0.5, 3.0, (80, 1))  # norms do not matter
  pairs, same = metrics.verification_pairs(labels, seed=0)
  twins = (labels[pairs[:, 0]] // 2 == labels[pairs[:, 1]] // 2) & ~same
  assert 0.02 < twins.mean() < 0.2  # the case is not degenerate
  expected = 1.0 - twins.mean()
  assert metrics.verification_accuracy(codes, labels) == pytest.approx(expected, abs=0.005)


def test_nmi_and_kmeans(rng):
  labels = np.repeat(np.arange(5), 6)
  assert metrics.normalized_mutual_information(labels, labels) == pytest.approx(1.0)
  assert metrics.normalized_mutual_information(labels, (labels + 2) % 5) == pytest.approx(1.0)
  # Independent labelings: a 2x2 design with uniform joint has zero mutual information.
  a, b = np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1])
  assert metrics.normalized_mutual_information(a, b) == pytest.approx(0.0, abs=1e-12)
  # A hand-computed case: a = [0,0,1,1], b = [0,0,0,1]. Joint p(0,0)=1/2, p(1,0)=p(1,1)=1/4;
  # H(a) = ln 2, H(b) = -(3/4 ln 3/4 + 1/4 ln 1/4), I = H(b) - H(b|a) = H(b) - 1/2 ln 2.
  h_a, h_b = np.log(2), -(0.75 * np.log(0.75) + 0.25 * np.log(0.25))
  expected = (h_b - 0.5 * np.log(2)) / ((h_a + h_b) / 2)
  assert metrics.normalized_mutual_information(a, np.array([0, 0, 0, 1])) == pytest.approx(
      expected, rel=1e-12)
  points = np.repeat(np.eye(5) * 10, 6, axis=0) + 0.1 * rng.normal(size=(30, 5))
  found = metrics.kmeans(points, 5, seed=3)
  assert metrics.normalized_mutual_information(labels, found) == pytest.approx(1.0)


def test_vertex_errors():
  predicted = np.zeros((1, 4, 3))
  target = np.array([[[3.0, 4.0, 0.0], [0, 0, 0], [0, 0, 1.0], [0, 2.0, 0]]])
  scores = metrics.vertex_errors(predicted, target)
  assert scores["mean_mm"] == pytest.approx(2.0)
  assert scores["median_mm"] == pytest.approx(1.5)
  assert scores["p95_mm"] == pytest.approx(np.percentile([5, 0, 1, 2], 95))


def test_now_alignment_removes_similarity_and_keeps_shape_error(rng):
  target = rng.normal(size=(2, 50, 3)) * 40
  landmark_vertices = np.arange(7) * 3
  angle = 0.4
  rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0],
                       [0, 0, 1]])
  moved = 1.3 * target @ rotation.T + np.array([5.0, -7.0, 2.0])
  errors = metrics.now_aligned_errors(moved, target, landmark_vertices)
  assert errors.shape == (2, 50) and errors.max() < 1e-6
  # A 2 mm bump on non-landmark vertices survives the alignment unchanged.
  bumped = target.copy()
  bumped[:, 40:, 2] += 2.0
  errors = metrics.now_aligned_errors(bumped, target, landmark_vertices)
  np.testing.assert_allclose(errors[:, 40:], 2.0, atol=1e-6)
  np.testing.assert_allclose(errors[:, landmark_vertices], 0.0, atol=1e-6)
  summary = metrics.error_summary(np.array([1.0, 2.0, 3.0, 10.0]))
  assert summary == {"median_mm": 2.5, "mean_mm": 4.0, "std_mm": pytest.approx(np.std([1, 2, 3, 10]))}


def test_landmark_nme_hand_example():
  target = np.zeros((1, 68, 2))
  target[0, 36], target[0, 45] = [0.0, 0.0], [50.0, 0.0]  # inter-ocular distance 50
  predicted = target.copy()
  predicted[0, 10] += [3.0, 4.0]  # one landmark 5 px off
  visible = np.ones((1, 68), bool)
  assert metrics.landmark_nme(predicted, target, visible) == pytest.approx(5 / 50 / 68)
  visible[0, 10] = False
  assert metrics.landmark_nme(predicted, target, visible) == 0.0


def test_landmark_nme_counts_only_the_defined_landmarks_and_both_normalisers():
  """A model defining 50 of the 68 landmarks (no jaw 0-16, no inner mouth corner 60): the
  undefined ones sit wherever (here 1000 px off) and must not count."""
  target = np.zeros((1, 68, 2))
  target[0, :, 0] = np.linspace(0.0, 80.0, 68)  # box 80 x 60
  target[0, :, 1] = np.linspace(0.0, 60.0, 68) ** 2 / 60.0
  target[0, 36], target[0, 45] = [10.0, 5.0], [50.0, 35.0]  # inter-ocular distance 50
  defined = np.ones(68, bool)
  defined[list(range(17)) + [60]] = False
  predicted = target.copy()
  predicted[0, ~defined] += 1000.0
  predicted[0, 30] += [6.0, 8.0]  # one defined landmark 10 px off
  assert metrics.landmark_nme(predicted, target, defined) == pytest.approx(10 / 50 / 50)
  box = np.sqrt(80.0 * 60.0)
  assert metrics.landmark_nme(predicted, target, defined, normalizer="box") == pytest.approx(
      10 / box / 50)
  per_image = metrics.landmark_nme(np.concatenate([predicted, target]),
                                   np.concatenate([target, target]), defined, per_image=True)
  np.testing.assert_allclose(per_image, [10 / 50 / 50, 0.0])
  nothing = metrics.landmark_nme(predicted, target, np.zeros(68, bool), per_image=True)
  assert np.isnan(nothing).all()


def test_expression_share_on_hand_made_codes(rng):
  """Codes = identity centre + 0.5 * expression (+ noise): all of the within-identity spread
  without noise, the variance share with it, about none for unrelated codes."""
  identity = np.repeat(np.arange(10), 6)
  expression = rng.normal(size=(60, 2))
  centres = rng.normal(size=(10, 3)) * 10.0
  mixing = np.array([[0.5, 0.0, 0.0], [0.0, 0.5, 0.0]])
  clean = centres[identity] + expression @ mixing
  assert metrics.expression_share(clean, identity, expression) == pytest.approx(1.0)
  noise = rng.normal(size=(600, 3)) * 0.5
  identity = np.repeat(np.arange(100), 6)
  expression = rng.normal(size=(600, 2))
  centres = rng.normal(size=(100, 3)) * 10.0
  noisy = centres[identity] + expression @ mixing + noise
  # Within an identity: expression variance 0.25 in two dimensions, noise 0.25 in all three;
  # expression explains 0.5 of 1.25.
  assert metrics.expression_share(noisy, identity, expression) == pytest.approx(0.4, abs=0.05)
  assert metrics.expression_share(noise, identity, expression) < 0.15  # unrelated: near 0
