"""SMoPE: one shared prompt as sparse prompt experts (seed paper 002; ALGORITHMS.md 5).

In each prompted layer (0-5) and head, E = L/2 experts, each a key and a value vector in head
space. An example's score for expert j is its mean query (over all tokens) times the key (no
1/sqrt(d) scale); the top-K experts per example and head join the attention, every query token
using the same expert logit (score / sqrt(d)). The model layer (`SparseExperts`) does that;
this module adds what makes it continual:

* adaptive noise: in training, experts used frequently in earlier tasks have eps times the score
  range subtracted before the top-K, pushing new tasks towards other experts; at test,
  never-used experts get 2 x the range subtracted (out of the top-K);
* usage bookkeeping: after each task, a pass over its training data counts how often each
  expert is in the (raw-score) top-K; at the start of the next task the experts used at least
  as often as the average used expert become "frequently used" (never reset);
* losses: the task-masked CE, a router loss (CE towards the selected experts, with a margin of
  eps x range for the others), and a prototype loss that keeps the frequently used experts'
  old keys (a snapshot taken at the start of the task) close to the current ones;
* task 0 starts with a dense warm-up (every expert, CE only, half the epochs, own optimiser).

Usage counts are method state: cljax keeps them in its checkpoints. The references' reported
numbers come from a fresh learner that reloads only the weights, so its final evaluation sees
zero counts and excludes no expert (quirk 11.9); ``prompt.smope_eval_counts='reference'``
(default) evaluates that way, ``'saved'`` with the counts.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from cljax.methods.base import Method, Phase, accuracy, cross_entropy, mask_logits
from cljax.models.assembly import PromptedViTSpec
from cljax.models.prefix import SparseExperts


def router_loss(aux, eps: float, mask):
  """sum over layers, heads and k of CE_batchmean(r + (1 - 1_S) eps range, S_k)."""
  r, selected, score_range = aux['scores'], aux['selected'], aux['range']    # [B,H,E], [B,H,K], [B,H,1]
  chosen = jnp.zeros_like(r, bool).at[
      jnp.arange(r.shape[0])[:, None, None], jnp.arange(r.shape[1])[None, :, None], selected].set(True)
  logits = (r + jnp.where(chosen, 0.0, eps) * score_range).astype(jnp.float32)   # fp32 under bf16
  logp = jax.nn.log_softmax(logits, axis=-1)
  nll = -jnp.take_along_axis(logp, selected, axis=-1)                        # [B, H, K]
  per_example = nll.sum(axis=(1, 2))
  return jnp.sum(jnp.where(mask, per_example, 0.0)) / jnp.maximum(mask.sum(), 1)


def prototype_loss(old_keys, keys, frequent, top_k: int):
  """For each head: over the frequently used experts u, sum_k CE_mean(Ko[u] . Kc^T, top-k of
  Ko[u] . Ko^T). old_keys/keys [E, H, d], frequent [H, E]. An empty set adds 0 (11.10)."""
  ko, kc = jnp.swapaxes(old_keys, 0, 1), jnp.swapaxes(keys, 0, 1)             # [H, E, d]
  old_logits = jnp.einsum('hud,hed->hue', ko, ko)
  _, targets = jax.lax.top_k(jax.lax.stop_gradient(old_logits), top_k)      # [H, E, K]
  logp = jax.nn.log_softmax(jnp.einsum('hud,hed->hue', jax.lax.stop_gradient(ko), kc), axis=-1)
  nll = -jnp.take_along_axis(logp, targets, axis=-1).sum(-1)               # [H, E]
  count = frequent.sum(-1)
  per_head = jnp.sum(jnp.where(frequent, nll, 0.0), -1) / jnp.maximum(count, 1)
  return jnp.sum(jnp.where(count > 0, per_head, 0.0))


def build(config, vit_cfg, num_classes: int, num_tasks: int) -> Method:
  p = config.prompt
  layers = tuple(int(l) for l in p.layers)
  experts = int(p.length) // 2
  top_k, eps = int(p.experts_top_k), float(p.noise_eps)
  mu_router, mu_old = float(p.mu_router), float(p.mu_router_old)
  heads, head_dim = vit_cfg.num_heads, vit_cfg.head_dim
  prompt_scale = float(p.prompt_lr_scale)
  eval_with_counts = p.smope_eval_counts == 'saved'   # only the reported evaluation differs
  model = PromptedViTSpec(vit_cfg, num_classes, None, (), fc_norm=not vit_cfg.final_norm,
                          head_init='torch_default', dtype=jnp.dtype(config.dtype), attention=config.attention)
  shape = (len(layers), experts, heads, head_dim)

  def init(rng):
    params = model.init_trainable(rng)
    k1, k2 = jax.random.split(jax.random.fold_in(rng, 5))
    # torch's uniform_() default: U(0, 1)
    params['prompts'] = {'experts': {'keys': jax.random.uniform(k1, shape, jnp.float32),
                                     'values': jax.random.uniform(k2, shape, jnp.float32)}}
    return params

  def init_state():
    return {'freq': np.zeros((len(layers), heads, experts), np.int32),
            'frequent': np.zeros((len(layers), heads, experts), bool),
            'old_keys': np.zeros(shape, np.float32),
            'task': np.array(0, np.int32)}

  def begin_task(params, state, t):
    state = dict(state, task=jnp.asarray(t, jnp.int32))
    if t == 0:
      return params, state
    # process_task_count: snapshot the keys, mark experts used >= the mean used expert.
    freq = jnp.asarray(state['freq']).astype(jnp.float32)
    used = (freq > 0).sum(-1, keepdims=True)
    mean_used = freq.sum(-1, keepdims=True) / jnp.maximum(used, 1)
    frequent = jnp.asarray(state['frequent']) | (freq >= mean_used)
    # A copy: the training step donates the params' buffers.
    state.update(frequent=frequent, old_keys=jnp.array(params['prompts']['experts']['keys'], copy=True))
    return params, state

  def lr_multipliers(params, t):
    return {'prompts': jax.tree.map(lambda _: prompt_scale, params['prompts']),
            'classifier': jax.tree.map(lambda _: 1.0, params['classifier'])}

  def experts_for(params, state, train: bool, dense: bool, counts: bool = True):
    keys, values = params['prompts']['experts']['keys'], params['prompts']['experts']['values']
    out = {}
    for j, l in enumerate(layers):
      if dense:
        out[l] = SparseExperts(keys[j], values[j], top_k=-1)
        continue
      if train:
        noise = jnp.where(state['frequent'][j], eps, 0.0)
      elif counts:
        noise = jnp.where(state['freq'][j] == 0, 2.0, 0.0)
      else:   # the references' final evaluation: all counts 0, every expert offset alike
        noise = jnp.full((heads, experts), 2.0)
      out[l] = SparseExperts(keys[j], values[j], noise=noise, top_k=top_k)
    return out

  def forward(params, state, backbone, images, train: bool, dense: bool = False, counts: bool = True):
    pre, aux = model.backbone.apply({'params': backbone}, images,
                                    prefixes=experts_for(params, state, train, dense, counts))
    return pre, model.logits({'backbone': backbone, **params}, pre), aux['router']

  def train_forward(params, state, backbone, images, mask, t, dense=False):
    """The noisy training forward: frequently used experts' scores lowered by eps x range
    before the top-K (dense: every expert); aux = {'router': per layer scores, selection}."""
    _, logits, router = forward(params, state, backbone, images, train=True, dense=dense)
    return logits, {'router': router}

  def loss(params, state, backbone, images, labels, mask, t, context, dense=False):
    logits, router = train_forward(params, state, backbone, images, mask, t, dense)
    router = router['router']
    logits = mask_logits(logits, context['task_mask'])
    ce = cross_entropy(logits, labels, mask)
    metrics = {'ce': ce, 'accuracy': accuracy(logits, labels, mask)}
    total = ce
    if not dense and mu_router > 0:
      r = sum(router_loss(router[l], eps, mask) for l in layers)
      total, metrics['router'] = total + mu_router * r, r
    if not dense and mu_old > 0:
      keys = params['prompts']['experts']['keys']
      proto = sum(prototype_loss(state['old_keys'][j], keys[j], state['frequent'][j], top_k)
                  for j in range(len(layers)))
      proto = jnp.where(t > 0, proto, 0.0)
      total, metrics['prototype'] = total + mu_old * proto, proto
    return total, metrics

  def phases(t, epochs):
    if t == 0:   # dense warm-up: half the epochs, every expert, CE only
      return [Phase('dense', int(0.5 * epochs), (('dense', True),)), Phase('train', epochs)]
    return [Phase('train', epochs)]

  def count(params, state, backbone, images, mask, freq):
    # The references update the counts batch by batch, and the forward reads them.
    _, _, router = forward(params, dict(state, freq=freq), backbone, images, train=False)
    full = mask.all()
    for j, l in enumerate(layers):
      _, idx = jax.lax.top_k(router[l]['scores'], top_k)                  # [B, H, K]
      hits = jax.nn.one_hot(idx, experts, dtype=jnp.int32).sum(axis=(0, 2))   # [H, E]
      freq = freq.at[j].add(jnp.where(full, hits, 0))
    return freq

  def after_training(params, state, t, run_pass):
    """Count, over the task's training data, how often each expert is in an example's raw top-K
    (full batches only: the references' loader drops the last partial one). One `count` for
    every task, so the pass compiles once per run."""
    freq = run_pass(count, jnp.asarray(state['freq']), params, state)
    return dict(state, freq=freq)

  def features(params, state, backbone, images, t, mask):
    # Statistics are taken inside training, where the references' learner has its counts.
    return forward(params, state, backbone, images, train=False)[0]

  def predict(params, state, backbone, images, prompt_ids, mask):
    logits = forward(params, state, backbone, images, train=False, counts=eval_with_counts)[1]
    return logits, prompt_ids

  return Method('smope', model, init, lr_multipliers, loss, features, predict, init_state=init_state,
                begin_task=begin_task, phases=phases, after_training=after_training,
                uses_statistics=True, statistics_train_transform=True,
                alignment_samples_per_class=int(config.batch_size * p.ca_samples_ratio),
                mask_test_logits=True, train_forward=train_forward, metric_definition='smope')
