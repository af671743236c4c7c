r"""Pictures of faces, so a person can see at a glance that faces look like faces.

  # The face world: one row per identity, its neutral face then each expression at full weight.
  python -m experiments.show_faces --out=runs/world.png [--identities=6 --seed=0]
  # Rendered 2D face-world images with their 68 landmarks (green visible, red hidden):
  python -m experiments.show_faces --images --out=runs/images.png [--count=24 --image_size=96]
  # Any model file (ours, Basel .mat/.h5, FLAME .pkl, FaceScape .npz, Surrey .bin or folder):
  # one row per component, -3 sd | mean | +3 sd, then the first expressions at -1 | 0 | +1.
  python -m experiments.show_faces --model=../shared/data/surrey --out=runs/surrey.png

For sphere models (code_kind "sphere") a "standard deviation" is R / sqrt(K), the spread of one
code coordinate when codes are spread uniformly over the sphere.
"""

import os

import numpy as np
from absl import flags

from experiments import cli
from sfm_jax import face_world, viz
from sfm_jax.io import write_png
from sfm_jax.io.models import load_face_model

_OUT = flags.DEFINE_string("out", "runs/faces.png", "PNG to write (folder created).")
_MODEL = flags.DEFINE_string("model", None, "Model file or Surrey folder; default: the face world.")
_IDENTITIES = flags.DEFINE_integer("identities", 6, "Face world: identities (rows).")
_COMPONENTS = flags.DEFINE_integer("components", 5, "Model: shape components (rows).")
_EXPRESSIONS = flags.DEFINE_integer("expressions", 3, "Model: expression components shown.")
_RESOLUTION = flags.DEFINE_integer("resolution", 64, "Face world: template grid side.")
_SEED = flags.DEFINE_integer("seed", 0, "Face world: identity seed.")
_SIZE = flags.DEFINE_integer("size", 160, "Pixels per face.")
_YAW = flags.DEFINE_float("yaw", 25.0, "View angle in degrees (0 = frontal).")
_IMAGES = flags.DEFINE_bool("images", False, "Show rendered 2D face-world images instead.")
_COUNT = flags.DEFINE_integer("count", 24, "Images: how many (8 per row).")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 96, "Images: pixels per side.")


def world_picture(*, identities: int, resolution: int, seed: int, size: int, yaw: float):
  world = face_world.FaceWorld(resolution=resolution)
  template = world.template
  neutral = world.neutral_shapes(world.sample_identities(np.random.default_rng(seed), identities))
  columns = [neutral]
  for k in range(len(face_world.EXPRESSIONS)):
    weights = np.zeros((identities, len(face_world.EXPRESSIONS)))
    weights[:, k] = 1.0
    columns.append(face_world.apply_expressions(template, neutral, weights))
  faces = np.stack(columns, axis=1).reshape(-1, template.vertices.shape[0], 3)
  extent = 1.15 * float(np.max(np.ptp(faces[..., :2], axis=1)))
  images = [viz.shade_mesh(f, template.triangles, size=size, yaw_degrees=yaw, extent_mm=extent)
            for f in faces]
  return viz.image_grid(images, columns=len(columns)), ["neutral", *face_world.EXPRESSIONS]


def model_picture(path: str, *, components: int, expressions: int, size: int, yaw: float):
  model = load_face_model(path)
  picture = viz.component_grid(model, components=components, expressions=expressions, size=size,
                               yaw_degrees=yaw)
  return picture, model


def images_picture(*, count: int, image_size: int, seed: int, resolution: int):
  identities = max(count // 2, 1)
  images = face_world.make_images(identities, 2, seed, world=face_world.FaceWorld(resolution=resolution),
                             image_size=image_size)
  zoom = 2 if image_size < 160 else 1  # small images are shown enlarged so points stay visible
  tiles = [viz.draw_landmarks(images.images[n].repeat(zoom, 0).repeat(zoom, 1),
                              images.landmarks[n] * zoom, images.visible[n], radius=1)
           for n in range(min(count, len(images.images)))]
  return viz.image_grid(tiles, columns=8, pad=2), images


def main(argv):
  del argv
  os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
  if _IMAGES.value:
    picture, images = images_picture(count=_COUNT.value, image_size=_IMAGE_SIZE.value,
                                     seed=_SEED.value, resolution=min(_RESOLUTION.value, 48))
    write_png(_OUT.value, picture)
    labels = ", ".join(str(i) for i in images.identity[:_COUNT.value])
    print(f"{_COUNT.value} rendered images (2 per identity; identity labels {labels}); "
          f"landmarks green where visible, red where hidden")
  elif _MODEL.value is None:
    picture, names = world_picture(identities=_IDENTITIES.value, resolution=_RESOLUTION.value,
                                   seed=_SEED.value, size=_SIZE.value, yaw=_YAW.value)
    write_png(_OUT.value, picture)
    print(f"face world: {_IDENTITIES.value} identities (rows) x columns {', '.join(names)}")
  else:
    picture, model = model_picture(_MODEL.value, components=_COMPONENTS.value,
                                   expressions=_EXPRESSIONS.value, size=_SIZE.value,
                                   yaw=_YAW.value)
    write_png(_OUT.value, picture)
    print(f"{_MODEL.value}: V={model.num_vertices} K={model.shape_dim} E={model.expr_dim} "
          f"({model.code_kind}); rows: first {min(_COMPONENTS.value, model.shape_dim)} shape "
          f"then {min(_EXPRESSIONS.value, model.expr_dim)} expression components; "
          "columns: -3 sd, mean, +3 sd (expressions: -1, 0, +1)")
  print(f"  picture  {_OUT.value}")


if __name__ == "__main__":
  cli.run(main)
