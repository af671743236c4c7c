"""sfm_jax: the Sphere Face Model in JAX/Flax. See WORKSPACE.md for the map of the package."""

from sfm_jax.model import FaceModel, decode, load_model, save_model

__version__ = "0.1.0"

__all__ = ["FaceModel", "decode", "load_model", "save_model"]
