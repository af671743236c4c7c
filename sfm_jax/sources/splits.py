"""Splits, labels, seeds and batch order: the bookkeeping every data source shares.

- `split_seed(seed, split)`: the one derivation of a split's data seed from a run's seed (world
  data in memory and the TFDS builders agree, so the same seed gives the same data).
- `chunk_seed(seed, start)`: the seed of the chunk of identities starting at `start`; world data
  is always generated in chunks of `CHUNK_IDENTITIES` (bounded memory, and a builder can stream
  the very examples the in-memory source holds).
- `identity_in_test(name, fraction)`: held-out assignment of a named identity by a stable hash.
- `relabel(identity)`: contiguous training labels.
- `batch_indices(step, ...)`: the rows of training step `step` (exact resume).
- `padded_batches(count, batch_size)`: fixed-size batches over rows, the last padded (one
  compiled program for every batch).
"""

from __future__ import annotations

import hashlib

import numpy as np

SPLITS = ("train", "test", "pretrain", "scans")
CHUNK_IDENTITIES = 25


def split_seed(seed: int, split: str) -> int:
  """The data seed of `split` (one of `SPLITS`) for a run seeded `seed`."""
  return 2 * seed + 1 + SPLITS.index(split)


def chunk_seed(seed: int, start: int) -> int:
  """The seed of the identities `[start, start + CHUNK_IDENTITIES)` of a split seeded `seed`."""
  return seed * 100003 + start


def identity_in_test(name: str, test_fraction: float, split_seed: int = 0) -> bool:
  """Stable identity-level split: a SHA-256 of the name (and seed) decides, independent of order
  and machine. (crc32, tried first, spreads short similar names badly.) Unnamed (unlabelled)
  examples stay in training."""
  if not name:
    return False
  digest = hashlib.sha256(f"{split_seed}:{name}".encode("utf-8")).digest()
  return int.from_bytes(digest[:8], "big") / 2 ** 64 < test_fraction


def relabel(identity: np.ndarray) -> np.ndarray:
  """Contiguous labels `[0, C)` in sorted order of the original labels; -1 stays -1."""
  identity = np.asarray(identity)
  out = -np.ones(len(identity), np.int32)
  known = identity >= 0
  _, out[known] = np.unique(identity[known], return_inverse=True)
  return out


def batch_indices(step: int, *, num_examples: int, batch_size: int, seed: int) -> np.ndarray:
  """The example indices of training step `step`: a fresh seeded permutation every epoch, so any
  step's batch is known without replaying earlier ones (exact resume)."""
  per_epoch = max(num_examples // batch_size, 1)
  epoch, offset = divmod(step, per_epoch)
  order = np.random.default_rng([seed, epoch]).permutation(num_examples)
  if batch_size >= num_examples:
    return order
  return order[offset * batch_size:(offset + 1) * batch_size]


def padded_batches(count: int, batch_size: int) -> list[tuple[np.ndarray, int]]:
  """(rows, kept) for each batch of `count` rows, all of one size: `batch_size`, or the smallest
  power of two >= `count` when that is smaller (few programs compiled over calls, padding at most
  doubling a lone batch). The last batch repeats row `count - 1` to fill it; keep `[:kept]` of
  each batch's results."""
  group = min(batch_size, 1 << max(count - 1, 0).bit_length())
  return [(np.minimum(np.arange(begin, begin + group), count - 1), min(group, count - begin))
          for begin in range(0, count, group)]
