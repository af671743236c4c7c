"""The face model: `FaceModel` pytree, `decode`, and the `.npz` model file.

Shape letters: `B` batch, `V` vertices, `T` triangles, `K` shape code size, `E` expression size,
`A` albedo size, `L` landmarks. Units are millimetres.
"""

from __future__ import annotations

import functools
import io
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from sfm_jax.errors import InputError
from sfm_jax.io.atomic import atomic_write
from sfm_jax.io.npz import read_npz

Array = Any  # jax.Array or np.ndarray

FORMAT_VERSION = 1
CODE_KINDS = ("sphere", "gaussian")


@struct.dataclass
class FaceModel:
  """A linear face model whose shape codes live on a sphere (`code_kind="sphere"`) or are
  Gaussian (`code_kind="gaussian"`, the PCA baseline and third-party 3DMMs).

  Attributes:
    mean: `[V, 3]` mean shape, mm.
    shape_basis: `[K, V, 3]` identity basis, mm per unit code.
    expr_basis: `[E, V, 3]` expression basis (E may be 0).
    albedo_mean: `[V, 3]` mean per-vertex albedo in [0, 1], or None.
    albedo_basis: `[A, V, 3]` albedo basis, or None (present exactly when `albedo_mean` is).
    radius: scalar radius R of the code sphere (for Gaussian models: the typical code norm).
    triangles: `[T, 3]` int, 0-based, counter-clockwise seen from outside. A pytree leaf so
      the model can cross `jit`; it is topology and carries no gradient.
    landmarks: `[L]` int vertex index of each iBUG-68 landmark, -1 where undefined.
    contour: optional `[2, C, W]` int, -1 padded: the jaw contour for landmark fitting. Side 0
      is the subject's right jaw line (iBUG points 1-8), side 1 the left (10-17); each side has
      C ordered contour positions, each a row of W candidate vertices from the frontal outline
      backwards (W = 1: the outline vertex alone). The fitter takes, per row, the candidate on
      the silhouette under the current pose and matches each image contour landmark to the
      nearest of those (`fitting.contour_points`).
    code_kind: "sphere" or "gaussian" (static).
  """
  mean: Array
  shape_basis: Array
  expr_basis: Array
  radius: Array
  triangles: Array
  landmarks: Array
  albedo_mean: Array | None = None
  albedo_basis: Array | None = None
  contour: Array | None = None
  code_kind: str = struct.field(pytree_node=False, default="sphere")

  @property
  def num_vertices(self) -> int:
    return self.mean.shape[0]

  @property
  def shape_dim(self) -> int:
    return self.shape_basis.shape[0]

  @property
  def expr_dim(self) -> int:
    return self.expr_basis.shape[0]

  @property
  def fitted_landmarks(self) -> np.ndarray:
    """`[L]` bool: the landmarks a landmark fit places (a vertex in `landmarks`, or the jaw
    contour landmarks when the model has a `contour`); NME counts these."""
    defined = np.asarray(self.landmarks) >= 0
    if self.contour is not None:
      defined = defined.copy()
      defined[CONTOUR_LANDMARKS] = True
    return defined


def _contract(codes: Array, basis: Array, compute_dtype, precision) -> Array:
  """`[B, K] x [K, V, 3] -> [B, V * 3]` as one matmul, accumulating in float32 or wider."""
  flat = basis.reshape(basis.shape[0], -1)
  if compute_dtype is not None:
    codes, flat = codes.astype(compute_dtype), flat.astype(compute_dtype)
  accumulate = jnp.promote_types(jnp.result_type(codes, flat), jnp.float32)
  return _codes_times_basis(codes, flat, precision, accumulate)


def _is_zero(tangent) -> bool:
  """Whether a custom JVP rule (`symbolic_zeros=True`) got no tangent for this argument."""
  return isinstance(tangent, jax.custom_derivatives.SymbolicZero)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _codes_times_basis(codes: Array, flat: Array, precision, accumulate) -> Array:
  """`codes [B, K] @ flat [K, D]`. The rule below gives the basis' gradient as `codes^T [K, B]`,
  materialised (a few kB), times the cotangent `[B, D]`: the product XLA on CPU (0.10) runs
  through YNNPACK. Transposed by JAX directly, it is a product that contracts the leading axes
  of both operands, which went to a slower kernel: 103 against 65 ms alone at paper shapes (K =
  199, B = 128, D = 159447), and the stage-1 step 1.04x faster (paired). Forward mode and
  higher derivatives work as for `jnp.dot`."""
  return jnp.dot(codes, flat, precision=precision, preferred_element_type=accumulate)


def _codes_times_basis_jvp(precision, accumulate, primals, tangents):
  codes, flat = primals
  d_codes, d_flat = tangents
  out = _codes_times_basis(codes, flat, precision, accumulate)
  terms = []
  if not _is_zero(d_codes):
    terms.append(jnp.dot(d_codes, flat, precision=precision, preferred_element_type=accumulate))
  if not _is_zero(d_flat):  # a model held fixed (the fits) skips this
    codes_transposed = jax.lax.optimization_barrier(codes.T)  # kept as a [K, B] array by XLA
    terms.append(jnp.dot(codes_transposed.T, d_flat, precision=precision,
                         preferred_element_type=accumulate))
  if not terms:
    return out, jnp.zeros_like(out)
  return out, terms[0] if len(terms) == 1 else terms[0] + terms[1]


_codes_times_basis.defjvp(_codes_times_basis_jvp, symbolic_zeros=True)


def decode(model: FaceModel, shape_codes: Array, expr_codes: Array | None = None, *,
           compute_dtype=None, precision: jax.lax.Precision | str | None = "highest") -> Array:
  """Vertices of the faces with the given codes.

  `mean + einsum('bk,kvc->bvc', s, shape_basis) + einsum('be,evc->bvc', e, expr_basis)`, computed
  as one matmul per basis over the flattened `[K, V*3]` layout (no copy of the basis is made).
  Differentiable in the codes and in every float field of the model.

  Args:
    model: the face model.
    shape_codes: `[B, K]` shape codes `s` (on the sphere for SFM, N(0, I)-like for Gaussian).
    expr_codes: `[B, E]` expression codes, or None for neutral faces.
    compute_dtype: e.g. `jnp.bfloat16` to multiply in that type; accumulation stays in float32.
      Casting a float32 basis costs one pass over it per call: store the basis in bfloat16 to
      halve the bytes read instead.
    precision: matmul precision for float32 operands. The default, "highest", is true float32
      everywhere; on GPUs XLA would otherwise round operands to TF32 (about 1e-3 relative).
      Decode is bandwidth-bound, so this costs little (see `experiments/benchmarks/bench_decode`);
      pass None to use JAX's default.

  Returns:
    `[B, V, 3]` vertices in mm, in the wider of float32 and the inputs' type.
  """
  batch = shape_codes.shape[0]
  flat = _contract(shape_codes, model.shape_basis, compute_dtype, precision)
  if expr_codes is not None and model.expr_basis.shape[0] > 0:
    flat = flat + _contract(expr_codes, model.expr_basis, compute_dtype, precision)
  out = flat.reshape(batch, model.num_vertices, 3)
  return add_to_each(out, model.mean.astype(out.dtype))


def decode_stacked(mean: Array, bases: Array, codes: Array, *, compute_dtype=None,
                   precision: jax.lax.Precision | str | None = "highest") -> Array:
  """`mean + einsum('bk,kvc->bvc', codes, bases)`: `decode` for bases stored stacked.

  Stage 1 trains its bases as one `[K + E, V, 3]` array (shape rows, then expression rows), so
  the codes `[s | e]` meet them in one product rather than two plus an add. On the 2-core CPU at
  B = 64, K = 199, E = 100, V = 53149: 30 ms for the one product against 24 + 14 for the two,
  and 35 against 41 ms with the adds (medians of 6, one process; `bench_decode` has the row).
  Differentiable in `mean`, `bases` and `codes`, with `decode`'s rules (the bases' gradient is
  `codes^T` times the cotangent, the mean's a product with ones).

  Args:
    mean: `[V, 3]` mean shape, mm.
    bases: `[K + E, V, 3]` the shape basis' rows, then the expression basis' (`stack_bases`).
    codes: `[B, K + E]` shape codes, then expression codes (`jnp.concatenate([s, e], -1)`).
    compute_dtype, precision: as for `decode`.

  Returns:
    `[B, V, 3]` vertices in mm.
  """
  flat = _contract(codes, bases, compute_dtype, precision)
  out = flat.reshape(codes.shape[0], *bases.shape[1:])
  return add_to_each(out, mean.astype(out.dtype))


def stack_bases(shape_basis: Array, expr_basis: Array) -> Array:
  """`[K, V, 3]` and `[E, V, 3]` -> `[K + E, V, 3]`, the layout `decode_stacked` reads."""
  return jnp.concatenate([jnp.asarray(shape_basis), jnp.asarray(expr_basis)], axis=0)


@jax.custom_jvp
def add_to_each(batch: Array, row: Array) -> Array:
  """`batch + row` for `batch [B, ...]` and `row [...]` (the same row added to every element).

  The value is the plain broadcast add. The rule below states the tangent in `row` as the matrix
  product `ones [B, 1] @ row [1, D]`, so reverse mode sums the cotangent over B as `[1, B] @
  [B, D]`, reading it as it lies. XLA on CPU (0.10) lowers the plain broadcast's transpose, a sum
  over the leading axis, to a reduction that took 115 ms of a 514 ms stage-1 step at paper shapes
  (B=128, V=53149). Stated as an outer product with a vector of ones (an einsum), it transposed
  to `cotangent^T @ ones`, for which XLA wrote the cotangent out transposed (82 MB) every step:
  the stage-1 step went from 536 to 468 ms with the matrix product (2-core CPU, medians of 3).
  Forward mode (`jacfwd`, `check_grads`) works as for any jnp function.
  """
  return batch + row


def _add_to_each_jvp(primals, tangents):
  batch, row = primals
  d_batch, d_row = tangents
  out = batch + row
  d_out = jnp.zeros_like(out) if _is_zero(d_batch) else d_batch
  if not _is_zero(d_row):  # a model held fixed (the fits) adds nothing here
    ones = jnp.ones((batch.shape[0], 1), d_row.dtype)
    d_out = d_out + jnp.dot(ones, d_row.reshape(1, -1), precision="highest").reshape(out.shape)
  return out, d_out


add_to_each.defjvp(_add_to_each_jvp, symbolic_zeros=True)


# ---------------------------------------------------------------------------------------------
# The model file.

_REQUIRED = ("mean", "shape_basis", "expr_basis", "radius", "triangles", "landmarks")
_OPTIONAL = ("albedo_mean", "albedo_basis", "contour")
CONTOUR_LANDMARKS = np.array([*range(8), *range(9, 17)])  # iBUG 1-8 and 10-17, 0-based


def save_model(path: str | os.PathLike, model: FaceModel) -> None:
  """Writes `model` to an `.npz` model file atomically (design section 3)."""
  path = os.fspath(path)
  arrays = {name: np.asarray(getattr(model, name)) for name in _REQUIRED}
  for name in _OPTIONAL:
    if getattr(model, name) is not None:
      arrays[name] = np.asarray(getattr(model, name))
  arrays["format_version"] = np.asarray(FORMAT_VERSION, np.int32)
  arrays["code_kind"] = np.asarray(model.code_kind)
  # Validate what we are about to write, so a bad model never reaches the disk.
  validate_model_arrays(arrays, source=path)
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  with atomic_write(path, "wb") as f:
    f.write(buffer.getvalue())


def validate_model_arrays(arrays: dict, *, source: str) -> None:
  """Checks a model file's arrays; raises `ValueError` naming `source` and the offending key."""
  def fail(key, message):
    raise InputError(f"{source}: key '{key}': {message}")

  for key in ("format_version", "code_kind") + _REQUIRED:
    if key not in arrays:
      fail(key, "missing")
  version = arrays["format_version"]
  if version.shape != () or not np.issubdtype(version.dtype, np.integer):
    fail("format_version", f"expected an integer scalar, got {version.dtype} {version.shape}")
  if int(version) != FORMAT_VERSION:
    fail("format_version", f"unknown version {int(version)} (this sfm_jax reads {FORMAT_VERSION})")
  if str(arrays["code_kind"]) not in CODE_KINDS:
    fail("code_kind", f"expected one of {CODE_KINDS}, got {str(arrays['code_kind'])!r}")

  def float_array(key, ndim):
    a = arrays[key]
    if a.ndim != ndim or not np.issubdtype(a.dtype, np.floating):
      fail(key, f"expected a float array with {ndim} dims, got {a.dtype} {a.shape}")
    if not np.all(np.isfinite(a)):
      fail(key, f"{int(np.size(a) - np.isfinite(a).sum())} non-finite values")
    return a

  mean = float_array("mean", 2)
  if mean.shape[1] != 3 or mean.shape[0] == 0:
    fail("mean", f"expected [V, 3] with V > 0, got {mean.shape}")
  num_vertices = mean.shape[0]
  for key in ("shape_basis", "expr_basis"):
    basis = float_array(key, 3)
    if basis.shape[1:] != (num_vertices, 3):
      fail(key, f"expected [*, {num_vertices}, 3], got {basis.shape}")
  radius = float_array("radius", 0)
  if not radius > 0:
    fail("radius", f"must be positive, got {float(radius)}")
  if ("albedo_mean" in arrays) != ("albedo_basis" in arrays):
    fail("albedo_basis" if "albedo_mean" in arrays else "albedo_mean",
         "albedo_mean and albedo_basis must be given together")
  if "albedo_mean" in arrays:
    if float_array("albedo_mean", 2).shape != (num_vertices, 3):
      fail("albedo_mean", f"expected [{num_vertices}, 3], got {arrays['albedo_mean'].shape}")
    if float_array("albedo_basis", 3).shape[1:] != (num_vertices, 3):
      fail("albedo_basis", f"expected [A, {num_vertices}, 3], got {arrays['albedo_basis'].shape}")
  triangles = arrays["triangles"]
  if triangles.ndim != 2 or triangles.shape[1] != 3 or not np.issubdtype(triangles.dtype,
                                                                           np.integer):
    fail("triangles", f"expected an integer [T, 3] array, got {triangles.dtype} {triangles.shape}")
  if triangles.size and (triangles.min() < 0 or triangles.max() >= num_vertices):
    bad = int(np.argwhere((triangles < 0) | (triangles >= num_vertices))[0, 0])
    fail("triangles", f"triangle {bad} {triangles[bad].tolist()} indexes outside "
                      f"[0, {num_vertices})")
  landmarks = arrays["landmarks"]
  if landmarks.ndim != 1 or not np.issubdtype(landmarks.dtype, np.integer):
    fail("landmarks", f"expected an integer [L] array, got {landmarks.dtype} {landmarks.shape}")
  if landmarks.size and (landmarks.min() < -1 or landmarks.max() >= num_vertices):
    fail("landmarks", f"indices must lie in [-1, {num_vertices}), got "
                      f"[{landmarks.min()}, {landmarks.max()}]")
  if "contour" in arrays:
    contour = arrays["contour"]
    if (contour.ndim != 3 or contour.shape[0] != 2 or not np.issubdtype(contour.dtype, np.integer)
        or contour.size == 0):
      fail("contour", f"expected an integer [2, C, W] array, got {contour.dtype} {contour.shape}")
    if contour.min() < -1 or contour.max() >= num_vertices:
      fail("contour", f"indices must lie in [-1, {num_vertices}), got "
                      f"[{contour.min()}, {contour.max()}]")
    if np.any(contour[..., 0] < 0):
      fail("contour", "the first candidate of every row (the outline vertex) must be a vertex")


def load_model(path: str | os.PathLike, *, dtype=np.float32) -> FaceModel:
  """Reads and validates a model file written by `save_model`.

  Args:
    path: the `.npz` file.
    dtype: float type of the returned arrays.

  Raises:
    ValueError: naming the file and the key for a missing key, wrong shape or dtype, non-finite
      values, indices out of range, an unknown `format_version` or `code_kind`; or naming the
      file when it is not a readable `.npz`.
  """
  path = os.fspath(path)
  arrays = read_npz(path, what=".npz model file")
  validate_model_arrays(arrays, source=path)
  as_float = lambda key: (np.asarray(arrays[key], dtype) if key in arrays else None)
  return FaceModel(
      mean=as_float("mean"),
      shape_basis=as_float("shape_basis"),
      expr_basis=as_float("expr_basis"),
      radius=as_float("radius"),
      triangles=np.asarray(arrays["triangles"], np.int32),
      landmarks=np.asarray(arrays["landmarks"], np.int32),
      albedo_mean=as_float("albedo_mean"),
      albedo_basis=as_float("albedo_basis"),
      contour=np.asarray(arrays["contour"], np.int32) if "contour" in arrays else None,
      code_kind=str(arrays["code_kind"]),
  )


def to_device(model: FaceModel) -> FaceModel:
  """The same model with every array placed on the default device."""
  return jax.tree_util.tree_map(jnp.asarray, model)
