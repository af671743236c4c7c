"""Writing a held-out image evaluation (shared by `experiments.stage2` and `experiments.evaluate`
image mode): `eval.json`, `gallery.png`, `codes_2d.png` and the Markdown table, the networks'
flip-averaged rows, and the networks reading noisy landmarks (the table's noisy rows, the curve
over noise levels and its `landmark_noise.png`). The scoring itself is `sfm_jax.inference.evaluate_split`
(the same images, batches and metrics for every model).
"""

from __future__ import annotations

import json
import os

import numpy as np

from sfm_jax import evaluation, inference, readout, viz
from sfm_jax.errors import InputError
from sfm_jax.io import atomic_write, write_png
from sfm_jax.sources import images as image_sources
from sfm_jax.sources.images import ImageData, Split


def noisy_landmark_row(name: str, noise: float) -> str:
  """The table row of network `name` reading landmarks with `noise` pixels of noise."""
  return f"{name}, landmarks +{noise:g} px noise"


def noisy_landmarks(split: Split, noise: float, *, seed: int) -> np.ndarray:
  """`[N, 68, 2]` the split's annotated landmarks plus Gaussian noise of std `noise` pixels per
  coordinate. Every level scales the same draw from `seed`, so a curve over levels is smooth."""
  return split.with_landmark_noise(noise, np.random.default_rng([seed, 68])).landmarks


REFITTED_RIDGE = "landmark ridge, refitted at each noise"
CURVE_KEYS = (("median_mm", "3D median (mm)"), ("verification_accuracy", "verification accuracy"),
              ("nme", "landmark NME"))


def landmark_noise_evaluation(predictors: dict, data: ImageData, *, clean_rows: dict,
                              row_noise: float, curve_levels, landmark_vertices: np.ndarray,
                              ridge: readout.LandmarkRidge | None, batch_size: int,
                              seed: int) -> tuple[dict, dict | None]:
  """How much each network's prediction rests on exact landmarks, which no detector gives.

  Each network is scored again on the held-out images `data.test`, reading the annotations plus
  Gaussian noise (`noisy_landmarks`), against the same annotations.

  Args:
    predictors: `{name: inference.Predictor}`.
    data: the image data (its `test` split is scored).
    clean_rows: the networks' rows on the exact landmarks (`inference.evaluate_split`): the
      curve's point at 0 px.
    row_noise: pixels of the table rows `<name>, landmarks +<row_noise> px noise`; 0 = none.
    curve_levels: pixels (> 0) of the curve; empty = no curve.
    landmark_vertices: `[68]` the models' landmark vertices (3D alignment, NME).
    ridge: the `landmark ridge` read-out (`inference.landmark_ridge`), also scored on the noisy
      landmarks along the curve, beside the same read-out refitted at each level on the
      training landmarks plus that much noise (`landmark ridge, refitted at each noise`: what
      a linear map reaches on landmarks that noisy); None: both left out.
    batch_size, seed: as for `inference.evaluate_split`; `seed` also draws the noise.

  Returns:
    (rows, curve): the table rows, and None or `{"levels_px": [0, ...], key: {name: [value per
    level]}}` for each key of `CURVE_KEYS` (the networks; `median_mm` also has the two ridge
    read-outs and the constant `mean face` when `clean_rows` holds it), JSON-ready.
  """
  split = data.test
  levels = sorted({float(x) for x in curve_levels} | ({float(row_noise)} if row_noise else set()))
  noisy = {0.0: split.landmarks, **{level: noisy_landmarks(split, level, seed=seed)
                                    for level in levels}}
  scored = {}
  for level in levels:
    scored[level], _ = inference.evaluate_split(
        predictors, split, landmark_vertices=landmark_vertices, batch_size=batch_size,
        seed=seed, input_landmarks=noisy[level])
  rows = ({noisy_landmark_row(name, row_noise): scores
           for name, scores in scored[float(row_noise)].items()} if row_noise else {})
  if not len(curve_levels):
    return rows, None
  x = [0.0, *sorted({float(level) for level in curve_levels})]

  def rows_at(level):
    return clean_rows if level == 0 else scored[level]

  curve = {"levels_px": x}
  for key, _ in CURVE_KEYS:
    curve[key] = {name: [float(rows_at(level)[name].get(key, np.nan)) for level in x]
                  for name in predictors}
  if split.neutral is not None:
    if ridge is not None:
      def ridge_error(reader, level):  # the read-out's 3D median on the landmarks at `level`
        return inference.neutral_error(lambda rows: reader.predict(noisy[level][rows]), split,
                                       landmark_vertices)["median_mm"]

      curve["median_mm"]["landmark ridge"] = [ridge_error(ridge, level) for level in x]
      curve["median_mm"][REFITTED_RIDGE] = [
          ridge_error(ridge if level == 0 else
                      inference.landmark_ridge(data, seed=seed, landmark_noise=level), level)
          for level in x]
    if "mean face" in clean_rows:
      curve["median_mm"]["mean face"] = [clean_rows["mean face"]["median_mm"]] * len(x)
  return rows, curve


def flip_partner(enabled: bool, data_config, model, data: ImageData) -> np.ndarray | None:
  """The vertex mirror map of `eval.flip_average` (`images.mirror_map`), None when it is off or
  the held-out images have no 3D truth; its `InputError` says how to turn the rows off."""
  if not enabled or data.test.neutral is None:
    return None
  try:
    return image_sources.mirror_map(data_config, model)
  except InputError as e:
    raise InputError(f"eval.flip_average: {e} (--config.eval.flip_average=False turns the "
                     "flip-averaged rows off)") from None


def references_and_noise(predictors: dict, data: ImageData, rows: dict, *, fit_steps: int,
                         row_noise: float, curve_levels, landmark_vertices: np.ndarray,
                         batch_size: int, seed: int) -> tuple[dict, dict | None]:
  """(the held-out table, the noise curve): the networks' clean `rows`
  (`inference.evaluate_split`, with their flip-averaged rows if asked), their noisy rows, then
  the references of `inference.reference_rows` for the exported models, with the landmark ridge
  fitted once for the table and the curve (`landmark_noise_evaluation`, same arguments)."""
  ridge = inference.landmark_ridge(data, seed=seed)
  models = {name: predictor.model for name, predictor in predictors.items()}
  references = inference.reference_rows(models, data, ridge=ridge, fit_steps=fit_steps,
                                        seed=seed)
  noisy_rows, curve = landmark_noise_evaluation(
      predictors, data, clean_rows={**rows, **references}, row_noise=row_noise,
      curve_levels=curve_levels, landmark_vertices=landmark_vertices, ridge=ridge,
      batch_size=batch_size, seed=seed)
  return {**rows, **noisy_rows, **references}, curve


def write_noise_curve(out_dir: str, curve: dict) -> str:
  """Writes `landmark_noise.png` (a panel per `CURVE_KEYS` entry against the noise; the 3D
  panel's axis logarithmic, since a linear read-out's error grows tenfold) into `out_dir`;
  returns the curve as a Markdown table (3D median / verification per level)."""
  x = curve["levels_px"]
  panels = [(title, {name: (x, values) for name, values in curve[key].items()
                     if not np.all(np.isnan(values))})
            for key, title in CURVE_KEYS]
  write_png(os.path.join(out_dir, "landmark_noise.png"),
            viz.plot_curves([p for p in panels if p[1]], x_label="landmark noise (px, std)",
                            markers=True, log_y=(CURVE_KEYS[0][1],)))
  header = ["| model | " + " | ".join(f"{level:g} px" for level in x) + " |",
            "|---|" + "---|" * len(x)]

  def cell(name, i):  # "3D median / verification", whichever the data has; else the NME
    values = [curve[key].get(name, [np.nan] * len(x))[i] for key in
              ("median_mm", "verification_accuracy")]
    shown = " / ".join(f"{v:.3f}" for v in values if not np.isnan(v))
    return shown or f"NME {curve['nme'][name][i]:.3f}"

  names = list(dict.fromkeys([*curve["median_mm"], *curve["nme"]]))
  lines = [f"| {name} | " + " | ".join(cell(name, i) for i in range(len(x))) + " |"
           for name in names]
  return "\n".join(header + lines)


def write_results(out_dir: str, rows: dict, codes: dict, predictors: dict, split: Split,
                  *, description: str, gallery_count: int, seen: dict | None = None,
                  extra: dict | None = None) -> str:
  """Writes `eval.json` (with the `seen` diagnostic rows, if any, and the entries of `extra`),
  `gallery.png` and `codes_2d.png` (the networks' held-out shape `codes`, `{name: [N, K]}` of
  `inference.evaluate_split`) into `out_dir`; returns the held-out table (Markdown)."""
  table = evaluation.format_table(rows, evaluation.IMAGE_COLUMNS)
  with atomic_write(os.path.join(out_dir, "eval.json"), "w") as f:
    json.dump({"data": description, "test_images": len(split),
               "test_identities": len(np.unique(split.identity[split.identity >= 0])),
               "ground_truth_3d": split.neutral is not None, "models": rows,
               **({"seen_identities": seen} if seen else {}), **(extra or {})}, f, indent=1)
  write_png(os.path.join(out_dir, "gallery.png"), inference.gallery(predictors, split, count=gallery_count))
  labelled = split.identity >= 0
  write_png(os.path.join(out_dir, "codes_2d.png"), viz.plot_codes_2d(
      [(f"{name}: held-out image codes (verif. {rows[name]['verification_accuracy']:.3f})",
        codes[name][labelled], split.identity[labelled])
       for name in codes]))
  return table
