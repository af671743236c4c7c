r"""Stage-2 train-step benchmark on every local device (data parallel, jit + sharding).

  python -m experiments.benchmarks.bench_stage2 [--image_size=96 --resolution=48 --depth=resnet10
      --width=16 --shape_dim=20 --expr_dim=10 --albedo_dim=10 --global_batch=32 --repeats=10]
  # the paper's shapes (for a GPU):
  python -m experiments.benchmarks.bench_stage2 --image_size=224 --resolution=230 \
      --depth=resnet50 --width=64 --shape_dim=199 --expr_dim=100 --albedo_dim=80 --global_batch=64

A face-world mesh of `resolution^2` vertices with random bases of the right sizes, rendered
face-world images as the batch; the full SFM objective (landmark, photometric through the window
rasteriser, margin, centre, priors, residual), Adam per group, state donated. Prints compile time
apart from the median step time, the time split between the encoder alone (forward + backward)
and the rest, and images per second.
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from experiments import cli
from experiments.benchmarks.common import time_jax, write_json
from sfm_jax import face_world, parallel, stage2
from sfm_jax.model import FaceModel
from sfm_jax.networks import Encoder
from sfm_jax.train_state import TrainState, train_step

_SIZE = flags.DEFINE_integer("image_size", 96, "S")
_RESOLUTION = flags.DEFINE_integer("resolution", 48, "mesh grid side (V = resolution^2)")
_DEPTH = flags.DEFINE_string("depth", "resnet10", "encoder depth")
_WIDTH = flags.DEFINE_integer("width", 16, "encoder width")
_SHAPE = flags.DEFINE_integer("shape_dim", 20, "K")
_EXPR = flags.DEFINE_integer("expr_dim", 10, "E")
_ALBEDO = flags.DEFINE_integer("albedo_dim", 10, "A")
_CLASSES = flags.DEFINE_integer("classes", 1000, "C identities")
_BATCH = flags.DEFINE_integer("global_batch", 32, "global batch size")
_WINDOW = flags.DEFINE_integer("window", 4, "rasteriser window")
_REPEATS = flags.DEFINE_integer("repeats", 10, "timed steps")
_JSON = flags.DEFINE_string("json", None, "also write the results here")


def main(argv):
  del argv
  size, b = _SIZE.value, _BATCH.value
  world = face_world.FaceWorld(resolution=_RESOLUTION.value)
  template = world.template
  v = template.vertices.shape[0]
  rng = np.random.default_rng(0)
  # Random bases, small enough (about 0.3 mm per vertex in all) that faces stay smooth and the
  # rasteriser's work is that of a real model's.
  noise = 0.3 / np.sqrt(_SHAPE.value * _SHAPE.value + _EXPR.value)
  model = FaceModel(mean=template.vertices.astype(np.float32),
                    shape_basis=rng.normal(scale=noise, size=(_SHAPE.value, v, 3)).astype(
                        np.float32),
                    expr_basis=rng.normal(scale=noise, size=(_EXPR.value, v, 3)).astype(
                        np.float32),
                    radius=np.asarray(np.sqrt(_SHAPE.value), np.float32),
                    triangles=template.triangles, landmarks=template.landmarks)
  images = face_world.make_images(max(b // 4, 1), 4, seed=1, world=world, image_size=size)
  batch = {"images": images.images[:b], "landmarks": images.landmarks[:b],
           "visible": images.visible[:b],
           "identity": (images.true_identity[:b] % _CLASSES.value).astype(np.int32)}
  encoder = Encoder(shape_dim=_SHAPE.value, expr_dim=_EXPR.value, albedo_dim=_ALBEDO.value,
                    depth=_DEPTH.value, width=_WIDTH.value)
  params, model_state = stage2.init_params(encoder, model, image_size=size,
                                           num_classes=_CLASSES.value, albedo_dim=_ALBEDO.value,
                                           seed=0)
  objective = stage2.Objective(window=_WINDOW.value)
  loss_fn = stage2.make_loss_fn(encoder, model, objective, image_size=size)
  tx = stage2.make_optimizer(lr_encoder=1e-3, lr_residual=1e-4, lr_albedo=1e-2, lr_identity=1e-2)
  mesh = parallel.make_mesh()
  state = parallel.replicate(TrainState.create(params=params, tx=tx, loss_fn=loss_fn, seed=0,
                                               model_state=model_state), mesh)
  step = parallel.data_parallel_step(train_step, mesh)
  sharded = parallel.shard_batch(batch, mesh)
  start = time.perf_counter()
  state, metrics = step(state, sharded)
  jax.block_until_ready(metrics)
  first = time.perf_counter() - start
  times = []
  for _ in range(_REPEATS.value):
    start = time.perf_counter()
    state, metrics = step(state, sharded)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  step_s = float(np.median(times))

  # The encoder alone (forward + backward through a scalar of its outputs), same batch.
  def encoder_loss(p, images):
    out, _ = encoder.apply({"params": p, **model_state}, images, train=True,
                           mutable=["batch_stats"])
    return sum(jnp.sum(x) for x in jax.tree_util.tree_leaves(out))
  encoder_grad = jax.jit(jax.grad(encoder_loss))
  _, encoder_s = time_jax(encoder_grad, params["encoder"], jnp.asarray(batch["images"]),
                          repeats=_REPEATS.value)
  device = jax.devices()[0]
  result = {"device": f"{device.platform}:{device.device_kind}", "devices": jax.device_count(),
            "image_size": size, "vertices": v, "triangles": int(template.triangles.shape[0]),
            "depth": _DEPTH.value, "width": _WIDTH.value, "global_batch": b,
            "compile_s": first - step_s, "step_ms": step_s * 1e3,
            "encoder_fwd_bwd_ms": encoder_s * 1e3, "images_per_s": b / step_s,
            "render_overflow": float(metrics["render_overflow"])}
  print(f"stage-2 step: {_DEPTH.value} (width {_WIDTH.value}) at {size} px, V={v}, "
        f"global batch {b}, {jax.device_count()} x {result['device']}")
  print("| compile (s) | step (ms, median) | encoder fwd+bwd (ms) | rest (ms) | images/s |")
  print("|---|---|---|---|---|")
  print(f"| {result['compile_s']:.1f} | {step_s * 1e3:.1f} | {encoder_s * 1e3:.1f} | "
        f"{(step_s - encoder_s) * 1e3:.1f} | {b / step_s:.0f} |")
  if result["render_overflow"]:
    print(f"warning: the rasteriser dropped {result['render_overflow']:.1f} triangles per image; "
          "raise --window")
  if _JSON.value:
    write_json(_JSON.value, result)


if __name__ == "__main__":
  cli.run(main)
