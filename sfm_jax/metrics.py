"""Evaluation metrics (design section 6): reconstruction error and identity clustering of codes.

All functions take numpy arrays and return Python floats; they run on the host (evaluation is
not a hot path). Identity metrics use the codes' directions: cosine similarity for silhouette and
verification, unit-normalised codes for NMCD and k-means, so sphere and Gaussian models are
compared on the same footing (a recognition embedding is compared by angle).
"""

from __future__ import annotations

import numpy as np


def _unit(codes: np.ndarray) -> np.ndarray:
  codes = np.asarray(codes, np.float64)
  return codes / np.maximum(np.linalg.norm(codes, axis=-1, keepdims=True), 1e-12)


def vertex_distances(predicted: np.ndarray, target: np.ndarray) -> np.ndarray:
  """Per-vertex Euclidean distances `[N, V]` (float64) of `[N, V, 3]` vs `[N, V, 3]`."""
  return np.linalg.norm(np.asarray(predicted, np.float64) - np.asarray(target, np.float64),
                        axis=-1)


def distance_summary(errors: np.ndarray) -> dict:
  """Mean, median and 95th percentile (mm) of per-vertex distances."""
  errors = np.asarray(errors, np.float64)
  return {"mean_mm": float(errors.mean()), "median_mm": float(np.median(errors)),
          "p95_mm": float(np.percentile(errors, 95))}


def vertex_errors(predicted: np.ndarray, target: np.ndarray) -> dict:
  """Per-vertex Euclidean errors `[N, V, 3]` vs `[N, V, 3]`: mean, median and 95th percentile (mm)."""
  return distance_summary(vertex_distances(predicted, target))


def silhouette_cosine(codes: np.ndarray, labels: np.ndarray) -> float:
  """Mean silhouette with cosine distance `1 - cos` (Rousseeuw 1987; scikit-learn's
  `silhouette_score`): for sample i, `a` = mean distance to the other members of its cluster,
  `b` = smallest mean distance to another cluster, `s = (b - a) / max(a, b)`; samples alone in
  their cluster score 0."""
  from sklearn.metrics import silhouette_score
  labels = np.asarray(labels)
  if len(np.unique(labels)) < 2:
    raise ValueError("silhouette_cosine: needs at least 2 identities")
  return float(silhouette_score(_unit(codes), labels, metric="cosine"))


def nmcd(codes: np.ndarray, labels: np.ndarray) -> float:
  """Normalised mean class distance: mean squared distance of each (unit) code to its identity's
  centre over the mean squared distance between identity centres (lower = tighter identities)."""
  u = _unit(codes)
  labels = np.asarray(labels)
  classes = np.unique(labels)
  centres = np.stack([u[labels == c].mean(0) for c in classes])
  own = centres[np.searchsorted(classes, labels)]
  within = np.mean(np.sum((u - own) ** 2, -1))
  diff = centres[:, None] - centres[None]
  pairs = ~np.eye(len(classes), dtype=bool)
  between = np.mean(np.sum(diff ** 2, -1)[pairs])
  return float(within / between)


def verification_pairs(labels: np.ndarray, *, seed: int = 0, max_pairs: int = 6000):
  """Balanced pairs `[P, 2]` and same-identity flags: every (or a sample of) same-identity pair
  and as many random different-identity pairs."""
  labels = np.asarray(labels)
  rng = np.random.default_rng(seed)
  i, j = np.triu_indices(len(labels), k=1)
  same = labels[i] == labels[j]
  positives = np.flatnonzero(same)
  negatives = np.flatnonzero(~same)
  count = min(len(positives), len(negatives), max_pairs // 2)
  if count == 0:
    raise ValueError("verification_pairs: needs identities with several samples and >= 2 "
                     "identities")
  chosen = np.concatenate([rng.choice(positives, count, replace=False),
                           rng.choice(negatives, count, replace=False)])
  return np.stack([i[chosen], j[chosen]], 1), same[chosen]


def verification_accuracy(codes: np.ndarray, labels: np.ndarray, *, folds: int = 10,
                          seed: int = 0) -> float:
  """10-fold verification accuracy on balanced code pairs with cosine similarity.

  Pairs are split into `folds` random folds; for each fold the threshold that maximises accuracy
  on the other folds is applied to it; the mean held-out accuracy is returned (LFW protocol).
  """
  u = _unit(codes)
  pairs, same = verification_pairs(labels, seed=seed)
  similarity = np.sum(u[pairs[:, 0]] * u[pairs[:, 1]], -1)
  fold = np.random.default_rng(seed + 1).permutation(len(pairs)) % folds
  accuracies = []
  for k in range(folds):
    train, test = fold != k, fold == k
    if not test.any() or not train.any():  # fewer pairs than folds (tiny held-out sets)
      continue
    candidates = np.unique(similarity[train])
    thresholds = np.concatenate([[candidates[0] - 1e-9], (candidates[:-1] + candidates[1:]) / 2,
                                 [candidates[-1] + 1e-9]])
    train_acc = [np.mean((similarity[train] > t) == same[train]) for t in thresholds]
    best = thresholds[int(np.argmax(train_acc))]
    accuracies.append(np.mean((similarity[test] > best) == same[test]))
  return float(np.mean(accuracies)) if accuracies else float("nan")


def kmeans(points: np.ndarray, k: int, *, seed: int = 0, restarts: int = 5) -> np.ndarray:
  """k-means labels `[N]` (scikit-learn: k-means++ seeding, the lowest-inertia of `restarts`)."""
  from sklearn.cluster import KMeans
  return KMeans(n_clusters=k, n_init=restarts, random_state=seed).fit_predict(
      np.asarray(points, np.float64))


def normalized_mutual_information(a: np.ndarray, b: np.ndarray) -> float:
  """NMI of two labelings with the arithmetic-mean normaliser, `I(a; b) / ((H(a) + H(b)) / 2)`
  (scikit-learn's `normalized_mutual_info_score`)."""
  from sklearn.metrics import normalized_mutual_info_score
  return float(normalized_mutual_info_score(np.asarray(a), np.asarray(b),
                                            average_method="arithmetic"))


def identity_metrics(codes: np.ndarray, labels: np.ndarray, *, seed: int = 0) -> dict:
  """Silhouette (cosine), NMCD, 10-fold verification accuracy and k-means NMI of codes."""
  labels = np.asarray(labels)
  clusters = kmeans(_unit(codes), len(np.unique(labels)), seed=seed)
  return {"silhouette": silhouette_cosine(codes, labels), "nmcd": nmcd(codes, labels),
          "verification_accuracy": verification_accuracy(codes, labels, seed=seed),
          "nmi": normalized_mutual_information(labels, clusters)}


NOW_LANDMARKS = (36, 39, 42, 45, 33, 48, 54)  # iBUG eye corners, nose tip, mouth corners


def now_aligned_errors(predicted: np.ndarray, target: np.ndarray,
                       landmark_vertices: np.ndarray) -> np.ndarray:
  """Per-vertex distances `[N, V]` (mm) after a similarity alignment on landmark vertices.

  Following the NoW protocol's alignment, each predicted neutral mesh `[V, 3]` is aligned to the
  ground truth by the similarity (Umeyama) that best maps its `landmark_vertices` (the 7 NoW
  landmarks' vertex indices) onto the target's; with both meshes in one topology the error is then
  the vertex-to-vertex distance (NoW itself, lacking correspondence, measures scan-to-mesh).
  """
  import jax
  import jax.numpy as jnp

  from sfm_jax import geometry

  predicted = np.asarray(predicted, np.float64)
  target = np.asarray(target, np.float64)
  errors = []
  with jax.enable_x64(True):  # an evaluation metric: the alignment itself in float64
    for p, t in zip(predicted, target):
      scale, rotation, translation = (np.asarray(x, np.float64) for x in
                                      geometry.similarity_procrustes(
                                          jnp.asarray(p[landmark_vertices]),
                                          jnp.asarray(t[landmark_vertices])))
      aligned = scale * p @ rotation.T + translation
      errors.append(np.linalg.norm(aligned - t, axis=-1))
  return np.stack(errors)


def error_summary(errors: np.ndarray) -> dict:
  """Median, mean and standard deviation (mm) of all per-vertex errors."""
  errors = np.asarray(errors, np.float64).reshape(-1)
  return {"median_mm": float(np.median(errors)), "mean_mm": float(errors.mean()),
          "std_mm": float(errors.std())}


def landmark_nme(predicted: np.ndarray, target: np.ndarray, visible: np.ndarray | None = None,
                 *, normalizer: str = "interocular", per_image: bool = False):
  """Normalised mean error of 2D landmarks `[N, 68, 2]`.

  The mean of `||p - t||` over the counted landmarks (`visible`: `[N, 68]` or `[68]` weights,
  e.g. the visible ones and those a model defines; default all), divided per image by
  `normalizer`: "interocular", the outer-eye-corner (iBUG 36-45) distance of `t`, or "box",
  the square root of the area of the bounding box of all 68 annotated points `t`.
  Returns the mean over the images that count a landmark (a float; NaN if none does), or `[N]`
  with `per_image` (NaN for an image that counts none).
  """
  predicted, target = np.asarray(predicted, np.float64), np.asarray(target, np.float64)
  counted = np.broadcast_to(np.ones(predicted.shape[:2]) if visible is None
                            else np.asarray(visible, np.float64), predicted.shape[:2])
  if normalizer == "interocular":
    scale = np.linalg.norm(target[:, 36] - target[:, 45], axis=-1)
  elif normalizer == "box":
    scale = np.sqrt(np.prod(target.max(1) - target.min(1), axis=-1))
  else:
    raise ValueError(f"normalizer must be 'interocular' or 'box', got {normalizer!r}")
  distance = np.linalg.norm(predicted - target, axis=-1) / scale[:, None]
  total = counted.sum(1)
  errors = np.where(total > 0, (distance * counted).sum(1) / np.maximum(total, 1e-12), np.nan)
  if per_image:
    return errors
  return float(np.mean(errors[~np.isnan(errors)])) if np.any(~np.isnan(errors)) else float("nan")


def expression_share(codes: np.ndarray, identity: np.ndarray, expression: np.ndarray) -> float:
  """How much expression leaks into identity codes: the R^2 of a least-squares regression of
  each code's offset from its identity's mean code `[N, K]` on its expression code's offset from
  that identity's mean expression code `[N, E]`. 0: the within-identity spread of the codes has
  nothing to do with expression; 1: it is all expression."""
  offsets, inputs = np.array(codes, np.float64), np.array(expression, np.float64)
  for label in np.unique(identity):
    rows = np.asarray(identity) == label
    offsets[rows] -= offsets[rows].mean(0)
    inputs[rows] -= inputs[rows].mean(0)
  total = np.sum(offsets ** 2)
  if not inputs.size or not np.any(inputs) or total == 0:
    return 0.0
  coefficients, *_ = np.linalg.lstsq(inputs, offsets, rcond=None)
  return float(1.0 - np.sum((offsets - inputs @ coefficients) ** 2) / total)
