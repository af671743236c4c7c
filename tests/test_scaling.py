"""The scaling benchmark (`experiments.benchmarks.scaling`): at tiny sizes through its command
line (each point in its own process with the device count it asks for, slopes that are the fit
through its own points, the picture), and its bookkeeping with the measurement stubbed out."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from experiments.benchmarks import scaling
from sfm_jax.io import read_png

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_scaling_benchmark_runs_and_fits_its_slopes(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "experiments.benchmarks.scaling", "--quick", "--repeats=2",
       "--axes=devices", f"--out={tmp_path}"], cwd=ROOT, capture_output=True, text=True,
      timeout=600, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert result.returncode == 0, result.stderr[-3000:]
  with open(tmp_path / "scaling.json") as f:
    measured = json.load(f)
  assert set(measured["slopes"]) == {"stage1/devices", "stage2/devices"}
  for entry in measured["slopes"].values():
    x, times, memory = entry["values"], entry["step_ms"], entry["peak_mib"]
    assert x == [1, 2] and all(t > 0 for t in times) and all(m > 50 for m in memory)
    # The slope is the exponent through the two points, recomputed here.
    np.testing.assert_allclose(entry["time_slope"],
                               np.log(times[1] / times[0]) / np.log(x[1] / x[0]), rtol=1e-9)
  # Each point ran in a process with the device count it asked for.
  assert sorted((p["point"]["stage"], p["point"]["devices"], p["devices"])
                for p in measured["points"]) == [("1", 1, 1), ("1", 2, 2), ("2", 1, 1),
                                                 ("2", 2, 2)]
  picture = read_png(str(tmp_path / "scaling.png"))
  assert picture.shape[0] > 400 and picture.shape[1] > 300


def test_points_share_the_base_and_stage2_v_is_the_grid_vertex_count(monkeypatch):
  asked = []

  def fake_point(point):
    asked.append(point)
    side = int(round(np.sqrt(point["V"])))
    result = {"step_ms": 2.0 * point["V"] ** 0.5 * point["K"], "peak_bytes": 1e6 * point["batch"],
              "peak_kind": "host process", "compile_s": 0.0}
    if point["stage"] == "2":
      result["vertices"] = side * side  # stage 2 measures a side x side grid
    return result

  monkeypatch.setattr(scaling, "_run_point", fake_point)
  results = scaling.scaling(["1", "2"], ["V", "K"], repeats=1, quick=False, report=lambda _: None)
  # Each stage: 4 V points and 4 K points, the base point (V and K at their base) run once.
  assert len(asked) == 2 * (4 + 4 - 1)
  assert results["slopes"]["stage2/V"]["values"] == [5041, 10000, 19881, 52900]
  assert results["slopes"]["stage1/V"]["values"] == [5000, 10000, 20000, 53000]
  # time ~ V^0.5 K: the fitted exponents are those of the stub.
  np.testing.assert_allclose(results["slopes"]["stage1/V"]["time_slope"], 0.5, rtol=1e-9)
  np.testing.assert_allclose(results["slopes"]["stage1/K"]["time_slope"], 1.0, rtol=1e-9)
  np.testing.assert_allclose(results["slopes"]["stage1/K"]["memory_slope"], 0.0, atol=1e-9)
