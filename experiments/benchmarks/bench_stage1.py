r"""Stage-1 train-step benchmark at paper shapes, on every local device (data parallel).

  python -m experiments.benchmarks.bench_stage1 [--vertices=53149 --shape_dim=199 --expr_dim=100
      --num_scans=4000 --classes=1000 --global_batch=128 --repeats=10 --json=PATH]

Random arrays of the right shapes (step time does not depend on the values): the SFM objective
with margin, centre and isotropy terms, Adam on every group, state donated. Prints compile time
apart from the median step time, and the train state's bytes per device (replicated).
"""

import time

import jax
import numpy as np
from absl import flags

from experiments import cli
from experiments.benchmarks.common import random_stage1_problem, write_json
from sfm_jax import parallel, stage1
from sfm_jax.train_state import TrainState, train_step

_VERTICES = flags.DEFINE_integer("vertices", 53149, "V")
_SHAPE = flags.DEFINE_integer("shape_dim", 199, "K")
_EXPR = flags.DEFINE_integer("expr_dim", 100, "E")
_SCANS = flags.DEFINE_integer("num_scans", 4000, "N training scans (rows of the code tables)")
_CLASSES = flags.DEFINE_integer("classes", 1000, "C identities")
_BATCH = flags.DEFINE_integer("global_batch", 128, "global batch size")
_REPEATS = flags.DEFINE_integer("repeats", 10, "timed steps")
_JSON = flags.DEFINE_string("json", None, "also write the results here")


def main(argv):
  del argv
  v, k, e, n, c, b = (_VERTICES.value, _SHAPE.value, _EXPR.value, _SCANS.value, _CLASSES.value,
                      _BATCH.value)
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
  state_bytes = sum(x.nbytes for x in jax.tree_util.tree_leaves(state.arrays()))
  step_fn = parallel.data_parallel_step(train_step, mesh)
  scans = rng.normal(size=(b, v, 3)).astype(np.float32) * 50

  def batch(i):
    index = np.arange(i * b, (i + 1) * b) % n
    return parallel.shard_batch({"scans": scans, "identity": identity[index],
                                 "index": index.astype(np.int32)}, mesh)

  start = time.perf_counter()
  state, metrics = step_fn(state, batch(0))
  jax.block_until_ready(metrics)
  first = time.perf_counter() - start
  times = []
  for i in range(1, _REPEATS.value + 1):
    data = batch(i)
    jax.block_until_ready(data)
    start = time.perf_counter()
    state, metrics = step_fn(state, data)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  step = float(np.median(times))
  device = jax.devices()[0]
  flops = 2 * 3 * 2 * b * (k + e) * v * 3  # decode forward + the two backward matmuls
  result = dict(device=f"{device.platform}:{device.device_kind}", devices=jax.device_count(),
                shapes=dict(V=v, K=k, E=e, N=n, C=c, B=b), compile_s=first - step,
                step_ms=step * 1e3, steps_per_s=1 / step, decode_gflop_per_s=flops / step / 1e9,
                state_mb_per_device=state_bytes / 2 ** 20)
  print(f"stage-1 step, V={v} K={k} E={e} N={n} C={c} global batch {b}, "
        f"{jax.device_count()} x {result['device']}")
  print(f"  compile {result['compile_s']:.2f} s | step {result['step_ms']:.1f} ms (median of "
        f"{len(times)}) | {result['steps_per_s']:.2f} steps/s | decode matmuls "
        f"{result['decode_gflop_per_s']:.0f} GFLOP/s | train state "
        f"{result['state_mb_per_device']:.0f} MiB per device (replicated)")
  if _JSON.value:
    write_json(_JSON.value, result)


if __name__ == "__main__":
  cli.run(main)
