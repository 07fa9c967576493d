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


def smope_cosine_lr(base: float, epoch: int, epochs: int) -> float:
  """[S]'s CosineSchedule (CUB): created at epoch 0 and stepped at the start of epochs >= 1, so
  epochs 0 and 1 run at base and epoch e >= 1 at base * cos(99 pi (e - 1) / (200 (K - 1)))."""
  if epoch == 0 or epochs <= 1:
    return base
  return base * math.cos(99 * math.pi * (epoch - 1) / (200 * (epochs - 1)))


def coswm_lr(base: float, iteration: int, total: int, freeze: int = 0, warmup: int = 0,
             final: float = 1e-6, start_warmup: float = 0.0, first: float = None) -> float:
  """[S]'s CosineSchedulerIter, stepped after every iteration: iteration 0 runs at the
  optimizer's own lr (``first``, default base), iteration i >= 1 at schedule[i - 1], where the
  schedule is ``freeze`` iterations at 1e-6, a linear warm-up, then a cosine from base to final
  over the rest of ``total`` iterations; past ``total``, final."""
  if iteration == 0:
    return base if first is None else first
  i = iteration - 1
  if i >= total:
    return final
  if i < freeze:
    return 1e-6
  if i < freeze + warmup:
    return start_warmup + (base - start_warmup) * (i - freeze) / max(warmup - 1, 1)
  k, n = i - freeze - warmup, total - freeze - warmup
  return final + 0.5 * (base - final) * (1 + math.cos(math.pi * k / n))


def cosine_annealing_lr(base: float, epoch: int, t_max: int) -> float:
  """torch CosineAnnealingLR(T_max), eta_min 0, stepped after each epoch (alignment)."""
  return base * 0.5 * (1 + math.cos(math.pi * epoch / t_max))


def transform(name: str, clip: float = 0.0, momentum: float = 0.9,
              weight_decay: float = 0.0) -> optax.GradientTransformation:
  """The direction of the update before the lr: clip -> Adam/SGD-momentum statistics.

  ``weight_decay`` (AdamW: decoupled, as torch.optim.AdamW; SGD: added to the gradient, as
  torch.optim.SGD). The references' HiDe-family configs end up with 0 (quirk 11.3)."""
  parts = []
  if clip and clip > 0:
    parts.append(optax.clip_by_global_norm(clip))
  if name == 'sgd' and weight_decay:
    parts.append(optax.add_decayed_weights(weight_decay))
  if name in ('adam', 'adamw'):
    parts.append(optax.scale_by_adam(b1=0.9, b2=0.999, eps=1e-8))
    if name == 'adamw' and weight_decay:
      parts.append(optax.add_decayed_weights(weight_decay))
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


SCHEDULES = ('constant', 'step', 'cosine', 'smope_cosine', 'coswm')


def schedule(cfg, base: float, epochs: int, steps_per_epoch: int, global_cfg=None):
  """iteration -> lr for a stage config (``cfg.schedule``; coswm reads cfg.iter_step,
  cfg.freeze_iters, cfg.warmup_epochs)."""
  kind = cfg.schedule
  g = global_cfg
  if kind in ('constant', 'step', 'cosine'):
    kw = dict(decay_epochs=g.decay_epochs, decay_rate=g.decay_rate, min_lr=g.min_lr) if g else {}
    return lambda it: epoch_lr(base, it // max(steps_per_epoch, 1), kind, epochs, **kw)
  if kind == 'smope_cosine':
    return lambda it: smope_cosine_lr(base, it // max(steps_per_epoch, 1), epochs)
  if kind == 'coswm':
    iter_step = cfg.get('iter_step', 0) or steps_per_epoch
    total = iter_step * epochs
    return lambda it: coswm_lr(base, it, total, cfg.get('freeze_iters', 0),
                               cfg.get('warmup_epochs', 0) * iter_step)
  raise one_of('schedule', kind, SCHEDULES)
