r"""Renderer speed: forward and forward + backward of a batch of faces.

  python -m experiments.benchmarks.bench_render [--batch=32 --resolution=71 --image_size=96
      --repeats=5 --json=PATH]

`--resolution=71` gives a 5041-vertex face mesh (9800 triangles); `--resolution=230` 52900
vertices (paper scale). The backward pass differentiates a photometric loss with respect to
vertex positions and colours. Compile time apart from the median step. Two ways of rendering the
batch, measured in the same run: `batched` (the renderer's leading batch dims, what stage 2 and
the face world use) and `vmap` (one mesh, vmapped), with their ratio.
"""


import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from experiments import cli, host
from experiments.benchmarks.common import time_jax, write_json
from sfm_jax import face_world, geometry, render

_BATCH = flags.DEFINE_integer("batch", 32, "faces per batch")
_RESOLUTION = flags.DEFINE_integer("resolution", 71, "face grid side (V = resolution^2)")
_SIZE = flags.DEFINE_integer("image_size", 96, "image side in pixels")
_REPEATS = flags.DEFINE_integer("repeats", 5, "timed repeats")
_JSON = flags.DEFINE_string("json", None, "also write the results here")
_WINDOW = flags.DEFINE_integer("window", 0, "rasteriser window (0 = exact path)")
_MAX_LARGE = flags.DEFINE_integer("max_large", 64,
                                  "window mode: triangles tested in the 4x larger window")
_MAX_HUGE = flags.DEFINE_integer("max_huge", 4, "window mode: triangles through the exact path")


def main(argv):
  del argv
  template = face_world.face_template(_RESOLUTION.value)
  size, batch = _SIZE.value, _BATCH.value
  rng = np.random.default_rng(0)
  scale = 0.75 * size / 200.0
  v = template.vertices.astype(np.float32)
  px = np.stack([v[:, 0] * scale + size / 2, -v[:, 1] * scale + size / 2, -v[:, 2]], -1)
  vertices = jnp.asarray(np.repeat(px[None], batch, 0) + rng.normal(
      scale=0.3, size=(batch,) + px.shape).astype(np.float32))
  colours = jnp.asarray(rng.uniform(0.3, 0.9, (batch,) + v.shape).astype(np.float32))
  normals = geometry.vertex_normals(jnp.asarray(v), jnp.asarray(template.triangles))
  light = jnp.zeros((9, 3)).at[0].set(1.0)
  triangles = jnp.asarray(template.triangles)
  target = jnp.asarray(rng.uniform(size=(batch, size, size, 3)).astype(np.float32))

  normals = jnp.broadcast_to(normals, vertices.shape)
  lights = jnp.broadcast_to(light, (batch,) + light.shape)
  settings = dict(height=size, width=size, window=_WINDOW.value or None,
                  max_large=_MAX_LARGE.value, max_huge=_MAX_HUGE.value)
  one_mesh = lambda p, c, n, l: render.render(p, triangles, c, n, l, **settings)[0]
  ways = {"batched": lambda p, c: one_mesh(p, c, normals, lights),  # leading dims: the batch
          "vmap": lambda p, c: jax.vmap(one_mesh)(p, c, normals, lights)}
  device = jax.devices()[0]
  tests = size * size * template.triangles.shape[0] * batch
  mode = f"window {_WINDOW.value}" if _WINDOW.value else "exact"
  result = dict(device=f"{device.platform}:{device.device_kind}", batch=batch,
                vertices=int(v.shape[0]), triangles=int(template.triangles.shape[0]),
                image_size=size, mode=mode)
  print(f"render B={batch} V={v.shape[0]} T={template.triangles.shape[0]} at {size}x{size} on "
        f"{result['device']}, rasteriser {mode}; {host.describe_memory_settings()}")
  print("| way | forward (ms) | fwd+bwd (ms) | forward / image (ms) | compile fwd, fwd+bwd (s) |")
  print("|---|---|---|---|---|")
  for name, forward in ways.items():
    loss = lambda p, c, forward=forward: jnp.mean(jnp.abs(forward(p, c) - target))
    compile_f, step_f = time_jax(jax.jit(forward), vertices, colours, repeats=_REPEATS.value)
    compile_b, step_b = time_jax(jax.jit(jax.grad(loss, argnums=(0, 1))), vertices, colours,
                                 repeats=_REPEATS.value)
    result[name] = dict(forward_ms=step_f * 1e3, forward_compile_s=compile_f,
                        backward_ms=step_b * 1e3, backward_compile_s=compile_b,
                        forward_ms_per_image=step_f * 1e3 / batch,
                        backward_ms_per_image=step_b * 1e3 / batch,
                        pixel_triangle_tests_per_s=tests / step_f)
    print(f"| {name} | {step_f * 1e3:.1f} | {step_b * 1e3:.1f} | {step_f * 1e3 / batch:.2f} | "
          f"{compile_f:.1f}, {compile_b:.1f} |")
  fast, slow = result["batched"], result["vmap"]
  print(f"batched is {slow['forward_ms'] / fast['forward_ms']:.2f}x vmap's speed forward, "
        f"{slow['backward_ms'] / fast['backward_ms']:.2f}x forward + backward; "
        f"{fast['pixel_triangle_tests_per_s'] / 1e9:.2f} G pixel-triangle tests/s batched "
        "(exact-path equivalent)")
  if _JSON.value:
    write_json(_JSON.value, result)


if __name__ == "__main__":
  cli.run(main)
