"""Principal directions of row sets, in memory or streamed in blocks (numpy, float64).

- `principal_directions(rows, count)`: exact, through the `M x M` Gram matrix of rows held in
  memory (cheap when the rows are fewer than their length, as with scans: M << 3V).
- `SubspaceIteration`: the same directions from rows seen only in blocks, one pass per
  iteration: block subspace iteration with Rayleigh-Ritz (Golub and Van Loan, *Matrix
  Computations*, 4th ed., section 8.2.4; Halko, Martinsson and Tropp 2011 for the random start).
  Each pass accumulates `S Q = sum_blocks A_b^T (A_b Q)` for the scatter matrix `S = A^T A` of
  all rows, so memory is two `[D, L]` matrices (`L = count + oversample`) and a block, whatever
  the number of rows. It stops when every wanted Ritz pair has a relative residual
  `||S u - lambda u|| / lambda <= tol`, which bounds the sine of each direction's angle to the
  exact one by `tol * lambda / gap`.

Both return unit directions `[count, D]` with one sign convention (the largest-magnitude entry
of each direction is positive) and standard deviations `sqrt(lambda / M)`, so they agree up to
the iteration's tolerance.
"""

from __future__ import annotations

import numpy as np


def _fix_signs(directions: np.ndarray) -> np.ndarray:
  """Each row flipped so that its largest-magnitude entry is positive."""
  largest = directions[np.arange(len(directions)), np.argmax(np.abs(directions), axis=1)]
  return directions * np.where(largest < 0, -1.0, 1.0)[:, None]


def principal_directions(rows: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
  """Top `count` unit principal directions `[count, D]` of centred rows `[M, D]`, and their
  standard deviations `[count]`, from the `M x M` Gram matrix."""
  gram = rows @ rows.T / len(rows)
  eigenvalues, eigenvectors = np.linalg.eigh(gram)
  order = np.argsort(eigenvalues)[::-1][:count]
  eigenvalues = np.clip(eigenvalues[order], 1e-12, None)
  directions = (rows.T @ eigenvectors[:, order]).T / np.sqrt(len(rows) * eigenvalues)[:, None]
  return _fix_signs(directions), np.sqrt(eigenvalues)


class SubspaceIteration:
  """Top `count` principal directions of rows `[M, D]` fed in blocks, a pass per iteration.

  Use: `begin_pass()`, `add(block)` for every block of the rows (the same rows every pass, in
  any blocking), `end_pass()`; repeat while not `converged` (and under an iteration budget),
  then read `directions` and `std`. Deterministic for a given `seed` and blocking.

  Args:
    dim: D, the length of a row.
    count: directions wanted (at most D).
    oversample: extra directions iterated along (faster convergence of the wanted ones).
    tol: residual (relative to the largest eigenvalue) at which a Ritz pair counts as
      converged.
    seed: of the Gaussian start.
  """

  def __init__(self, dim: int, count: int, *, oversample: int = 10, tol: float = 1e-6,
               seed: int = 0):
    self.count, self.tol = count, tol
    width = min(count + oversample, dim)
    start = np.random.default_rng(seed).normal(size=(dim, width))
    self._basis = np.linalg.qr(start)[0]
    self._product = None
    self._rows = 0
    self.iterations = 0
    self.residual = np.inf
    self.directions = np.zeros((count, dim))
    self.std = np.zeros(count)

  @property
  def converged(self) -> bool:
    return self.residual <= self.tol

  def begin_pass(self) -> None:
    self._product = np.zeros_like(self._basis)
    self._rows = 0

  def add(self, block: np.ndarray) -> None:
    """Accumulates a block `[m, D]` of (centred) rows."""
    block = np.asarray(block, np.float64)
    self._product += block.T @ (block @ self._basis)
    self._rows += len(block)

  def end_pass(self) -> float:
    """Rayleigh-Ritz on this pass's product, then the next basis; returns the largest residual
    of the wanted Ritz pairs relative to the largest eigenvalue. Works on slices of D rows, so
    its extra memory is about one `[D, L]` matrix."""
    basis, product = self._basis, self._product
    self._basis = self._product = None
    projected = basis.T @ product
    eigenvalues, vectors = np.linalg.eigh((projected + projected.T) / 2)
    order = np.argsort(eigenvalues)[::-1][:self.count]
    values, wanted = eigenvalues[order], vectors[:, order]
    ritz = basis @ wanted  # [D, count]
    del basis
    squared = np.zeros(self.count)
    for rows in range(0, len(ritz), 16384):  # ||S u - lambda u||^2, a slice of D at a time
      part = slice(rows, rows + 16384)
      squared += np.sum(np.square(product[part] @ wanted - ritz[part] * values), axis=0)
    self.residual = float(np.sqrt(squared.max()) / max(eigenvalues.max(), 1e-300))
    self.directions = _fix_signs(ritz.T)
    self.std = np.sqrt(np.clip(values, 1e-12, None) / max(self._rows, 1))
    del ritz
    self._basis = np.linalg.qr(product)[0]  # the next basis: the span of S Q
    self.iterations += 1
    return self.residual
