"""HiDe-Prompt and NoRGa (prompt stage), and the head-only sequential baseline.

HiDe-Prompt and NoRGa share everything but the gate (ALGORITHMS.md 2.2-2.6): one prefix-pool
entry per task in the configured layers, trained with the task's own entry; the entry of the
previous task is copied in at the start of a task; "prompt momentum" mixes in the mean of the
earlier entries; the loss is the task-masked CE plus a contrastive term against the stored class
means; NoRGa's gate scalars are learned on task 0 only; at test each example uses the entry of
the task that the stage-1 model predicts. Stage 1 itself is `cljax.methods.task_identity`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cljax.methods.base import Method, accuracy, contrastive_regulariser, cross_entropy, mask_logits
from cljax.models.assembly import PromptedViTSpec
from cljax.models.prompts import PoolSpec


def momentum_pool(prompt, t, momentum: float):
  """The pool used in training: entry t replaced by (1-m) P_t + m sg(mean_{s<t} P_s) (t > 0)."""
  prompt = jnp.asarray(prompt)     # numpy pools (a loaded checkpoint) have no .at
  if momentum <= 0:
    return prompt
  pool_size = prompt.shape[2]
  earlier = (jnp.arange(pool_size) < t).astype(prompt.dtype)
  mean = jnp.einsum('p,lkpqhd->lkqhd', earlier, prompt) / jnp.maximum(t, 1)   # [L, 2, L_p, H, d]
  mean = jax.lax.stop_gradient(mean)
  mixed = (1 - momentum) * prompt[:, :, t] + momentum * mean
  mixed = jnp.where(t > 0, mixed, prompt[:, :, t])
  return prompt.at[:, :, t].set(mixed)


def batchwise_ids(ids, mask, pool_size: int):
  """Every example gets the batch's most frequent id (the references' batchwise_prompt; ties go
  to the smallest id here, torch.topk leaves them unspecified)."""
  counts = jnp.zeros(pool_size, jnp.int32).at[ids].add(mask.astype(jnp.int32))
  return jnp.full_like(ids, jnp.argmax(counts))


def build_prompted(config, vit_cfg, num_classes: int, num_tasks: int) -> Method:
  p = config.prompt
  pool = PoolSpec(layers=tuple(p.layers), pool_size=p.pool_size or num_tasks, length=p.length,
                  gate=p.gate, activation=p.activation, kv_layout=p.kv_layout,
                  prompt_key=p.prompt_key)
  model = PromptedViTSpec(vit_cfg, num_classes, pool, (), fc_norm=not vit_cfg.final_norm,
                          dtype=jnp.dtype(config.dtype), attention=config.attention)
  momentum, reg = float(p.momentum), float(p.reg)
  head_multiplier = 0.1 if p.larger_prompt_lr else 1.0
  batchwise = bool(p.batchwise_prompt)

  def init(rng):
    return model.init_trainable(rng)

  def begin_task(params, state, t):
    if t == 0:
      return params, state
    prompt = params['prompts']['e_prompt']['prompt']
    if t < prompt.shape[2]:   # the references' shared_prompt_pool: start from the last task's entry
      prompt = prompt.at[:, :, t].set(prompt[:, :, t - 1])
    return {**params, 'prompts': {'e_prompt': {**params['prompts']['e_prompt'], 'prompt': prompt}}}, state

  def lr_multipliers(params, t):
    e_prompt = {k: 1.0 for k in params['prompts']['e_prompt']}
    if 'act_scale' in e_prompt and t > 0:
      e_prompt['act_scale'] = 0.0      # NoRGa's tau, alpha: learned on task 0, then frozen
    return {'prompts': {'e_prompt': e_prompt},
            'classifier': jax.tree.map(lambda _: head_multiplier, params['classifier'])}

  def train_forward(params, state, backbone, images, mask, t):
    """Training-mode logits: every example uses task t's entry of the momentum-mixed pool
    (the references' prompt_mask and prompt_momentum); aux = {'pre_logits'}."""
    prompt = momentum_pool(params['prompts']['e_prompt']['prompt'], t, momentum)
    idx = jnp.full(images.shape[0], t, jnp.int32)
    full = {'backbone': backbone, **params}
    pre, _ = model.features(full, images, idx, prompt=prompt, num_valid=mask.sum())
    return model.logits(full, pre), {'pre_logits': pre}

  def loss(params, state, backbone, images, labels, mask, t, context):
    logits, aux = train_forward(params, state, backbone, images, mask, t)
    pre = aux['pre_logits']
    logits = mask_logits(logits, context['task_mask'])
    ce = cross_entropy(logits, labels, mask)
    total = ce
    metrics = {'ce': ce}
    if reg > 0:
      ctr = contrastive_regulariser(pre.astype(jnp.float32), mask, context['means'], context['means_valid'])
      total = total + reg * ctr
      metrics['regulariser'] = ctr
    metrics['accuracy'] = accuracy(logits, labels, mask)
    return total, metrics

  def end_task(params, state, t):
    if t == 0 or momentum <= 0:
      return params, state
    prompt = params['prompts']['e_prompt']['prompt']
    mixed = momentum_pool(prompt, t, momentum)   # overwrite the entry with its mixture
    return {**params, 'prompts': {'e_prompt': {**params['prompts']['e_prompt'], 'prompt': mixed}}}, state

  def features(params, state, backbone, images, t, mask):
    idx = jnp.full(images.shape[0], t, jnp.int32)
    pre, _ = model.features({'backbone': backbone, **params}, images, idx, num_valid=mask.sum())
    return pre

  def make_predict(vote: bool):
    def predict(params, state, backbone, images, prompt_ids, mask):
      if vote:
        prompt_ids = batchwise_ids(prompt_ids, mask, pool.pool_size)
      full = {'backbone': backbone, **params}
      pre, _ = model.features(full, images, prompt_ids, num_valid=mask.sum())
      return model.logits(full, pre), prompt_ids
    return predict

  return Method(config.method, model, init, lr_multipliers, loss, features, make_predict(batchwise),
                begin_task=begin_task, end_task=end_task, uses_task_identity=True,
                uses_statistics=True, chooses_prompts=True,
                predict_per_example=make_predict(False) if batchwise else None,
                alignment_samples_per_class=int(p.ca_samples_ratio * config.batch_size),
                train_forward=train_forward)


def build_sequential_head(config, vit_cfg, num_classes: int, num_tasks: int) -> Method:
  """A linear head on the frozen backbone, trained task after task with the task-masked CE and
  evaluated over all classes: the forgetting baseline of the demo (the task-identity model
  without its MLP)."""
  from cljax.methods.task_identity import frozen_backbone_classifier  # pylint: disable=g-import-not-at-top
  return frozen_backbone_classifier(config.method, config, vit_cfg, num_classes, ())
