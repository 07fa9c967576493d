"""What a continual-learning method is for the trainer: a few pure functions and some flags.

The trainer never names a method; it calls these. ``params`` are the method's trainable groups
(``prompts``, ``classifier``); ``backbone`` is the frozen ViT's params; ``t`` is the task index
(a traced int32 inside jitted steps, so one compiled step serves every task).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Optional

import jax
import jax.numpy as jnp

from cljax.models.assembly import PromptedViTSpec

Array = Any


@dataclasses.dataclass(frozen=True)
class Method:
  name: str
  model: PromptedViTSpec
  # init(rng) -> params
  init: Callable
  # begin_task(params, t: int) -> params              (host side, between tasks)
  begin_task: Callable
  # lr_multipliers(params, t: int) -> tree of floats  (1 = the stage's lr, 0 = frozen)
  lr_multipliers: Callable
  # loss(params, backbone, images, labels, mask, t, context) -> (loss, metrics)
  loss: Callable
  # end_task(params, t: int) -> params
  end_task: Callable
  # features(params, backbone, images, t) -> pre_logits for class statistics
  features: Callable
  # predict(params, backbone, images, prompt_ids, mask) -> (logits [B, C], used prompt ids [B])
  predict: Callable
  uses_task_identity: bool = False     # HiDe/NoRGa: stage-1 model predicts the prompt at test
  uses_statistics: bool = False        # class statistics + Gaussian-replay alignment of the head
  uses_means_regulariser: bool = False # the contrastive term needs the stored class means
  alignment_samples_per_class: int = 0  # n_pc of the prompt-stage alignment (0: batch size)


def cross_entropy(logits, labels, mask):
  """Mean CE over the real (mask True) examples; logits may hold -inf for masked classes."""
  logp = jax.nn.log_softmax(logits, axis=-1)
  nll = -jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]
  return jnp.sum(jnp.where(mask, nll, 0.0)) / jnp.maximum(mask.sum(), 1)


def mask_logits(logits, class_mask):
  """Set the logits of classes outside class_mask [C] to -inf (the references' index_fill)."""
  return jnp.where(class_mask[None, :], logits, -jnp.inf)
