"""A PyTorch reference of SFM's math, written directly from the design (not from the JAX code).

Used by the parity tests (values and gradients must agree with `sfm_jax` to 1e-6 in float64),
by `experiments.gradcheck`, and as the PyTorch side of `compare_torch.py`. Imported only where
torch is installed (extra `torch`; `pip install torch==2.13.0` first).

Conventions shared with the design: codes `s [B, K]` on the sphere of radius R, directions
`u = s / R`, labels `-1` carry no identity term, losses are batch means.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

# ---------------------------------------------------------------------------------------------
# Model.


def decode(mean: torch.Tensor, shape_basis: torch.Tensor, expr_basis: torch.Tensor,
           shape_codes: torch.Tensor, expr_codes: torch.Tensor | None = None) -> torch.Tensor:
  """`mean [V,3] + s [B,K] . shape_basis [K,V,3] (+ e [B,E] . expr_basis [E,V,3])` -> `[B,V,3]`."""
  batch = shape_codes.shape[0]
  out = shape_codes @ shape_basis.flatten(1)
  if expr_codes is not None and expr_basis.shape[0]:
    out = torch.addmm(out, expr_codes, expr_basis.flatten(1))
  return out.view(batch, -1, 3) + mean


def decode_stacked(mean: torch.Tensor, bases: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
  """`mean [V,3] + codes [B,K+E] . bases [K+E,V,3]` -> `[B,V,3]`: one `addmm`, the mean as its
  bias (PyTorch's own fused form of stage 1's stacked layout)."""
  return torch.addmm(mean.flatten(), codes, bases.flatten(1)).view(codes.shape[0], -1, 3)


def project(z: torch.Tensor, radius, eps: float = 1e-6) -> torch.Tensor:
  """`R z / max(||z||, eps)` along the last axis."""
  return radius * z / torch.linalg.vector_norm(z, dim=-1, keepdim=True).clamp_min(eps)


# ---------------------------------------------------------------------------------------------
# Identity terms.


def _mask_mean(values: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
  keep = labels >= 0
  if not bool(keep.any()):
    return values.sum() * 0.0  # a zero that keeps the graph (zero gradients)
  return values[keep].mean()


def _cosines(u, prototypes, eps=1e-6):
  return F.normalize(u, dim=-1, eps=eps) @ F.normalize(prototypes, dim=-1, eps=eps).T


def cosface_loss(u, labels, prototypes, scale=32.0, margin=0.35):
  """CosFace: the labelled class's logit is `scale (cos - margin)`."""
  cos = _cosines(u, prototypes)
  one_hot = F.one_hot(labels.clamp_min(0), cos.shape[1]).to(cos.dtype)
  one_hot = one_hot * (labels >= 0).to(cos.dtype)[:, None]
  logits = scale * (cos - margin * one_hot)
  per_sample = F.cross_entropy(logits, labels.clamp_min(0), reduction="none")
  return _mask_mean(per_sample, labels)


def arcface_loss(u, labels, prototypes, scale=32.0, margin=0.5):
  """ArcFace: `scale cos(theta + margin)`, falling back to `scale (cos - margin sin margin)` once
  `theta > pi - margin`."""
  cos = _cosines(u, prototypes)
  index = labels.clamp_min(0)
  target = cos.gather(1, index[:, None])[:, 0]
  sin = torch.sqrt(torch.clamp(1.0 - target * target, min=0.0))
  sin = torch.where(1.0 - target * target > 0, sin, torch.zeros_like(sin))
  shifted = target * math.cos(margin) - sin * math.sin(margin)
  shifted = torch.where(target > math.cos(math.pi - margin), shifted,
                        target - margin * math.sin(margin))
  logits = scale * cos.scatter(1, index[:, None], shifted[:, None])
  per_sample = F.cross_entropy(logits, index, reduction="none")
  return _mask_mean(per_sample, labels)


def spherical_center_loss(u, labels, centers):
  cos = _cosines(u, centers)
  target = cos.gather(1, labels.clamp_min(0)[:, None])[:, 0]
  return _mask_mean(1.0 - target, labels)


def isotropy_kl(s, radius, eps=1e-6):
  """KL(N(mean_k, var_k) || N(0, R^2/K)) summed over the K dimensions of the batch."""
  sigma2 = radius ** 2 / s.shape[1]
  mean = s.mean(0)
  var = s.var(0, unbiased=False)
  ratio = var / sigma2
  return 0.5 * (ratio + mean ** 2 / sigma2 - 1.0 - torch.log(ratio + eps)).sum()


def ring_loss(s, radius):
  return ((torch.linalg.vector_norm(s, dim=-1) / radius - 1.0) ** 2).mean()


# ---------------------------------------------------------------------------------------------
# Reconstruction and regularisers.


def vertex_loss(predicted, target, squared=False):
  diff = predicted - target
  return (diff * diff).sum(-1).mean() if squared else torch.linalg.vector_norm(diff, dim=-1).mean()


def landmark_loss(predicted, target, visible=None):
  """Mean over visible landmarks of `||p - t|| / sqrt(bbox width * height of visible t)`."""
  if visible is None:
    visible = torch.ones(predicted.shape[:2], dtype=predicted.dtype)
  visible = visible.to(predicted.dtype)
  big = torch.finfo(target.dtype).max
  mask = visible[..., None] > 0
  low = torch.where(mask, target, torch.full_like(target, big)).amin(1)
  high = torch.where(mask, target, torch.full_like(target, -big)).amax(1)
  size = torch.sqrt((high - low).clamp_min(0).prod(-1)).clamp_min(1e-6)
  dist = torch.linalg.vector_norm(predicted - target, dim=-1) / size[:, None]
  return ((dist * visible).sum(1) / visible.sum(1).clamp_min(1.0)).mean()


def code_prior(codes):
  return (codes * codes).sum(-1).mean()


def cosine_orthogonality(basis):
  rows = F.normalize(basis.flatten(1), dim=-1, eps=1e-6)
  gram = rows @ rows.T
  return ((gram - torch.eye(gram.shape[0], dtype=gram.dtype)) ** 2).sum()


def uniform_laplacian(fields, edges):
  """`x_i - mean of neighbours`, `fields [..., V, C]`, `edges [N, 2]` undirected."""
  v = fields.shape[-2]
  src = torch.cat([edges[:, 0], edges[:, 1]])
  dst = torch.cat([edges[:, 1], edges[:, 0]])
  moved = fields.movedim(-2, 0)
  sums = torch.zeros_like(moved).index_add_(0, dst, moved[src])
  degree = torch.zeros(v, dtype=fields.dtype).index_add_(0, dst, torch.ones_like(dst,
                                                                                dtype=fields.dtype))
  degree = degree.clamp_min(1.0).view(v, *([1] * (moved.dim() - 1)))
  return (moved - sums / degree).movedim(0, -2)


def symmetry_loss(fields, mirror):
  flip = torch.tensor([-1.0, 1.0, 1.0], dtype=fields.dtype)
  return ((fields - fields[..., mirror, :] * flip) ** 2).sum(-1).mean()


# ---------------------------------------------------------------------------------------------
# The stage-1 objective and optimizer.


class Stage1(torch.nn.Module):
  """Stage-1 auto-decoder: model, per-scan codes, prototypes and centres as parameters."""

  def __init__(self, params: dict, *, radius: float, settings: dict, edges=None, mirror=None):
    super().__init__()
    as_param = lambda x: torch.nn.Parameter(torch.from_numpy(np.array(x, copy=True)))
    shape_dim = np.shape(params["codes"]["z"])[-1]  # JAX stacks the bases: [K + E, V, 3]
    self.mean = as_param(params["model"]["mean"])
    self.shape_basis = as_param(np.asarray(params["model"]["bases"])[:shape_dim])
    self.expr_basis = as_param(np.asarray(params["model"]["bases"])[shape_dim:])
    self.z = as_param(params["codes"]["z"])
    self.e = as_param(params["codes"]["e"])
    self.prototypes = as_param(params["prototypes"])
    self.centers = as_param(params["centers"])
    self.radius = radius
    self.settings = settings
    self.edges = None if edges is None else torch.as_tensor(edges, dtype=torch.long)
    self.mirror = None if mirror is None else torch.as_tensor(mirror, dtype=torch.long)

  def groups(self, lrs: dict) -> list:
    """Adam parameter groups with the design's separate learning rates."""
    return [{"params": [self.mean, self.shape_basis, self.expr_basis], "lr": lrs["basis"]},
            {"params": [self.z, self.e], "lr": lrs["codes"]},
            {"params": [self.prototypes], "lr": lrs["prototypes"]},
            {"params": [self.centers], "lr": lrs["centers"]}]

  def forward(self, scans, identity, index):
    o = self.settings
    sphere = o["code_kind"] == "sphere"
    z, e = self.z[index], self.e[index]
    s = project(z, self.radius) if sphere and o["sphere_mode"] == "hard" else z
    decoded = decode(self.mean, self.shape_basis, self.expr_basis, s, e)
    terms = {"rec": vertex_loss(decoded, scans, o["squared_error"])}
    if sphere:
      u = s / self.radius
      if o["weight_margin"]:
        margin_fn = cosface_loss if o["margin_kind"] == "cosface" else arcface_loss
        terms["margin"] = margin_fn(u, identity, self.prototypes, o["margin_scale"], o["margin"])
      if o["weight_center"]:
        terms["center"] = spherical_center_loss(u, identity, self.centers)
      if o["weight_isotropy"]:
        terms["isotropy"] = isotropy_kl(s, self.radius)
      if o["sphere_mode"] == "soft" and o["weight_ring"]:
        terms["ring"] = ring_loss(s, self.radius)
    elif o["weight_shape_prior"]:
      terms["shape_prior"] = code_prior(s)
    if o["weight_expr_prior"] and e.shape[-1]:
      terms["expr_prior"] = code_prior(e)
    if o["weight_orthogonality"]:
      terms["orthogonality"] = cosine_orthogonality(self.shape_basis)
    if o["weight_smoothness"]:
      fields = torch.cat([self.shape_basis, self.expr_basis])
      terms["smoothness"] = (uniform_laplacian(fields, self.edges) ** 2).sum(-1).mean()
    if o["weight_symmetry"] and self.mirror is not None:
      terms["symmetry"] = symmetry_loss(self.mean, self.mirror)
    return sum(o[f"weight_{k}"] * v for k, v in terms.items()), terms
