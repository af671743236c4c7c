"""TFDS without TensorFlow: build a builder into array_record files and read splits back as numpy.

The builders themselves live in the checkout's `data/` folder (thin wrappers over the
generators of `sfm_jax.sources`); training batches come from `splits.batch_indices` over the
arrays these functions return (or, streamed, over a scan store written from `iter_chunks`).
"""

from __future__ import annotations

from typing import Sequence

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


def iter_chunks(source, size: int = 64):
  """The examples of a random-access source (`builder.as_data_source(split)`) in order, as
  stacked dicts of up to `size` examples (one chunk in memory at a time)."""
  for start in range(0, len(source), size):
    yield stack_examples([source[i] for i in range(start, min(start + size, len(source)))])


def load_all(source) -> dict:
  """Every example of a random-access source, stacked."""
  return stack_examples([source[i] for i in range(len(source))])
