"""The scaling benchmark (`experiments.benchmarks.scaling`) at tiny sizes: every point in its own
process with the device count it asks for, slopes that are the fit through its own points, the
picture. (A file of its own so that the suite's workers run it beside the streaming tests.)"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from sfm_jax.io import read_png

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_scaling_benchmark_runs_and_fits_its_slopes(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "experiments.benchmarks.scaling", "--quick", "--repeats=2",
       "--axes=V,devices", f"--out={tmp_path}"], cwd=ROOT, capture_output=True, text=True,
      timeout=600, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert result.returncode == 0, result.stderr[-3000:]
  with open(tmp_path / "scaling.json") as f:
    scaling = json.load(f)
  assert set(scaling["slopes"]) == {"stage1/V", "stage1/devices", "stage2/V", "stage2/devices"}
  # Three distinct points per stage (the base point is shared by both axes).
  assert sorted(p["point"]["stage"] for p in scaling["points"]) == ["1"] * 3 + ["2"] * 3
  for entry in scaling["slopes"].values():
    x, times, memory = entry["values"], entry["step_ms"], entry["peak_mib"]
    assert len(x) == 2 and all(t > 0 for t in times) and all(m > 50 for m in memory)
    # The slope is the exponent through the two points, recomputed here.
    np.testing.assert_allclose(entry["time_slope"],
                               np.log(times[1] / times[0]) / np.log(x[1] / x[0]), rtol=1e-9)
  # Stage 2's V axis is the real vertex count of the grids (8x8, 12x12).
  assert scaling["slopes"]["stage2/V"]["values"] == [64, 144]
  devices = {p["point"]["devices"]: p["devices"] for p in scaling["points"]}
  assert devices == {1: 1, 2: 2}  # each point ran with the device count it asked for
  picture = read_png(str(tmp_path / "scaling.png"))
  assert picture.shape[0] > 400 and picture.shape[1] > 600
