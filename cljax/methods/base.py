"""What a continual-learning method is for the trainer: a few pure functions and some flags.

The trainer never names a method; it calls these. ``params`` are the method's trainable groups
(``prompts``, ``classifier``); ``state`` is its non-trainable bookkeeping (SMoPE's expert usage
counts, snapshots of old keys; ``{}`` for most); ``backbone`` is the frozen ViT's params; ``t``
is the task index (a traced int32 inside jitted steps, so one compiled step serves every task).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp

from cljax.models.assembly import PromptedViTSpec

Array = Any


@dataclasses.dataclass(frozen=True)
class Phase:
  """A training phase of a task: its epochs and the static flags its loss receives.

  SMoPE trains task 0 first densely for half the epochs with its own optimizer; every other
  method has one phase per task."""
  name: str
  epochs: int
  flags: Tuple[Tuple[str, Any], ...] = ()


def _no_state():
  return {}


def _same(params, state, t):
  return params, state


@dataclasses.dataclass(frozen=True)
class Method:
  name: str
  model: PromptedViTSpec
  # init(rng) -> params
  init: Callable
  # lr_multipliers(params, t: int) -> tree of floats  (1 = the stage's lr, 0 = frozen)
  lr_multipliers: Callable
  # loss(params, state, backbone, images, labels, mask, t, context, **flags) -> (loss, metrics)
  loss: Callable
  # features(params, state, backbone, images, t, mask) -> pre_logits for class statistics
  features: Callable
  # predict(params, state, backbone, images, prompt_ids, mask) -> (logits [B, C], used ids [B] or [B, K])
  predict: Callable
  # init_state() -> non-trainable method state (a pytree of arrays)
  init_state: Callable = _no_state
  # begin_task(params, state, t: int) -> (params, state)   (host side, before training)
  begin_task: Callable = _same
  # end_task(params, state, t: int) -> (params, state)     (host side, after training)
  end_task: Callable = _same
  # phases(t: int, epochs: int) -> [Phase]
  phases: Optional[Callable] = None
  # after_training(params, state, t, run_pass) -> state; run_pass(fn, init) folds a jitted
  # fn(params, state, backbone, images, mask, carry) -> carry over the task's training batches.
  after_training: Optional[Callable] = None
  uses_task_identity: bool = False     # HiDe/NoRGa: stage-1 model predicts the prompt at test
  uses_statistics: bool = False        # class statistics + Gaussian-replay alignment of the head
  statistics_train_transform: bool = False   # SMoPE/CODA summarise train-transformed images
  alignment_samples_per_class: int = 0  # n_pc of the alignment (0: batch size)
  mask_test_logits: bool = False       # [S]-family evaluation: argmax among seen classes
  # With a batchwise vote at test (quirk 11.8): the same predict with each example's own choice,
  # so the per-example figure is reported beside the voted one (ALGORITHMS.md D1).
  predict_per_example: Optional[Callable] = None
  chooses_prompts: bool = False        # predict returns a task/pool id per example (scored as
                                       # task-identity accuracy; SMoPE, CODA use no such id)
  # Methods on a frozen backbone (the task-identity model): loss from precomputed features,
  # head_loss(params, state, features, labels, mask, t, context) -> (loss, metrics), so a stage
  # can train on features computed once (config.task_identity.reuse_features).
  head_loss: Optional[Callable] = None
  # The forward the loss differentiates, for parity scripts (`cljax.api.training_logits`):
  # train_forward(params, state, backbone, images, mask, t, **flags) -> (logits [B, C] before the
  # task mask, aux) with the training-time prompt choice (the task's entry, prompt momentum,
  # forced keyed entries, SMoPE's adaptive noise).
  train_forward: Optional[Callable] = None
  # The reference repository whose metric code the method's paper numbers come from
  # (`cljax.continual.metrics.DEFINITIONS`): hide ([N]/[H]) or smope ([S]: SMoPE, CODA-Prompt).
  metric_definition: str = 'hide'
  # > 0: predict's used ids index a pool of this many entries (L2P, DualPrompt, S-Prompt), whose
  # use per test task the run records (results.json prompt_usage, plots/prompt_usage.png).
  pool_size: int = 0

  def training_phases(self, t: int, epochs: int) -> Sequence[Phase]:
    return self.phases(t, epochs) if self.phases else [Phase('train', epochs)]


def cross_entropy(logits, labels, mask):
  """Mean CE over the real (mask True) examples; logits may hold -inf for masked classes.

  In float32 always: under bf16 compute (config.dtype) the logits arrive in bf16."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]
  return jnp.sum(jnp.where(mask, nll, 0.0)) / jnp.maximum(mask.sum(), 1)


def mask_logits(logits, class_mask):
  """Set the logits of classes outside class_mask [C] to -inf (the references' index_fill)."""
  return jnp.where(class_mask[None, :], logits, -jnp.inf)


def accuracy(logits, labels, mask):
  correct = (jnp.argmax(logits, -1) == labels) & mask
  return 100.0 * correct.sum() / jnp.maximum(mask.sum(), 1)


def l2_normalize(x, axis=-1, epsilon=1e-12):
  """x / max(||x||, sqrt(eps)) as the references' l2_normalize (rsqrt of clamped square sum)."""
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=axis, keepdims=True), epsilon))


def contrastive_regulariser(features, feature_mask, means, means_valid, temperature: float = 0.8):
  """HiDe/NoRGa's regulariser: with M = [stored means; batch features], mean_i CE(M M^T / T, i).

  Rows and columns of invalid means and padded examples are left out, which equals the
  references' loss over the real rows.
  """
  m = jnp.concatenate([means, features], 0)
  keep = jnp.concatenate([means_valid, feature_mask], 0)
  sim = (m @ m.T) / temperature
  sim = jnp.where(keep[None, :], sim, -jnp.inf)
  logp = jax.nn.log_softmax(sim, axis=-1)
  nll = -jnp.diagonal(logp)
  return jnp.sum(jnp.where(keep, nll, 0.0)) / jnp.maximum(keep.sum(), 1)
