"""The run's batch streams: a task's training or test images, this host's rows of each global
batch, placed on the mesh (`cljax.data.pipeline`), and cut to config.dry_run_steps in a dry run.
``exp`` is the run's `cljax.continual.trainer.Experiment`.
"""

from __future__ import annotations

from cljax import parallel
from cljax.data import pipeline


def limit(exp, iterator, start_batch: int = 0):
  """The first config.dry_run_steps batches in a dry run (counting from start_batch), else all."""
  if exp.config.dry_run:
    return (b for _, b in zip(range(exp.config.dry_run_steps - start_batch), iterator))
  return iterator


def placed(exp, iterator, start_batch: int = 0):
  """``iterator``'s batches, cut for a dry run, prefetched onto the mesh."""
  return pipeline.prefetch(limit(exp, iterator, start_batch), exp.data_sharding)


def _images(exp, dataset, indices, batch_size: int, train_transform: bool, seeds, shuffle: bool,
            start=(0, 0)):
  """`pipeline.epochs` of this host's rows, each epoch cut to config.dry_run_steps in a dry run,
  prefetched onto the mesh."""
  c = exp.config
  return pipeline.prefetch(pipeline.epochs(
      dataset, indices, batch_size, c.backbone.image_size, train=train_transform, seeds=seeds,
      shuffle=shuffle, start=start, rows=parallel.host_rows(batch_size, exp.mesh),
      workers=c.data_workers, max_batches=c.dry_run_steps if c.dry_run else None),
      exp.data_sharding)


def batches(exp, indices, train: bool, seed, shuffle: bool, batch_size: int):
  """Batches of ``indices`` of the training (train transform) or test set, at ``batch_size``."""
  return _images(exp, exp.data.train if train else exp.data.test, indices, batch_size, train, [seed],
                 shuffle)


def train_epochs(exp, indices, seeds, start=(0, 0)):
  """A training phase's batches (train transform, shuffled), every epoch of ``seeds`` (one seed
  an epoch) back to back, placed on the mesh, from batch start[1] of epoch start[0] (a resume):
  one loader for the phase, so config.data_workers' processes start once, and the next epoch's
  first batches are decoded while this one ends. Each epoch is cut to config.dry_run_steps in a
  dry run. The caller takes `pipeline.num_batches` (or the dry-run count) an epoch, and closes
  the stream if it stops early."""
  return _images(exp, exp.data.train, indices, exp.config.batch_size, True, seeds, True, start)


def train_batches(exp, indices, train_transform: bool, seed, shuffle, start_batch: int = 0):
  """Training images (train transform) or training images with the test transform (stats);
  ``start_batch`` resumes an epoch (its order is a function of the seed)."""
  return _images(exp, exp.data.train, indices, exp.config.batch_size, train_transform, [seed],
                 shuffle, (0, start_batch))
