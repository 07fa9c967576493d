"""L2P, DualPrompt and S-Prompt as the MoE_PromptCL / HiDe-Prompt repositories run them
(ALGORITHMS.md 3).

One stage. A frozen copy of the pretrained ViT gives each image a query (its pooled feature);
the prompt pool has learnable keys; each example uses the top-k entries whose keys are most
cosine-similar to its query (``batchwise_prompt``: the batch's most frequent top-k instead;
in training DualPrompt and S-Prompt force the task's own entry). The loss is the task-masked CE
minus ``pull_coeff`` times the mean similarity of the chosen keys (the pull constraint).

* L2P: prompt *tuning*: the chosen entries' tokens are prepended before block 0.
* DualPrompt: G-prompt prefixes shared by all tasks in layers 0-1, E-prompt prefixes in 2-4.
* S-Prompt (the HiDe repositories' adaptation): E-prompt prefixes in layers 0-4, no G-prompt.

Params use the references' names: ``e_prompt.prompt``, ``e_prompt.prompt_key``, ``g_prompt``,
``head``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cljax.methods.base import Method, accuracy, cross_entropy, l2_normalize, mask_logits
from cljax.models.assembly import PromptedViTSpec
from cljax.models.prefix import Prefix
from cljax.models.prompts import PoolSpec

KEYED_METHODS = ('l2p', 'dualprompt', 'sprompt')


def select(keys, query, mask, top_k: int, batchwise: bool):
  """Top-k pool entries per example by cosine similarity of keys and queries.

  Returns (idx [B, K], normalised keys [P, D], normalised queries [B, D])."""
  keys_n, query_n = l2_normalize(keys), l2_normalize(query)
  similarity = query_n @ keys_n.T                                   # [B, P]
  _, idx = jax.lax.top_k(similarity, top_k)
  if batchwise:
    # The batch's top_k most frequent ids for everyone (ties: smaller id; torch leaves them open).
    pool = keys.shape[0]
    counts = jnp.zeros(pool, jnp.int32).at[idx.reshape(-1)].add(
        jnp.repeat(mask.astype(jnp.int32), top_k))
    _, major = jax.lax.top_k(counts, top_k)
    idx = jnp.broadcast_to(major[None], idx.shape)
  return idx, keys_n, query_n


def pull_similarity(keys_n, query_n, idx, mask):
  """The references' reduce_sim: sum over examples and chosen keys of cos(key, query) / B."""
  chosen = keys_n[idx]                                             # [B, K, D]
  sim = jnp.einsum('bkd,bd->b', chosen, query_n)
  return jnp.sum(jnp.where(mask, sim, 0.0)) / jnp.maximum(mask.sum(), 1)


def g_prefixes(g_prompt, layers):
  """DualPrompt's G-prompts [n_g, 2, L_g, H, d]: the same prefixes for every example (the G-prompt
  gather has no key/value reshape quirk)."""
  return {int(l): Prefix(g_prompt[j, 0].transpose(1, 0, 2)[None], g_prompt[j, 1].transpose(1, 0, 2)[None])
          for j, l in enumerate(layers)}


def build(config, vit_cfg, num_classes: int, num_tasks: int) -> Method:
  p = config.prompt
  name = config.method
  kind = 'tokens' if name == 'l2p' else 'prefix'
  pool = PoolSpec(layers=tuple(p.layers), pool_size=p.pool_size or num_tasks, length=p.length,
                  kind=kind, gate='linear', kv_layout=p.kv_layout, prompt_key=True)
  g_layers = tuple(p.g_layers) if name == 'dualprompt' else ()
  model = PromptedViTSpec(vit_cfg, num_classes, pool, (), fc_norm=not vit_cfg.final_norm,
                          dtype=jnp.dtype(config.dtype), attention=config.attention)
  top_k, batchwise, pull = int(p.top_k), bool(p.batchwise_prompt), float(p.pull_coeff)
  force_task_entry = bool(p.use_prompt_mask) and name != 'l2p'
  shared_pool = bool(p.shared_prompt_pool) and name != 'l2p'

  def init(rng):
    params = model.init_trainable(rng)
    if g_layers:
      shape = (len(g_layers), 2, p.g_length, vit_cfg.num_heads, vit_cfg.head_dim)
      params['prompts']['g_prompt'] = jax.random.uniform(jax.random.fold_in(rng, 7), shape,
                                                        jnp.float32, -1.0, 1.0)
    return params

  def query(backbone, images):
    """The frozen pretrained model's pooled feature (no prompts, no gradient)."""
    pre, _ = model.backbone.apply({'params': backbone}, images)
    return jax.lax.stop_gradient(pre)

  def forward(params, backbone, images, idx, mask):
    e = params['prompts']['e_prompt']
    inputs = pool.inputs(e, idx, num_valid=mask.sum())
    if g_layers:
      inputs.setdefault('prefixes', {}).update(g_prefixes(params['prompts']['g_prompt'], g_layers))
    full = {'backbone': backbone, **params}
    pre, _ = model.backbone.apply({'params': backbone}, images, **inputs)
    return model.logits(full, pre)

  def choose(params, backbone, images, mask, t, train: bool, vote: bool = batchwise):
    idx, keys_n, query_n = select(params['prompts']['e_prompt']['prompt_key'],
                                  query(backbone, images), mask, top_k, vote)
    if train and force_task_entry:
      # prompt_mask: entries [t k, (t+1) k) unless that runs past the pool (quirk 11.17).
      forced = t * top_k + jnp.arange(top_k)
      fits = (t + 1) * top_k <= pool.pool_size
      idx = jnp.where(fits, jnp.broadcast_to(forced[None], idx.shape), idx)
    return idx, keys_n, query_n

  def train_forward(params, state, backbone, images, mask, t):
    """Training-mode logits: key matching, or task t's entries where forced (prompt_mask);
    aux = {'idx', 'keys_n', 'query_n'}."""
    idx, keys_n, query_n = choose(params, backbone, images, mask, t, train=True)
    return forward(params, backbone, images, idx, mask), {'idx': idx, 'keys_n': keys_n, 'query_n': query_n}

  def loss(params, state, backbone, images, labels, mask, t, context):
    logits, aux = train_forward(params, state, backbone, images, mask, t)
    idx, keys_n, query_n = aux['idx'], aux['keys_n'], aux['query_n']
    logits = mask_logits(logits, context['task_mask'])
    ce = cross_entropy(logits, labels, mask)
    sim = pull_similarity(keys_n, query_n, idx, mask)
    return ce - pull * sim, {'ce': ce, 'key_similarity': sim, 'accuracy': accuracy(logits, labels, mask)}

  def begin_task(params, state, t):
    if not (shared_pool and t > 0 and (t + 1) * top_k <= pool.pool_size):
      return params, state
    prompt = params['prompts']['e_prompt']['prompt']
    prev = prompt[:, :, (t - 1) * top_k:t * top_k]
    prompt = prompt.at[:, :, t * top_k:(t + 1) * top_k].set(prev)
    e = {**params['prompts']['e_prompt'], 'prompt': prompt}
    return {**params, 'prompts': {**params['prompts'], 'e_prompt': e}}, state

  def features(params, state, backbone, images, t, mask):
    idx, _, _ = choose(params, backbone, images, mask, t, train=False)
    inputs = pool.inputs(params['prompts']['e_prompt'], idx, num_valid=mask.sum())
    return model.backbone.apply({'params': backbone}, images, **inputs)[0]

  def make_predict(vote: bool):
    def predict(params, state, backbone, images, prompt_ids, mask):
      idx, _, _ = choose(params, backbone, images, mask, 0, train=False, vote=vote)
      return forward(params, backbone, images, idx, mask), idx
    return predict

  return Method(name, model, init, lambda prm, t: jax.tree.map(lambda _: 1.0, prm), loss, features,
                make_predict(batchwise), begin_task=begin_task, chooses_prompts=True,
                predict_per_example=make_predict(False) if batchwise else None,
                train_forward=train_forward, pool_size=pool.pool_size)
