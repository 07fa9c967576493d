"""Stage 1 of HiDe-Prompt and NoRGa: the task-identity ("original") model (ALGORITHMS.md 2.1).

Frozen backbone + residual MLP mapping + linear head over all classes, trained task by task with
the task-masked CE, aligned by Gaussian replay of the frozen (pre-MLP) features; at test its
argmax among the seen classes names the task whose prompt stage 2 uses. It is a `Method` like
the others, so the trainer runs it with the same loop.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cljax.methods.base import Method, accuracy, cross_entropy, mask_logits
from cljax.models.assembly import PromptedViTSpec


def frozen_backbone_classifier(name: str, config, vit_cfg, num_classes: int, mlp_hidden,
                               **method_options) -> Method:
  """Frozen backbone (+ residual MLP mapping when mlp_hidden) + linear head over all classes,
  trained with the task-masked CE: the task-identity model, and without the MLP the head-only
  sequential baseline."""
  model = PromptedViTSpec(vit_cfg, num_classes, None, tuple(mlp_hidden),
                          fc_norm=not vit_cfg.final_norm, dtype=jnp.dtype(config.dtype),
                          attention=config.attention)

  def init(rng):
    return model.init_trainable(rng)

  def head_loss(params, state, pre, labels, mask, t, context):
    logits = mask_logits(model.logits(params, pre), context['task_mask'])
    ce = cross_entropy(logits, labels, mask)
    return ce, {'ce': ce, 'accuracy': accuracy(logits, labels, mask)}

  def loss(params, state, backbone, images, labels, mask, t, context):
    pre, _ = model.features({'backbone': backbone}, images)
    return head_loss(params, state, pre, labels, mask, t, context)

  def features(params, state, backbone, images, t, mask):
    return model.features({'backbone': backbone, **params}, images)[0]

  def predict(params, state, backbone, images, prompt_ids, mask):
    full = {'backbone': backbone, **params}
    return model.logits(full, model.features(full, images)[0]), prompt_ids

  def train_forward(params, state, backbone, images, mask, t):
    full = {'backbone': backbone, **params}
    pre = model.features(full, images)[0]
    return model.logits(full, pre), {'pre_logits': pre}

  return Method(name, model, init, lambda p, t: jax.tree.map(lambda _: 1.0, p), loss,
                features, predict, head_loss=head_loss, train_forward=train_forward, **method_options)


def build(config, vit_cfg, num_classes: int) -> Method:
  return frozen_backbone_classifier('task_identity', config, vit_cfg, num_classes,
                                    config.task_identity.mlp_hidden, uses_statistics=True,
                                    alignment_samples_per_class=config.batch_size)


def predict_task(logits, seen_mask, class_to_task):
  """Task ids from stage-1 logits: argmax among the seen classes -> that class's task."""
  return class_to_task[jnp.argmax(mask_logits(logits, seen_mask), -1)]
