"""Progress lines with an ETA for long work (training, prediction, fitting, reconstruction).

One helper for every loop that runs long enough for a person to wait on it. It prints plain
lines (no carriage returns), so logs redirected to files stay readable:

    progress = Progress("predicting (sfm):", total=300, unit="images")
    for ...:
      progress.update(done)     # "  predicting (sfm): 64/300 images  41.2 images/s  ETA 6s"
"""

from __future__ import annotations

import time


def format_seconds(seconds: float) -> str:
  """`75.2 -> "1m15s"`, `9.6 -> "10s"`."""
  seconds = int(round(seconds))
  return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class Progress:
  """Counts work done out of `total`; each `update` prints one line with the rate since the
  previous update and the ETA at that rate.

  `start` is the amount already done when the clock starts (a resumed run). `enabled=False`
  keeps the arithmetic and prints nothing (processes other than the chief).
  """

  def __init__(self, label: str, *, total: int, unit: str = "", start: int = 0,
               enabled: bool = True):
    self.label, self.total, self.unit, self.enabled = label, total, unit, enabled
    self._last_done, self._last_time = start, time.perf_counter()

  def measure(self, done: int) -> tuple[float, float]:
    """(units per second since the previous call, seconds left at that rate); restarts the
    window."""
    now = time.perf_counter()
    rate = (done - self._last_done) / max(now - self._last_time, 1e-9)
    self._last_done, self._last_time = done, now
    return rate, max(self.total - done, 0) / max(rate, 1e-9)

  def update(self, done: int, detail: str = "") -> float:
    """Prints `label done/total unit  detail  rate unit/s  ETA`; returns the rate."""
    rate, eta = self.measure(done)
    if self.enabled:
      unit = self.unit or "items"
      detail = f"  {detail}" if detail else ""
      print(f"{self.label} {done}/{self.total} {unit}{detail}  {rate:.2f} {unit}/s  "
            f"ETA {format_seconds(eta)}", flush=True)
    return rate
