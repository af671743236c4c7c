import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sfm_jax import checkpoint
from sfm_jax.train_state import TrainState, jit_train_step, squared_global_norm, train_step


def _least_squares(params, model_state, batch, rng):
  residual = batch["x"] @ params["w"] - batch["y"]
  loss = jnp.mean(jnp.square(residual))
  noise = jax.random.normal(rng, ())  # exposes the step key in the metrics
  return loss, ({"noise": noise}, {"calls": model_state["calls"] + 1})


def _problem(rng):
  x = rng.normal(size=(16, 3)).astype(np.float32)
  y = rng.normal(size=(16,)).astype(np.float32)
  return {"x": jnp.asarray(x), "y": jnp.asarray(y)}


def _state(tx, w=None, seed=0):
  w = jnp.zeros(3, jnp.float32) if w is None else w
  return TrainState.create(params={"w": w}, tx=tx, loss_fn=_least_squares, seed=seed,
                           model_state={"calls": jnp.zeros((), jnp.int32)})


def test_sgd_steps_match_closed_form_gradient(rng):
  batch = _problem(rng)
  x, y = np.asarray(batch["x"], np.float64), np.asarray(batch["y"], np.float64)
  state = _state(optax.sgd(0.1))
  w = np.zeros(3)
  for _ in range(4):
    state, metrics = jit_train_step(state, batch)
    grad = 2.0 * x.T @ (x @ w - y) / len(y)
    np.testing.assert_allclose(metrics["grad_norm"], np.linalg.norm(grad), rtol=1e-5)
    w = w - 0.1 * grad
  np.testing.assert_allclose(state.params["w"], w, rtol=1e-5)
  assert int(state.step) == 4 and int(state.model_state["calls"]) == 4


def test_step_keys_are_fold_in_of_step_and_deterministic(rng):
  batch = _problem(rng)
  state = _state(optax.sgd(0.0), seed=7)
  seen = []
  for step in range(3):
    state, metrics = train_step(state, batch)
    expected = jax.random.normal(jax.random.fold_in(jax.random.key(7), step), ())
    np.testing.assert_allclose(metrics["noise"], expected)
    seen.append(float(metrics["noise"]))
  assert len(set(seen)) == 3


def _same(a, b):
  return all(np.array_equal(x, y) for x, y in zip(jax.tree_util.tree_leaves(a),
                                                   jax.tree_util.tree_leaves(b)))


def test_checkpoint_restore_equals_saved_state_and_continues_identically(tmp_path, rng):
  batch = _problem(rng)
  tx = optax.adam(0.05)
  state = _state(tx)
  manager = checkpoint.make_manager(tmp_path / "ckpt", max_to_keep=2)
  for _ in range(3):
    state, _ = jit_train_step(state, batch)
    checkpoint.save(manager, state)
  checkpoint.wait(manager)
  assert checkpoint.latest_step(manager) == 3
  assert sorted(manager.all_steps()) == [2, 3]  # max_to_keep pruned step 1
  template = _state(tx, w=jnp.full(3, 9.0, jnp.float32), seed=123)
  restored = checkpoint.restore(manager, template)
  assert _same(restored.arrays(), state.arrays())
  assert jax.tree_util.tree_structure(restored.opt_state) == jax.tree_util.tree_structure(
      state.opt_state)
  older = checkpoint.restore(manager, template, step=2)
  assert int(older.step) == 2
  # One more step from the restored state equals one more step from the live state.
  expected, _ = train_step(state, batch)
  got, _ = train_step(restored, batch)
  assert _same(got.arrays(), expected.arrays())
  manager.close()


def test_restore_without_checkpoint_names_directory(tmp_path):
  manager = checkpoint.make_manager(tmp_path / "empty")
  assert checkpoint.latest_step(manager) is None
  with pytest.raises(FileNotFoundError, match="empty.*no checkpoint"):
    checkpoint.restore(manager, _state(optax.sgd(0.1)))
  manager.close()


def test_parameter_average_is_the_even_mean_then_an_exponential_average_of_the_iterates(rng):
  """decay 0.75: d_t = min(0.75, t / (t + 1)) is below 0.75 for t < 3, so after 4 updates the
  average is the plain mean of the 4 iterates; later iterate i (1-based) enters with weight
  0.25 * 0.75^(n - i) and that mean with 0.75^(n - 4). The training itself is unchanged."""
  from sfm_jax.train_state import parameter_average, track_parameter_average
  batch = _problem(rng)
  plain = _state(optax.sgd(0.1))
  averaged = _state(optax.chain(optax.sgd(0.1), track_parameter_average(0.75)))
  assert parameter_average(plain.opt_state) is None
  iterates = []
  for n in range(1, 9):
    plain, _ = jit_train_step(plain, batch)
    averaged, _ = jit_train_step(averaged, batch)
    np.testing.assert_array_equal(averaged.params["w"], plain.params["w"])
    iterates.append(np.asarray(plain.params["w"], np.float64))
    if n <= 4:
      expected = np.mean(iterates, axis=0)
    else:
      expected = 0.75 ** (n - 4) * np.mean(iterates[:4], axis=0) + sum(
          0.25 * 0.75 ** (n - i) * iterates[i - 1] for i in range(5, n + 1))
    np.testing.assert_allclose(parameter_average(averaged.opt_state)["w"], expected, rtol=1e-5,
                               atol=1e-7)
  with pytest.raises(ValueError, match=r"decay must be in \(0, 1\), got 1.0"):
    track_parameter_average(1.0)


def test_the_donated_step_options_change_no_value(rng):
  """`jit_train_step` compiles with `STEP_COMPILER_OPTIONS` (XLA's region analysis for copy
  insertion: no copies of donated buffers). On a small stage-1 problem, where the bases are read
  by the code gradients and updated in place, 3 steps give the same bases, bit for bit, and the
  same codes, prototypes, optimizer state and metrics to float32 rounding (measured: one ulp in
  a few small sums, whose evaluation order the option changes; each program is deterministic) as
  the same steps compiled without the options."""
  from experiments.benchmarks.common import random_stage1_problem
  from sfm_jax import stage1
  init, identity = random_stage1_problem(vertices=40, shape_dim=5, expr_dim=3, num_scans=12,
                                         classes=4, seed=0)
  batch = {"scans": jnp.asarray(rng.normal(size=(6, 40, 3)).astype(np.float32)),
           "identity": jnp.asarray(identity[:6]), "index": jnp.arange(6, dtype=jnp.int32)}

  def run(step):
    state = TrainState.create(
        params=stage1.init_params(init, identity, 4, seed=0), seed=0,
        tx=stage1.make_optimizer(lr_basis=1e-2, lr_codes=1e-2, lr_prototypes=1e-2,
                                 lr_centers=1e-2),
        loss_fn=stage1.make_loss_fn(stage1.Objective(), radius=init.radius,
                                    triangles=np.zeros((1, 3), np.int32)))
    for _ in range(3):
      state, metrics = step(state, batch)
    return state.arrays(), metrics

  with_options, without = run(jit_train_step), run(jax.jit(train_step, donate_argnums=0))
  for name in ("bases", "mean"):
    np.testing.assert_array_equal(with_options[0]["params"]["model"][name],
                                  without[0]["params"]["model"][name], err_msg=name)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(
      a, b, rtol=1e-5, atol=1e-6 * max(float(np.max(np.abs(b))), 1e-30)), with_options, without)
  jax.tree.map(np.testing.assert_array_equal, run(jit_train_step), with_options)


def test_squared_global_norm_is_the_squared_norm_of_all_leaves(rng):
  global_norm = lambda tree: jnp.sqrt(squared_global_norm(tree))  # train_step's grad_norm
  tree = {"a": rng.normal(size=(3, 4, 3)).astype(np.float32) * 1e3,
          "b": [rng.normal(size=(5,)).astype(np.float32) * 1e-3, np.float32(2.5)]}
  leaves = [np.asarray(x, np.float64).ravel() for x in jax.tree_util.tree_leaves(tree)]
  expected = np.linalg.norm(np.concatenate(leaves))
  np.testing.assert_allclose(float(global_norm(tree)), expected, rtol=1e-6)
  np.testing.assert_allclose(float(jax.jit(global_norm)(tree)), expected, rtol=1e-6)
  np.testing.assert_allclose(float(global_norm(tree)), float(optax.tree.norm(tree)), rtol=1e-6)
  np.testing.assert_allclose(float(squared_global_norm(tree)), expected ** 2, rtol=2e-6)
  with jax.enable_x64(True):  # float64 agrees to its own rounding
    tree64 = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float64), tree)
    np.testing.assert_allclose(float(global_norm(tree64)), expected, rtol=1e-14)
