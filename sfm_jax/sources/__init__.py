"""The data layer: where every stage's examples come from.

- `splits`: seed derivation, identity hold-out, relabelling, batch order.
- `scans`: stage-1 scans (`load`: face world, TFDS, a sampled model, a scan folder).
- `images`: stage-2 images (`load`: face world, TFDS, a photo folder), image reading, crops.
- `tfds`: building and reading the TFDS builders of `data/` without TensorFlow.
"""
