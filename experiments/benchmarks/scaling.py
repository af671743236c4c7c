r"""How the cost of a train step grows: stage-1 and stage-2 step time and peak memory against the
vertex count V, the shape dimension K, the global batch and the device count.

  python -m experiments.benchmarks.scaling [--out=runs/scaling --stages=1,2
      --axes=V,K,batch,devices --repeats=5 --quick]

One axis moves at a time from a base point (stage 1: V=20000, K=100, E=K/2, batch 64; stage 2:
a 100x100 face-world mesh (V=10000), K=20, resnet10 width 16 at 96 px, batch 32). Every point
runs in its own process (the device count is fixed when JAX starts; on CPU the devices are
`--xla_force_host_platform_device_count` fakes, which share the same cores, so that axis shows
overhead, not speed-up), so its peak memory is its own: the process's peak resident memory on
CPU (`wait4`), the device's `peak_bytes_in_use` on a GPU. Writes `scaling.json` (every point,
and per axis the slope of log(time) and log(memory) against log(axis)) and `scaling.png` (a
panel per axis, log-log, slopes in the legends), and prints the tables. `--quick` uses tiny
sizes (seconds; what the test runs).
"""

import json
import os
import subprocess
import sys
import tempfile

import numpy as np
from absl import flags

from experiments import cli, host
from experiments.benchmarks import steps
from experiments.benchmarks.common import write_json
from sfm_jax.errors import InputError

AXES = ("V", "K", "batch", "devices")

# Base points and the values each axis takes (full, quick).
BASE = {
    "1": ({"V": 20000, "K": 100, "batch": 64, "devices": 1},
          {"V": 400, "K": 8, "batch": 16, "devices": 1}),
    "2": ({"V": 10000, "K": 20, "batch": 32, "devices": 1},
          {"V": 144, "K": 4, "batch": 8, "devices": 1}),
}
VALUES = {
    "1": ({"V": [5000, 10000, 20000, 53000], "K": [20, 50, 100, 199], "batch": [8, 32, 128, 512],
           "devices": [1, 2, 4, 8]},
          {"V": [100, 400], "K": [4, 8], "batch": [8, 16], "devices": [1, 2]}),
    "2": ({"V": [5000, 10000, 20000, 53000], "K": [20, 50, 100, 199], "batch": [8, 32, 128, 512],
           "devices": [1, 2, 4, 8]},
          {"V": [64, 144], "K": [4, 8], "batch": [8, 16], "devices": [1, 2]}),
}


def _measure_point(point: dict) -> dict:
  """Runs in the child process: one train step measured at `point`."""
  import jax

  if point["stage"] == "1":
    k = point["K"]
    result = steps.stage1_step(vertices=point["V"], shape_dim=k, expr_dim=max(k // 2, 1),
                                  num_scans=4000 if not point["quick"] else 64,
                                  classes=1000 if not point["quick"] else 16,
                                  global_batch=point["batch"], repeats=point["repeats"])
  else:
    quick = point["quick"]
    result = steps.stage2_step(
        image_size=32 if quick else 96, resolution=int(round(np.sqrt(point["V"]))),
        depth="resnet10", width=4 if quick else 16, shape_dim=point["K"],
        expr_dim=max(point["K"] // 2, 1), albedo_dim=4 if quick else 10,
        classes=16 if quick else 1000, global_batch=point["batch"], window=4,
        repeats=point["repeats"], encoder_split=False,
        # quick: one program compiles faster
        **({"render_groups": 1, "batch_groups": 1} if quick else {}))
  stats = jax.devices()[0].memory_stats() or {}
  result["device_peak_bytes"] = stats.get("peak_bytes_in_use")
  return result


def _run_point(point: dict) -> dict:
  """`point` measured in a fresh process with `point['devices']` devices; adds its peak memory
  (the device's peak where it reports one, else the process's peak resident memory)."""
  env = dict(os.environ)
  flags_now = env.get("XLA_FLAGS", "")
  env["XLA_FLAGS"] = (f"{flags_now} --xla_force_host_platform_device_count="
                      f"{point['devices']}").strip()
  with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
    process = subprocess.Popen(
        [sys.executable, "-m", "experiments.benchmarks.scaling", f"--point={json.dumps(point)}"],
        stdout=out, stderr=err, env=env,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    # wait4, not wait: it also gives this child's own resource usage (its peak memory).
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    out.seek(0)
    err.seek(0)
    stdout, stderr = out.read(), err.read()
  if process.returncode != 0:
    raise RuntimeError(f"scaling point {point} failed:\n{stderr[-3000:]}")
  result = json.loads(stdout.strip().splitlines()[-1])
  host_peak = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)
  device_peak = result.pop("device_peak_bytes")
  result.update(point=point, host_peak_bytes=host_peak,
                peak_bytes=device_peak if device_peak else host_peak,
                peak_kind="device" if device_peak else "host process")
  return result


def log_slope(x, y) -> float:
  """The least-squares slope of log(y) against log(x): the exponent of y ~ x^slope."""
  return float(np.polyfit(np.log(np.asarray(x, float)), np.log(np.asarray(y, float)), 1)[0])


def scaling(stages, axes, *, repeats: int, quick: bool, report=print) -> dict:
  """Every point of every (stage, axis), with per-axis slopes."""
  results = {"points": [], "slopes": {}}
  done = {}
  for stage in stages:
    base, values = BASE[stage][quick], VALUES[stage][quick]
    for axis in axes:
      rows = []
      for value in values[axis]:
        point = {**base, axis: value, "stage": stage, "repeats": repeats, "quick": quick}
        if axis == "devices" and point["batch"] % value:
          continue
        key = json.dumps(point, sort_keys=True)
        if key not in done:
          done[key] = _run_point(point)
          results["points"].append(done[key])
          measured = done[key]
          report(f"stage {stage} {axis}={value}: step {measured['step_ms']:.1f} ms, compile "
                 f"{measured['compile_s']:.1f} s, peak {measured['peak_bytes'] / 2 ** 20:.0f} MiB "
                 f"({measured['peak_kind']})")
        # The V axis of stage 2 is a grid side squared: its x is the mesh's real vertex count.
        rows.append((done[key].get("vertices", value) if axis == "V" else value, done[key]))
      x = [value for value, _ in rows]
      results["slopes"][f"stage{stage}/{axis}"] = {
          "values": x, "step_ms": [r["step_ms"] for _, r in rows],
          "peak_mib": [r["peak_bytes"] / 2 ** 20 for _, r in rows],
          "time_slope": log_slope(x, [r["step_ms"] for _, r in rows]),
          "memory_slope": log_slope(x, [r["peak_bytes"] for _, r in rows])}
  return results


def picture(results: dict, axes) -> np.ndarray:
  from sfm_jax import viz
  time_row, memory_row = [], []
  for axis in axes:
    times, memories = {}, {}
    for name, entry in results["slopes"].items():
      stage, entry_axis = name.split("/")
      if entry_axis != axis:
        continue
      label = f"stage {stage[-1]}"
      times[f"{label} (slope {entry['time_slope']:.2f})"] = (entry["values"], entry["step_ms"])
      memories[f"{label} (slope {entry['memory_slope']:.2f})"] = (entry["values"],
                                                                  entry["peak_mib"])
    time_row.append((f"step time vs {axis}", axis, "ms per step", times))
    memory_row.append((f"peak memory vs {axis}", axis, "MiB", memories))
  return viz.plot_loglog([time_row, memory_row])


def _define_flags() -> None:
  """The command line's flags (defined only when run as a script, so that tests can import the
  module beside other entry points)."""
  flags.DEFINE_string("out", "runs/scaling", "folder for scaling.json and scaling.png")
  flags.DEFINE_list("stages", ["1", "2"], "stages to measure")
  flags.DEFINE_list("axes", ["V", "K", "batch", "devices"], "axes to move")
  flags.DEFINE_integer("repeats", 5, "timed steps per point (median)")
  flags.DEFINE_boolean("quick", False, "tiny sizes (a smoke run)")
  flags.DEFINE_string("point", None, "internal: measure one point (JSON) and print it")


def main(argv):
  del argv
  options = flags.FLAGS
  if options.point:
    print(json.dumps(_measure_point(json.loads(options.point))))
    return
  from sfm_jax.io import write_png
  for stage in options.stages:
    if stage not in BASE:
      raise InputError(f"--stages: {stage!r} is not 1 or 2")
  for axis in options.axes:
    if axis not in AXES:
      raise InputError(f"--axes: {axis!r} is not one of {AXES}")
  results = scaling(options.stages, options.axes, repeats=options.repeats, quick=options.quick)
  os.makedirs(options.out, exist_ok=True)
  write_json(os.path.join(options.out, "scaling.json"), results)
  write_png(os.path.join(options.out, "scaling.png"), picture(results, options.axes))
  device = results["points"][0]["device"]
  print(f"\n{device}; base points {BASE['1'][options.quick]} (stage 1), "
        f"{BASE['2'][options.quick]} (stage 2); {host.describe_memory_settings()}")
  print("| stage | axis | values | step (ms) | peak (MiB) | time slope | memory slope |")
  print("|---|---|---|---|---|---|---|")
  for name, entry in results["slopes"].items():
    stage, axis = name.split("/")
    print(f"| {stage[-1]} | {axis} | {entry['values']} | "
          f"{[round(t, 1) for t in entry['step_ms']]} | "
          f"{[round(m) for m in entry['peak_mib']]} | {entry['time_slope']:.2f} | "
          f"{entry['memory_slope']:.2f} |")
  print(f"wrote {options.out}/scaling.json and scaling.png")


if __name__ == "__main__":
  _define_flags()
  cli.run(main)
