r"""JAX against PyTorch (eager and `torch.compile`) on the same math, timed in one process.

  python -m experiments.benchmarks.compare_torch [--repeats=10 --json=compare_torch.json
      --skip=stage1 --compile=true]

Workloads (design section 11, paper shapes):
  decode     B=64, K=199, E=100, V=53149 (float32 and bf16; `decode stacked`: float32 on the
             bases stacked [K + E, V, 3] as stage 1 trains them, one product on both sides)
  spherical  loss forward + backward: project + CosFace + centre + isotropy, B=512, C=8631, K=199
  stage1     one full stage-1 train step (forward, backward, the gradient norm and the
             finiteness flag that `train_state.train_step` reports and the training loop stops
             on, Adam on every group), V=53149, K=199, E=100, N=4000 scans, C=1000, batch 128
             (float32)
The stage-2 step has no PyTorch reference yet (its renderer is JAX only); it is timed alone by
`experiments.benchmarks.bench_stage2`.

Compile time is reported apart from the median step time; every timed region ends with
`block_until_ready` (JAX) or `torch.cuda.synchronize` (PyTorch on GPU). Float32 matmuls are true
float32 on both sides (JAX `precision="highest"`, PyTorch with TF32 off). Achieved GB/s and
GFLOP/s are model-based estimates (bytes that must move, FLOPs that must be done) against the
same machine's measured copy bandwidth and matmul rate.
"""

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from experiments import cli, host
from experiments.benchmarks.common import (
  against_roofline,
  random_stage1_problem,
  roofline,
  time_calls,
  time_jax,
  write_json,
)
from sfm_jax import losses, sphere, stage1
from sfm_jax.model import FaceModel, decode, decode_stacked, stack_bases
from sfm_jax.train_state import TrainState, jit_train_step

_REPEATS = flags.DEFINE_integer("repeats", 10, "Timed groups per measurement.")
_JSON = flags.DEFINE_string("json", "runs/compare_torch.json", "Where to write the table.")
_SKIP = flags.DEFINE_list("skip", [], "Workloads to skip: decode, spherical, stage1.")
_COMPILE = flags.DEFINE_bool("compile", True, "Also time torch.compile.")
_VERTICES = flags.DEFINE_integer("vertices", 53149, "V")


def _torch_setup():
  import torch
  device = "cuda" if torch.cuda.is_available() else "cpu"
  torch.backends.cuda.matmul.allow_tf32 = False
  torch.backends.cudnn.allow_tf32 = False
  sync = (lambda _: torch.cuda.synchronize()) if device == "cuda" else (lambda _: None)
  return torch, device, sync


def _row(workload, framework, dtype, compile_s, step_s, bytes_moved, flops, machine):
  return dict(workload=workload, framework=framework, dtype=dtype, compile_s=compile_s,
              **against_roofline(step_s, bytes_moved, flops, machine,
                                 "bfloat16" if dtype == "bf16" else "float32"))


def bench_decode(machine, repeats, with_compile):
  torch, device, sync = _torch_setup()
  b, k, e, v = 64, 199, 100, _VERTICES.value
  rng = np.random.default_rng(0)
  arrays = dict(mean=rng.normal(size=(v, 3)), shape_basis=rng.normal(size=(k, v, 3)),
                expr_basis=rng.normal(size=(e, v, 3)), s=rng.normal(size=(b, k)),
                x=rng.normal(size=(b, e)))
  rows = []
  for dtype in ("f32", "bf16"):
    jdt = jnp.float32 if dtype == "f32" else jnp.bfloat16
    tdt = torch.float32 if dtype == "f32" else torch.bfloat16
    basis_bytes = (k + e) * v * 3 * (4 if dtype == "f32" else 2)
    moved = basis_bytes + (b * v * 3 + v * 3) * 4
    flops = 2.0 * b * (k + e) * v * 3
    model = FaceModel(mean=jnp.asarray(arrays["mean"], jnp.float32),
                      shape_basis=jnp.asarray(arrays["shape_basis"], jdt),
                      expr_basis=jnp.asarray(arrays["expr_basis"], jdt), radius=1.0,
                      triangles=jnp.zeros((1, 3), jnp.int32), landmarks=jnp.zeros(1, jnp.int32))
    s, x = jnp.asarray(arrays["s"], jdt), jnp.asarray(arrays["x"], jdt)
    fn = jax.jit(lambda m, s, x: decode(m, s, x))
    rows.append(_row("decode", "jax", dtype, *time_jax(fn, model, s, x, repeats=repeats,
                                                       calls_per_repeat=10),
                     moved, flops, machine))
    from experiments.benchmarks import torch_ref
    t = {key: torch.tensor(value, dtype=torch.float32 if key == "mean" else tdt, device=device)
         for key, value in arrays.items()}

    def torch_decode(mean, sb, eb, s, x):
      return torch_ref.decode(mean, sb, eb, s, x)

    variants = [("torch eager", torch_decode)]
    if with_compile:
      variants.append(("torch.compile", torch.compile(torch_decode)))
    with torch.no_grad():
      for name, function in variants:
        run = lambda f=function: f(t["mean"], t["shape_basis"], t["expr_basis"], t["s"], t["x"])
        rows.append(_row("decode", name, dtype, *time_calls(run, sync, repeats=repeats,
                                                            calls_per_repeat=10),
                         moved, flops, machine))
    if dtype == "f32":  # stage 1's layout: the bases stacked [K + E, V, 3], one product
      rows += _decode_stacked_rows(model, s, x, t, sync, repeats, with_compile, moved, flops,
                                   machine)
  return rows


def _decode_stacked_rows(model, s, x, t, sync, repeats, with_compile, moved, flops, machine):
  """`decode stacked` rows: JAX's `decode_stacked` and PyTorch's `addmm` on the same stacked
  bases and codes `[s | e]` (stage 1 trains its bases in this layout)."""
  import torch
  from experiments.benchmarks import torch_ref
  bases, codes = stack_bases(model.shape_basis, model.expr_basis), jnp.concatenate([s, x], 1)
  fn = jax.jit(decode_stacked)
  rows = [_row("decode stacked", "jax", "f32", *time_jax(fn, model.mean, bases, codes,
                                                         repeats=repeats, calls_per_repeat=10),
               moved, flops, machine)]
  del bases
  t_bases = torch.cat([t["shape_basis"], t["expr_basis"]], 0)
  t_codes = torch.cat([t["s"], t["x"]], 1)
  variants = [("torch eager", torch_ref.decode_stacked)]
  if with_compile:
    variants.append(("torch.compile", torch.compile(torch_ref.decode_stacked)))
  with torch.no_grad():
    for name, function in variants:
      run = lambda f=function: f(t["mean"], t_bases, t_codes)
      rows.append(_row("decode stacked", name, "f32", *time_calls(run, sync, repeats=repeats,
                                                                  calls_per_repeat=10),
                       moved, flops, machine))
  return rows


def bench_spherical(machine, repeats, with_compile):
  torch, device, sync = _torch_setup()
  from experiments.benchmarks import torch_ref
  b, c, k, radius = 512, 8631, 199, 14.0
  rng = np.random.default_rng(1)
  z, w, centres = rng.normal(size=(b, k)), rng.normal(size=(c, k)), rng.normal(size=(c, k))
  labels = rng.integers(0, c, b)
  labels[::7] = -1

  def jax_loss(z, w, centres, labels):
    s = sphere.project(z, radius)
    u = s / radius
    return (losses.cosface_loss(u, labels, w) + losses.spherical_center_loss(u, labels, centres)
            + 0.01 * losses.isotropy_kl(s, radius))

  grad = jax.jit(jax.value_and_grad(jax_loss, argnums=(0, 1, 2)))
  args = [jnp.asarray(a, jnp.float32) for a in (z, w, centres)] + [jnp.asarray(labels)]
  flops = 2 * 3 * 2.0 * b * c * k  # two [B,K]x[K,C] products, forward and two backward each
  moved = 2 * 3 * c * k * 4  # both tables read forward and backward, gradients written
  rows = [_row("spherical fwd+bwd", "jax", "f32",
               *time_jax(grad, *args, repeats=repeats, calls_per_repeat=10), moved, flops,
               machine)]
  tz, tw, tc = (torch.tensor(a, dtype=torch.float32, device=device, requires_grad=True)
                for a in (z, w, centres))
  tl = torch.tensor(labels, device=device)

  def torch_loss(z, w, centres, labels):
    s = torch_ref.project(z, radius)
    u = s / radius
    return (torch_ref.cosface_loss(u, labels, w) + torch_ref.spherical_center_loss(u, labels,
                                                                                  centres)
            + 0.01 * torch_ref.isotropy_kl(s, radius))

  variants = [("torch eager", torch_loss)]
  if with_compile:
    variants.append(("torch.compile", torch.compile(torch_loss)))
  for name, function in variants:
    def run(f=function):
      loss = f(tz, tw, tc, tl)
      return torch.autograd.grad(loss, (tz, tw, tc))
    rows.append(_row("spherical fwd+bwd", name, "f32",
                     *time_calls(run, sync, repeats=repeats, calls_per_repeat=10), moved, flops,
                     machine))
  return rows


def bench_stage1(machine, repeats, with_compile):
  torch, device, sync = _torch_setup()
  from experiments.benchmarks import torch_ref
  v, k, e, n, c, b = _VERTICES.value, 199, 100, 4000, 1000, 128
  init, identity = random_stage1_problem(vertices=v, shape_dim=k, expr_dim=e, num_scans=n,
                                         classes=c, seed=2)
  rng = np.random.default_rng(3)
  objective = stage1.Objective()
  lrs = dict(basis=1e-4, codes=1e-2, prototypes=1e-2, centers=1e-2)
  params = stage1.init_params(init, identity, c, seed=0)
  host_params = jax.tree_util.tree_map(np.asarray, params)  # before the donating JAX steps
  state = TrainState.create(
      params=params, seed=0,
      tx=stage1.make_optimizer(lr_basis=lrs["basis"], lr_codes=lrs["codes"],
                               lr_prototypes=lrs["prototypes"], lr_centers=lrs["centers"]),
      loss_fn=stage1.make_loss_fn(objective, radius=init.radius,
                                  triangles=np.zeros((1, 3), np.int32)))
  scans = rng.normal(size=(b, v, 3)).astype(np.float32) * 50
  index = np.arange(b, dtype=np.int32)
  batch = {"scans": jnp.asarray(scans), "identity": jnp.asarray(identity[index]),
           "index": jnp.asarray(index)}
  holder = {"state": state}

  def jax_step():
    holder["state"], metrics = jit_train_step(holder["state"], batch)
    return metrics

  basis_bytes = (k + e) * v * 3 * 4
  moved = 10 * basis_bytes + 2 * b * v * 3 * 4  # bases: read x2, grad, Adam (p, m, v r/w); scans
  flops = 3 * 2.0 * b * (k + e) * v * 3  # decode forward and its two backward products
  rows = [_row("stage1 step", "jax", "f32", *time_calls(jax_step, jax.block_until_ready,
                                                        repeats=repeats), moved, flops, machine)]
  tb = (torch.tensor(scans, device=device), torch.tensor(identity[index], dtype=torch.long,
                                                         device=device),
        torch.tensor(index, dtype=torch.long, device=device))
  for name in ("torch eager", "torch.compile") if with_compile else ("torch eager",):
    module = torch_ref.Stage1(host_params, radius=init.radius, settings=vars(objective)).to(device)
    optimizer = torch.optim.Adam(module.groups(lrs))
    forward = torch.compile(module) if name == "torch.compile" else module

    def torch_step(forward=forward, optimizer=optimizer, module=module):
      optimizer.zero_grad(set_to_none=True)
      loss, _ = forward(*tb)
      loss.backward()
      grad_norm = torch.nn.utils.get_total_norm([p.grad for p in module.parameters()
                                                 if p.grad is not None])
      finite = torch.isfinite(loss) & torch.isfinite(grad_norm)  # what the JAX step reports
      optimizer.step()
      return loss, finite

    rows.append(_row("stage1 step", name, "f32",
                     *time_calls(torch_step, sync, repeats=repeats), moved, flops, machine))
  return rows


def main(argv):
  del argv
  torch, device, _ = _torch_setup()
  repeats = _REPEATS.value
  machine = roofline()  # its own repeats: a short --repeats must not skew the reference
  rows = []
  for name, bench in (("decode", bench_decode), ("spherical", bench_spherical),
                      ("stage1", bench_stage1)):
    if name not in _SKIP.value:
      rows += bench(machine, repeats, _COMPILE.value)
  jax_device = jax.devices()[0]
  print(f"JAX {jax.__version__} on {jax_device.platform}:{jax_device.device_kind}; PyTorch "
        f"{torch.__version__} on {device}; measured copy bandwidth {machine['bandwidth'] / 1e9:.0f}"
        f" GB/s, matmul {machine['matmul']['float32'] / 1e12:.2f} TFLOP/s f32, "
        f"{machine['matmul']['bfloat16'] / 1e12:.2f} bf16; {host.describe_memory_settings()}")
  print(f"{'workload':<19}{'framework':<15}{'dtype':<6}{'compile s':>10}{'step ms':>10}"
        f"{'JAX/this':>9}{'roofline ms':>12}{'GB/s':>9}{'% BW':>7}{'GFLOP/s':>10}{'% MM':>7}")
  for row in rows:
    reference = next(r for r in rows if r["workload"] == row["workload"]
                     and r["dtype"] == row["dtype"] and r["framework"] == "jax")
    row["jax_over_this"] = reference["step_ms"] / row["step_ms"]
    print(f"{row['workload']:<19}{row['framework']:<15}{row['dtype']:<6}{row['compile_s']:>10.2f}"
          f"{row['step_ms']:>10.3f}{row['jax_over_this']:>9.2f}{row['roofline_ms']:>12.3f}"
          f"{row['gb_per_s']:>9.1f}{100 * row['bandwidth_fraction']:>7.1f}"
          f"{row['gflop_per_s']:>10.1f}{100 * row['matmul_fraction']:>7.1f}")
  print("JAX/this < 1: JAX is faster (time ratio JAX / that framework).")
  if _JSON.value:
    write_json(_JSON.value, dict(jax=jax.__version__, torch=torch.__version__,
                                 device=f"{jax_device.platform}:{jax_device.device_kind}",
                                 machine=machine, rows=rows))


if __name__ == "__main__":
  cli.run(main)
