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


def in_tenths(chunks, progress: Progress, size):
  """Yields `chunks` in turn, updating `progress` with the units done (`size(chunk)` each) once
  another tenth of its total is done, and at the end: a line per tenth for long writes."""
  done, reported = 0, 0
  for chunk in chunks:
    yield chunk
    done += size(chunk)
    if done - reported >= progress.total / 10 or done == progress.total:
      progress.update(done)
      reported = done


def peak_memory_bytes() -> int:
  """This process's peak resident memory so far (`getrusage` `ru_maxrss`; KiB on Linux, bytes
  on macOS)."""
  import resource
  import sys

  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return int(peak if sys.platform == "darwin" else peak * 1024)


def resident_memory_bytes() -> int:
  """This process's resident memory now (`/proc/self/statm`; 0 where there is none)."""
  import os

  try:
    with open("/proc/self/statm") as f:
      return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
  except (OSError, ValueError, IndexError):
    return 0


class Phases:
  """Wall time of a run's phases and the process's memory at the end of each: resident now,
  and the peak so far (it only grows, so a phase that raises it shows where memory goes)."""

  def __init__(self):
    self.rows: list[dict] = []
    self._last = time.perf_counter()

  def mark(self, name: str) -> dict:
    """Ends phase `name` (begun at the previous mark, or at creation) and returns its row
    `{phase, seconds, peak_memory_gb, memory_gb}` (GiB)."""
    now = time.perf_counter()
    row = {"phase": name, "seconds": round(now - self._last, 2),
           "peak_memory_gb": round(peak_memory_bytes() / 2 ** 30, 3),
           "memory_gb": round(resident_memory_bytes() / 2 ** 30, 3)}
    self._last = now
    self.rows.append(row)
    return row

  def line(self, row: dict) -> str:
    return (f"phase {row['phase']}: {format_seconds(row['seconds'])}; host memory "
            f"{row['memory_gb']:.2f} GiB, peak so far {row['peak_memory_gb']:.2f} GiB")
