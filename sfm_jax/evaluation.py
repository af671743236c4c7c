"""Held-out evaluation (design sections 6 and 7): scans through one fitting routine, images
through a trained stage-2 network.

Every model, ours or third-party, sphere or Gaussian, goes through the same `fitting.fit_scans`
and the same metrics, so a table row is comparable with any other row on the same scans. Image
predictions are scored by `evaluate_images` with the same identity metrics.
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
  """Fits `model` to held-out `scans` `[N, V, 3]` (an array or a scan store) and scores
  reconstruction and identity (`fit_options` go to `fitting.fit_scans`, e.g. `keep_meshes`).

  Returns (`{mean_mm, median_mm, p95_mm, silhouette, nmcd, verification_accuracy, nmi}`, the fit).
  Scans with identity -1 count for reconstruction only.
  """
  fit = fitting.fit_scans(model, scans, **fit_options)
  scores = metrics.distance_summary(fit.errors)
  labelled = np.asarray(identity) >= 0
  scores.update(metrics.identity_metrics(fit.shape_codes[labelled],
                                         np.asarray(identity)[labelled], seed=seed))
  return scores, fit


IMAGE_COLUMNS = (("median_mm", "3D median (mm)"), ("mean_mm", "3D mean (mm)"),
                 ("std_mm", "3D std (mm)"), ("verification_accuracy", "verif. acc."),
                 ("silhouette", "silhouette"), ("nmi", "NMI"), ("nme", "landmark NME"))


def representation_floor(model: FaceModel, neutral: np.ndarray) -> dict:
  """How close `model` can come to true neutral faces `[N, V, 3]` (mm) at all: the NoW-aligned
  median error (mm) of its best fit (`fitting.fit_scans`) with every code free (`shape and
  expression`) and with the shape code alone (`shape only`, the expression basis off: what a
  predicted neutral is), the same error of the model's mean face (`mean face`, the reference), and
  the 5th, 50th and 95th percentiles of the shape-only codes' norms over R (`code norm / R`; 1 on
  the sphere)."""
  landmarks = np.asarray(model.landmarks)[list(metrics.NOW_LANDMARKS)]
  score = lambda faces: float(np.median(metrics.now_aligned_errors(faces, neutral, landmarks)))
  result = {"mean face": score(np.broadcast_to(np.asarray(model.mean), neutral.shape))}
  for name, fitted in (("shape and expression", model),
                       ("shape only", model.replace(expr_basis=np.zeros_like(model.expr_basis)))):
    fit = fitting.fit_scans(fitted, neutral)
    result[name] = score(fit.reconstruction)
    if name == "shape only":
      norms = np.linalg.norm(fit.shape_codes, axis=1) / float(model.radius)
      result["code norm / R"] = np.percentile(norms, [5, 50, 95])
  return result


def code_agreement(predicted: np.ndarray, oracle: np.ndarray, shape_basis: np.ndarray, *,
                   groups: int = 4) -> dict:
  """How well predicted shape codes point where the oracle codes do (e.g.
  `stage2.oracle_codes` of each image's true neutral face): a diagnostic of what a network reads.

  Args:
    predicted, oracle: `[N, K]` shape codes.
    shape_basis: `[K, V, 3]` the basis they decode with (mm per unit code).
    groups: the K directions are ranked by their basis column's size (largest first) and split
      into this many near-equal groups.

  Returns `{"cosine": median over images of cos(predicted, oracle), "group cosine": [groups]
  the median cosine of the sub-vectors of each group, "group size (mm)": [groups] the mean
  column norm of each group, "norm ratio": 5th, 50th, 95th percentile of |predicted| / |oracle|}`.
  Cosine verification weighs every direction alike; a vertex loss weighs each by its squared
  column size.
  """
  predicted, oracle = np.asarray(predicted, np.float64), np.asarray(oracle, np.float64)
  sizes = np.linalg.norm(np.reshape(shape_basis, (len(shape_basis), -1)), axis=1)
  order = np.array_split(np.argsort(-sizes, kind="stable"), groups)

  def median_cosine(a, b):
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float(np.median(np.sum(a * b, axis=1) / np.maximum(norms, 1e-30)))

  return {"cosine": median_cosine(predicted, oracle),
          "group cosine": [median_cosine(predicted[:, g], oracle[:, g]) for g in order],
          "group size (mm)": [float(sizes[g].mean()) for g in order],
          "norm ratio": np.percentile(np.linalg.norm(predicted, axis=1)
                                      / np.linalg.norm(oracle, axis=1), [5, 50, 95])}


def evaluate_images(predictions: dict, *, identity: np.ndarray, landmarks: np.ndarray,
                    visible: np.ndarray, landmark_vertices: np.ndarray,
                    neutral: np.ndarray | None = None, neutral_errors: np.ndarray | None = None,
                    seed: int = 0) -> dict:
  """Scores a stage-2 network's predictions on held-out images (design section 7).

  Args:
    predictions: `stage2.predict_all` output (`shape_codes [N, K]`, `neutral [N, V, 3]`,
      `landmarks [N, 68, 2]`).
    identity: `[N]` labels (-1: not used for the identity metrics).
    landmarks, visible: `[N, 68, 2]` annotated landmarks (pixels) and `[N, 68]` visibility.
    landmark_vertices: `[68]` the model's landmark vertex indices (-1 undefined).
    neutral: `[N, V, 3]` ground-truth neutral meshes (mm) in the model's topology, or None.
    neutral_errors: instead of `neutral` (and `predictions["neutral"]`), the per-vertex errors
      `[N, V]` (mm) already computed (`metrics.now_aligned_errors`, e.g. a chunk at a time).

  Returns `{median_mm, mean_mm, std_mm}` (neutral error after similarity alignment on the 7 NoW
  landmarks; only with `neutral` or `neutral_errors`), `{verification_accuracy, silhouette,
  nmcd, nmi}` of the predicted shape codes across images of one identity, and `nme` (visible,
  defined landmarks, inter-ocular).
  """
  landmark_vertices = np.asarray(landmark_vertices)
  scores = {}
  if neutral is not None:
    now = landmark_vertices[list(metrics.NOW_LANDMARKS)]
    if np.any(now < 0):
      raise ValueError("evaluate_images: the model lacks some of the 7 NoW landmark vertices")
    neutral_errors = metrics.now_aligned_errors(predictions["neutral"], neutral, now)
  if neutral_errors is not None:
    scores.update(metrics.error_summary(neutral_errors))
  labelled = np.asarray(identity) >= 0
  scores.update(metrics.identity_metrics(predictions["shape_codes"][labelled],
                                         np.asarray(identity)[labelled], seed=seed))
  defined = np.broadcast_to(landmark_vertices >= 0, visible.shape)
  scores["nme"] = metrics.landmark_nme(np.nan_to_num(predictions["landmarks"]), landmarks,
                                       np.asarray(visible, bool) & defined)
  return scores


def format_table(rows: dict, columns: tuple = COLUMNS) -> str:
  """A Markdown table: one row per model name, one column per `(key, title)` of `columns`."""
  header = "| model | " + " | ".join(title for _, title in columns) + " |"
  lines = [header, "|" + "---|" * (len(columns) + 1)]
  for name, scores in rows.items():
    cells = [f"{scores[key]:.3f}" if key in scores else "-" for key, _ in columns]
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return "\n".join(lines)
