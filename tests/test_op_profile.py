"""The operation profiler (`experiments.benchmarks.op_profile`): attribution of executed HLO
instructions to source lines, on a hand-written module and on a real trace."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.benchmarks import op_profile

# A compiled module's text in the form XLA prints it: frame tables, a fused computation whose
# instructions carry stack frames (one forward, two from the gradient), an entry with a fusion,
# a copy without metadata and an instruction whose innermost project frame lies under a caller.
_HLO = """HloModule jit_step, is_scheduled=true

FileNames
1 "/home/me/proj/sfm_jax/render.py"
2 "/venv/site-packages/flax/linen/linear.py"
3 "/home/me/proj/sfm_jax/networks.py"

FunctionNames
1 "barycentrics"
2 "_Conv.__call__"
3 "Backbone.__call__"

FileLocations
1 {file_name_id=1 function_name_id=1 line=331 end_line=331 column=1 end_column=9}
2 {file_name_id=2 function_name_id=2 line=700 end_line=700 column=1 end_column=9}
3 {file_name_id=3 function_name_id=3 line=175 end_line=175 column=1 end_column=9}

StackFrames
1 {file_location_id=1 parent_frame_id=1}
2 {file_location_id=3 parent_frame_id=2}
3 {file_location_id=2 parent_frame_id=2}


%fused_computation (param_0: f32[8]) -> f32[8] {
  %param_0 = f32[8]{0} parameter(0)
  %a = f32[8]{0} sine(%param_0), metadata={op_name="jit(step)/jvp()/sin" stack_frame_id=1}
  %b = f32[8]{0} cosine(%a), metadata={op_name="jit(step)/transpose(jvp())/cos" \
stack_frame_id=1}
  ROOT %c = f32[8]{0} multiply(%a, %b), metadata={op_name="jit(step)/transpose(jvp())/mul" \
stack_frame_id=1}
}

ENTRY %main (x: f32[8]) -> (f32[8], f32[8]) {
  %x = f32[8]{0} parameter(0), metadata={op_name="x"}
  %multiply_fusion = f32[8]{0} fusion(%x), kind=kLoop, calls=%fused_computation
  %copy.1 = f32[8]{0} copy(%x)
  %convolution.2 = f32[8]{0} convolution(%x, %x), metadata={op_name="jit(step)/conv" \
stack_frame_id=3}
  ROOT %tuple = (f32[8]{0}, f32[8]{0}) tuple(%multiply_fusion, %copy.1)
}
"""


def test_source_map_names_the_innermost_project_frame_and_the_direction():
  sources = op_profile.source_map(_HLO)
  # The fusion has no frame of its own: its instructions' frame, and mostly gradient ops.
  assert sources["multiply_fusion"] == op_profile.Source("render.py", "barycentrics", 331, True)
  assert sources["a"] == op_profile.Source("render.py", "barycentrics", 331, False)
  # flax's frame is not the project's: its caller in networks.py is.
  assert sources["convolution.2"] == op_profile.Source("networks.py", "Backbone.__call__", 175,
                                                       False)
  # No frame and no op name: the opcode, direction unknown.
  assert sources["copy.1"] == op_profile.Source("(no source)", "(copy)", 0, None)
  assert sources["convolution.2"].key("line") == "networks.py:175 Backbone.__call__"
  assert sources["convolution.2"].key("module") == "networks.py"
  with pytest.raises(ValueError, match="by must be"):
    sources["copy.1"].key("file")


def test_attribute_sums_durations_per_group_and_step():
  sources = op_profile.source_map(_HLO)
  trace = {"traceEvents": [
      {"ph": "X", "name": "multiply_fusion", "dur": 3000},
      {"ph": "X", "name": "multiply_fusion", "dur": 1000},
      {"ph": "X", "name": "a", "dur": 500},
      {"ph": "X", "name": "copy.1", "dur": 200},
      {"ph": "X", "name": "mystery.7", "dur": 700},
      {"ph": "X", "name": "ThunkExecutor::Execute", "dur": 99999},  # bookkeeping: skipped
      {"ph": "M", "name": "thread_name"}]}
  events = op_profile.thunk_events(trace)
  assert [e["name"] for e in events] == ["multiply_fusion", "multiply_fusion", "a", "copy.1",
                                         "mystery.7"]
  rows, unattributed = op_profile.attribute(events, sources, steps=2, by="function")
  assert unattributed == pytest.approx(0.35)  # 700 us over 2 steps
  by_label = {row.label: row for row in rows}
  assert rows[0].label == "render.py:barycentrics"
  assert by_label["render.py:barycentrics"] == op_profile.Row(
      "render.py:barycentrics", forward_ms=0.25, backward_ms=2.0, unknown_ms=0.0, thunks=1.5)
  assert by_label["(no source):(copy)"].unknown_ms == pytest.approx(0.1)
  assert sum(row.total_ms for row in rows) + unattributed == pytest.approx(
      sum(e["dur"] for e in events) / 1e3 / 2)


def _sort_rows(x):
  return jnp.sort(x, axis=1)


def _add_one(x):
  return x + 1.0


def test_a_real_trace_finds_this_file_and_accounts_for_every_operation():
  """A jitted step of two functions defined here, one far heavier (sorting 10^6 numbers) than
  the other (adding one to 16): both are found, the heavy one takes more time, and the rows
  with the unattributed rest sum to the trace's operation time."""
  @jax.jit
  def step(state, batch):
    heavy = _sort_rows(batch["big"])
    light = _add_one(batch["small"])
    return state + 1, {"heavy": heavy[:, 0].sum(), "light": light.sum()}

  batch = {"big": jnp.asarray(np.random.default_rng(0).normal(size=(1000, 1000)), jnp.float32),
           "small": jnp.zeros(16)}
  state = jnp.zeros(())
  hlo = step.lower(state, batch).compile().as_text()
  sources = op_profile.source_map(hlo, packages=("tests",))
  trace, walls, state = op_profile.trace_steps(step, state, batch, steps=2)
  assert len(walls) == 2 and all(w > 0 for w in walls) and int(state) == 4  # 2 warm-up + 2
  events = op_profile.thunk_events(trace)
  rows, unattributed = op_profile.attribute(events, sources, steps=2, by="function")
  by_label = {row.label: row for row in rows}
  heavy = by_label["test_op_profile.py:_sort_rows"]
  assert heavy.total_ms > 0 and heavy.thunks >= 1
  light = [row for label, row in by_label.items() if label.endswith("_add_one")]
  assert not light or light[0].total_ms < heavy.total_ms  # XLA may fuse the add elsewhere
  assert heavy.total_ms == max(row.total_ms for row in rows)
  assert sum(row.total_ms for row in rows) + unattributed == pytest.approx(
      sum(e["dur"] for e in events) / 1e3 / 2)
