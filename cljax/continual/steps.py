"""A stage's steps: the pure functions the trainer jits once per run, and what they read.

A stage (`StageSetup`) is the task-identity model's training (stage 1 of HiDe-Prompt and NoRGa)
or the method's own. Its steps are the training step, the classifier-alignment step, the
features of the class statistics and the prediction; the task index, masks and learning rates
are traced arguments, so no task compiles them again. Every step is traced under the run's
matmul precision (config.matmul_precision).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from cljax import config as config_lib
from cljax import optim
from cljax.continual import alignment
from cljax.methods import task_identity
from cljax.methods.base import cross_entropy, mask_logits


@dataclasses.dataclass
class StageSetup:
  """What differs between the task-identity stage and the method's stage."""
  name: str
  method: Any
  cfg: Any                    # config.task_identity or config.prompt
  lr_scale: float             # multiplies cfg.lr
  ca_lr: float                # alignment lr actually used
  ca_samples: int             # n_pc
  stats_method: str


def with_matmul_precision(fn, precision: str):
  """``fn`` traced under ``jax.default_matmul_precision(precision)``: every dot of a step
  jitted from it has that precision (config.matmul_precision)."""
  @functools.wraps(fn)
  def traced(*args, **kwargs):
    with jax.default_matmul_precision(precision):
      return fn(*args, **kwargs)
  return traced


def optimizer(cfg):
  """The optax transform of a stage config (config.task_identity or config.prompt)."""
  return optim.transform(cfg.optimizer, cfg.clip_grad, weight_decay=cfg.get('weight_decay', 0.0))


def train_step_fn(method, tx):
  """The pure training step of a method: (params, opt_state, method_state, backbone, images,
  labels, mask, t, context, lr, lr_tree, flags) -> (params, opt_state, metrics). The trainer jits
  it with buffer donation, `cljax.api` without."""
  def train_step(params, opt_state, method_state, backbone, images, labels, mask, t, context, lr,
                 lr_tree, flags=()):
    (loss, aux), grads = jax.value_and_grad(method.loss, has_aux=True)(
        params, method_state, backbone, images, labels, mask, t, context, **dict(flags))
    params, opt_state = optim.apply(tx, grads, opt_state, params, lr_tree, lr)
    return params, opt_state, {'loss': loss, **aux}
  return train_step


def alignment_step_fn(method, ca_tx):
  """The pure classifier-alignment step (ALGORITHMS.md 2.5): the CE of the head on sampled
  features x [n, D] with labels y [n], over the seen classes."""
  def ca_step(params, opt_state, x, y, seen, lr, lr_tree):
    def loss_fn(p):
      logits = mask_logits(method.model.logits(p, x), seen)
      return cross_entropy(logits, y, jnp.ones_like(y, bool))
    loss, grads = jax.value_and_grad(loss_fn)(params)
    params, opt_state = optim.apply(ca_tx, grads, opt_state, params, lr_tree, lr)
    return params, opt_state, loss
  return ca_step


def step_context(split, stats, t: int):
  """What a method's loss reads besides the batch: task t's and the seen classes' masks, and
  the stored class means."""
  means, valid = stats.means()
  return {'task_mask': jnp.asarray(split.task_mask(t)), 'seen_mask': jnp.asarray(split.seen_mask(t)),
          'means': jnp.asarray(means), 'means_valid': jnp.asarray(valid)}


def reuses_features(stage: StageSetup) -> bool:
  """Does the stage train its head on frozen features computed once per task
  (config.task_identity.reuse_features)?"""
  return bool(stage.cfg.get('reuse_features', False)) and stage.method.head_loss is not None


def stage_steps(exp, stage: StageSetup):
  """{'tx', 'ca_tx', 'train', 'ca', 'features', 'predict', 'sample', 'rows'}: the stage's
  optimizers and its jitted steps, built once per run (cached in ``exp.jitted``)."""
  if stage.name in exp.jitted:
    return exp.jitted[stage.name]
  method, cfg = stage.method, stage.cfg
  tx = optimizer(cfg)
  ca_tx = optim.transform(cfg.get('ca_optimizer', 'sgd'), 0.0,
                          weight_decay=cfg.get('ca_weight_decay', 0.0))
  if reuses_features(stage):   # the step's "images" are the frozen features
    on_features = lambda p, s, backbone, feats, *rest: method.head_loss(p, s, feats, *rest)
    method = dataclasses.replace(method, loss=on_features)
  exp.jitted[stage.name] = {
      'tx': tx, 'ca_tx': ca_tx,
      'train': exp.jit(train_step_fn(method, tx), donate_argnums=(0, 1), static_argnames=('flags',)),
      'ca': exp.jit(alignment_step_fn(method, ca_tx), donate_argnums=(0, 1)),
      'features': exp.jit(method.features),
      'predict': exp.jit(method.predict),
      'sample': exp.jit(alignment.sample, static_argnums=(2,)),
      # (x, y, rows) -> (x[rows], y[rows]): one dispatch per alignment step instead of two
      # eager gathers of device arrays (~2 ms each under cProfile in the demo).
      'rows': exp.jit(lambda x, y, rows: (x[rows], y[rows])),
  }
  return exp.jitted[stage.name]


def frozen_features(exp, stage: StageSetup):
  """The jitted (backbone, images) -> pooled features of a frozen-backbone stage (the
  task-identity model): what its head reads, whatever the head's params."""
  key = f'frozen_features/{stage.name}'
  if key not in exp.jitted:
    model = stage.method.model
    exp.jitted[key] = exp.jit(lambda backbone, images: model.features({'backbone': backbone}, images)[0])
  return exp.jitted[key]


def build_stages(c, method, vit_cfg, num_classes: int):
  """[StageSetup]: the task-identity model's stage, where the method has one (and
  config.task_identity.enabled), then the method's own ('prompt')."""
  stages = []
  if method.uses_task_identity and c.task_identity.enabled:
    tii = task_identity.build(c, vit_cfg, num_classes)
    scale = config_lib.lr_scale(c, 'task_identity')
    stages.append(StageSetup('task_identity', tii, c.task_identity, scale,
                             c.task_identity.ca_lr * scale, c.batch_size, c.statistics.method))
  stages.append(StageSetup('prompt', method, c.prompt, config_lib.lr_scale(c),
                           c.prompt.ca_lr, method.alignment_samples_per_class or c.batch_size,
                           c.statistics.method))
  return stages
