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

import jax
from absl import flags

from experiments import cli
from experiments.benchmarks import steps
from experiments.benchmarks.common import write_json

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
  result = steps.stage2_step(image_size=_SIZE.value, resolution=_RESOLUTION.value, depth=_DEPTH.value,
                   width=_WIDTH.value, shape_dim=_SHAPE.value, expr_dim=_EXPR.value,
                   albedo_dim=_ALBEDO.value, classes=_CLASSES.value, global_batch=_BATCH.value,
                   window=_WINDOW.value, repeats=_REPEATS.value)
  step_ms, encoder_ms, b = result["step_ms"], result["encoder_fwd_bwd_ms"], _BATCH.value
  print(f"stage-2 step: {_DEPTH.value} (width {_WIDTH.value}) at {_SIZE.value} px, "
        f"V={result['vertices']}, global batch {b}, {jax.device_count()} x {result['device']}")
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
