"""Held-out evaluation of a frozen model (design section 6): fit, then score.

Every model, ours or third-party, sphere or Gaussian, goes through the same `fitting.fit_scans`
and the same metrics, so a table row is comparable with any other row on the same scans.
"""

from __future__ import annotations

import numpy as np

from sfm_jax import fitting, metrics
from sfm_jax.model import FaceModel

COLUMNS = (("mean_mm", "mean err (mm)"), ("p95_mm", "p95 err (mm)"),
           ("silhouette", "silhouette"), ("nmcd", "NMCD"),
           ("verification_accuracy", "verif. acc."), ("nmi", "NMI"))


def evaluate_model(model: FaceModel, scans: np.ndarray, identity: np.ndarray, *, seed: int = 0,
                   **fit_options) -> tuple[dict, fitting.Fit]:
  """Fits `model` to held-out `scans` `[N, V, 3]` and scores reconstruction and identity.

  Returns (`{mean_mm, median_mm, p95_mm, silhouette, nmcd, verification_accuracy, nmi}`, the fit).
  Scans with identity -1 count for reconstruction only.
  """
  fit = fitting.fit_scans(model, scans, **fit_options)
  scores = metrics.vertex_errors(fit.reconstruction, fit.aligned)
  labelled = np.asarray(identity) >= 0
  scores.update(metrics.identity_metrics(fit.shape_codes[labelled],
                                         np.asarray(identity)[labelled], seed=seed))
  return scores, fit


def format_table(rows: dict) -> str:
  """A Markdown table: one row per model name, the `COLUMNS` metrics."""
  header = "| model | " + " | ".join(title for _, title in COLUMNS) + " |"
  lines = [header, "|" + "---|" * (len(COLUMNS) + 1)]
  for name, scores in rows.items():
    cells = [f"{scores[key]:.3f}" if key in scores else "-" for key, _ in COLUMNS]
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return "\n".join(lines)
