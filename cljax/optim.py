"""Optimisers and learning-rate schedules with the references' semantics.

Schedules are per epoch and evaluated in Python (the lr is a traced argument of the jitted step,
so changing it never recompiles). As in the references, the scheduler is stepped *after* each
epoch with that epoch's index: epoch 0 runs at the base lr and epoch e >= 1 at f(e - 1).

Updates are built from optax's gradient transformations and scaled by a per-leaf learning rate
tree (parameter groups; 0 freezes a leaf): ``update = -lr_leaf * transform(grad)``. Gradients of
frozen leaves are zeroed *before* clipping, since the references' frozen parameters
(requires_grad False) are absent from clip_grad_norm_.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from cljax.errors import one_of


def epoch_lr(base: float, epoch: int, schedule: str, epochs: int, decay_epochs: float = 30,
             decay_rate: float = 0.1, min_lr: float = 1e-5) -> float:
  """The lr used during ``epoch`` (timm StepLR / CosineLRScheduler / constant)."""
  if epoch == 0 or schedule == 'constant':
    return base
  k = epoch - 1                 # the value the scheduler set after epoch k
  if schedule == 'step':
    return base * decay_rate ** math.floor(k / decay_epochs)
  if schedule == 'cosine':
    if k >= epochs:
      return min_lr
    return min_lr + 0.5 * (base - min_lr) * (1 + math.cos(math.pi * k / epochs))
  raise one_of('schedule', schedule, ('constant', 'step', 'cosine'))


def cosine_annealing_lr(base: float, epoch: int, t_max: int) -> float:
  """torch CosineAnnealingLR(T_max), eta_min 0, stepped after each epoch (alignment)."""
  return base * 0.5 * (1 + math.cos(math.pi * epoch / t_max))


def transform(name: str, clip: float = 0.0, momentum: float = 0.9) -> optax.GradientTransformation:
  """The direction of the update before the lr: clip -> Adam/SGD-momentum statistics."""
  parts = []
  if clip and clip > 0:
    parts.append(optax.clip_by_global_norm(clip))
  if name in ('adam', 'adamw'):     # weight decay is 0 in every reference config (quirk 11.3)
    parts.append(optax.scale_by_adam(b1=0.9, b2=0.999, eps=1e-8))
  elif name == 'sgd':
    parts.append(optax.trace(decay=momentum, nesterov=False))
  else:
    raise one_of('optimizer', name, ('adam', 'adamw', 'sgd'))
  return optax.chain(*parts)


def apply(tx: optax.GradientTransformation, grads, opt_state, params, lr_tree, lr_scale):
  """Zero frozen grads, transform, and step each leaf by -lr_leaf * lr_scale."""
  grads = jax.tree.map(lambda g, lr: jnp.where(lr > 0, g, jnp.zeros_like(g)), grads, lr_tree)
  updates, opt_state = tx.update(grads, opt_state, params)
  params = jax.tree.map(lambda p, u, lr: p - (lr * lr_scale) * u, params, updates, lr_tree)
  return params, opt_state
