"""The one train state both stages share, and the one pure train step.

A stage supplies a loss function with the signature

    loss_fn(params, model_state, batch, rng) -> (loss, (metrics, new_model_state))

(`model_state` holds non-trained collections such as BatchNorm statistics; stage 1 passes `{}`),
and an optax transformation. `train_step(state, batch) -> (state, metrics)` is then the same for
both stages: pure, jittable, and meant to be jitted with the state donated (`jit_train_step`).
Parallelism wraps this function in `parallel.py`; nothing here knows about devices.

The random key is stored as raw key data and never advanced: each step uses
`fold_in(key, step)`, so a run restored from a checkpoint draws exactly the numbers an
uninterrupted run would.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import struct

LossFn = Callable[[Any, Any, Any, jax.Array], tuple[jax.Array, tuple[dict, Any]]]


class TrainState(struct.PyTreeNode):
  """Training state: arrays are pytree leaves; the loss function and optimizer are static.

  Attributes:
    step: int32 scalar, number of updates applied.
    params: trainable pytree.
    opt_state: the optimizer state for `params`.
    rng: `[2]` uint32 raw key data (`jax.random.key_data`) of the run's base key.
    model_state: non-trained pytree carried between steps (BatchNorm statistics), `{}` if none.
    loss_fn: the stage's loss (the design's `apply`), see the module docstring. Static.
    tx: the optax transformation. Static.
  """
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array
  model_state: Any
  loss_fn: LossFn = struct.field(pytree_node=False)
  tx: optax.GradientTransformation = struct.field(pytree_node=False)

  @classmethod
  def create(cls, *, params: Any, tx: optax.GradientTransformation, loss_fn: LossFn,
             seed: int | jax.Array, model_state: Any = None) -> "TrainState":
    """A fresh state at step 0. `seed` is an int or a key made by `jax.random.key`."""
    key = jax.random.key(seed) if isinstance(seed, int) else seed
    return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
               rng=jax.random.key_data(key), model_state={} if model_state is None else model_state,
               loss_fn=loss_fn, tx=tx)

  def step_key(self) -> jax.Array:
    """The key of the current step: `fold_in(base key, step)`."""
    return jax.random.fold_in(jax.random.wrap_key_data(self.rng), self.step)

  def arrays(self) -> dict:
    """The state's arrays as a plain dict (what checkpoints store)."""
    return {"step": self.step, "params": self.params, "opt_state": self.opt_state,
            "rng": self.rng, "model_state": self.model_state}

  def with_arrays(self, arrays: dict) -> "TrainState":
    """This state with its arrays replaced by `arrays` (the inverse of `arrays`)."""
    return self.replace(**arrays)


def train_step(state: TrainState, batch: Any, *, axis_name: str | None = None,
               skip_nonfinite: bool = False) -> tuple[TrainState, dict]:
  """One optimisation step. Pure: jit it (see `jit_train_step`) or wrap it in `parallel.py`.

  Args:
    state: the train state.
    batch: the loss function's batch.
    axis_name: set only under `pmap` (`parallel.pmap_step`): gradients, metrics and the new
      model state are averaged over that axis, and the loss function must have been built for it.
    skip_nonfinite: static. When True, a step whose loss or gradient is not finite leaves
      params, optimizer state and model state as they were (only `step` advances, so the next
      step sees the next batch). This compiles a different program: across device counts its
      float rounding is not held to the parallel tests' 1e-5, so it is off by default.

  Returns the new state and the metrics of this step (the loss function's metrics plus
  `loss`, `grad_norm` and `finite`: 1 when both are finite), computed before the update. Without
  `skip_nonfinite` the training loop stops on a non-finite step before anything of it is saved.
  """
  grad_fn = jax.value_and_grad(state.loss_fn, has_aux=True)
  (loss, (metrics, model_state)), grads = grad_fn(state.params, state.model_state, batch,
                                                  state.step_key())
  if axis_name is not None:
    grads, loss, metrics, model_state = jax.lax.pmean((grads, loss, metrics, model_state),
                                                      axis_name)
  # The barrier materialises the gradients once, before the update reads them, and keeps the
  # norm's squares (taken before it) apart from Adam's (after it): XLA cannot merge the two sets,
  # which it would then write out for both readers, and reduces `g * g` inside one read of each
  # gradient (seen in the compiled stage-1 step at paper shapes). With no barrier at all XLA on
  # CPU (0.10) had fused the norm's sum of squares into a windowed reduction that added 150 ms to
  # a 520 ms stage-1 step (48 M basis gradients).
  squared_norm = squared_global_norm(grads)
  grads, squared_norm = jax.lax.optimization_barrier((grads, squared_norm))
  updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  grad_norm = jnp.sqrt(squared_norm)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  metrics = {**metrics, "loss": loss, "grad_norm": grad_norm,
             "finite": finite.astype(jnp.float32)}
  if skip_nonfinite:
    keep = lambda new, old: jax.tree_util.tree_map(lambda a, b: jnp.where(finite, a, b), new, old)
    params = keep(params, state.params)
    opt_state = keep(opt_state, state.opt_state)
    model_state = keep(model_state, state.model_state)
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                            model_state=model_state)
  return new_state, metrics


def squared_global_norm(tree: Any) -> jax.Array:
  """The sum of the squares of all of `tree`'s (real) leaves: `optax.tree.norm(tree) ** 2`.

  `train_step` takes it of the gradients before its optimisation barrier, Adam's second moment
  after, so XLA (0.10) keeps the two sets of squares apart and reduces `x * x` inside one read of
  each leaf: at paper shapes on the CPU (the stage-1 bases' 48 M gradients) 7 ms standalone.
  Merged with Adam's squares they were written out for both readers (37 ms, stop 38); the
  `(2 x)^2 / 4` form that had kept them apart since went to a slower fused reduction (27 ms
  standalone, 30 ms at the end of every step).
  """
  return sum(jnp.sum(leaf * leaf) for leaf in jax.tree_util.tree_leaves(tree))


class ParameterAverageState(NamedTuple):
  """`count`: int32 scalar, updates seen; `parameter_average`: a pytree like the params."""
  count: jax.Array
  parameter_average: Any


def track_parameter_average(decay: float) -> optax.GradientTransformation:
  """Passes the updates through unchanged and keeps a moving average of the parameters after
  each update: at update t (from 0) `average = d_t * average + (1 - d_t) * params` with
  `d_t = min(decay, t / (t + 1))`, so the first updates average evenly (no pull towards zero
  or towards the initialisation) and later ones decay exponentially with a window of about
  `1 / (1 - decay)` updates. Chain it last (`optax.chain(tx, track_parameter_average(d))`); read
  it with `parameter_average`. Lives in the optimizer state, so checkpoints carry it."""
  if not 0.0 < decay < 1.0:
    raise ValueError(f"track_parameter_average: decay must be in (0, 1), got {decay}")

  def init(params):
    return ParameterAverageState(jnp.zeros((), jnp.int32),
                                 jax.tree_util.tree_map(jnp.zeros_like, params))

  def update(updates, state, params):
    t = state.count.astype(jnp.float32)
    keep = jnp.minimum(decay, t / (t + 1.0))
    new_params = optax.apply_updates(params, updates)
    average = jax.tree_util.tree_map(lambda a, p: (keep * a + (1.0 - keep) * p).astype(a.dtype),
                                     state.parameter_average, new_params)
    return updates, ParameterAverageState(state.count + 1, average)

  return optax.GradientTransformation(init, update)


def parameter_average(opt_state: Any) -> Any:
  """The parameter average `track_parameter_average` keeps in `opt_state`, or None."""
  return optax.tree_utils.tree_get(opt_state, "parameter_average")


def grouped_optimizer(transforms: dict, group_of: dict) -> optax.GradientTransformation:
  """One optax transformation per parameter group (`optax.multi_transform`).

  Args:
    transforms: group name -> transformation (e.g. `{"basis": optax.adam(1e-4), ...}`).
    group_of: top-level parameter key -> group name; every leaf under a key gets its group.
  """
  return optax.multi_transform(
      transforms, lambda params: {key: jax.tree_util.tree_map(lambda _: group_of[key], value)
                                  for key, value in params.items()})


def adam(learning_rate: float, *, warmup_steps: int = 0,
         total_steps: int | None = None) -> optax.GradientTransformation:
  """Adam at `learning_rate` after a linear warm-up from 0 over `warmup_steps` (0: none); with
  `total_steps`, then a cosine decay to 10% at `total_steps`, else constant (both stages build
  their parameter groups from this)."""
  if total_steps:
    learning_rate = optax.warmup_cosine_decay_schedule(
        0.0 if warmup_steps else learning_rate, learning_rate, warmup_steps,
        max(total_steps, warmup_steps + 1), learning_rate * 0.1)
  elif warmup_steps:
    learning_rate = optax.linear_schedule(0.0, learning_rate, warmup_steps)
  return optax.adam(learning_rate)


def minimize(loss_fn: Callable[[Any], jax.Array], params: Any, *, steps: int,
             learning_rate: float) -> Any:
  """`steps` of Adam on `loss_fn(params)` inside one `lax.scan` (jit the caller); returns the
  final params. The per-sample fitting routines (`fitting.py`) use this."""
  tx = optax.adam(learning_rate)

  def step(carry, _):
    params, opt_state = carry
    updates, opt_state = tx.update(jax.grad(loss_fn)(params), opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), None

  (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), None, length=steps)
  return params


# XLA options for compiling a step whose state is donated. On CPU, XLA's default copy insertion
# copies a donated parameter whenever an operation that reads it is not ordered before its
# in-place update by data dependencies alone: stage 1's code gradients read the bases, but the
# bases' update depends only on their own gradients, so both bases (191 MB at paper shapes) were
# copied at the start of every step. Its region analysis proves the copies unnecessary: the
# stage-1 step at paper shapes was 1.07x faster on the 2-core CPU (paired, same losses), stage 2
# unchanged. Other backends do not read this option.
STEP_COMPILER_OPTIONS = {"xla_cpu_copy_insertion_use_region_analysis": True}

jit_train_step = jax.jit(train_step, donate_argnums=0, compiler_options=STEP_COMPILER_OPTIONS)
jit_train_step.__doc__ = ("`train_step` jitted with the state donated (its buffers are reused), "
                          "compiled with `STEP_COMPILER_OPTIONS`.")
