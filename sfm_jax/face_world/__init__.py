"""The procedural face world (the embedded default data): faces generated in code, no downloads.

- `template`: the neutral template mesh (`face_template`) with iBUG-68 landmarks, a mirror map
  and the identity `ATTRIBUTES`; `toy_model`, a small smooth random model for demos and tests.
- `identities`: `FaceWorld`, whose identities are directions on a sphere S^(D-1) that a fixed
  random map and `tanh` turn into attributes (nose length and width, jaw width, eye spacing, ...)
  acting through smooth local warps and bump sizes: shapes are a nonlinear function of the
  identity, not a Gaussian in a linear basis; `identity_albedo`.
- `expressions`: `EXPRESSIONS` (blendshape-like fields and a jaw rotation), `apply_expressions`,
  `sample_expression_weights`.
- `scans`: `make_scans` (registered scans with expressions, scanner noise, rigid misalignment
  and sliding noise, plus each scan's ground-truth neutral shape), `apply_scanner` (= `scanner_motions`, then `scan_faces`).
- `images`: `make_images` (rendered photos with pose, SH light, albedo, clutter, occluders,
  landmarks with visibility, identity labels and the 3D ground truth).
"""

from sfm_jax.face_world.expressions import (
                                            EXPRESSIONS,
                                            JAW_MAX_DEGREES,
                                            apply_expressions,
                                            expression_fields,
                                            sample_expression_weights,
)
from sfm_jax.face_world.identities import FaceWorld, identity_albedo, identity_shapes
from sfm_jax.face_world.images import Images, make_images
from sfm_jax.face_world.scans import (
                                            Scans,
                                            apply_scanner,
                                            make_scans,
                                            scan_faces,
                                            scanner_motions,
)
from sfm_jax.face_world.template import (
                                            ATTRIBUTES,
                                            HALF_HEIGHT_MM,
                                            HALF_WIDTH_MM,
                                            NOW_LANDMARKS,
                                            FaceTemplate,
                                            face_height,
                                            face_template,
                                            toy_model,
)

__all__ = ["EXPRESSIONS", "JAW_MAX_DEGREES", "apply_expressions", "expression_fields",
           "sample_expression_weights", "FaceWorld", "identity_albedo", "identity_shapes",
           "Images", "make_images", "Scans", "apply_scanner", "make_scans", "scan_faces",
           "scanner_motions", "ATTRIBUTES", "HALF_HEIGHT_MM", "HALF_WIDTH_MM", "NOW_LANDMARKS", "FaceTemplate", "face_height",
           "face_template", "toy_model"]
