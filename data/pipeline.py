"""Numpy batches from a TFDS builder (or any random-access source): what the stages consume.

`numpy_batches` shuffles indices per epoch with a seeded generator, takes this process's shard of
them (disjoint across processes), and stacks examples into dicts of numpy arrays. It needs no
TensorFlow: sources are `builder.as_data_source(split)` (array_record).
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np


def build(builder_cls, *, data_dir: str, config=None, manual_dir: str | None = None):
  """Builds (if needed) and returns a TFDS builder writing array_record files under `data_dir`."""
  import tensorflow_datasets as tfds

  download_config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
  builder = builder_cls(config=config, data_dir=data_dir, file_format="array_record")
  builder.download_and_prepare(download_config=download_config)
  return builder


def stack_examples(examples: Sequence[dict]) -> dict:
  """A list of example dicts -> one dict of stacked numpy arrays (text kept as lists)."""
  batch = {}
  for key in examples[0]:
    values = [example[key] for example in examples]
    if isinstance(values[0], (str, bytes)):
      batch[key] = [v.decode() if isinstance(v, bytes) else v for v in values]
    else:
      batch[key] = np.stack([np.asarray(v) for v in values])
  return batch


def numpy_batches(source, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                  epochs: int | None = 1, drop_remainder: bool = True, shard_index: int = 0,
                  shard_count: int = 1) -> Iterator[dict]:
  """Yields batches (dicts of `[batch_size, ...]` numpy arrays) from a random-access source.

  Args:
    source: supports `len()` and integer indexing (e.g. `builder.as_data_source("train")`).
    batch_size: examples per batch (per process when sharded).
    shuffle: permute the order every epoch (seeded by `seed` and the epoch number).
    epochs: passes over the data; None repeats forever.
    drop_remainder: drop a last partial batch.
    shard_index, shard_count: this process's disjoint share of each epoch's examples.
  """
  size = len(source)
  if size == 0:
    raise ValueError("numpy_batches: the source is empty")
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"numpy_batches: shard_index {shard_index} not in [0, {shard_count})")
  epoch = 0
  while epochs is None or epoch < epochs:
    order = (np.random.default_rng([seed, epoch]).permutation(size) if shuffle
             else np.arange(size))
    order = order[shard_index::shard_count]
    stop = len(order) - (len(order) % batch_size if drop_remainder else 0)
    for start in range(0, stop, batch_size):
      yield stack_examples([source[int(i)] for i in order[start:start + batch_size]])
    epoch += 1


def load_all(source) -> dict:
  """Every example of a source, stacked (for small splits: evaluation, tests)."""
  return stack_examples([source[i] for i in range(len(source))])
