"""Class statistics of a task (ALGORITHMS.md 2.4): the features of its training images, per
class, summarised as Gaussians (`cljax.continual.alignment.ClassStats`) for the contrastive
regulariser and for classifier alignment. With config.task_identity.reuse_features, stage 1's
frozen features are computed once per task and serve both its training and its statistics.
``exp`` is the run's `cljax.continual.trainer.Experiment`.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from cljax import parallel
from cljax.continual import alignment, interrupts, streams
from cljax.continual import steps as steps_lib
from cljax.continual.steps import StageSetup


def frozen_train_features(exp, stage: StageSetup, t: int):
  """(features [n, D], labels [n]) of task t's training images in index order, test transform,
  computed once per task: with reuse_features, what stage 1 trains on and summarises."""
  if exp.stage_features.get(stage.name, (None,))[0] != t:
    features = steps_lib.frozen_features(exp, stage)
    exp.stage_features[stage.name] = (t,) + train_features(exp,
        lambda batch: features(exp.backbone, batch.images), t, train_transform=False)
  return exp.stage_features[stage.name][1:]


def train_features(exp, features, t: int, train_transform: bool, per_class: bool = False):
  """(features [n, D] float32, labels [n]) on the host: ``features(batch)`` over task t's
  training images (the statistics pass: its own seed; shuffled only with the train transform,
  as the references' loaders), padding rows dropped.

  ``per_class``: one class at a time, its images shuffled, in batches of batch_size: the
  references' per-class loaders ([N] ``datasets.py`` split_single_class_dataset, RandomSampler;
  ``_compute_mean`` in both engines)."""
  groups = [(exp.split.tasks[t], (exp.config.seed, 9, t), train_transform)]
  if per_class:
    groups = [([k], (exp.config.seed, 9, t, int(k)), True) for k in exp.split.tasks[t]]
  feats, labels = [], []
  for classes, seed, shuffle in groups:
    for batch in streams.train_batches(exp, exp.data.train.indices_of(classes), train_transform, seed,
                                     shuffle=shuffle):
      interrupts.check()
      keep = parallel.to_host(batch.mask)
      feats.append(parallel.to_host(features(batch)).astype(np.float32)[keep])
      labels.append(parallel.to_host(batch.labels)[keep])
  return np.concatenate(feats), np.concatenate(labels)


def update_statistics(exp, stage: StageSetup, stage_state, t: int):
  """Class statistics of task t's classes from the stage's features (test transform, or the
  train transform for methods that summarise augmented images)."""
  c = exp.config
  steps = steps_lib.stage_steps(exp, stage)
  t_arr = jnp.asarray(t, jnp.int32)
  if steps_lib.reuses_features(stage):   # the very features stage 1 just trained on
    feats, labels = frozen_train_features(exp, stage, t)
  else:
    feats, labels = train_features(exp,
        lambda batch: steps['features'](stage_state['params'], stage_state['method_state'],
                                        exp.backbone, batch.images, t_arr, batch.mask),
        t, stage.method.statistics_train_transform,
        per_class=c.statistics.batches == 'per_class' and not stage.method.statistics_train_transform)
  classes = [k for k in exp.split.tasks[t] if (labels == k).any()]
  stats = alignment.update_statistics(stage_state['stats'], feats, labels, classes,
                                      c.statistics.n_centroids, c.seed)
  return {**stage_state, 'stats': stats}
