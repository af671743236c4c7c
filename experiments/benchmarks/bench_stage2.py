r"""Stage-2 train-step benchmark on every local device (data parallel, jit + sharding).

  python -m experiments.benchmarks.bench_stage2 [--image_size=96 --resolution=48 --depth=resnet10
      --width=16 --shape_dim=20 --expr_dim=10 --albedo_dim=10 --global_batch=32 --repeats=10]
  # where its time goes, per source function (or --by=module, --by=line):
  python -m experiments.benchmarks.bench_stage2 --profile [--by=function --top=25 --steps=3]
  # the paper's shapes (for a GPU; one group each, as the `paper` config):
  python -m experiments.benchmarks.bench_stage2 --image_size=224 --resolution=230 \
      --depth=resnet50 --width=64 --shape_dim=199 --expr_dim=100 --albedo_dim=80 \
      --global_batch=64 --render_groups=1 --batch_groups=1

A face-world mesh of `resolution^2` vertices with random bases of the right sizes, rendered
face-world images as the batch; the full SFM objective (landmark, photometric through the window
rasteriser, margin, centre, priors, residual), Adam per group, state donated; the renderer's and
the backbone's groups as the `demo` config sets them (`--render_groups`, `--batch_groups`).
Prints compile time apart from the median step time, the time split between the encoder alone
(forward + backward) and the rest, and images per second.

With `--profile`, says instead where the step's time goes (`op_profile`): traces `--steps`
steps with `jax.profiler` and prints the executed operations' time per step, grouped by the
project function (or module, or line, `--by`) that emitted them, forward and backward apart
(`unknown`: operations that carry no op name, such as some backward convolutions), with the
operations per step, the share of all operation time and the step's wall time. Operation time
is summed over the threads that ran it, so it can exceed the wall time.
"""

import dataclasses

import jax
import numpy as np
from absl import flags

from experiments import cli, host
from experiments.benchmarks import op_profile, steps
from experiments.benchmarks.common import write_json
from sfm_jax import stage2

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
_RENDER_GROUPS = flags.DEFINE_integer("render_groups", stage2.Objective.render_groups,
                                      "the renderer's groups (objective.render_groups)")
_BATCH_GROUPS = flags.DEFINE_integer("batch_groups", steps.DEMO_BATCH_GROUPS,
                                     "the backbone's groups (model.batch_groups)")
_REPEATS = flags.DEFINE_integer("repeats", 10, "timed steps")
_JSON = flags.DEFINE_string("json", None, "also write the results here")
_PROFILE = flags.DEFINE_bool("profile", False, "where the time goes instead of how much")
_STEPS = flags.DEFINE_integer("steps", 3, "--profile: traced steps (after 2 untraced)")
_BY = flags.DEFINE_enum("by", "function", ["module", "function", "line"], "--profile: grouping")
_TOP = flags.DEFINE_integer("top", 25, "--profile: rows printed (the rest summed in one)")
_TRACE_DIR = flags.DEFINE_string("trace_dir", None, "--profile: keep the trace here "
                                 "(TensorBoard / Perfetto); default: deleted")


def _profile(shapes: dict) -> None:
  """Prints the `--profile` table of the step at `shapes` (`steps.stage2_problem`)."""
  problem = steps.stage2_problem(**shapes)
  step, state, batch = problem["step"], problem["state"], problem["batch"]
  hlo = step.lower(state, batch).compile().as_text()
  sources = op_profile.source_map(hlo)
  trace, walls, _ = op_profile.trace_steps(step, state, batch, steps=_STEPS.value,
                                           log_dir=_TRACE_DIR.value)
  rows, unattributed = op_profile.attribute(op_profile.thunk_events(trace), sources,
                                            steps=_STEPS.value, by=_BY.value)
  total = sum(row.total_ms for row in rows) + unattributed
  wall = float(np.median(walls)) * 1e3
  print(f"stage-2 step under the profiler: {_DEPTH.value} (width {_WIDTH.value}) at "
        f"{_SIZE.value} px, V={problem['vertices']}, global batch {_BATCH.value}, "
        f"{jax.device_count()} x {jax.devices()[0].platform}; median wall {wall:.1f} ms, "
        f"operation time {total:.1f} ms ({total / wall:.2f} busy threads), "
        f"{sum(row.thunks for row in rows):.0f} operations per step; "
        f"{host.describe_memory_settings()}")
  shown, rest = rows[:_TOP.value], rows[_TOP.value:]
  cells = lambda label, rs: [label] + [f"{sum(getattr(r, key) for r in rs):.2f}" for key in (
      "forward_ms", "backward_ms", "unknown_ms", "total_ms")] + [
          f"{sum(r.total_ms for r in rs) / total:.1%}", f"{sum(r.thunks for r in rs):.0f}"]
  table = [cells(row.label, [row]) for row in shown]
  if rest:
    table.append(cells(f"({len(rest)} more)", rest))
  if unattributed:
    table.append(["(not in the compiled module)", "", "", "", f"{unattributed:.2f}",
                  f"{unattributed / total:.1%}", ""])
  print(f"| {_BY.value} | forward (ms) | backward (ms) | unknown (ms) | all (ms) | share | "
        "operations |")
  print("|---|---|---|---|---|---|---|")
  for line in table:
    print("| " + " | ".join(line) + " |")
  if _JSON.value:
    write_json(_JSON.value, {"wall_ms": wall, "operation_ms": total,
                             "unattributed_ms": unattributed, "by": _BY.value,
                             "rows": [dataclasses.asdict(row) for row in rows]})


def main(argv):
  del argv
  shapes = dict(image_size=_SIZE.value, resolution=_RESOLUTION.value, depth=_DEPTH.value,
                width=_WIDTH.value, shape_dim=_SHAPE.value, expr_dim=_EXPR.value,
                albedo_dim=_ALBEDO.value, classes=_CLASSES.value, global_batch=_BATCH.value,
                window=_WINDOW.value, render_groups=_RENDER_GROUPS.value,
                batch_groups=_BATCH_GROUPS.value)
  if _PROFILE.value:
    _profile(shapes)
    return
  result = steps.stage2_step(**shapes, repeats=_REPEATS.value)
  step_ms, encoder_ms, b = result["step_ms"], result["encoder_fwd_bwd_ms"], _BATCH.value
  print(f"stage-2 step: {_DEPTH.value} (width {_WIDTH.value}) at {_SIZE.value} px, "
        f"V={result['vertices']}, global batch {b}, {jax.device_count()} x {result['device']}; "
        f"{host.describe_memory_settings()}")
  print("| compile (s) | step (ms, median) | encoder fwd+bwd (ms) | rest (ms) | images/s |")
  print("|---|---|---|---|---|")
  print(f"| {result['compile_s']:.1f} | {step_ms:.1f} | {encoder_ms:.1f} | "
        f"{step_ms - encoder_ms:.1f} | {result['images_per_s']:.0f} |")
  if result["render_overflow"]:
    print(f"warning: the rasteriser dropped {result['render_overflow']:.1f} triangles per image; "
          "raise --window")
  if _JSON.value:
    write_json(_JSON.value, result)


if __name__ == "__main__":
  cli.run(main)
