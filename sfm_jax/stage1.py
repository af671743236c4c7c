"""Stage 1: learning the basis from registered 3D scans (design section 6), and its PCA baseline.

An auto-decoder: the mean, the shape and expression bases, one free shape vector `z_i` and one
expression code `e_i` per training scan, and identity prototypes and centres are all trained
together. SFM codes are `s_i = project(z_i, R)` (hard sphere; or free with a ring penalty, soft);
the baseline uses the same code with Gaussian codes `s_i = z_i` and a Tikhonov prior instead,
and no identity terms unless asked (design section 8).

Objective (every weight switchable, 0 disables the term):

    rec       mean per-vertex distance between decode(s_i, e_i) and scan i (mm)
    margin    CosFace or ArcFace softmax over prototypes on u_i = s_i / R      (SFM)
    center    spherical center loss on u_i                                      (SFM)
    isotropy  KL(batch Gaussian of s || N(0, R^2/K I))                          (SFM)
    ring      (||s|| / R - 1)^2                                                 (soft sphere)
    shape_prior, expr_prior   Tikhonov on s (baseline) and on e
    orthogonality, smoothness, symmetry   basis regularisers

Parameters are a dict `{"model": {mean, bases}, "codes": {z, e}, "prototypes": [C, K],
"centers": [C, K]}`, each group with its own learning rate through `optax.multi_transform`.
`bases` `[K + E, V, 3]` holds the shape basis' rows, then the expression basis' (one product
decodes both: `model.decode_stacked`); `model_arrays` splits them.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sfm_jax import losses, pca, sphere
from sfm_jax.errors import InputError
from sfm_jax.geometry import mesh_edges
from sfm_jax.model import FaceModel, decode_stacked
from sfm_jax.train_state import TrainState, adam, grouped_optimizer

# ---------------------------------------------------------------------------------------------
# PCA initialisation.


@dataclasses.dataclass(frozen=True)
class PCAInit:
  """PCA of training scans: identity subspace from identity means, expressions from residuals.

  Attributes:
    mean: `[V, 3]`.
    shape_basis: `[K, V, 3]` principal directions of identity means, scaled by their std.
    expr_basis: `[E, V, 3]` principal directions of within-identity residuals, scaled by std.
    shape_codes: `[N, K]` whitened least-squares codes of each training scan.
    expr_codes: `[N, E]`.
    radius: mean norm of `shape_codes` (the sphere radius R).
    shape_std, expr_std: `[K]`, `[E]` the components' standard deviations (mm).
    shape_total_variance, expr_total_variance: the variance of the identity means and of the
      within-identity residuals summed over every direction (mm^2; None in caches written
      before they were kept), so `variance_kept` says how much K and E directions hold.
  """
  mean: np.ndarray
  shape_basis: np.ndarray
  expr_basis: np.ndarray
  shape_codes: np.ndarray
  expr_codes: np.ndarray
  radius: float
  shape_std: np.ndarray
  expr_std: np.ndarray
  shape_total_variance: float | None = None
  expr_total_variance: float | None = None

  def variance_kept(self) -> tuple[float | None, float | None]:
    """(identity, expression): the fraction of the training scans' variance the K identity
    and E expression directions hold (None where the total is unknown or zero)."""
    def kept(std, total):
      return float(np.sum(np.square(std)) / total) if total else None
    return (kept(self.shape_std, self.shape_total_variance),
            kept(self.expr_std, self.expr_total_variance))


def check_sizes(num_scans: int, num_identities: int, num_shape: int, num_expr: int) -> None:
  """Raises `ValueError` when K or E cannot be estimated from the training scans."""
  if num_shape < 1 or num_shape >= num_identities:
    raise InputError(f"shape_dim K={num_shape} must be in [1, {num_identities - 1}]: the identity "
                     f"basis comes from {num_identities} training identities (and {num_scans} "
                     "scans)")
  if num_expr < 0 or num_expr > num_scans - num_identities:
    raise InputError(f"expr_dim E={num_expr} must be in [0, {num_scans - num_identities}] "
                     f"(scans minus identities: {num_scans} - {num_identities})")


def pca_init(scans: np.ndarray, identity: np.ndarray, *, num_shape: int,
             num_expr: int) -> PCAInit:
  """PCA initialisation (and the untrained PCA baseline) from training scans.

  The identity basis is the top K principal directions of the per-identity mean scans; the
  expression basis the top E of the scans minus their identity's mean (scans with label -1 are
  their own identity). Both are scaled by their standard deviation, so codes are about N(0, 1)
  per dimension; codes are the joint least-squares fit of each scan.
  """
  flat = np.asarray(scans, np.float64).reshape(len(scans), -1)
  groups, index = np.unique(_identity_keys(identity), return_inverse=True)
  check_sizes(len(flat), len(groups), num_shape, num_expr)
  mean = flat.mean(0)
  identity_means = np.zeros((len(groups), flat.shape[1]))
  np.add.at(identity_means, index, flat)
  identity_means /= np.bincount(index)[:, None]
  centred_means, residuals = identity_means - mean, flat - identity_means[index]
  shape_dirs, shape_std = pca.principal_directions(centred_means, num_shape)
  if num_expr > 0:
    expr_dirs, expr_std = pca.principal_directions(residuals, num_expr)
  else:
    expr_dirs, expr_std = np.zeros((0, flat.shape[1])), np.zeros(0)
  basis = _scaled_basis(shape_dirs, shape_std, expr_dirs, expr_std)
  codes = np.linalg.lstsq(basis.T, (flat - mean).T, rcond=None)[0].T
  totals = (np.sum(np.square(centred_means)) / len(groups),
            np.sum(np.square(residuals)) / len(flat))
  return _pca_result(mean, basis, codes, num_shape, shape_std, expr_std, totals)


def _scaled_basis(shape_dirs, shape_std, expr_dirs, expr_std) -> np.ndarray:
  """`[K + E, 3V]`: the identity then expression directions, each times its std."""
  return np.concatenate([shape_dirs * shape_std[:, None], expr_dirs * expr_std[:, None]])


def _pca_result(mean, basis, codes, num_shape, shape_std, expr_std, totals) -> PCAInit:
  num_vertices = len(mean) // 3
  shape_codes, expr_codes = codes[:, :num_shape], codes[:, num_shape:]
  return PCAInit(
      mean=mean.reshape(num_vertices, 3),
      shape_basis=basis[:num_shape].reshape(-1, num_vertices, 3),
      expr_basis=basis[num_shape:].reshape(-1, num_vertices, 3), shape_codes=shape_codes,
      expr_codes=expr_codes, radius=float(np.mean(np.linalg.norm(shape_codes, axis=1))),
      shape_std=shape_std, expr_std=expr_std,
      shape_total_variance=None if totals[0] is None else float(totals[0]),
      expr_total_variance=None if totals[1] is None else float(totals[1]))


def _identity_keys(identity: np.ndarray) -> np.ndarray:
  """`[N]` grouping keys: the label, or for unlabelled scans (-1) a key of their own."""
  identity = np.asarray(identity)
  return np.where(identity >= 0, identity, -1 - np.arange(len(identity)))


def identity_blocks(identity: np.ndarray, *, max_rows: int) -> list[np.ndarray]:
  """Row indices grouped by identity (sorted; unlabelled rows, -1, are each their own
  identity), whole identities packed into blocks of at most `max_rows` rows (an identity with
  more rows is a block of its own)."""
  keys = _identity_keys(identity)
  order = np.argsort(keys, kind="stable")
  starts = np.concatenate([[0], np.flatnonzero(np.diff(keys[order])) + 1, [len(order)]])
  blocks, begin = [], 0
  for end, next_end in zip(starts[1:-1], starts[2:]):
    if next_end - starts[begin] > max_rows:  # the next identity would overfill this block
      blocks.append(order[starts[begin]:end])
      begin = int(np.searchsorted(starts, end))
  if len(order):
    blocks.append(order[starts[begin]:])
  return blocks


def pca_init_streamed(scans, identity: np.ndarray, *, num_shape: int, num_expr: int,
                      block_rows: int = 128, tol: float = 1e-6, max_iterations: int = 30,
                      oversample: int = 10, seed: int = 0, report=None) -> PCAInit:
  """`pca_init` from scans read in blocks of whole identities: the same PCA (identity means,
  within-identity residuals, whitened least-squares codes) with the principal directions from
  `pca.SubspaceIteration`, so memory is a block and a few `[3V, K + oversample]` matrices however
  many scans there are.

  Args:
    scans: `[N, V, 3]`, anything indexable by a row-index array (an array, an
      `io.scan_store.ScanStore`); read `2 + iterations` times.
    identity: `[N]` labels (-1: own identity).
    block_rows: rows read at a time.
    tol, max_iterations, oversample, seed: of the subspace iterations (identity and expression
      run in the same passes; each stops at `tol`).
    report: optional `report(line)` called after every pass.

  Returns the `PCAInit`; agrees with `pca_init` to the iterations' tolerance (up to the sign
  convention both share).
  """
  keys = _identity_keys(identity)
  check_sizes(len(keys), len(np.unique(keys)), num_shape, num_expr)
  blocks = identity_blocks(identity, max_rows=block_rows)
  report = report or (lambda line: None)

  def read(rows):
    """(scans `[m, 3V]`, their identities' means `[g, 3V]`, each scan's mean row `[m]`)."""
    flat = np.asarray(scans[rows], np.float64).reshape(len(rows), -1)
    _, local = np.unique(keys[rows], return_inverse=True)
    means = np.zeros((local.max() + 1, flat.shape[1]))
    np.add.at(means, local, flat)
    return flat, means / np.bincount(local)[:, None], local

  mean = sum(np.asarray(scans[rows], np.float64).reshape(len(rows), -1).sum(0)
             for rows in blocks) / len(keys)
  dim = len(mean)
  iterations = {"identity": pca.SubspaceIteration(dim, num_shape, oversample=oversample, tol=tol,
                                                  seed=seed)}
  if num_expr > 0:
    iterations["expression"] = pca.SubspaceIteration(dim, num_expr, oversample=oversample,
                                                     tol=tol, seed=seed + 1)
  squares = np.zeros(2)  # of the centred identity means and the residuals, in the first pass
  for iteration in range(max_iterations):
    active = {name: it for name, it in iterations.items() if not it.converged}
    if not active:
      break
    for it in active.values():
      it.begin_pass()
    for rows in blocks:
      flat, means, local = read(rows)
      centred_means = means - mean
      residuals = flat - means[local] if iteration == 0 or "expression" in active else None
      if iteration == 0:
        squares += (np.sum(np.square(centred_means)), np.sum(np.square(residuals)))
      if "identity" in active:
        active["identity"].add(centred_means)
      if "expression" in active:
        active["expression"].add(residuals)
    for it in active.values():
      it.end_pass()
    report("PCA pass: " + ", ".join(f"{name} {it.iterations} iterations, residual "
                                    f"{it.residual:.1e}" for name, it in iterations.items()))
  shape_it = iterations["identity"]
  expr_it = iterations.get("expression")
  expr_dirs, expr_std = ((expr_it.directions, expr_it.std) if expr_it is not None
                         else (np.zeros((0, dim)), np.zeros(0)))
  basis = _scaled_basis(shape_it.directions, shape_it.std, expr_dirs, expr_std)
  gram = basis @ basis.T
  codes = np.zeros((len(identity), len(basis)))
  for rows in blocks:
    flat = np.asarray(scans[rows], np.float64).reshape(len(rows), -1)
    codes[rows] = np.linalg.solve(gram, basis @ (flat - mean).T).T
  totals = ((squares[0] / len(np.unique(keys)), squares[1] / len(keys)) if max_iterations
            else (None, None))  # no pass was asked for
  return _pca_result(mean, basis, codes, num_shape, shape_it.std, expr_std, totals)


# ---------------------------------------------------------------------------------------------
# The objective.


@dataclasses.dataclass(frozen=True)
class Objective:
  """Stage-1 objective settings (all keyword; weights 0 switch terms off).

  `code_kind`: "sphere" (SFM) or "gaussian" (baseline). `sphere_mode`: "hard" or "soft".
  `margin_kind`: "cosface" or "arcface".
  """
  code_kind: str = "sphere"
  sphere_mode: str = "hard"
  margin_kind: str = "cosface"
  margin_scale: float = 32.0
  margin: float = 0.35
  squared_error: bool = False
  weight_rec: float = 1.0
  weight_margin: float = 0.1
  weight_center: float = 1.0
  weight_isotropy: float = 0.01
  weight_ring: float = 1.0
  weight_shape_prior: float = 0.0
  weight_expr_prior: float = 0.001
  weight_orthogonality: float = 0.0
  weight_smoothness: float = 0.0
  weight_symmetry: float = 0.0
  # One shape code per training identity (its scans differ only in expression codes) instead of
  # one per scan; unlabelled scans keep their own. Stops expression leaking into identity codes.
  shared_identity_codes: bool = False

  def __post_init__(self):
    for name, value, options in (("code_kind", self.code_kind, ("sphere", "gaussian")),
                                 ("sphere_mode", self.sphere_mode, ("hard", "soft")),
                                 ("margin_kind", self.margin_kind, ("cosface", "arcface"))):
      if value not in options:
        raise InputError(f"Objective.{name} must be one of {options}, got {value!r}")

  @property
  def hard_sphere(self) -> bool:
    """Codes are `project(z, R)` (else free `z`: Gaussian, or the soft sphere's ring)."""
    return self.code_kind == "sphere" and self.sphere_mode == "hard"


def baseline_objective(objective: Objective, **overrides) -> Objective:
  """The PCA-Gaussian baseline's objective beside `objective`: the same terms with Gaussian codes
  and no spherical terms (design section 8), then `overrides` (e.g. its Tikhonov weights)."""
  return dataclasses.replace(objective, code_kind="gaussian", weight_margin=0.0,
                             weight_center=0.0, weight_isotropy=0.0, weight_ring=0.0,
                             **overrides)


def init_params(init: PCAInit, identity: np.ndarray, num_classes: int, *, seed: int,
                shared_identity_codes: bool = False) -> dict:
  """Parameters from a PCA initialisation; prototypes and centres start at each identity's mean
  code direction (a random unit vector, from `seed`, for classes without training scans). With
  `shared_identity_codes`, also `identity_codes` `[C, K]`: each identity's mean PCA code (zero
  for classes without training scans)."""
  codes = init.shape_codes
  directions = codes / np.linalg.norm(codes, axis=1, keepdims=True)
  rng = np.random.default_rng(seed)
  class_means = rng.normal(size=(num_classes, codes.shape[1]))
  identity_codes = np.zeros((num_classes, codes.shape[1]))
  for c in range(num_classes):
    members = identity == c
    if members.any():
      class_means[c] = directions[members].mean(0)
      identity_codes[c] = codes[members].mean(0)
  class_means /= np.linalg.norm(class_means, axis=1, keepdims=True)
  as32 = lambda x: jnp.asarray(x, jnp.float32)
  bases = np.concatenate([init.shape_basis, init.expr_basis], axis=0, dtype=np.float32)
  params = {"model": {"mean": as32(init.mean), "bases": as32(bases)},
            "codes": {"z": as32(codes), "e": as32(init.expr_codes)},
            "prototypes": as32(class_means), "centers": as32(class_means)}
  if shared_identity_codes:
    params["identity_codes"] = as32(identity_codes)
  return params


def scan_shape_codes(params: dict, index, identity) -> jax.Array:
  """The free shape code `z` of each scan `[B, K]`: its identity's shared code when the params
  have `identity_codes` and the scan is labelled, else its own row `index` of `codes.z`."""
  own = params["codes"]["z"][index]
  if "identity_codes" not in params:
    return own
  shared = params["identity_codes"][jnp.maximum(identity, 0)]
  return jnp.where((identity >= 0)[:, None], shared, own)


def make_loss_fn(objective: Objective, *, radius: float, triangles: np.ndarray,
                 mirror: np.ndarray | None = None, axis_name: str | None = None):
  """The stage-1 `loss_fn(params, model_state, batch, rng)` for `TrainState`.

  `batch`: `scans [B, V, 3]`, `identity [B]` (-1 unlabelled), `index [B]` (row of the scan's codes).
  `axis_name`: only for the `pmap` path. Terms that couple samples (identity terms, isotropy,
  code statistics) are then computed on codes and labels gathered from every device, so they
  equal the global-batch values; with the per-device reconstruction mean and the `pmean` of
  gradients in `train_step`, the step matches the single-device step on the global batch.
  """
  edges = jnp.asarray(mesh_edges(triangles))
  mirror = None if mirror is None else jnp.asarray(mirror)
  sphere_model = objective.code_kind == "sphere"

  def loss_fn(params, model_state, batch, rng):
    del rng
    model = params["model"]
    z = scan_shape_codes(params, batch["index"], batch["identity"])
    e = params["codes"]["e"][batch["index"]]
    s = sphere.shape_codes(z, objective.code_kind, radius, hard=objective.hard_sphere)
    decoded = decode_stacked(model["mean"], model["bases"], jnp.concatenate([s, e], axis=-1))
    terms = {"rec": losses.vertex_loss(decoded, batch["scans"], squared=objective.squared_error)}
    labels = batch["identity"]
    if axis_name is not None:  # the batch-coupled terms see the whole global batch
      s = jax.lax.all_gather(s, axis_name, tiled=True)
      e = jax.lax.all_gather(e, axis_name, tiled=True)
      labels = jax.lax.all_gather(labels, axis_name, tiled=True)
    if sphere_model:
      u = s / radius
      if objective.weight_margin:
        margin_fn = losses.cosface_loss if objective.margin_kind == "cosface" else \
            losses.arcface_loss
        terms["margin"] = margin_fn(u, labels, params["prototypes"],
                                    scale=objective.margin_scale, margin=objective.margin)
      if objective.weight_center:
        terms["center"] = losses.spherical_center_loss(u, labels, params["centers"])
      if objective.weight_isotropy:
        terms["isotropy"] = losses.isotropy_kl(s, radius)
      if objective.sphere_mode == "soft" and objective.weight_ring:
        terms["ring"] = losses.ring_loss(s, radius)
    elif objective.weight_shape_prior:
      terms["shape_prior"] = losses.code_prior(s)
    if objective.weight_expr_prior and e.shape[-1]:
      terms["expr_prior"] = losses.code_prior(e)
    if objective.weight_orthogonality:
      terms["orthogonality"] = losses.basis_orthogonality(model["bases"][:s.shape[-1]],
                                                          scale_invariant=True)
    if objective.weight_smoothness:
      terms["smoothness"] = losses.laplacian_smoothness(model["bases"], edges)
    if objective.weight_symmetry and mirror is not None:
      terms["symmetry"] = losses.symmetry_loss(model["mean"], mirror)
    weights = {name: getattr(objective, f"weight_{name}") for name in terms}
    total = sum(weights[name] * value for name, value in terms.items())
    norms = sphere.safe_norm(s)
    metrics = {**terms, "code_norm_mean": jnp.mean(norms), "code_norm_std": jnp.std(norms)}
    return total, (metrics, model_state)

  return loss_fn


def make_optimizer(*, lr_basis: float, lr_codes: float, lr_prototypes: float,
                   lr_centers: float, warmup_steps: int = 0,
                   total_steps: int | None = None) -> optax.GradientTransformation:
  """Adam with one learning rate per parameter group (`optax.multi_transform`); with
  `total_steps`, warm-up and cosine decay (`train_state.adam`)."""
  schedule = dict(warmup_steps=warmup_steps, total_steps=total_steps)
  return grouped_optimizer(
      {"basis": adam(lr_basis, **schedule), "codes": adam(lr_codes, **schedule),
       "prototypes": adam(lr_prototypes, **schedule), "centers": adam(lr_centers, **schedule)},
      {"model": "basis", "codes": "codes", "prototypes": "prototypes", "centers": "centers",
       "identity_codes": "codes"})


def training_codes(params: dict, objective: Objective, radius: float, *,
                   identity: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
  """(shape codes `[N, K]`, expression codes `[N, E]`) of the training scans, numpy (`identity`
  `[N]` is needed when the codes are shared per identity)."""
  params = jax.device_get(params)
  z = jnp.asarray(params["codes"]["z"])
  if "identity_codes" in params:
    z = scan_shape_codes(params, jnp.arange(z.shape[0]), jnp.asarray(identity))
  shape = sphere.shape_codes(z, objective.code_kind, radius, hard=objective.hard_sphere)
  return np.asarray(shape), np.asarray(params["codes"]["e"])


def export_model(params: dict, base: FaceModel) -> FaceModel:
  """The trained model (numpy): `base` (e.g. `pca_model`, carrying topology, landmarks, radius
  and the `code_kind` trained) with the trained mean and bases. Gaussian models get as radius
  the mean norm of their training codes (their typical norm)."""
  params = jax.device_get(params)
  arrays = model_arrays(params)
  codes = np.asarray(params.get("identity_codes", params["codes"]["z"]))
  radius = base.radius if base.code_kind == "sphere" else np.mean(np.linalg.norm(codes, axis=1))
  return base.replace(**{name: np.asarray(value, np.float32) for name, value in arrays.items()},
                      radius=np.asarray(radius, np.float32))


def model_arrays(params: dict) -> dict:
  """`{"mean": [V, 3], "shape_basis": [K, V, 3], "expr_basis": [E, V, 3]}` of stage-1 params
  (the stacked `bases` split after the K rows of the shape code's size; arrays as given)."""
  model, shape_dim = params["model"], params["codes"]["z"].shape[-1]
  return {"mean": model["mean"], "shape_basis": model["bases"][:shape_dim],
          "expr_basis": model["bases"][shape_dim:]}


def separate_bases_layout(template: TrainState) -> tuple[TrainState, Callable]:
  """Stage-1 checkpoints written before the bases were stacked (stop 49) kept
  `params.model = {mean, shape_basis, expr_basis}`, and Adam's moments likewise. Returns (an
  abstract template in that layout, a function that stacks a state restored in it into
  `template`'s layout); `checkpoint.restore(..., earlier_layouts=[separate_bases_layout])`."""
  shape_dim = template.params["codes"]["z"].shape[-1]
  leaf = template.step
  sharding = leaf.sharding if isinstance(leaf, jax.Array) else None
  abstract = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
  bases = template.params["model"]["bases"]
  rows = lambda count: jax.ShapeDtypeStruct((count, *bases.shape[1:]), bases.dtype)
  model = {"mean": template.params["model"]["mean"], "shape_basis": rows(shape_dim),
           "expr_basis": rows(bases.shape[0] - shape_dim)}
  params = jax.tree_util.tree_map(abstract, {**template.params, "model": model})
  opt_state = jax.tree_util.tree_map(abstract, jax.eval_shape(template.tx.init, params))
  older = template.replace(params=params, opt_state=opt_state)

  def stack(restored: TrainState) -> TrainState:
    saved = dict(jax.tree_util.tree_flatten_with_path(restored.arrays())[0])
    paths, treedef = jax.tree_util.tree_flatten_with_path(template.arrays())
    leaves = []
    for path, _ in paths:
      if path[-1] == jax.tree_util.DictKey("bases"):
        parts = [saved[path[:-1] + (jax.tree_util.DictKey(key),)]
                 for key in ("shape_basis", "expr_basis")]
        leaves.append(jnp.concatenate(parts, axis=0))
      else:
        leaves.append(saved[path])
    return template.with_arrays(jax.tree_util.tree_unflatten(treedef, leaves))

  return older, stack


def pca_model(init: PCAInit, *, triangles: np.ndarray, landmarks: np.ndarray,
              code_kind: str = "gaussian", contour: np.ndarray | None = None) -> FaceModel:
  """The untrained PCA model of an initialisation (Gaussian codes; radius R = the mean norm of
  its codes), with the data's topology, landmarks and jaw `contour` (if any). With
  `code_kind="sphere"` it is the base `export_model` fills for SFM."""
  as32 = lambda x: np.asarray(x, np.float32)  # no copy when the init is float32 already
  return FaceModel(mean=as32(init.mean), shape_basis=as32(init.shape_basis),
                   expr_basis=as32(init.expr_basis),
                   radius=np.asarray(init.radius, np.float32),
                   triangles=np.asarray(triangles, np.int32),
                   landmarks=np.asarray(landmarks, np.int32), code_kind=code_kind,
                   contour=None if contour is None else np.asarray(contour, np.int32))
