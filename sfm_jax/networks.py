"""The stage-2 image encoder: a Flax ResNet with heads for every face parameter.

`Encoder(images, train, landmarks)` maps `[B, H, W, 3]` images in [0, 1] (and, when
`landmark_features > 0`, their `[B, 68, 2]` landmarks in pixels) to a dict:

    z            [B, K]     free shape vector (map it with `sphere.project(z, R)`)
    expression   [B, E]
    albedo       [B, A]
    rotation     [B, 6]     6D rotation (`geometry.rotation_6d_to_matrix`), or [B, 3] Euler
    translation  [B, 2]     image-plane offset in units of the image size, around the centre
    scale        [B]        positive, relative to `base_scale`
    light        [B, 9, 3]  SH lighting, starting near white ambient light

The backbone is the standard ResNet (He et al. 2016; torchvision's layout: 7x7 stem, max-pool,
basic or bottleneck blocks, projection shortcuts), so its size matches the usual numbers
(ResNet-18 11.18 M, ResNet-50 23.51 M parameters without the classifier). BatchNorm statistics
(`BatchNorm`: flax's, with faster reductions on CPU) live in the `batch_stats` collection (the
train state's `model_state`). Heads start at zero
output (plus their offsets), so an untrained encoder predicts the mean face, frontal, lit evenly.

Landmark input (`landmark_features > 0`): the 68 landmark positions carry most of the shape a
photo reveals (design section 7: a linear read-out of them halves the mean face's error, while
a small crop alone does not beat it). Their configuration, centred and scaled to unit RMS radius
(so it says nothing about where the face is), plus its centre and size relative to the image,
go through a two-layer MLP whose output is concatenated with the pooled image features before
every head. `landmark_norm` says how the MLP's inputs are normalised first:

    "whiten"  a fixed whitening from the training data (`whitening_statistics`, set into the
              variables before training): centred, decorrelated and scaled to unit variance,
              the smallest directions damped. The descriptor's 139 coordinates are strongly
              correlated, so gradient descent on them is ill-conditioned; whitened, a linear map
              of them (what a ridge regression reads shape out with) is learned in few steps.
    "batch"   each coordinate standardised over the batch by a BatchNorm;
    "none"    raw values.

With `landmark_linear` the features also carry the normalised descriptor itself, a linear path
from the landmarks to every head beside the MLP. With `shape_from_landmarks` the shape head reads
only the landmark features (the MLP's output and, with `landmark_linear`, the descriptor).
"""

from __future__ import annotations

import functools
import operator
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sfm_jax import parallel

LANDMARK_NORMS = ("whiten", "batch", "none")
DESCRIPTOR_SIZE = 68 * 2 + 3  # D of `landmark_descriptor`

RESNETS = {  # name: (blocks per stage, bottleneck blocks)
    "resnet10": ((1, 1, 1, 1), False),
    "resnet18": ((2, 2, 2, 2), False),
    "resnet34": ((3, 4, 6, 3), False),
    "resnet50": ((3, 4, 6, 3), True),
}


def max_pool_3x3_stride_2(x: jax.Array) -> jax.Array:
  """`nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))` of `[B, H, W, C]`, the
  ResNet stem's pooling, as a maximum over three strided rows, then over three strided columns.

  The values are equal and so is the gradient (up to the order of summation; at ties it goes to
  the tied entries like `jnp.maximum`'s). Reverse mode is elementwise selects: XLA on CPU (0.10)
  runs `max_pool`'s gradient as a windowed argmax that took 18 ms at the stage-2 `demo` shapes
  (`[32, 48, 48, 16]`), this takes 2 ms.
  """
  padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
  out_h, out_w = (x.shape[1] + 1) // 2, (x.shape[2] + 1) // 2
  rows = functools.reduce(jnp.maximum, [padded[:, i:i + 2 * out_h - 1:2] for i in range(3)])
  return functools.reduce(jnp.maximum, [rows[:, :, j:j + 2 * out_w - 1:2] for j in range(3)])


class BatchNorm(nn.Module):
  """`flax.linen.BatchNorm` over every axis but the last (its variables, names, running-average
  update and values, up to rounding), with the batch statistics as matrix-vector products:
  `[N] @ [N, C]` for the mean and for the mean squared deviation of the `N = B H W` rows. The
  variance takes two passes (flax's default takes one, `E[x^2] - E[x]^2`, which cancels in
  float32 where the mean is large against the spread, e.g. landmark pixel coordinates).

  XLA on CPU (0.10) runs the reductions over the leading axes that `nn.BatchNorm` emits slowly:
  the `resnet10` backbone's forward + backward at the stage-2 `demo` shapes (`[32, 96, 96, 3]`
  images) took 59 ms with it and 42 ms with this (one-pass variance; two passes not re-timed).
  Differentiable in `x`, `scale` and `bias` (the gradient flows through the statistics, as in
  `nn.BatchNorm`). Statistics are computed in at least float32; the output has `dtype` (default:
  the input's); new variables have `param_dtype`, running statistics keep the dtype they have.

  `x` may also be a list of arrays, the groups of one batch (`parallel.split_groups`): they are
  normalised with the statistics of all of them together (the values of the whole batch, up to
  the order of summation), and a list is returned.
  """
  use_running_average: bool = False
  momentum: float = 0.99
  epsilon: float = 1e-5
  dtype: jnp.dtype | None = None
  param_dtype: jnp.dtype = jnp.float32
  scale_init: nn.initializers.Initializer = nn.initializers.ones

  @nn.compact
  def __call__(self, x):
    parts = list(x) if isinstance(x, (list, tuple)) else [x]
    channels = parts[0].shape[-1]
    stat_dtype = jnp.promote_types(parts[0].dtype, jnp.float32)
    running_mean = self.variable("batch_stats", "mean", jnp.zeros, (channels,), self.param_dtype)
    running_var = self.variable("batch_stats", "var", jnp.ones, (channels,), self.param_dtype)
    scale = self.param("scale", self.scale_init, (channels,), self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros, (channels,), self.param_dtype)
    if self.use_running_average:
      mean, var = running_mean.value, running_var.value
    else:
      rows = [part.reshape(-1, channels).astype(stat_dtype) for part in parts]
      count = sum(r.shape[0] for r in rows)
      # Per group `[N_g] @ [N_g, C]`, summed: the groups' products can run side by side.
      batch_mean = lambda values: functools.reduce(operator.add, [
          jnp.full((v.shape[0],), 1.0 / count, stat_dtype) @ v for v in values])
      mean = batch_mean(rows)
      # Two passes: no cancellation when |mean| >> std.
      var = batch_mean([jnp.square(r - mean) for r in rows])
      if not self.is_initializing():
        # The running values keep their own dtype (float64 when the state was cast to it).
        running_mean.value = (self.momentum * running_mean.value
                              + (1.0 - self.momentum) * mean).astype(running_mean.value.dtype)
        running_var.value = (self.momentum * running_var.value
                             + (1.0 - self.momentum) * var).astype(running_var.value.dtype)
    multiplier = scale * jax.lax.rsqrt(var + self.epsilon)
    out_dtype = self.dtype or parts[0].dtype
    out = [(part * multiplier + (bias - mean * multiplier)).astype(out_dtype) for part in parts]
    return out if isinstance(x, (list, tuple)) else out[0]


def _each(function, parts: list) -> list:
  """`function` applied to every group of a batch (the same module: shared parameters)."""
  return [function(part) for part in parts]


# The blocks take and return the batch as a list of groups (`Backbone.batch_groups`); each layer
# is one module applied to every group, created in the order that names its parameters.


class _Basic(nn.Module):
  filters: int
  strides: int
  norm: functools.partial

  @nn.compact
  def __call__(self, parts):
    strides = (self.strides, self.strides)
    y = _each(nn.Conv(self.filters, (3, 3), strides, padding=1, use_bias=False), parts)
    y = _each(nn.relu, self.norm()(y))
    y = _each(nn.Conv(self.filters, (3, 3), padding=1, use_bias=False), y)
    y = self.norm(scale_init=nn.initializers.zeros)(y)
    residual = parts
    if residual[0].shape != y[0].shape:
      residual = _each(nn.Conv(self.filters, (1, 1), strides, use_bias=False), parts)
      residual = self.norm()(residual)
    return [nn.relu(r + a) for r, a in zip(residual, y)]


class _Bottleneck(nn.Module):
  filters: int
  strides: int
  norm: functools.partial

  @nn.compact
  def __call__(self, parts):
    strides = (self.strides, self.strides)
    y = _each(nn.relu, self.norm()(_each(nn.Conv(self.filters, (1, 1), use_bias=False), parts)))
    y = _each(nn.Conv(self.filters, (3, 3), strides, padding=1, use_bias=False), y)
    y = _each(nn.relu, self.norm()(y))
    y = _each(nn.Conv(self.filters * 4, (1, 1), use_bias=False), y)
    y = self.norm(scale_init=nn.initializers.zeros)(y)
    residual = parts
    if residual[0].shape != y[0].shape:
      residual = _each(nn.Conv(self.filters * 4, (1, 1), strides, use_bias=False), parts)
      residual = self.norm()(residual)
    return [nn.relu(r + a) for r, a in zip(residual, y)]


class Backbone(nn.Module):
  """ResNet feature extractor: `[B, H, W, 3]` -> `[B, features]` (global average pool).

  `batch_groups`: the batch goes through the network as this many groups of images
  (`parallel.split_groups`; one group where it does not divide B), every convolution applied to
  each group and every BatchNorm normalising all of them with the whole batch's statistics. The
  parameters and the values are those of one group (up to the order of summation in the
  statistics): the groups only let XLA run independent convolutions side by side. On the
  2-core CPU XLA:CPU runs each convolution of the stage-2 `demo` encoder on about one core;
  with 2 groups its forward + backward took 29 ms instead of 37.
  """
  stage_sizes: Sequence[int]
  bottleneck: bool = False
  width: int = 64
  dtype: jnp.dtype = jnp.float32
  batch_groups: int = 1

  @nn.compact
  def __call__(self, x, train: bool):
    norm = functools.partial(BatchNorm, use_running_average=not train, momentum=0.9,
                             epsilon=1e-5, dtype=self.dtype)
    parts = parallel.split_groups(x.astype(self.dtype), self.batch_groups)
    parts = _each(nn.Conv(self.width, (7, 7), (2, 2), padding=3, use_bias=False,
                          dtype=self.dtype), parts)
    parts = _each(max_pool_3x3_stride_2, _each(nn.relu, norm()(parts)))
    block = _Bottleneck if self.bottleneck else _Basic
    for stage, count in enumerate(self.stage_sizes):
      for index in range(count):
        strides = 2 if stage > 0 and index == 0 else 1
        parts = block(self.width * 2 ** stage, strides, norm)(parts)
    features = parallel.join_groups(_each(lambda part: jnp.mean(part, axis=(1, 2)), parts))
    return features.astype(jnp.promote_types(self.dtype, jnp.float32))


class LandmarkWhitening(nn.Module):
  """`[B, D] -> (x - mean) @ matrix`: a fixed linear normalisation whose `mean [D]` and `matrix
  [D, D]` live in the `batch_stats` collection (identity until `whitening_statistics` are set;
  training never changes them)."""

  @nn.compact
  def __call__(self, x):
    size = x.shape[-1]
    mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((size,), x.dtype))
    matrix = self.variable("batch_stats", "matrix", lambda: jnp.eye(size, dtype=x.dtype))
    return (x - mean.value) @ matrix.value


def whitening_statistics(landmarks: np.ndarray, *, image_size: int,
                         regularisation: float = 1e-2) -> dict:
  """The `LandmarkWhitening` variables `{"mean" [D], "matrix" [D, D]}` (float32) of training
  landmarks `[N, 68, 2]` (pixels): with the descriptors' covariance `C = U diag(l) U^T`,
  `matrix = U diag(1 / sqrt(l + regularisation * max(l))) U^T` (ZCA whitening; directions
  with variance well below `regularisation` of the largest are damped rather than amplified)."""
  x = landmark_descriptor_array(landmarks, image_size=image_size)
  mean = x.mean(0)
  variances, directions = np.linalg.eigh(np.cov(x - mean, rowvar=False, bias=True))
  variances = np.maximum(variances, 0.0)
  scale = 1.0 / np.sqrt(variances + regularisation * variances.max() + 1e-30)
  return {"mean": mean.astype(np.float32),
          "matrix": ((directions * scale) @ directions.T).astype(np.float32)}


class Trunk(nn.Module):
  """The encoder's feature extractor: the ResNet backbone (pooled features) and, with
  `landmark_features`, the landmark MLP beside it (and with `landmark_linear` the normalised
  descriptor); `[B, F]` features. Identity pretraining (`stage2.make_pretrain_loss_fn`) trains
  this module alone; `Encoder` holds it as `trunk`."""
  depth: str = "resnet18"
  width: int = 64
  landmark_features: int = 0
  dtype: jnp.dtype = jnp.float32
  landmark_norm: str = "batch"
  landmark_linear: bool = False
  batch_groups: int = 1  # the backbone's (`Backbone.batch_groups`)

  @nn.compact
  def __call__(self, images, train: bool = False, landmarks=None):
    if self.depth not in RESNETS:
      raise ValueError(f"Encoder.depth must be one of {sorted(RESNETS)}, got {self.depth!r}")
    if self.landmark_norm not in LANDMARK_NORMS:
      raise ValueError(f"Encoder.landmark_norm must be one of {LANDMARK_NORMS}, got "
                       f"{self.landmark_norm!r}")
    stages, bottleneck = RESNETS[self.depth]
    features = Backbone(stages, bottleneck, self.width, self.dtype,
                        batch_groups=self.batch_groups)(images * 2.0 - 1.0, train)
    if self.landmark_features:
      if landmarks is None:
        raise ValueError("this Encoder reads landmarks (landmark_features > 0): pass them")
      shape = landmark_descriptor(landmarks, image_size=images.shape[1])
      if self.landmark_norm == "whiten":
        shape = LandmarkWhitening(name="landmarks_whitening")(shape)
      elif self.landmark_norm == "batch":
        # Each coordinate standardised over the batch (running statistics at inference).
        shape = BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                          dtype=self.dtype, name="landmarks_norm")(shape)
      hidden = nn.relu(nn.Dense(self.landmark_features, name="landmarks_1")(shape))
      hidden = nn.relu(nn.Dense(self.landmark_features, name="landmarks_2")(hidden))
      features = jnp.concatenate([features, hidden] + ([shape] if self.landmark_linear else []),
                                 axis=-1)
    return features

  @property
  def landmark_width(self) -> int:
    """How many of the last features come from the landmarks."""
    if not self.landmark_features:
      return 0
    return self.landmark_features + (DESCRIPTOR_SIZE if self.landmark_linear else 0)


class Encoder(nn.Module):
  """`Trunk` plus the face-parameter heads (see the module docstring)."""
  shape_dim: int
  expr_dim: int
  albedo_dim: int = 0
  depth: str = "resnet18"
  width: int = 64
  rotation: str = "6d"
  landmark_features: int = 0
  dtype: jnp.dtype = jnp.float32
  landmark_norm: str = "batch"
  shape_from_landmarks: bool = False
  landmark_linear: bool = False
  shape_head_scale: float = 1.0
  batch_groups: int = 1  # the backbone's (`Backbone.batch_groups`): speed only, same values

  @nn.compact
  def __call__(self, images, train: bool = False, landmarks=None):
    if self.shape_from_landmarks and not self.landmark_features:
      raise ValueError("Encoder.shape_from_landmarks needs landmark_features > 0")
    trunk = Trunk(self.depth, self.width, self.landmark_features, self.dtype,
                  landmark_norm=self.landmark_norm, landmark_linear=self.landmark_linear,
                  batch_groups=self.batch_groups, name="trunk")
    features = trunk(images, train, landmarks)
    head = lambda size, name: nn.Dense(size, kernel_init=nn.initializers.zeros, name=name)(
        features)
    # With `shape_from_landmarks` the shape code reads only the landmark features (the last
    # ones): the pixels cannot tell it which training person this is.
    shape_features = (features[:, -trunk.landmark_width:] if self.shape_from_landmarks
                      else features)
    # The shape head starts small but not at zero: project() needs a direction. Its initial
    # kernel is LeCun normal times `shape_head_scale`. An SFM code R z / |z| does not depend on
    # that size, but its step does: Adam moves the kernel by about the learning rate whatever
    # its size, so a smaller kernel turns the code's direction faster.
    z = nn.Dense(self.shape_dim, name="z", kernel_init=nn.initializers.variance_scaling(
        self.shape_head_scale ** 2, "fan_in", "truncated_normal"))(shape_features)
    identity_6d = jnp.asarray([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])
    rotation = (head(6, "rotation") + identity_6d if self.rotation == "6d"
                else head(3, "rotation"))
    light = head(27, "light").reshape(-1, 9, 3)
    ambient = jnp.zeros((9, 3)).at[0].set(1.0 / (0.282095 * np.pi))
    return {"z": z, "expression": head(self.expr_dim, "expression"),
            "albedo": head(self.albedo_dim, "albedo") if self.albedo_dim else
            jnp.zeros((images.shape[0], 0)),
            "rotation": rotation, "translation": head(2, "translation"),
            "scale": nn.softplus(head(1, "scale")[:, 0] + np.log(np.expm1(1.0))),
            "light": light + ambient}


def landmark_descriptor(landmarks, *, image_size: int):
  """`[B, 68 * 2 + 3]`: the landmarks `[B, 68, 2]` (pixels) centred and divided by their RMS
  radius, then their centre (fraction of the image, around its middle) and RMS radius (fraction
  of the image size)."""
  centre = jnp.mean(landmarks, axis=1, keepdims=True)
  offsets = landmarks - centre
  radius = jnp.sqrt(jnp.mean(jnp.sum(jnp.square(offsets), -1), axis=1, keepdims=True) + 1e-6)
  shape = (offsets / radius[..., None]).reshape(landmarks.shape[0], -1)
  where = centre[:, 0] / image_size - 0.5
  return jnp.concatenate([shape, where, radius / image_size], axis=-1)


def landmark_descriptor_array(landmarks: np.ndarray, *, image_size: int) -> np.ndarray:
  """`landmark_descriptor` of `[N, 68, 2]` pixels (computed in float32, as the encoder does) as
  a float64 NumPy `[N, D]`, for the statistics and read-outs computed outside the network."""
  return np.asarray(landmark_descriptor(jnp.asarray(landmarks, jnp.float32),
                                        image_size=image_size), np.float64)


def parameter_count(tree) -> int:
  """Number of scalars in a parameter pytree."""
  import jax
  return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))
