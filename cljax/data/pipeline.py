"""Batches from a `Dataset` on grain: seeded shuffling, decode + transforms in threads or worker
processes, padding, devices.

Every batch has the configured size: the last one is padded and carries a ``mask`` of the real
examples, so one compiled step serves a whole task and the losses average over real examples
only, as the references' smaller last batch does. Randomness is a pure function of
(seed, purpose, example), so a run is reproducible and resumable.

The host yields uint8 pixels; `to_device` puts them on the devices as uint8 and converts them
there (`transforms.to_model_input`, the one definition of ToTensor + Normalize).

The epochs of a training phase are one grain ``MapDataset`` of this host's batches, epoch after
epoch (`epochs`; `batches` is one epoch), read by grain's thread prefetch (``ReadOptions``) in
this process or by ``mp_prefetch`` worker processes, which take whole batches round-robin and
interleave them back in order: the batches do not depend on the number of workers, and the
workers start once per phase, not once per epoch. Resuming mid-epoch is ``start=(epoch,
batch)``: for a MapDataset, grain's iterator state is the next element's index, which the
trainer's checkpoint already records as the epoch and batch position.
"""

from __future__ import annotations

import os
import queue
import threading
from typing import Any, Iterator, NamedTuple, Optional, Sequence

import numpy as np

from cljax.data import transforms


class Batch(NamedTuple):
  images: Any          # host: [B, H, W, 3] uint8 pixels (or [B, D] float32 features); devices: float32
  labels: Any          # [B] int32 (0 in padding)
  mask: Any            # [B] bool, False in padding
  # [B] int8 row of transforms.MEANS/STDS per image, None once converted (and for features).
  norm: Any = None


def threads() -> int:
  """Decode threads of an in-process pipeline (data_workers=0)."""
  return max(2, min(8, os.cpu_count() or 2))


def epoch_order(indices: np.ndarray, seed: Sequence[int], shuffle: bool) -> np.ndarray:
  indices = np.asarray(indices)
  if not shuffle:
    return indices
  return indices[np.random.default_rng(list(seed)).permutation(len(indices))]


def num_batches(n: int, batch_size: int) -> int:
  return -(-n // batch_size)


class _Example:
  """(epoch k, position in the epoch, dataset index; -1 = padding) -> (uint8 [S, S, 3], label,
  mask, norm).

  A picklable callable (grain sends it to worker processes, which decode the images: a JPEG
  dataset's ``image(i)`` reads and decodes the file there). The draws of position p in epoch k
  come from ``default_rng(list(seeds[k]) + [p])``: the same in any thread or process."""

  def __init__(self, dataset, image_size: int, train: bool, seeds: Sequence[Sequence[int]]):
    self.dataset, self.image_size, self.train = dataset, image_size, train
    self.seeds = [[int(s) for s in seed] for seed in seeds]
    self._transforms = {}

  def __getstate__(self):
    return dict(self.__dict__, _transforms={})

  def __call__(self, record):
    k, position, i = int(record[0]), int(record[1]), int(record[2])
    if i < 0:
      return (np.zeros((self.image_size, self.image_size, 3), np.uint8), np.int32(0), False,
              np.int8(0))
    family = self.dataset.family(i)
    if family not in self._transforms:
      self._transforms[family] = transforms.make(family, self.train, self.image_size)
    rng = np.random.default_rng(self.seeds[k] + [position])
    image = self._transforms[family](self.dataset.image(i), rng)
    return (image, np.int32(self.dataset.labels[i]), True, np.int8(transforms.normalisation(family)))


class _EpochRecords:
  """The records (epoch k, position, dataset index) of this host's rows of every batch of
  epochs start[0].. len(seeds) - 1 (epoch k shuffled by seeds[k]), from batch start[1] of the
  first; at most ``max_batches`` batches an epoch. A lazy sequence (grain's source): an epoch's
  order is computed where it is read, once per epoch and process, so a long phase is not
  materialised, nor pickled to each worker. grain's threads read it concurrently, also across
  an epoch's end: the cache of the last two epochs is under a lock."""

  def __init__(self, indices, batch_size: int, seeds, shuffle: bool, start=(0, 0),
               rows: Optional[tuple] = None, max_batches: Optional[int] = None):
    self.indices, self.batch_size, self.seeds, self.shuffle = np.asarray(indices), batch_size, seeds, shuffle
    self.rows = rows
    self.width = (rows or (0, batch_size))[1] - (rows or (0, batch_size))[0]
    self.n_batches = num_batches(len(self.indices), batch_size)
    if max_batches is not None:
      self.n_batches = min(self.n_batches, max_batches)
    self.first_epoch, self.first_batch = start
    # rows of the first (resumed) epoch, and of every later one
    self.first_rows = max(self.n_batches - self.first_batch, 0) * self.width
    self.epoch_rows = self.n_batches * self.width
    later = max(len(seeds) - self.first_epoch - 1, 0) * self.epoch_rows
    self.length = self.first_rows + later if self.first_epoch < len(seeds) else 0
    self._lock, self._cache = threading.Lock(), {}

  def __getstate__(self):
    return {k: v for k, v in self.__dict__.items() if k not in ('_lock', '_cache')}

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._lock, self._cache = threading.Lock(), {}

  def __len__(self) -> int:
    return self.length

  def _epoch(self, k: int) -> np.ndarray:
    with self._lock:
      records = self._cache.get(k)
      if records is None:
        start = self.first_batch if k == self.first_epoch else 0
        order = epoch_order(self.indices, self.seeds[k], self.shuffle)
        records = self._cache[k] = host_records(order, self.batch_size, start, self.rows, self.n_batches)
        while len(self._cache) > 2:
          del self._cache[min(self._cache)]
      return records

  def __getitem__(self, i: int) -> np.ndarray:
    if not 0 <= i < self.length:
      raise IndexError(i)
    if i < self.first_rows:
      k, offset = self.first_epoch, i
    else:
      k = self.first_epoch + 1 + (i - self.first_rows) // self.epoch_rows
      offset = (i - self.first_rows) % self.epoch_rows
    position, index = self._epoch(k)[offset]
    return np.array([k, position, index], np.int64)


def host_records(order: np.ndarray, batch_size: int, start_batch: int = 0,
                 rows: Optional[tuple] = None, end_batch: Optional[int] = None) -> np.ndarray:
  """[n_batches * (end - start), 2] int64 (position in the epoch, dataset index) of this host's
  rows of every global batch from ``start_batch`` up to ``end_batch`` (default: the epoch's
  last), batch after batch; rows past the epoch's end are padding (index -1)."""
  start, end = rows or (0, batch_size)
  last = num_batches(len(order), batch_size) if end_batch is None else end_batch
  b = np.arange(start_batch, last)
  positions = (b[:, None] * batch_size + np.arange(start, end)[None, :]).reshape(-1)
  valid = positions < len(order)
  index = np.full(len(positions), -1, np.int64)
  index[valid] = np.asarray(order, np.int64)[positions[valid]]
  return np.stack([positions, index], axis=1).astype(np.int64)


def epochs_dataset(dataset, indices, batch_size: int, image_size: int, train: bool,
                   seeds: Sequence[Sequence[int]], shuffle: bool = False, start=(0, 0),
                   rows: Optional[tuple] = None, max_batches: Optional[int] = None):
  """The epochs as one grain MapDataset whose elements are this host's shares of the global
  batches, epoch after epoch, from batch start[1] of epoch start[0]: tuples (images uint8 [R, S,
  S, 3], labels int32 [R], mask bool [R], norm int8 [R]), R = end - start of ``rows`` (default:
  the whole batch). Epoch k's order and draws are keyed by seeds[k]; ``max_batches`` cuts every
  epoch (a dry run)."""
  import grain  # pylint: disable=g-import-not-at-top
  records = _EpochRecords(indices, batch_size, [tuple(s) for s in seeds], shuffle, start, rows,
                          max_batches)
  return (grain.MapDataset.source(records)
          .map(_Example(dataset, image_size, train, seeds))
          .batch(records.width))


def batch_dataset(dataset, indices, batch_size: int, image_size: int, train: bool,
                  seed: Sequence[int] = (0,), shuffle: bool = False, start_batch: int = 0,
                  rows: Optional[tuple] = None):
  """One epoch (`epochs_dataset` of one seed): element b is this host's share of global batch
  start_batch + b."""
  return epochs_dataset(dataset, indices, batch_size, image_size, train, [seed], shuffle,
                        (0, start_batch), rows)


def loader(ds, workers: int = 0):
  """A grain IterDataset reading the MapDataset ``ds``: threads of this process (workers=0) or
  ``workers`` worker processes (grain's mp_prefetch; they take elements i, i + workers, ...,
  and the iterator interleaves them back in order)."""
  import grain  # pylint: disable=g-import-not-at-top
  if workers < 0:
    raise ValueError(f'workers must be >= 0, got {workers}')
  if workers == 0:
    n = threads()
    return ds.to_iter_dataset(grain.ReadOptions(num_threads=n, prefetch_buffer_size=n))
  from absl import flags  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():
    # grain 0.2's mp_prefetch reads an absl flag of its own, which fails ("before flags were
    # parsed") outside an absl app (a notebook, pytest, a plain script): take the defaults.
    flags.FLAGS.mark_as_parsed()
  # One thread per worker: the workers are the parallelism (as torch's DataLoader workers).
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=1))
  return it.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=2))


def epochs(dataset, indices, batch_size: int, image_size: int, train: bool,
           seeds: Sequence[Sequence[int]], shuffle: bool = False, start=(0, 0),
           rows: Optional[tuple] = None, workers: int = 0,
           max_batches: Optional[int] = None) -> Iterator[Batch]:
  """The batches of dataset[indices] in every epoch of ``seeds`` (seeds[k] keys epoch k's order
  and augmentation draws), epoch after epoch, from batch start[1] of epoch start[0]: the
  concatenation of `batches` of each seed, read by one loader (its workers start once).

  ``rows=(start, end)`` yields only those rows of every global batch: on several hosts each
  decodes its own share (`cljax.parallel.host_rows`). ``workers``: config.data_workers (0 =
  threads in this process, N > 0 = N grain worker processes, stopped at the iterator's end or
  when it is closed). ``max_batches`` cuts every epoch (a dry run)."""
  ds = epochs_dataset(dataset, indices, batch_size, image_size, train, seeds, shuffle, start,
                      rows, max_batches)
  if len(ds) == 0:
    return
  it = iter(loader(ds, workers))
  try:
    for images, labels, mask, norm in it:
      if workers:   # out of grain's shared memory: its blocks are freed now, not when a caller
        images = np.array(images)   # that keeps the batch lets go of it (a memcpy per batch)
      yield Batch(images, np.asarray(labels), np.asarray(mask), np.asarray(norm))
  finally:
    close = getattr(it, 'close', None)
    if close is not None:    # mp_prefetch: stop the worker processes now, not at GC
      close()


def batches(dataset, indices, batch_size: int, image_size: int, train: bool,
            seed: Sequence[int] = (0,), shuffle: bool = False, start_batch: int = 0,
            rows: Optional[tuple] = None, workers: int = 0) -> Iterator[Batch]:
  """The batches of one epoch of dataset[indices] (uint8 images, ``norm`` set); ``seed`` keys
  the order and the augmentation draws; ``start_batch`` skips ahead without decoding (resuming
  mid-epoch). ``rows`` and ``workers`` as in `epochs`."""
  return epochs(dataset, indices, batch_size, image_size, train, [seed], shuffle, (0, start_batch),
                rows, workers)


def host_input(batch: Batch) -> Batch:
  """The batch with float32 model input on the host (numpy; e.g. for a notebook or the torch
  side); a batch of features or already converted is returned as it is."""
  if batch.norm is None:
    return batch
  return Batch(transforms.to_model_input(batch.images, batch.norm), batch.labels, batch.mask)


def feature_batches(features: np.ndarray, labels: np.ndarray, batch_size: int,
                    seed: Sequence[int] = (0,), shuffle: bool = False, start_batch: int = 0,
                    rows: Optional[tuple] = None) -> Iterator[Batch]:
  """`batches` over precomputed features [n, D] (in ``images``, ``norm`` None: the devices use
  them as they are): the same order for the same seed (the permutation of positions that
  `epoch_order` applies to a task's indices), padding and mask."""
  order = epoch_order(np.arange(len(features)), seed, shuffle)
  size = (rows or (0, batch_size))[1] - (rows or (0, batch_size))[0]
  records = host_records(order, batch_size, start_batch, rows).reshape(-1, size, 2)
  for chunk in records[..., 1]:
    real = chunk >= 0
    values = np.zeros((size,) + features.shape[1:], features.dtype)
    values[real] = features[chunk[real]]
    out_labels = np.zeros(size, np.int32)
    out_labels[real] = labels[chunk[real]]
    yield Batch(values, out_labels, real)


_CONVERT = None


def _convert(images, norm):
  """The jitted `transforms.to_model_input` on the devices (output sharded as the input)."""
  global _CONVERT
  if _CONVERT is None:
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    _CONVERT = jax.jit(lambda x, n: transforms.to_model_input(x, n, jnp))
  return _CONVERT(images, norm)


def to_device(batch: Batch, sharding) -> Batch:
  """A global batch from this host's rows (see `cljax.parallel.put`): uint8 pixels cross to the
  devices and become the float32 model input there; features cross as they are."""
  from cljax import parallel  # pylint: disable=g-import-not-at-top
  images, labels, mask = (parallel.put(x, sharding) for x in batch[:3])
  if batch.norm is not None:
    images = _convert(images, parallel.put(batch.norm, sharding))
  return Batch(images, labels, mask)


def prefetch(iterator: Iterator[Batch], sharding, size: int = 2) -> Iterator[Batch]:
  """Decode/transform in a background thread and put batches on the devices ahead of use."""
  return in_background(iterator, lambda batch: to_device(batch, sharding), size)


JOIN_TIMEOUT_S = 60.0   # how long a stopped consumer waits for in_background's thread


def in_background(iterator: Iterator[Batch], convert, size: int = 2) -> Iterator[Any]:
  """convert(batch) for each batch, computed by a background thread up to ``size`` ahead; an
  error in the thread is raised in the consumer. A consumer that stops early (closes this
  generator, or drops it) stops the thread, which closes ``iterator`` (its worker processes)."""
  q: queue.Queue = queue.Queue(maxsize=size)
  sentinel = object()
  error = []
  stop = threading.Event()

  def put(item) -> bool:
    """Queue item unless the consumer has stopped (then False)."""
    while not stop.is_set():
      try:
        q.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def producer():
    try:
      for batch in iterator:
        if not put(convert(batch)):
          break
    except BaseException as e:  # surfaced in the consumer
      error.append(e)
    finally:
      close = getattr(iterator, 'close', None)
      if close is not None:
        close()
      put(sentinel)

  thread = threading.Thread(target=producer, daemon=True)
  thread.start()
  try:
    while True:
      item = q.get()
      if item is sentinel:
        if error:
          raise error[0]
        return
      yield item
  finally:
    stop.set()
    # Wait for the producer to leave its batch (and close `iterator`): a thread still inside
    # jaxlib or grain when the interpreter finalizes aborts the process ("FATAL: exception not
    # rethrown"), e.g. after an error ends a run. Bounded: one batch and the close.
    if thread is not threading.current_thread():
      thread.join(timeout=JOIN_TIMEOUT_S)
