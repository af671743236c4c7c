"""The landmark read-out: a ridge regression from the 68 landmarks of an image to its person's
neutral shape, fitted in closed form on the training rows whose 3D is known.

It is a reference for stage 2 (design section 7), not a model: it says what a linear map of the
landmarks reaches with the same 3D supervision the networks get. A network that reads the
landmarks and does worse than this has not learned what its inputs carry.

The inputs are `networks.landmark_descriptor` `[N, D]` (D = 139), each coordinate z-scored over
the training rows (as the encoder's `landmark_norm="batch"` does). The penalty is chosen from
`PENALTIES` by k-fold cross-validation over identities (a person's rows stay in one fold), on the
mean squared vertex error. Everything is computed from per-fold sums (counts, sums of descriptors and
vertices, their cross products), so no `[N, V, 3]` array is copied: rows are read in chunks.
NumPy, float64; nothing here is differentiable.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from sfm_jax.networks import DESCRIPTOR_SIZE, landmark_descriptor_array
from sfm_jax.progress import Progress
from sfm_jax.sources.images import Split

# Penalties per row: the objective is mean_n |y_n - f(x_n)|^2 + penalty * |W|^2.
PENALTIES = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)


@dataclasses.dataclass(frozen=True)
class LandmarkRidge:
  """`predict(landmarks [N, 68, 2] pixels) -> [N, V, 3]` neutral vertices (mm)."""
  image_size: int
  matrix: np.ndarray        # [D, V * 3] applied to the raw descriptor
  offset: np.ndarray        # [V * 3]
  penalty: float            # the chosen penalty per row
  cv_errors: dict           # penalty -> cross-validated mean squared vertex error (mm^2)

  def predict(self, landmarks: np.ndarray) -> np.ndarray:
    x = landmark_descriptor_array(landmarks, image_size=self.image_size)
    return (x @ self.matrix + self.offset).reshape(len(x), -1, 3)


def fold_of_groups(groups: np.ndarray, *, folds: int, seed: int) -> np.ndarray:
  """`[N]` fold in [0, folds) of each row: the distinct `groups` shuffled (seeded) and dealt out
  in turn, so every row of a group lands in the same fold."""
  distinct, inverse = np.unique(groups, return_inverse=True)
  order = np.random.default_rng(seed).permutation(len(distinct))
  fold_of_distinct = np.empty(len(distinct), np.int64)
  fold_of_distinct[order] = np.arange(len(distinct)) % folds
  return fold_of_distinct[inverse.reshape(-1)]


@dataclasses.dataclass
class _Sums:
  """Sums over a set of rows: count, x, y, x x^T, x y^T, |y|^2."""
  n: float
  x: np.ndarray
  y: np.ndarray
  xx: np.ndarray
  xy: np.ndarray
  yy: float

  @classmethod
  def zeros(cls, d: int, p: int) -> _Sums:
    return cls(0.0, np.zeros(d), np.zeros(p), np.zeros((d, d)), np.zeros((d, p)), 0.0)

  def add(self, x: np.ndarray, y: np.ndarray) -> None:
    self.n += len(x)
    self.x += x.sum(0)
    self.y += y.sum(0)
    self.xx += x.T @ x
    self.xy += x.T @ y
    self.yy += float(np.sum(y * y))

  def _combine(self, other: _Sums, sign: float) -> _Sums:
    return _Sums(*(getattr(self, f.name) + sign * getattr(other, f.name)
                   for f in dataclasses.fields(self)))

  def __add__(self, other: _Sums) -> _Sums:
    return self._combine(other, 1.0)

  def __sub__(self, other: _Sums) -> _Sums:
    return self._combine(other, -1.0)


def _solve(s: _Sums, penalty: float) -> tuple[np.ndarray, np.ndarray]:
  """The ridge fit of the rows summed in `s` on z-scored descriptors, as `(M [D, P], c [P])`
  acting on raw descriptors: `f(x) = x M + c`."""
  mean_x, mean_y = s.x / s.n, s.y / s.n
  cov = s.xx / s.n - np.outer(mean_x, mean_x)
  cross = s.xy / s.n - np.outer(mean_x, mean_y)
  sd = np.sqrt(np.maximum(np.diag(cov), 0.0))
  sd = np.where(sd > 1e-12, sd, 1.0)
  standardised = cov / np.outer(sd, sd)
  weights = np.linalg.solve(standardised + penalty * np.eye(len(sd)), cross / sd[:, None])
  matrix = weights / sd[:, None]
  return matrix, mean_y - mean_x @ matrix


def _squared_error(s: _Sums, matrix: np.ndarray, offset: np.ndarray) -> float:
  """sum over the rows summed in `s` of |y - (x M + c)|^2, from the sums alone."""
  return (s.yy - 2 * np.sum(matrix * s.xy) - 2 * offset @ s.y
          + np.sum((s.xx @ matrix) * matrix) + 2 * offset @ (matrix.T @ s.x)
          + s.n * offset @ offset)


def fit_landmark_ridge(splits: Sequence[Split], *, image_size: int,
                       penalties: Sequence[float] = PENALTIES, folds: int = 5, seed: int = 0,
                       chunk: int = 512, progress_label: str | None = None) -> LandmarkRidge:
  """Fits the read-out on every row of `splits` whose neutral truth is known.

  Args:
    splits: training splits (photos, rendered scans); rows with `neutral_weight` 0 are skipped.
      Identities (`Split.identity`; -1 counts as a person of its own) must not repeat across
      splits unless they are the same person.
    image_size: S, the images' side in pixels (the descriptor's frame).
    penalties: candidates, per row (see `PENALTIES`).
    folds: cross-validation folds over identities (fewer if there are fewer identities).
    seed: the identities' assignment to folds.
    chunk: rows read at a time.
    progress_label: with it, a progress line (`progress.Progress`) over the meshes read.

  Raises:
    ValueError: if no row has a known neutral shape.
  """
  rows = [(s, np.flatnonzero(s.weights("neutral") > 0)) for s in splits if s.neutral is not None]
  rows = [(s, index) for s, index in rows if len(index)]
  if not rows:
    raise ValueError("the landmark read-out needs training rows with a known neutral shape")
  groups = np.concatenate([s.identity[index] for s, index in rows]).astype(np.int64)
  unlabelled = np.flatnonzero(groups < 0)   # each unlabelled row is a person of its own
  groups[unlabelled] = -1 - np.arange(len(unlabelled))
  fold = fold_of_groups(groups, folds=folds, seed=seed)
  folds = int(fold.max()) + 1
  reference = rows[0][0].neutral[rows[0][1][0]].reshape(-1).astype(np.float64)  # centres y
  p = len(reference)
  sums = [_Sums.zeros(DESCRIPTOR_SIZE, p) for _ in range(folds)]
  progress = None if progress_label is None else Progress(progress_label, total=len(groups),
                                                          unit="meshes")
  start = 0
  for s, index in rows:
    for lo in range(0, len(index), chunk):
      part = index[lo:lo + chunk]
      x = landmark_descriptor_array(s.landmarks[part], image_size=image_size)
      y = s.neutral[part].reshape(len(part), -1).astype(np.float64) - reference
      in_fold = fold[start + lo:start + lo + len(part)]
      for f in np.unique(in_fold):
        sums[f].add(x[in_fold == f], y[in_fold == f])
      if progress is not None:
        progress.update(start + lo + len(part))
    start += len(index)
  total = sum(sums[1:], sums[0])
  cv_errors = {}
  for penalty in penalties:
    error = 0.0
    for held_out in sums:
      # (one identity only: no held-out fold exists, and the error is the in-sample one)
      matrix, offset = _solve(total - held_out if folds > 1 else total, penalty)
      error += _squared_error(held_out, matrix, offset)
    cv_errors[float(penalty)] = float(error / total.n / (p // 3))
  penalty = min(cv_errors, key=cv_errors.get)
  matrix, offset = _solve(total, penalty)
  return LandmarkRidge(image_size=image_size, matrix=matrix, offset=offset + reference,
                       penalty=penalty, cv_errors=cv_errors)
