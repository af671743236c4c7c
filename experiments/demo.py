r"""Demo: build a face model, decode codes sampled on the sphere, write OBJ meshes and a PNG.

  python -m experiments.demo --config=experiments/configs/demo.py --workdir=runs/demo

Writes into the workdir: `model.npz` (the model file), `faces/face_XX.obj` (one mesh per decoded
face, mm) and `faces.png` (front and three-quarter views of every face).
"""

import os
import time

import jax
import numpy as np
from absl import flags, logging

from experiments import cli
from sfm_jax import face_world, sphere, viz
from sfm_jax import model as face_model
from sfm_jax.io import write_obj, write_png

_CONFIG = cli.define_config("experiments/configs/demo.py", "Demo config file (`path[:variant]`).")
_WORKDIR = flags.DEFINE_string("workdir", "runs/demo", "Output folder (created if missing).")


def main(argv):
  del argv
  config = _CONFIG.value
  workdir = _WORKDIR.value
  os.makedirs(os.path.join(workdir, "faces"), exist_ok=True)
  start = time.perf_counter()

  model = face_world.toy_model(num_shape=config.num_shape, num_expr=config.num_expr,
                          resolution=config.resolution, seed=config.seed)
  face_model.save_model(os.path.join(workdir, "model.npz"), model)
  key_shape, key_expr = jax.random.split(jax.random.key(config.seed))
  shape_codes = sphere.sample_uniform(key_shape, (config.num_faces,), config.num_shape,
                                      model.radius)
  expr_codes = config.expression_scale * jax.random.normal(
      key_expr, (config.num_faces, config.num_expr))
  vertices = np.asarray(jax.jit(face_model.decode)(face_model.to_device(model), shape_codes,
                                                   expr_codes))
  norms = np.linalg.norm(np.asarray(shape_codes), axis=-1)
  logging.info("decoded %d faces of %d vertices; code norms %.4f..%.4f (radius %.4f)",
               len(vertices), model.num_vertices, norms.min(), norms.max(), float(model.radius))

  pictures = []
  extent = 1.15 * float(np.max(np.ptp(vertices[..., :2], axis=1)))
  for i, face in enumerate(vertices):
    write_obj(os.path.join(workdir, "faces", f"face_{i:02d}.obj"), face, model.triangles)
    for yaw in (0.0, 35.0):
      pictures.append(viz.shade_mesh(face, model.triangles, size=config.image_size,
                                     yaw_degrees=yaw, extent_mm=extent))
  write_png(os.path.join(workdir, "faces.png"), viz.image_grid(pictures, columns=4))
  print(f"demo: {len(vertices)} faces decoded on the sphere of radius {float(model.radius):.3f} "
        f"in {time.perf_counter() - start:.1f}s")
  print(f"  model file  {os.path.join(workdir, 'model.npz')}")
  print(f"  meshes      {os.path.join(workdir, 'faces')}/face_00.obj ...")
  print(f"  picture     {os.path.join(workdir, 'faces.png')}")


if __name__ == "__main__":
  cli.run(main)
