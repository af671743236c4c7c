r"""Reconstruct faces from images with a trained stage-2 network.

  python -m experiments.reconstruct --workdir=runs/stage2 --images='photos/*.jpg' --out=runs/rec

`--images` is a file, a folder (its photos: JPEG, PNG, PPM, ...; any size, grey or RGBA, EXIF
orientation applied) or a glob. Each image is framed as the network's training images were
(recorded in its encoder file): the largest centred square for face-world networks, a square
around the 68 landmarks for photo-folder networks; then resampled to the network's input size.
Networks that need landmarks (photo-folder crops, or an encoder that reads them) take them from
the `.pts` beside the photo, else `<stem>_face1.pts`, ..., else dlib finds the faces (the
`photos` extra): one result per face (`<name>_face1`, ...; only the largest with
`--largest_face`); a photo without a face is reported, skipped and counted. A `.pts` is also the
reference for the landmark NME. Per face, into `--out`:

  <name>_neutral.obj   the identity's neutral shape (mm, model space, albedo as vertex colours)
  <name>_posed.obj     with the predicted expression and head rotation (mm)
  <name>.npz           shape_codes, expression, albedo, rotation (3x3), translation, scale,
                       light (9x3 SH), landmarks (68x2, pixels of the original image), crop_box
                       (x0, y0, side), image_size; nme (inter-ocular) and nme_box (sqrt of the
                       annotation box's area) over the landmarks the model places, when
                       landmarks were given or detected
  <name>_overlay.png   the crop with the rendered reconstruction over it (predicted landmarks
                       red, given ones green)
  <name>_neutral_flip_averaged.obj   with --flip_average: the neutral shape averaged with the
                       mirror image of the prediction for the mirrored photo (landmarks flipped
                       and relabelled); needs a model whose landmark vertices are mirror
                       partners (e.g. the Surrey model, or the face world on an odd grid)

An unreadable image stops the run with its path (files written so far are complete); with
`--skip_bad` it is reported, skipped and counted instead.
"""

import os

import numpy as np
from absl import app, flags

from experiments import cli
from sfm_jax import imaging, inference, metrics, mirror, viz
from sfm_jax.io import write_png
from sfm_jax.io.mesh import write_obj
from sfm_jax.io.reconstruction import write_reconstruction
from sfm_jax.progress import Progress
from sfm_jax.sources.images import faces_in_photo, list_files, read_face_pts, read_image

_WORKDIR = flags.DEFINE_string("workdir", "runs/stage2", "A trained stage-2 workdir.")
_IMAGES = flags.DEFINE_string("images", None, "An image, a folder of images, or a glob.")
_OUT = flags.DEFINE_string("out", "runs/reconstruct", "Output folder.")
_MODEL = flags.DEFINE_enum("model", "sfm", list(inference.MODELS), "Which trained network.")
_BATCH = flags.DEFINE_integer("batch_size", 16, "Images per forward pass.")
_SKIP_BAD = flags.DEFINE_bool("skip_bad", False, "Skip unreadable images instead of stopping.")
_LARGEST = flags.DEFINE_boolean("largest_face", False, "Only the largest face of each photo.")
_DETECT = flags.DEFINE_boolean("detect", True, "Find landmarks with dlib where a photo has no "
                               ".pts (networks that need landmarks; --nodetect: skip it).")
_FLIP = flags.DEFINE_boolean(
    "flip_average", False, "Also write <name>_neutral_flip_averaged.obj: the neutral shape "
    "averaged over the photo and its mirror image (SFM 2.34 -> 2.29 mm on the Surrey photos, "
    "WORKSPACE.md 'Mirror images'); one more forward pass.")

def _output_names(paths: list) -> list:
  """A distinct output stem per image (`name`, then `name_2`, ... for repeated file names)."""
  seen: dict = {}
  names = []
  for path in paths:
    stem = os.path.splitext(os.path.basename(path))[0]
    seen[stem] = seen.get(stem, 0) + 1
    names.append(stem if seen[stem] == 1 else f"{stem}_{seen[stem]}")
  return names


def _prepare(path: str, predictor: inference.Predictor) -> list:
  """`[(name suffix, crop [S, S, 3] float, CropBox, given landmarks or None)]`: the faces of one
  image, framed as the network's training images were: whole (centred square), or around each
  face's landmarks. Empty when the network needs landmarks and the photo shows no face."""
  image = read_image(path)
  pts_path = os.path.splitext(path)[0] + ".pts"
  if predictor.crop_margin is None and not predictor.encoder.landmark_features:
    given = read_face_pts(pts_path) if os.path.isfile(pts_path) else None
    box = imaging.full_box(*image.shape[:2])
    return [("", imaging.crop(image, box, predictor.image_size), box, given)]
  faces = faces_in_photo(path, image, largest_face=_LARGEST.value, detect=_DETECT.value)
  prepared = []
  for suffix, given in faces:
    box = (imaging.full_box(*image.shape[:2]) if predictor.crop_margin is None
           else imaging.landmark_box(given, margin=predictor.crop_margin))
    prepared.append((suffix, imaging.crop(image, box, predictor.image_size), box, given))
  return prepared


def _write(out_dir, name, predictor, out, i, crop, box, given):
  model = predictor.model
  size = predictor.image_size
  colors = None
  if model.albedo_mean is not None:
    colors = np.clip(np.asarray(model.albedo_mean) + np.einsum(
        "a,avc->vc", out["albedo"][i], np.asarray(model.albedo_basis)), 0.0, 1.0)
  stem = os.path.join(out_dir, name)
  landmarks = box.to_image(out["landmarks"][i], size)
  extra = {}
  if given is not None:
    placed = np.isfinite(landmarks[:, 0])[None]  # the landmarks the model places
    extra["nme"] = metrics.landmark_nme(np.nan_to_num(landmarks)[None], given[None], placed)
    extra["nme_box"] = metrics.landmark_nme(np.nan_to_num(landmarks)[None], given[None], placed,
                                            normalizer="box")
  write_reconstruction(
      stem, neutral=out["neutral"][i], posed=out["posed"][i], triangles=model.triangles,
      colors=colors, shape_codes=out["shape_codes"][i], expression=out["expression"][i],
      rotation=out["rotation"][i], translation=out["translation"][i], scale=out["scale"][i],
      landmarks=landmarks, image_size=size, albedo=out["albedo"][i], light=out["light"][i],
      crop_box=box.as_array(), **extra)
  write_png(f"{stem}_overlay.png", viz.reconstruction_overlay(
      crop, out["rendered"][i], out["mask"][i], out["landmarks"][i],
      None if given is None else box.to_crop(given, size)))
  return extra.get("nme")


def main(argv):
  del argv
  if not _IMAGES.value:
    raise app.UsageError("--images is required")
  predictor = inference.load_predictors(_WORKDIR.value, (_MODEL.value,))[_MODEL.value]
  paths = list_files(_IMAGES.value)
  names = _output_names(paths)
  os.makedirs(_OUT.value, exist_ok=True)
  size, batch_size = predictor.image_size, _BATCH.value
  partner = (mirror.model_vertex_map(  # refused where flipped landmarks miss the model's
      predictor.model, hint=" (--flip_average needs landmark vertices that mirror onto each "
      "other)") if _FLIP.value else None)

  progress = Progress("reconstructing:", total=len(paths), unit="images")
  done, skipped, faceless, errors = 0, [], [], []
  for first in range(0, len(paths), batch_size):
    items = []
    for path, name in zip(paths[first:first + batch_size], names[first:first + batch_size]):
      try:
        faces = _prepare(path, predictor)
      except ValueError as e:
        if not _SKIP_BAD.value:
          raise
        skipped.append(path)
        print(f"  skipping: {e}", flush=True)
        continue
      if not faces:
        faceless.append(path)
        print(f"  skipping: {path}: no face found" if _DETECT.value else
              f"  skipping: {path}: no .pts beside it (and --nodetect)", flush=True)
      items.extend((path, name + suffix, *rest) for suffix, *rest in faces)
    if not items:
      continue
    crops = np.stack([item[2] for item in items])
    points = np.stack([np.zeros((68, 2), np.float32) if item[4] is None
                       else item[3].to_crop(item[4], size) for item in items])
    out = inference.predict_all(  # padded to batch_size: one compilation
        predictor, crops, points, batch_size=batch_size,
        keys=("shape_codes", "expression", "albedo", "rotation", "translation", "scale",
              "light", "neutral", "posed", "landmarks", "rendered", "mask"))
    averaged = None if partner is None else inference.flip_averaged_neutral(
        predictor, crops, points, out["neutral"], partner=partner, batch_size=batch_size)
    for i, (_, name, crop, box, given) in enumerate(items):
      nme = _write(_OUT.value, name, predictor, out, i, crop, box, given)
      if nme is not None:
        errors.append(nme)
      if averaged is not None:
        write_obj(os.path.join(_OUT.value, f"{name}_neutral_flip_averaged.obj"), averaged[i],
                  predictor.model.triangles)
    done += len(items)
    progress.update(min(first + batch_size, len(paths)),
                    f"{done} reconstructed{f', {len(skipped)} skipped' if skipped else ''}")
  summary = f"wrote {done} reconstructions to {_OUT.value}"
  if errors:
    summary += f"; landmark NME vs the .pts files: mean {np.mean(errors):.4f}"
  if skipped:
    summary += f"; skipped {len(skipped)} unreadable: {', '.join(skipped)}"
  if faceless:
    summary += f"; skipped {len(faceless)} without a face: {', '.join(faceless)}"
  print(summary, flush=True)


if __name__ == "__main__":
  cli.run(main)
