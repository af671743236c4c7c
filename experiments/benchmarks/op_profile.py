"""Where a jitted step's time goes: the executed operations (thunks) of a `jax.profiler` trace,
each attributed to the source line that made it, through the stack frames that the compiled
module's HLO text carries.

XLA runs a compiled step as a few thousand thunks (fusions, scatters, convolutions, ...) on a
pool of threads; the profiler records each with its HLO instruction name, and the compiled
module (`jitted.lower(...).compile().as_text()`) names, for every instruction, the Python stack
that emitted it. An instruction gets the innermost frame in a file under `packages` (by
default this project's code), so flax's and optax's operations count where the project calls
them; a fusion without a frame of its own gets its fused instructions' most frequent one, and
one with none (some backward convolutions) its root opcode. `backward` marks operations that
jax emitted by transposition (`transpose(jvp(...))` in the op name): the gradient; it is read
from the instruction's own op name, else from most of its fused instructions', and is None
where no op name says.

Thunk time is summed over threads, so it can exceed the step's wall time (`busy threads`). The
profiler itself slows a step of many small thunks: read shares, not absolute times.
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import gzip
import json
import os
import re
import tempfile
import time

import jax

_SECTIONS = ("FileNames", "FunctionNames", "FileLocations", "StackFrames")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = \S+.*?\s(\w[\w\-]*)\(")
_HEADER = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$")


@dataclasses.dataclass(frozen=True)
class Source:
  """Where an HLO instruction came from: `module` (file name), `function`, `line` (0 when
  unknown: then `function` holds the instruction's root opcode in parentheses) and whether it
  belongs to the gradient (None: unknown)."""
  module: str
  function: str
  line: int
  backward: bool | None

  def key(self, by: str) -> str:
    """The grouping label: `by` is "module", "function" or "line"."""
    if by == "module":
      return self.module
    if by == "function":
      return f"{self.module}:{self.function}"
    if by == "line":
      return f"{self.module}:{self.line} {self.function}"
    raise ValueError(f"by must be 'module', 'function' or 'line', got {by!r}")


def _frame_tables(hlo_text: str) -> tuple[dict, dict]:
  """(file locations `(file, function, line)`, stack frames `(location, parent)`) from the
  tables at the top of a compiled module's text."""
  tables = {name: {} for name in _SECTIONS}
  section = None
  for line in hlo_text.splitlines():
    if line in _SECTIONS:
      section = line
      continue
    if section is None:
      continue
    match = re.match(r"^(\d+) (.*)$", line)
    if not match:
      if line.strip():  # the first line of another kind ends the tables
        section = None
      continue
    index, rest = int(match.group(1)), match.group(2)
    if section in ("FileNames", "FunctionNames"):
      tables[section][index] = rest.strip().strip('"')
    else:
      tables[section][index] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", rest)}
  files, functions = tables["FileNames"], tables["FunctionNames"]
  locations = {i: (files.get(d["file_name_id"], "?"), functions.get(d["function_name_id"], "?"),
                   d.get("line", 0)) for i, d in tables["FileLocations"].items()}
  frames = {i: (d["file_location_id"], d["parent_frame_id"])
            for i, d in tables["StackFrames"].items()}
  return locations, frames


def _innermost(frame: int, locations: dict, frames: dict, packages: tuple[str, ...]):
  """`(file, function, line)` of the innermost frame of the stack `frame` whose file lies in
  one of `packages` (a path component), or None."""
  seen = set()
  while frame in frames and frame not in seen:
    seen.add(frame)
    location, parent = frames[frame]
    path, function, line = locations.get(location, ("?", "?", 0))
    parts = path.replace("\\", "/").split("/")
    if any(package in parts[:-1] for package in packages):
      return parts[-1], function, line
    if parent == frame:
      break
    frame = parent
  return None


def _direction(lines: list[str]) -> bool | None:
  """Whether most of the instructions `lines` that carry an op name come from a transposition
  (the gradient); None where none carries one."""
  names = [m.group(1) for m in (re.search(r'op_name="([^"]*)"', x) for x in lines) if m]
  if not names:
    return None
  return 2 * sum("transpose(" in name for name in names) > len(names)


def source_map(hlo_text: str, *, packages: tuple[str, ...] = ("sfm_jax",)) -> dict[str, Source]:
  """Instruction name -> `Source` for every instruction of a compiled module's HLO text."""
  locations, frames = _frame_tables(hlo_text)
  computations, current, roots = {}, None, {}
  for line in hlo_text.splitlines():
    header = _HEADER.match(line)
    if header and not line.startswith(" "):
      current = header.group(1)
      computations[current] = []
    elif line.startswith("}"):
      current = None
    elif current is not None:
      computations[current].append(line)
      if line.lstrip().startswith("ROOT"):
        match = _INSTRUCTION.match(line)
        roots[current] = match.group(2) if match else "?"

  def own(line):
    frame = re.search(r"stack_frame_id=(\d+)", line)
    return _innermost(int(frame.group(1)), locations, frames, packages) if frame else None

  sources = {}
  for lines in computations.values():
    for line in lines:
      match = _INSTRUCTION.match(line)
      if not match:
        continue
      name, opcode = match.groups()
      called = re.search(r"calls=%?([\w.\-]+)", line)
      inner = computations.get(called.group(1), []) if called else []
      backward = _direction([line]) if "op_name=" in line else _direction(inner)
      found = own(line)
      if found is None and inner:
        votes = collections.Counter(x for x in map(own, inner) if x)
        found = votes.most_common(1)[0][0] if votes else None
      if found is None:
        root = roots.get(called.group(1), opcode) if called else opcode
        found = ("(no source)", f"({root})", 0)
      sources[name] = Source(*found, backward=backward)
  return sources


def thunk_events(trace: dict) -> list[dict]:
  """The complete ('X') events of a trace that are executed HLO instructions: not the
  executor's, the client's or Python's own bookkeeping events."""
  skip = ("$", "Thunk", "Pjit", "ThreadpoolListener", "end:", "Wait for", "PjRt", "Execute")
  return [e for e in trace.get("traceEvents", [])
          if e.get("ph") == "X" and not str(e.get("name", "")).startswith(skip)]


@dataclasses.dataclass(frozen=True)
class Row:
  """One group of thunks: label, forward, backward and unknown-direction time per step (ms),
  thunks per step."""
  label: str
  forward_ms: float
  backward_ms: float
  unknown_ms: float
  thunks: float

  @property
  def total_ms(self) -> float:
    return self.forward_ms + self.backward_ms + self.unknown_ms


def attribute(events: list[dict], sources: dict[str, Source], *, steps: int,
              by: str = "function") -> tuple[list[Row], float]:
  """(rows sorted by time, unattributed ms per step): thunk `events` (durations in
  microseconds, as the trace writes them) grouped by `Source.key(by)`, divided by `steps`.
  Events whose name is not an instruction of `sources` are left unattributed."""
  times = {direction: collections.Counter() for direction in (False, True, None)}
  count = collections.Counter()
  unattributed = 0.0
  for event in events:
    source = sources.get(event["name"])
    if source is None:
      unattributed += event.get("dur", 0)
      continue
    label = source.key(by)
    times[source.backward][label] += event.get("dur", 0)
    count[label] += 1
  rows = [Row(label, *(times[direction][label] / 1e3 / steps for direction in (False, True, None)),
              count[label] / steps) for label in count]
  return sorted(rows, key=lambda row: -row.total_ms), unattributed / 1e3 / steps


def trace_steps(step, state, batch, *, steps: int, warmup: int = 2,
                log_dir: str | None = None) -> tuple[dict, list[float], object]:
  """Runs `state, metrics = step(state, batch)` `warmup` times, then `steps` times under
  `jax.profiler`: (the trace as a dict, wall seconds of each traced step, the final state)."""
  for _ in range(warmup):
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
  with tempfile.TemporaryDirectory() as scratch:
    directory = log_dir or scratch
    walls = []
    jax.profiler.start_trace(directory)
    try:
      for _ in range(steps):
        start = time.perf_counter()
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
        walls.append(time.perf_counter() - start)
    finally:
      jax.profiler.stop_trace()
    files = sorted(glob.glob(os.path.join(directory, "**", "*.trace.json.gz"), recursive=True),
                   key=os.path.getmtime)
    if not files:
      raise RuntimeError(f"jax.profiler wrote no *.trace.json.gz under {directory}; this jax "
                         f"({jax.__version__}) may export only .xplane.pb")
    with gzip.open(files[-1], "rt") as handle:
      trace = json.load(handle)
  return trace, walls, state
