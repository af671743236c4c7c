"""Train-step measurements shared by the benchmarks (`bench_stage1`, `bench_stage2`, `scaling`):
one step of each stage at given shapes on every local device, compile time apart from the median
step time. No flags here, so any script can import it."""

import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments.benchmarks.common import random_stage1_problem, time_jax
from experiments.configs import stage2 as stage2_configs
from sfm_jax import face_world, parallel, stage1, stage2
from sfm_jax.model import FaceModel
from sfm_jax.networks import Encoder
from sfm_jax.train_state import TrainState, train_step

# The backbone's batch groups of the stage-2 configs (`model.batch_groups`), as `demo` trains.
DEMO_BATCH_GROUPS = stage2_configs.get_config("demo").model.batch_groups


def _time_steps(step_fn, state, batch, repeats: int) -> tuple:
  """(seconds of the first step (compile included), median seconds of `repeats` more, the last
  metrics): `step_fn(state, batch(i))` for i = 0, 1, ..., each batch ready before its clock."""
  start = time.perf_counter()
  state, metrics = step_fn(state, batch(0))
  jax.block_until_ready(metrics)
  first = time.perf_counter() - start
  times = []
  for i in range(1, repeats + 1):
    data = jax.block_until_ready(batch(i))
    start = time.perf_counter()
    state, metrics = step_fn(state, data)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  return first, float(np.median(times)), metrics


def stage1_step(*, vertices: int, shape_dim: int, expr_dim: int, num_scans: int, classes: int,
            global_batch: int, repeats: int) -> dict:
  """One stage-1 train step at these shapes on every local device: compile time, median step
  time, decode throughput and train-state bytes per device (a dict)."""
  v, k, e, n, c, b = vertices, shape_dim, expr_dim, num_scans, classes, global_batch
  init, identity = random_stage1_problem(vertices=v, shape_dim=k, expr_dim=e, num_scans=n,
                                         classes=c, seed=0)
  rng = np.random.default_rng(1)
  objective = stage1.Objective()
  loss_fn = stage1.make_loss_fn(objective, radius=init.radius,
                                triangles=np.zeros((1, 3), np.int32))
  tx = stage1.make_optimizer(lr_basis=1e-4, lr_codes=1e-2, lr_prototypes=1e-2, lr_centers=1e-2)
  mesh = parallel.make_mesh()
  parallel.check_global_batch(b, mesh)
  state = parallel.replicate(TrainState.create(params=stage1.init_params(init, identity, c, seed=0),
                                               tx=tx, loss_fn=loss_fn, seed=0), mesh)
  del init
  state_bytes = sum(x.nbytes for x in jax.tree_util.tree_leaves(state.arrays()))
  step_fn = parallel.data_parallel_step(train_step, mesh)
  scans = rng.normal(size=(b, v, 3)).astype(np.float32) * 50

  def batch(i):
    index = np.arange(i * b, (i + 1) * b) % n
    return parallel.shard_batch({"scans": scans, "identity": identity[index],
                                 "index": index.astype(np.int32)}, mesh)

  first, step, _ = _time_steps(step_fn, state, batch, repeats)
  device = jax.devices()[0]
  flops = 2 * 3 * 2 * b * (k + e) * v * 3  # decode forward + the two backward matmuls
  return dict(device=f"{device.platform}:{device.device_kind}", devices=jax.device_count(),
              shapes=dict(V=v, K=k, E=e, N=n, C=c, B=b), compile_s=max(first - step, 0.0),
              step_ms=step * 1e3, steps_per_s=1 / step, decode_gflop_per_s=flops / step / 1e9,
              state_mb_per_device=state_bytes / 2 ** 20)


def stage2_problem(*, image_size: int, resolution: int, depth: str, width: int, shape_dim: int,
                   expr_dim: int, albedo_dim: int, classes: int, global_batch: int, window: int,
                   render_groups: int = stage2.Objective.render_groups,
                   batch_groups: int = DEMO_BATCH_GROUPS) -> dict:
  """A stage-2 train step at these shapes on every local device, ready to call: `step`
  (jitted, state donated), `state`, `batch` (sharded), and `encoder`, `params`, `model_state`,
  `images` (host) for measuring parts of it; `vertices`, `triangles` of the mesh. A face-world
  mesh of `resolution^2` vertices with random bases of the right sizes, rendered face-world
  images as the batch, the full SFM objective. `render_groups` and `batch_groups` (the
  renderer's and the backbone's groups) default to the stage-2 `demo` config's."""
  size, b = image_size, global_batch
  world = face_world.FaceWorld(resolution=resolution)
  template = world.template
  v = template.vertices.shape[0]
  rng = np.random.default_rng(0)
  # Random bases, small enough (about 0.3 mm per vertex in all) that faces stay smooth and the
  # rasteriser's work is that of a real model's.
  noise = 0.3 / np.sqrt(shape_dim * shape_dim + expr_dim)
  model = FaceModel(mean=template.vertices.astype(np.float32),
                    shape_basis=rng.normal(scale=noise, size=(shape_dim, v, 3)).astype(
                        np.float32),
                    expr_basis=rng.normal(scale=noise, size=(expr_dim, v, 3)).astype(np.float32),
                    radius=np.asarray(np.sqrt(shape_dim), np.float32),
                    triangles=template.triangles, landmarks=template.landmarks)
  images = face_world.make_images(max(b // 4, 1), 4, seed=1, world=world, image_size=size)
  batch = {"images": images.images[:b], "landmarks": images.landmarks[:b],
           "visible": images.visible[:b],
           "identity": (images.true_identity[:b] % classes).astype(np.int32)}
  encoder = Encoder(shape_dim=shape_dim, expr_dim=expr_dim, albedo_dim=albedo_dim, depth=depth,
                    width=width, batch_groups=batch_groups)
  params, model_state = stage2.init_params(encoder, model, image_size=size, num_classes=classes,
                                           albedo_dim=albedo_dim, seed=0)
  objective = stage2.Objective(window=window, render_groups=render_groups)
  loss_fn = stage2.make_loss_fn(encoder, model, objective, image_size=size)
  tx = stage2.make_optimizer(lr_encoder=1e-3, lr_residual=1e-4, lr_albedo=1e-2, lr_identity=1e-2)
  mesh = parallel.make_mesh()
  parallel.check_global_batch(b, mesh)
  state = parallel.replicate(TrainState.create(params=params, tx=tx, loss_fn=loss_fn, seed=0,
                                               model_state=model_state), mesh)
  return {"step": parallel.data_parallel_step(train_step, mesh), "state": state,
          "batch": parallel.shard_batch(batch, mesh), "encoder": encoder, "params": params,
          "model_state": model_state, "images": batch["images"], "vertices": v,
          "triangles": int(template.triangles.shape[0])}


def stage2_step(*, image_size: int, resolution: int, depth: str, width: int, shape_dim: int,
            expr_dim: int, albedo_dim: int, classes: int, global_batch: int, window: int,
            repeats: int, encoder_split: bool = True,
            render_groups: int = stage2.Objective.render_groups,
            batch_groups: int = DEMO_BATCH_GROUPS) -> dict:
  """One stage-2 train step at these shapes on every local device (`stage2_problem`): compile
  time, median step time, images per second, and (with `encoder_split`) the encoder's forward +
  backward alone."""
  problem = stage2_problem(image_size=image_size, resolution=resolution, depth=depth,
                           width=width, shape_dim=shape_dim, expr_dim=expr_dim,
                           albedo_dim=albedo_dim, classes=classes, global_batch=global_batch,
                           window=window, render_groups=render_groups,
                           batch_groups=batch_groups)
  sharded, b = problem["batch"], global_batch
  first, step_s, metrics = _time_steps(problem["step"], problem["state"], lambda i: sharded,
                                       repeats)
  device = jax.devices()[0]
  result = {"device": f"{device.platform}:{device.device_kind}", "devices": jax.device_count(),
            "image_size": image_size, "vertices": problem["vertices"],
            "triangles": problem["triangles"], "depth": depth, "width": width,
            "shape_dim": shape_dim, "global_batch": b, "render_groups": render_groups,
            "batch_groups": batch_groups,
            "compile_s": max(first - step_s, 0.0), "step_ms": step_s * 1e3,
            "images_per_s": b / step_s, "render_overflow": float(metrics["render_overflow"])}
  if encoder_split:
    encoder, model_state = problem["encoder"], problem["model_state"]

    # The encoder alone (forward + backward through a scalar of its outputs), same batch.
    def encoder_loss(p, images):
      out, _ = encoder.apply({"params": p, **model_state}, images, train=True,
                             mutable=["batch_stats"])
      return sum(jnp.sum(x) for x in jax.tree_util.tree_leaves(out))
    encoder_grad = jax.jit(jax.grad(encoder_loss))
    _, encoder_s = time_jax(encoder_grad, problem["params"]["encoder"],
                            jnp.asarray(problem["images"]), repeats=repeats)
    result["encoder_fwd_bwd_ms"] = encoder_s * 1e3
  return result
