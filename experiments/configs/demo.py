"""Config of `experiments.demo`: build a toy face model, decode faces on the code sphere.

Select as `--config=experiments/configs/demo.py` (or `...demo.py:small`); override any field,
e.g. `--config.num_faces=4`.
"""

import ml_collections

from sfm_jax.errors import InputError


def get_config(variant: str = "default") -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.num_shape = 10        # K
  config.num_expr = 4          # E
  config.resolution = 64       # template grid side: V = resolution^2
  config.num_faces = 8         # B faces decoded and pictured
  config.expression_scale = 1.0  # std of the expression codes
  config.image_size = 256      # pixels per face in the PNG
  if variant == "small":
    config.resolution = 24
    config.num_faces = 4
    config.image_size = 96
  elif variant != "default":
    raise InputError(f"unknown demo config variant {variant!r} (expected 'default' or 'small')")
  return config
