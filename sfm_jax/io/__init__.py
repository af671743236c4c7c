"""File formats: meshes (OBJ/PLY), images (PNG), landmark files (.pts), scan folders, array trees
(.npz), reconstructions and atomic writes. Our model files live in `sfm_jax.model` (`save_model` /
`load_model`); third-party models in `sfm_jax.io.models`."""

from sfm_jax.io.atomic import atomic_write
from sfm_jax.io.image import encode_png, read_png, write_png
from sfm_jax.io.mesh import (
           Mesh,
           read_mesh,
           read_obj,
           read_ply,
           write_mesh,
           write_obj,
           write_ply,
)
from sfm_jax.io.pts import read_pts, write_pts
from sfm_jax.io.scan_folder import ScanFolder, read_scan_folder, write_scan_folder
from sfm_jax.io.tree import load_tree, save_tree

__all__ = ["atomic_write", "encode_png", "read_png", "write_png", "Mesh", "read_mesh", "read_obj",
           "read_ply", "write_mesh", "write_obj", "write_ply", "read_pts", "write_pts",
           "load_tree", "save_tree", "ScanFolder", "read_scan_folder", "write_scan_folder"]
