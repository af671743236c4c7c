"""The shared training loop: a non-finite step stops the run with the step and the bad terms,
keeping the last good checkpoint, or is skipped (`skip_nonfinite`); a damaged checkpoint falls
back to the previous one."""

import ml_collections
import numpy as np
import optax
import pytest

from sfm_jax import parallel, train_loop
from sfm_jax.errors import NonFiniteError
from sfm_jax.train_state import TrainState

TARGETS = np.array([[1.0, 2.0], [3.0, -1.0], [0.5, 0.5], [2.0, 2.0], [-1.0, 0.0], [1.5, 1.0]],
                   np.float32)


def _loss_fn(params, model_state, batch, rng):
  del rng
  import jax.numpy as jnp
  fit = jnp.mean(jnp.square(params["w"] - batch["x"]))
  return fit, ({"fit": fit}, model_state)


def _state():
  import jax.numpy as jnp
  return TrainState.create(params={"w": jnp.zeros((2, 2))}, tx=optax.adam(0.1),
                           loss_fn=_loss_fn, seed=0)


def _config(num_steps, log_every=1, skip_nonfinite=0):
  return ml_collections.ConfigDict(dict(
      num_steps=num_steps, global_batch_size=2, log_every=log_every, checkpoint_every=2,
      max_to_keep=5, stop_after_steps=0, sleep_per_step=0.0, skip_nonfinite=skip_nonfinite))


def _train(tmp_path, batches, log_every=1, skip_nonfinite=0):
  config = _config(len(batches), log_every, skip_nonfinite)
  parallel_config = ml_collections.ConfigDict(dict(mode="jit"))
  log = train_loop.MetricsLog(str(tmp_path / "metrics.jsonl"))
  return train_loop.run("m", _state(), lambda step, rows: {"x": batches[step][None].repeat(2, 0)},
                        train_config=config, parallel_config=parallel_config,
                        workdir=str(tmp_path), log=log, mesh=parallel.make_mesh(),
                        summary=lambda metrics: "")


@pytest.mark.parametrize("log_every", [1, 3])  # checked at every log and every save
def test_a_nan_batch_stops_the_run_naming_the_step_and_term(tmp_path, capsys, log_every):
  batches = TARGETS.copy()
  batches[3, 0] = np.nan  # the fourth step sees a NaN
  with pytest.raises(NonFiniteError, match=r"\[m\] step 4: non-finite .*fit=nan.*last good "
                                           r"checkpoint is step 2"):
    _train(tmp_path, batches, log_every)
  steps = sorted(int(p.name) for p in (tmp_path / "checkpoints" / "m").iterdir()
                 if p.name.isdigit())
  assert max(steps) == 2  # nothing saved at or after the bad step


def test_a_damaged_checkpoint_falls_back_to_the_previous_step(tmp_path, capsys):
  import os
  batches = np.concatenate([TARGETS, TARGETS[::-1]])  # 12 steps
  _train(tmp_path / "first", batches[:6])  # checkpoints at 2, 4, 6
  step_dir = tmp_path / "first" / "checkpoints" / "m" / "6"
  for root, _, files in os.walk(step_dir):  # truncate every file of the newest checkpoint
    for name in files:
      open(os.path.join(root, name), "wb").close()
  resumed = _train(tmp_path / "first", batches[:8])
  out = capsys.readouterr().out
  assert "checkpoint at step 6 does not restore" in out
  assert "resumed from the checkpoint at step 4" in out
  assert (tmp_path / "first" / "checkpoints" / "m" / "6.damaged").is_dir()  # kept aside
  reference = _train(tmp_path / "reference", batches[:8])
  np.testing.assert_array_equal(np.asarray(parallel.to_host(resumed.params["w"])),
                                np.asarray(parallel.to_host(reference.params["w"])))


def _numpy_adam(targets, learning_rate=0.1, b1=0.9, b2=0.999, eps=1e-8):
  """Adam (Kingma & Ba, Algorithm 1) on mean((w - x)^2) over a [2, 2] w, one target per step."""
  w, m, v = np.zeros((2, 2)), np.zeros((2, 2)), np.zeros((2, 2))
  for t, x in enumerate(targets, start=1):
    g = 2.0 * (w - x) / 4.0
    m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
    w = w - learning_rate * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
  return w


def test_a_step_without_its_arrays_or_commit_marker_falls_back_alone(tmp_path, capsys):
  """A step folder that lost its arrays and its commit marker is moved aside and the newest good
  step restored; the good steps stay where they are (a manager that had seen the bad folder
  misread all of them, and every one was moved aside). An uncommitted temporary step folder, as
  a kill during a save leaves it, is ignored."""
  import os
  import shutil
  batches = np.concatenate([TARGETS, TARGETS[::-1]])
  _train(tmp_path / "run", batches[:6])  # checkpoints at 2, 4, 6
  steps = tmp_path / "run" / "checkpoints" / "m"
  shutil.copytree(steps / "6", steps / "10.orbax-checkpoint-tmp-1")
  shutil.copytree(steps / "6", steps / "8")
  os.remove(steps / "8" / "commit_success.txt")
  shutil.rmtree(steps / "8" / "default")
  good = sorted(name for name in os.listdir(steps) if name.isdigit() and name != "8")
  resumed = _train(tmp_path / "run", batches[:8])
  out = capsys.readouterr().out
  assert "checkpoint at step 8 does not restore" in out
  assert out.count("does not restore") == 1
  assert "resumed from the checkpoint at step 6" in out
  assert (steps / "8.damaged").is_dir()
  assert set(good) <= set(os.listdir(steps))
  reference = _train(tmp_path / "reference", batches[:8])
  np.testing.assert_array_equal(np.asarray(parallel.to_host(resumed.params["w"])),
                                np.asarray(parallel.to_host(reference.params["w"])))


@pytest.mark.parametrize("log_every", [1, 3])
def test_skip_nonfinite_drops_the_bad_updates_and_goes_on(tmp_path, capsys, log_every):
  batches = TARGETS.copy()
  batches[3, 1] = np.inf  # step 4 sees an infinite target: its update must not be applied
  state = _train(tmp_path, batches, log_every, skip_nonfinite=1)
  assert "[m] step 4: non-finite" in capsys.readouterr().out
  assert int(np.asarray(parallel.to_host(state.step))) == 6
  expected = _numpy_adam([batches[i][None].repeat(2, 0) for i in (0, 1, 2, 4, 5)])
  np.testing.assert_allclose(np.asarray(parallel.to_host(state.params["w"])), expected,
                             rtol=1e-5, atol=1e-6)


def test_more_nonfinite_steps_than_allowed_stop_the_run(tmp_path):
  batches = TARGETS.copy()
  batches[1, 0] = batches[4, 0] = np.nan
  with pytest.raises(NonFiniteError, match=r"step 5: non-finite .*1 non-finite step\(s\) already "
                                           r"skipped .*last good checkpoint is step 4"):
    _train(tmp_path, batches, skip_nonfinite=1)


def test_background_saves_only_on_accelerators(monkeypatch):
  config = ml_collections.ConfigDict({"async_checkpoints": "auto"})
  assert train_loop.async_checkpoints(config) is False  # the suite runs on CPU
  monkeypatch.setattr(train_loop.jax, "default_backend", lambda: "gpu")
  assert train_loop.async_checkpoints(config) is True
  config.async_checkpoints = "off"
  assert train_loop.async_checkpoints(config) is False
  monkeypatch.undo()
  config.async_checkpoints = "on"
  assert train_loop.async_checkpoints(config) is True
  assert train_loop.async_checkpoints(ml_collections.ConfigDict({})) is False  # older configs


def test_a_bad_async_checkpoints_value_is_refused():
  from experiments import cli
  from experiments.configs import stage1 as configs
  from sfm_jax.errors import InputError
  config = configs.get_config("tiny")
  config.train.async_checkpoints = "sometimes"
  with pytest.raises(InputError, match="train.async_checkpoints must be 'auto', 'on' or 'off'"):
    cli.check_train_config(config.train)


def test_the_host_stays_at_most_max_steps_ahead_of_the_device(tmp_path):
  """jax dispatches steps asynchronously; the loop must not read batches (host memory) for more
  than `MAX_STEPS_AHEAD` unfinished steps. Each step here costs at least `work`'s time, so the
  request for batch n cannot come before about n - MAX_STEPS_AHEAD - 1 steps of it have passed;
  a host that read on freely asks for all 12 batches within a few milliseconds."""
  import time

  import jax
  import jax.numpy as jnp

  def work(x):  # about 0.3 GFLOP of matmuls the step cannot skip
    m = jnp.full((384, 384), x[0, 0], jnp.float32) + jnp.eye(384)
    for _ in range(6):
      m = jnp.tanh(m @ m / 384.0)
    return jnp.sum(m)

  def slow_loss(params, model_state, batch, rng):
    del rng
    fit = jnp.mean(jnp.square(params["w"] - batch["x"]))
    return fit + 1e-30 * work(batch["x"]), ({"fit": fit}, model_state)

  timed = jax.jit(work)
  x = jnp.ones((2, 2), jnp.float32)
  jax.block_until_ready(timed(x))
  durations = []
  for _ in range(5):
    start = time.perf_counter()
    jax.block_until_ready(timed(x))
    durations.append(time.perf_counter() - start)
  requested = []

  def batch_for_step(step, rows):
    requested.append(time.perf_counter())
    return {"x": TARGETS[step % len(TARGETS)][None].repeat(2, 0)}

  config = _config(12, log_every=100)
  config.checkpoint_every = 100  # only the final save: no other host sync
  state = TrainState.create(params={"w": jnp.zeros((2, 2))}, tx=optax.adam(0.1),
                            loss_fn=slow_loss, seed=0)
  train_loop.run("m", state, batch_for_step, train_config=config,
                 parallel_config=ml_collections.ConfigDict(dict(mode="jit")),
                 workdir=str(tmp_path), log=train_loop.MetricsLog(str(tmp_path / "m.jsonl")),
                 mesh=parallel.make_mesh(), summary=lambda metrics: "")
  # Steps run one after another (each takes the last one's state); the first may compile.
  finished_before_last_request = len(requested) - 1 - train_loop.MAX_STEPS_AHEAD - 1
  assert requested[-1] - requested[1] >= 0.5 * finished_before_last_request * min(durations)
