"""Batches from a `Dataset`: seeded shuffling, threaded decode + transforms, padding, devices.

Every batch has the configured size: the last one is padded and carries a ``mask`` of the real
examples, so one compiled step serves a whole task and the losses average over real examples
only, as the references' smaller last batch does. Randomness is a pure function of
(seed, purpose, example), so a run is reproducible and resumable.
"""

from __future__ import annotations

import concurrent.futures
import os
import queue
import threading
from typing import Any, Iterator, NamedTuple, Optional, Sequence

import jax
import numpy as np

from cljax.data import transforms


class Batch(NamedTuple):
  images: np.ndarray   # [B, H, W, 3] float32
  labels: np.ndarray   # [B] int32 (0 in padding)
  mask: np.ndarray     # [B] bool, False in padding


_POOL = None


def _pool():
  global _POOL
  if _POOL is None:
    _POOL = concurrent.futures.ThreadPoolExecutor(max(2, min(8, os.cpu_count() or 2)))
  return _POOL


def epoch_order(indices: np.ndarray, seed: Sequence[int], shuffle: bool) -> np.ndarray:
  indices = np.asarray(indices)
  if not shuffle:
    return indices
  return indices[np.random.default_rng(list(seed)).permutation(len(indices))]


def num_batches(n: int, batch_size: int) -> int:
  return -(-n // batch_size)


def batches(dataset, indices, batch_size: int, image_size: int, train: bool,
            seed: Sequence[int] = (0,), shuffle: bool = False, start_batch: int = 0,
            rows: Optional[tuple] = None) -> Iterator[Batch]:
  """Batches of dataset[indices]; ``seed`` keys the order and the augmentation draws.

  ``start_batch`` skips ahead without decoding (resuming mid-epoch). ``rows=(start, end)``
  yields only those rows of every global batch: on several hosts each decodes its own share
  (`cljax.parallel.host_rows`)."""
  order = epoch_order(indices, seed, shuffle)
  cache = {}

  def load(position_and_index):
    position, i = position_and_index
    family = dataset.family(i)
    if (family, train) not in cache:
      cache[(family, train)] = transforms.make(family, train, image_size)
    rng = np.random.default_rng(list(seed) + [int(position)])
    return cache[(family, train)](dataset.image(i), rng)

  for positions, chunk, size in _global_batches(order, batch_size, start_batch, rows):
    images = list(_pool().map(load, zip(positions, chunk)))
    images = (np.stack(images).astype(np.float32, copy=False) if images
              else np.zeros((0, image_size, image_size, 3), np.float32))
    yield _padded(images, dataset.labels[chunk], size)


def feature_batches(features: np.ndarray, labels: np.ndarray, batch_size: int,
                    seed: Sequence[int] = (0,), shuffle: bool = False, start_batch: int = 0,
                    rows: Optional[tuple] = None) -> Iterator[Batch]:
  """`batches` over precomputed features [n, D] (in ``images``): the same order for the same
  seed (the permutation of positions that `epoch_order` applies to a task's indices), padding
  and mask."""
  order = epoch_order(np.arange(len(features)), seed, shuffle)
  for _, chunk, size in _global_batches(order, batch_size, start_batch, rows):
    yield _padded(features[chunk], labels[chunk], size)


def _global_batches(order: np.ndarray, batch_size: int, start_batch: int, rows: Optional[tuple]):
  """(positions in the epoch, dataset rows, rows per batch) of this host's share of every
  global batch from ``start_batch`` on; the last batch's positions stop at the epoch's end."""
  start, end = rows or (0, batch_size)
  for b in range(start_batch, num_batches(len(order), batch_size)):
    positions = np.arange(b * batch_size + start, b * batch_size + end)
    positions = positions[positions < len(order)]
    yield positions, order[positions], end - start


def _padded(values: np.ndarray, labels: np.ndarray, size: int) -> Batch:
  """A batch of ``size`` rows: the real ones first, zeros after, and the mask of the real ones."""
  n = len(values)
  out = np.zeros((size,) + values.shape[1:], values.dtype)
  out[:n] = values
  padded_labels = np.zeros(size, np.int32)
  padded_labels[:n] = labels
  mask = np.zeros(size, bool)
  mask[:n] = True
  return Batch(out, padded_labels, mask)


def to_device(batch: Batch, sharding) -> Batch:
  """A global batch from this host's rows (see `cljax.parallel.put`)."""
  from cljax import parallel  # pylint: disable=g-import-not-at-top
  return Batch(*(parallel.put(x, sharding) for x in batch))


def prefetch(iterator: Iterator[Batch], sharding, size: int = 2) -> Iterator[Batch]:
  """Decode/transform in a background thread and put batches on the devices ahead of use."""
  return in_background(iterator, lambda batch: to_device(batch, sharding), size)


def in_background(iterator: Iterator[Batch], convert, size: int = 2) -> Iterator[Any]:
  """convert(batch) for each batch, computed by a background thread up to ``size`` ahead; an
  error in the thread is raised in the consumer."""
  q: queue.Queue = queue.Queue(maxsize=size)
  sentinel = object()
  error = []

  def producer():
    try:
      for batch in iterator:
        q.put(convert(batch))
    except BaseException as e:  # surfaced in the consumer
      error.append(e)
    finally:
      q.put(sentinel)

  thread = threading.Thread(target=producer, daemon=True)
  thread.start()
  while True:
    item = q.get()
    if item is sentinel:
      if error:
        raise error[0]
      return
    yield item
