"""Arguments of the trainer's jitted steps at a given batch, without data: for cost analysis
(shapes only) and for timing (arrays of those shapes). One place, so that the compute report and
the performance benchmark lower and run exactly the steps `Experiment` builds.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from cljax.continual import steps as steps_lib
from cljax.continual.alignment import ClassStats


def _shape(x):
  return jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype)


def _images(exp, batch: int, concrete: bool, seed: int):
  size = exp.vit_cfg.image_size
  if concrete:
    return jax.random.uniform(jax.random.PRNGKey(seed + 1), (batch, size, size, 3), jnp.float32)
  return jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)


def train_args(exp, stage, batch: int, t: int = 1, concrete: bool = False, seed: int = 0):
  """(args, flags) of stage's train step at task t: params, optimizer state, method state,
  backbone, images, labels, mask, t, context, lr, lr_tree. Abstract unless concrete."""
  method = stage.method
  steps = exp.stage_steps(stage)
  images = _images(exp, batch, concrete, seed)
  if concrete:
    params = jax.jit(method.init)(jax.random.PRNGKey(seed))
    state = jax.tree.map(jnp.asarray, method.init_state())
    opt = steps['tx'].init(params)
    labels = jnp.asarray(np.arange(batch) % exp.num_classes, jnp.int32)
  else:
    params = jax.eval_shape(method.init, jax.random.PRNGKey(0))
    state = jax.tree.map(_shape, method.init_state())
    opt = jax.eval_shape(steps['tx'].init, params)
    labels = jnp.zeros(batch, jnp.int32)
  lr_tree = jax.tree.map(jnp.float32, method.lr_multipliers(params, t))
  stats = ClassStats.empty(exp.num_classes, exp.vit_cfg.embed_dim, stage.stats_method,
                           exp.config.statistics.n_centroids)
  means, valid = stats.means()
  # Every class is in the task and seen, and every mean is valid: the contrastive term pays
  # for its full width, as in a late task.
  context = {'task_mask': jnp.ones(exp.num_classes, bool), 'seen_mask': jnp.ones(exp.num_classes, bool),
             'means': jnp.asarray(means), 'means_valid': jnp.asarray(valid)}
  flags = method.training_phases(t, stage.cfg.epochs)[-1].flags
  if steps_lib.reuses_features(stage):
    # The step trains the head on features computed once (config.task_identity.reuse_features).
    images = (jax.random.normal(jax.random.PRNGKey(seed + 1), (batch, exp.vit_cfg.embed_dim)) if concrete
              else jax.ShapeDtypeStruct((batch, exp.vit_cfg.embed_dim), jnp.float32))
  args = (params, opt, state, exp.backbone, images, labels, jnp.ones(batch, bool), jnp.int32(t),
          context, jnp.float32(1e-3), lr_tree)
  return args, flags


def features_args(exp, stage, batch: int, t: int = 1, concrete: bool = False, seed: int = 0):
  """Args of stage's features step (class statistics): params, state, backbone, images, t, mask."""
  (params, _, state, backbone, _, _, mask, t_arr, _, _, _), _ = train_args(
      exp, stage, batch, t, concrete, seed)
  return (params, state, backbone, _images(exp, batch, concrete, seed), t_arr, mask)


def eval_args(exp, batch: int, concrete: bool = False, seed: int = 0):
  """Args of the prompt stage's evaluation step (`evaluation.eval_step(exp, 'prompt')`): the
  whole test-time path, the task-identity forward included where the method has one."""
  stage = exp.stages[-1]
  (params, _, state, backbone, _, labels, mask, _, _, _, _), _ = train_args(
      exp, stage, batch, 1, concrete, seed)
  images = _images(exp, batch, concrete, seed)
  tii = None
  if len(exp.stages) > 1:
    init = exp.stages[0].method.init
    tii = jax.jit(init)(jax.random.PRNGKey(seed + 2)) if concrete else jax.eval_shape(init, jax.random.PRNGKey(0))
  seen = jnp.ones(exp.num_classes, bool)
  class_to_task = jnp.asarray(np.arange(exp.num_classes) * exp.num_tasks // exp.num_classes, jnp.int32)
  return (params, state, tii, backbone, images, labels, mask, seen, class_to_task)
