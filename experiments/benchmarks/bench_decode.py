r"""Benchmark of `decode`, the hot path of both stages, against the machine's own roofline.

  python -m experiments.benchmarks.bench_decode [--batch=64 --shape_dim=199 --expr_dim=100
      --vertices=53149 --repeats=20 --json=PATH]

Measures, in one run: the device's copy bandwidth and matmul rate (the roofline), then decode
with a float32 basis, with bf16 compute on a float32 basis (the cast is paid each call), with
a basis stored in bf16, and `decode_stacked` on the bases stacked `[K + E, V, 3]` as stage 1
trains them (one product for `[s | e]`). Compile time is reported apart from the step time
(median of repeats, `block_until_ready` around each).
"""


import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from experiments import cli, host
from experiments.benchmarks.common import against_roofline, roofline, time_jax, write_json
from sfm_jax.model import FaceModel, decode, decode_stacked, stack_bases

_BATCH = flags.DEFINE_integer("batch", 64, "B")
_SHAPE = flags.DEFINE_integer("shape_dim", 199, "K")
_EXPR = flags.DEFINE_integer("expr_dim", 100, "E")
_VERTICES = flags.DEFINE_integer("vertices", 53149, "V")
_REPEATS = flags.DEFINE_integer("repeats", 20, "timed calls per variant")
_JSON = flags.DEFINE_string("json", None, "also write the table here")


def main(argv):
  del argv
  b, k, e, v = _BATCH.value, _SHAPE.value, _EXPR.value, _VERTICES.value
  machine = roofline()  # its own repeats: a short --repeats must not skew the reference
  bandwidth, rates = machine["bandwidth"], machine["matmul"]
  rng = np.random.default_rng(0)
  model32 = FaceModel(mean=jnp.asarray(rng.normal(size=(v, 3)), jnp.float32),
                      shape_basis=jnp.asarray(rng.normal(size=(k, v, 3)), jnp.float32),
                      expr_basis=jnp.asarray(rng.normal(size=(e, v, 3)), jnp.float32),
                      radius=jnp.asarray(1.0), triangles=jnp.zeros((1, 3), jnp.int32),
                      landmarks=jnp.zeros((68,), jnp.int32))
  model16 = model32.replace(shape_basis=model32.shape_basis.astype(jnp.bfloat16),
                            expr_basis=model32.expr_basis.astype(jnp.bfloat16))
  s = jnp.asarray(rng.normal(size=(b, k)), jnp.float32)
  x = jnp.asarray(rng.normal(size=(b, e)), jnp.float32)
  variants = [  # name, model, compute dtype, matmul precision, bytes per basis entry
      ("f32 basis, f32 highest", model32, None, "highest", 4),
      ("f32 basis, f32 default", model32, None, None, 4),  # TF32 on GPUs
      ("f32 basis, bf16 compute", model32, jnp.bfloat16, None, 4),  # casts every call
      ("bf16 basis, bf16 compute", model16, jnp.bfloat16, None, 2),
  ]
  stacked = (model32.mean, stack_bases(model32.shape_basis, model32.expr_basis))
  rows = []
  for name, model, compute, precision, basis_bytes in variants:
    fn = jax.jit(lambda m, s, x, c=compute, p=precision: decode(m, s, x, compute_dtype=c,
                                                                precision=p))
    compile_s, step_s = time_jax(fn, model, s, x, repeats=_REPEATS.value, calls_per_repeat=10)
    rows.append(_row(name, compile_s, step_s, compute, basis_bytes, shapes=(b, k, e, v),
                     machine=machine))
  fn = jax.jit(lambda mean, bases, s, x: decode_stacked(mean, bases, jnp.concatenate([s, x], 1)))
  compile_s, step_s = time_jax(fn, *stacked, s, x, repeats=_REPEATS.value, calls_per_repeat=10)
  rows.append(_row("stacked f32 bases, highest", compile_s, step_s, None, 4, shapes=(b, k, e, v),
                   machine=machine))
  device = jax.devices()[0]
  print(f"decode B={b} K={k} E={e} V={v} on {device.platform}:{device.device_kind}; "
        f"measured copy bandwidth {bandwidth / 1e9:.0f} GB/s, matmul "
        f"{rates['float32'] / 1e12:.1f} TFLOP/s f32 (highest), "
        f"{rates['bfloat16'] / 1e12:.1f} bf16; {host.describe_memory_settings()}")
  header = (f"{'variant':<27}{'compile s':>10}{'step ms':>10}{'roofline ms':>12}{'GB/s':>9}"
            f"{'% BW':>7}{'GFLOP/s':>10}{'% MM':>7}")
  print(header)
  for r in rows:
    print(f"{r['variant']:<27}{r['compile_s']:>10.3f}{r['step_ms']:>10.3f}{r['roofline_ms']:>12.3f}"
          f"{r['gb_per_s']:>9.1f}{100 * r['bandwidth_fraction']:>7.1f}{r['gflop_per_s']:>10.1f}"
          f"{100 * r['matmul_fraction']:>7.1f}")
  if _JSON.value:
    write_json(_JSON.value, dict(device=str(device.device_kind), bandwidth=bandwidth, matmul=rates,
                     shapes=dict(B=b, K=k, E=e, V=v), rows=rows))


def _row(name, compile_s, step_s, compute, basis_bytes, *, shapes, machine) -> dict:
  b, k, e, v = shapes
  flops = 2.0 * b * (k + e) * v * 3
  moved = (k + e) * v * 3 * basis_bytes + (b * v * 3 + v * 3) * 4  # basis + output + mean
  return dict(variant=name, compile_s=compile_s,
              **against_roofline(step_s, moved, flops, machine,
                                 "bfloat16" if compute is not None else "float32"))


if __name__ == "__main__":
  cli.run(main)
