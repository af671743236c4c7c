r"""Landmark fitting of the Surrey model: `experiments.fit`'s batched fitter against eos.

  python -m experiments.benchmarks.fit_vs_eos --surrey=../shared/data/surrey [--photos=100]

eos (`eos-py`, the C++ 3DMM fitting library; the `eos` extra) fits each photo on its own
(`fit_shape_and_pose`, 5 iterations, shape and expression); ours fits them all in one compiled
program (`fitting.fit_landmarks`). The photos' landmarks: `--photos` sets sampled from the Surrey
model itself (Gaussian shape codes, expressions, head pose within 25 degrees, photos of 150 to
1024 px, 0.3% landmark noise; the fitter's defaults were chosen on another seed), plus dlib's landmarks on `skimage.data.astronaut()` when the
photos extra is installed. On the sampled sets both fitters see the 50 landmarks with a model
vertex (the sampled faces' true jaw outline is not computed); on the real photo both also fit
the jaw contour (ours: `FaceModel.contour` from `sfm_model_contours.json`; eos: the same file
with its edge topology), NME over all 66 landmarks the model places (eos's jaw landmarks are
read back at the jaw-line vertex nearest to each). Printed: time for all photos (ours with and
without compilation; eos's includes loading its model), and the box NME (error / sqrt of the
annotation box area), mean and median.
"""

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from experiments import cli, host
from sfm_jax import camera, fitting, geometry, metrics
from sfm_jax.errors import InputError
from sfm_jax.io.models import load_face_model
from sfm_jax.model import decode

_SURREY = flags.DEFINE_string("surrey", "../shared/data/surrey", "Folder of the Surrey model.")
_PHOTOS = flags.DEFINE_integer("photos", 100, "Landmark sets sampled from the model.")
_STEPS = flags.DEFINE_integer("steps", 400, "Adam steps of our fitter.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")


def _sampled_photos(model, count, rng, noise=0.003):
  """`[N, 68, 2]` noisy landmarks, `[N]` photo sizes and the noise-free landmarks of faces
  sampled from the model."""
  shape = rng.normal(size=(count, model.shape_dim)).astype(np.float32)
  expression = rng.normal(scale=0.5, size=(count, model.expr_dim)).astype(np.float32)
  vertices = decode(jax.tree_util.tree_map(jnp.asarray, model), shape, expression)
  angles = np.deg2rad(rng.uniform(-25, 25, (count, 3)) * [0.6, 1.0, 0.4]).astype(np.float32)
  sizes = rng.uniform(150, 1024, count).round().astype(np.float32)
  scale = camera.nominal_scale(sizes) * rng.uniform(0.6, 1.2, count).astype(np.float32)
  offset = sizes[:, None] * rng.uniform(0.4, 0.6, (count, 2)).astype(np.float32)
  pixels = np.asarray(camera.weak_perspective(vertices, geometry.euler_to_matrix(angles),
                                              jnp.asarray(scale), jnp.asarray(offset))[0])
  index = np.asarray(model.landmarks)
  clean = pixels[:, np.where(index >= 0, index, 0), :2]
  noisy = clean + rng.normal(scale=noise, size=clean.shape) * sizes[:, None, None]
  return noisy.astype(np.float32), sizes, clean.astype(np.float32)


EOS_SCRIPT = """
import glob, os, sys, time
import eos, numpy as np
surrey, folder = sys.argv[1:3]
model = eos.morphablemodel.load_model(os.path.join(surrey, "sfm_shape_3448.bin"))
blendshapes = eos.morphablemodel.load_blendshapes(os.path.join(surrey, "expression_blendshapes_3448.bin"))
model = eos.morphablemodel.MorphableModel(model.get_shape_model(), blendshapes,
    color_model=eos.morphablemodel.PcaModel(), vertex_definitions=None,
    texture_coordinates=model.get_texture_coordinates())
mapper = eos.core.LandmarkMapper(os.path.join(surrey, "ibug_to_sfm.txt"))
for path in sorted(glob.glob(os.path.join(folder, "*.pts"))):
  lines = open(path).read().split("{")[1].split("}")[0].split()
  points = np.asarray(lines, float).reshape(-1, 2)
  marks = [eos.core.Landmark(str(i + 1), list(p)) for i, p in enumerate(points)]
  size = int(open(path + ".size").read())
  mesh, pose, shape, blend = eos.fitting.fit_shape_and_pose(model, marks, mapper, size, size, num_iterations=5)
  np.savez(path[:-4] + "_eos.npz", shape=np.asarray(shape), blend=np.asarray(blend))
"""


def _processes(surrey, landmarks, sizes, steps):
  """Wall seconds of whole processes on the same `.pts` folder: `experiments.fit --pts` (cold
  and warm compilation cache, writing only its `.npz` of codes and pose; then also its meshes and
  overlays) and a Python process running eos on each file (writing its codes)."""
  import subprocess
  import sys
  import tempfile

  from sfm_jax.io import write_pts
  with tempfile.TemporaryDirectory() as folder:
    for n, (points, size) in enumerate(zip(landmarks, sizes)):
      write_pts(os.path.join(folder, f"photo{n:03d}.pts"), points)
      with open(os.path.join(folder, f"photo{n:03d}.pts.size"), "w") as f:
        f.write(str(int(size)))
    cache = os.path.join(folder, "cache")
    times = {}
    for label, outputs in (("sfm_jax fit, cold compilation cache, codes only", "--nomeshes"),
                           ("sfm_jax fit, warm cache, codes only", "--nomeshes"),
                           ("sfm_jax fit, warm cache, meshes and overlays", "--meshes")):
      start = time.perf_counter()
      subprocess.run([sys.executable, "-m", "experiments.fit", f"--model={surrey}",
                      f"--pts={folder}", f"--out={os.path.join(folder, 'out')}",
                      f"--steps={steps}", f"--compilation_cache={cache}",
                      f"--image_size={int(sizes.max())}", outputs] +
                     (["--nooverlays"] if outputs == "--nomeshes" else []),
                     check=True, capture_output=True)
      times[label] = time.perf_counter() - start
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", EOS_SCRIPT, surrey, folder], check=True,
                   capture_output=True)
    times["eos, one by one"] = time.perf_counter() - start
  return times


def _eos_fit(eos, surrey, landmarks, sizes, defined, use_contour):
  """eos on each photo: `[N, 68, 2]` fitted landmarks where `defined` (the jaw contour ones from
  the jaw-line vertex eos matched, read back by projecting the nearest jaw-line vertex), and the
  seconds it took (model loading included)."""
  model = eos.morphablemodel.load_model(os.path.join(surrey, "sfm_shape_3448.bin"))
  blendshapes = eos.morphablemodel.load_blendshapes(
      os.path.join(surrey, "expression_blendshapes_3448.bin"))
  model = eos.morphablemodel.MorphableModel(
      model.get_shape_model(), blendshapes, color_model=eos.morphablemodel.PcaModel(),
      vertex_definitions=None, texture_coordinates=model.get_texture_coordinates())
  mapper = eos.core.LandmarkMapper(os.path.join(surrey, "ibug_to_sfm.txt"))
  contour_args = ()
  if use_contour:
    contour_args = (
        eos.morphablemodel.load_edge_topology(os.path.join(surrey, "sfm_3448_edge_topology.json")),
        eos.fitting.ContourLandmarks.load(os.path.join(surrey, "ibug_to_sfm.txt")),
        eos.fitting.ModelContour.load(os.path.join(surrey, "sfm_model_contours.json")))
  ours = load_face_model(surrey)
  vertex_of = np.asarray(ours.landmarks)
  jaw = np.concatenate([ours.contour[0, :, 0], ours.contour[1, :, 0]])
  fitted = np.full(landmarks.shape, np.nan, np.float32)
  start = time.perf_counter()
  for n, (points, size) in enumerate(zip(landmarks, sizes)):
    marks = [eos.core.Landmark(str(i + 1), [float(x), float(y)])
             for i, (x, y) in enumerate(points) if defined[i]]
    mesh, pose, _, _ = eos.fitting.fit_shape_and_pose(model, marks, mapper, int(size), int(size),
                                                      *contour_args, num_iterations=5)
    matrix = eos.fitting.get_3x4_affine_camera_matrix(pose, int(size), int(size))
    vertices = np.asarray(mesh.vertices)
    projected = (np.concatenate([vertices, np.ones((len(vertices), 1))], 1) @ matrix.T)[:, :2]
    for i in np.flatnonzero(defined):
      if vertex_of[i] >= 0:
        fitted[n, i] = projected[vertex_of[i]]
      else:  # a jaw landmark: the jaw-line vertex eos's contour matching would pick
        fitted[n, i] = projected[jaw[np.argmin(np.linalg.norm(projected[jaw] - points[i], axis=-1))]]
  return fitted, time.perf_counter() - start


def main(argv):
  del argv
  try:
    import eos
  except ImportError:
    raise InputError('this benchmark needs eos: pip install -e ".[eos]"') from None
  model = load_face_model(_SURREY.value)
  rng = np.random.default_rng(_SEED.value)
  landmarks, sizes, clean = _sampled_photos(model, _PHOTOS.value, rng)
  # Sampled photos: the 50 landmarks with a vertex (their jaw outline is not known), NME against
  # the noisy targets the fitters saw and against the noise-free truth; real ones: all 66 the
  # model places, the jaw through the contour (both fitters).
  sampled = f"{len(landmarks)} sampled from the model (50 landmarks)"
  sources = {sampled: (landmarks, sizes, False)}
  from sfm_jax import landmarks as detection
  if detection.available():
    from skimage import data
    photo = data.astronaut()
    sources["astronaut, dlib landmarks (66, jaw contour)"] = (
        detection.detect(photo)[:1], np.array([max(photo.shape[:2])], np.float32), True)
  print(f"Surrey model: V={model.num_vertices} K={model.shape_dim} E={model.expr_dim}; "
        f"{jax.devices()[0].platform}; {host.describe_memory_settings()}")
  print("| photos | fitter | time, all photos (in process) | box NME mean | box NME median | "
        "vs noise-free truth: mean | median |")
  print("|---|---|---|---|---|---|---|")
  for name, (targets, photo_sizes, use_contour) in sources.items():
    fit_model = model if use_contour else model.replace(contour=None)
    defined = fit_model.fitted_landmarks
    start = time.perf_counter()
    ours = fitting.fit_landmarks(fit_model, targets, image_size=photo_sizes, steps=_STEPS.value)
    first = time.perf_counter() - start
    start = time.perf_counter()
    ours = fitting.fit_landmarks(fit_model, targets, image_size=photo_sizes, steps=_STEPS.value)
    warm = time.perf_counter() - start
    theirs, eos_time = _eos_fit(eos, _SURREY.value, targets, photo_sizes, defined, use_contour)
    for label, fitted, seconds in (
        (f"sfm_jax batched ({_STEPS.value} Adam steps)",
         ours.landmarks, f"{first:.2f} s with compile, {warm:.2f} s compiled"),
        ("eos, one by one (5 iterations)", theirs, f"{eos_time:.2f} s")):
      nme = metrics.landmark_nme(np.nan_to_num(fitted), targets, defined, normalizer="box",
                                 per_image=True)
      truth = ""
      if name == sampled:
        exact = metrics.landmark_nme(np.nan_to_num(fitted), clean, defined, normalizer="box",
                                     per_image=True)
        truth = f" {np.mean(exact):.4f} | {np.median(exact):.4f} |"
      print(f"| {name} | {label} | {seconds} | {np.mean(nme):.4f} | {np.median(nme):.4f} |"
            f"{truth or ' - | - |'}", flush=True)
  print(f"\nwhole processes on {len(landmarks)} .pts files (start-up, reading, fitting, writing):")
  for label, seconds in _processes(_SURREY.value, landmarks, sizes, _STEPS.value).items():
    print(f"  {label}: {seconds:.2f} s", flush=True)


if __name__ == "__main__":
  cli.run(main)
