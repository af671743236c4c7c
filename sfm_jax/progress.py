"""Progress lines with an ETA for long work (training, prediction, fitting, reconstruction).

One helper for every loop that runs long enough for a person to wait on it. The text is tqdm's
(`tqdm.format_meter`), printed as plain lines (no carriage returns, no bar), so logs redirected
to files stay readable and every process can decide whether to print:

    progress = Progress("predicting (sfm):", total=300, unit="images")
    for ...:
      progress.update(done)     # "predicting (sfm): 64/300 images  41.20images/s  ETA 00:06"
"""

from __future__ import annotations

import time

from tqdm import tqdm

_FORMAT = "{desc} {n_fmt}/{total_fmt} {unit}{postfix}  {rate_fmt}  ETA {remaining}"


def format_seconds(seconds: float) -> str:
  """`75.2 -> "01:15"` (tqdm's interval format)."""
  return tqdm.format_interval(seconds)


class Progress:
  """Counts work done out of `total`; each `update` prints one line with the rate since the
  previous update and the ETA at that rate.

  `start` is the amount already done when the clock starts (a resumed run). `enabled=False`
  keeps the arithmetic and prints nothing (processes other than the chief).
  """

  def __init__(self, label: str, *, total: int, unit: str = "items", start: int = 0,
               enabled: bool = True):
    self.label, self.total, self.unit, self.enabled = label, total, unit, enabled
    self._start_time = time.perf_counter()
    self._last_done, self._last_time = start, self._start_time

  def update(self, done: int, detail: str = "") -> float:
    """Prints `label done/total unit, detail  rate  ETA`; returns the rate (units per second)
    since the previous update."""
    now = time.perf_counter()
    rate = (done - self._last_done) / max(now - self._last_time, 1e-9)
    self._last_done, self._last_time = done, now
    if self.enabled:
      print(tqdm.format_meter(done, self.total, now - self._start_time, prefix=self.label,
                              unit=self.unit, rate=rate, postfix=detail or None,
                              bar_format=_FORMAT), flush=True)
    return rate
