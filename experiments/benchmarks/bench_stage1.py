r"""Stage-1 train-step benchmark at paper shapes, on every local device (data parallel).

  python -m experiments.benchmarks.bench_stage1 [--vertices=53149 --shape_dim=199 --expr_dim=100
      --num_scans=4000 --classes=1000 --global_batch=128 --repeats=10 --json=PATH]

Random arrays of the right shapes (step time does not depend on the values): the SFM objective
with margin, centre and isotropy terms, Adam on every group, state donated. Prints compile time
apart from the median step time, and the train state's bytes per device (replicated).
"""

import jax
from absl import flags

from experiments import cli, host
from experiments.benchmarks import steps
from experiments.benchmarks.common import write_json

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
  result = steps.stage1_step(vertices=v, shape_dim=k, expr_dim=e, num_scans=n, classes=c, global_batch=b,
                   repeats=_REPEATS.value)
  print(f"stage-1 step, V={v} K={k} E={e} N={n} C={c} global batch {b}, "
        f"{jax.device_count()} x {result['device']}; {host.describe_memory_settings()}")
  print(f"  compile {result['compile_s']:.2f} s | step {result['step_ms']:.1f} ms (median of "
        f"{_REPEATS.value}) | {result['steps_per_s']:.2f} steps/s | decode matmuls "
        f"{result['decode_gflop_per_s']:.0f} GFLOP/s | train state "
        f"{result['state_mb_per_device']:.0f} MiB per device (replicated)")
  if _JSON.value:
    write_json(_JSON.value, result)


if __name__ == "__main__":
  cli.run(main)
