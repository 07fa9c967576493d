"""CODA-Prompt as the SMoPE repository implements it (ALGORITHMS.md 4).

Per prompted layer: P prompt components [P, L, D], keys [P, D] and attention vectors [P, D];
each task owns P/T consecutive components. The query (the frozen model's pooled feature) weights
every component by cos(q * A_k, K_k) - no softmax - and the weighted sum [L, D] is split into
L/2 prefix keys and L/2 prefix values (per head, by reshaping D = H x d_h). Training uses the
components of tasks 0..t with those of earlier tasks frozen; each new task's components start
orthonormal to all earlier ones (Gram-Schmidt), later ones are zero.

Params: ``prompt.e_p_{l}``, ``prompt.e_k_{l}``, ``prompt.e_a_{l}`` and the head, as [S] names them
(with cljax's ``head`` for [S]'s ``last``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from cljax.methods.base import Method, accuracy, cross_entropy, mask_logits
from cljax.models.assembly import PromptedViTSpec
from cljax.models.prefix import Prefix


def gram_schmidt(rows: np.ndarray, start: int, stop: int, rng: np.random.Generator) -> np.ndarray:
  """[S]'s re-initialisation: rows [0, start) kept, rows [start, stop) drawn from N(0, 1) and made
  orthogonal to every row before them, then unit-normalised; rows >= stop become 0."""
  flat = rows.reshape(rows.shape[0], -1).astype(np.float64)
  out = np.zeros_like(flat)
  out[:start] = flat[:start]
  for k in range(start, stop):
    # Classical Gram-Schmidt as the reference: project the fresh draw v on every earlier row.
    norms = np.einsum('jd,jd->j', out[:k], out[:k])
    if (norms < 1e-8).any():
      raise ValueError('Gram-Schmidt over a degenerate (zero) component row')
    v = rng.standard_normal(flat.shape[1])
    out[k] = v - ((out[:k] @ v) / norms) @ out[:k]
  out[start:stop] /= np.linalg.norm(out[start:stop], axis=1, keepdims=True)
  return out.reshape(rows.shape).astype(np.float32)


def normalize(x, axis=-1, eps=1e-12):
  """torch F.normalize: x / max(||x||, eps)."""
  return x / jnp.maximum(jnp.linalg.norm(x, axis=axis, keepdims=True), eps)


def ortho_penalty(m, valid):
  """mean((M M^T - I)^2) over the valid rows of M (the reference slices them out)."""
  gram = m @ m.T - jnp.eye(m.shape[0])
  both = valid[:, None] & valid[None, :]
  return jnp.sum(jnp.where(both, gram ** 2, 0.0)) / jnp.maximum(both.sum(), 1)


def build(config, vit_cfg, num_classes: int, num_tasks: int) -> Method:
  p = config.prompt
  layers = tuple(int(l) for l in p.layers)
  components, length = int(p.pool_size), int(p.length)
  per_task = components // num_tasks
  dim, heads = vit_cfg.embed_dim, vit_cfg.num_heads
  ortho_mu = float(p.ortho_mu)
  model = PromptedViTSpec(vit_cfg, num_classes, None, (), fc_norm=not vit_cfg.final_norm,
                          head_init='torch_default', dtype=jnp.dtype(config.dtype), attention=config.attention)
  names = [(f'e_{kind}_{l}', kind) for l in layers for kind in ('p', 'k', 'a')]
  prompt_scale = float(p.prompt_lr_scale)

  def init(rng):
    params = model.init_trainable(rng)
    params['prompts'] = {'prompt': {n: jnp.zeros((components, length, dim) if kind == 'p' else
                                                 (components, dim), jnp.float32)
                                    for n, kind in names}}
    return params

  def init_state():
    return {'task': np.array(0, np.int32)}

  def begin_task(params, state, t):
    """New orthonormal components for task t (the references re-draw them at every task)."""
    rng = np.random.default_rng([config.seed, 31, t])
    prompt = {n: jnp.asarray(gram_schmidt(np.asarray(v), t * per_task, (t + 1) * per_task, rng))
              for n, v in params['prompts']['prompt'].items()}
    return {**params, 'prompts': {'prompt': prompt}}, {'task': jnp.asarray(t, jnp.int32)}

  def lr_multipliers(params, t):
    return {'prompts': jax.tree.map(lambda _: prompt_scale, params['prompts']),
            'classifier': jax.tree.map(lambda _: 1.0, params['classifier'])}

  def prefixes(prompt, q, t, train: bool):
    """The per-layer prefixes for queries q [B, D]; rows >= (t+1) P/T are not used and, in
    training, rows of earlier tasks receive no gradient."""
    rows = jnp.arange(components)
    used = rows < (t + 1) * per_task
    old = rows < t * per_task
    out, penalty = {}, 0.0
    for l in layers:
      K, A, P = (prompt[f'e_{kind}_{l}'] for kind in ('k', 'a', 'p'))
      if train:
        K, A, P = (jnp.where(old.reshape((-1,) + (1,) * (x.ndim - 1)), jax.lax.stop_gradient(x), x)
                   for x in (K, A, P))
      # Unused rows are zero: keep their normalisation (and its gradient, NaN at 0) finite, then
      # drop them; otherwise the optimizer writes NaN into the rows of later tasks.
      safe_K = jnp.where(used[:, None], K, 1.0)
      safe_A = jnp.where(used[:, None], A, 1.0)
      weights = jnp.einsum('bkd,kd->bk', normalize(q[:, None, :] * safe_A[None], axis=2), normalize(safe_K))
      weights = jnp.where(used[None], weights, 0.0)
      mixed = jnp.einsum('bk,kld->bld', weights, P)                 # [B, L, D]
      half = length // 2
      to_heads = lambda x: x.reshape(x.shape[0], x.shape[1], heads, -1).transpose(0, 2, 1, 3)
      out[l] = Prefix(to_heads(mixed[:, :half]), to_heads(mixed[:, half:]))
      if train and ortho_mu > 0:
        penalty = penalty + ortho_penalty(K, used) + ortho_penalty(A, used) + \
            ortho_penalty(P.reshape(components, -1), used)
    return out, ortho_mu * penalty

  def query(backbone, images):
    return jax.lax.stop_gradient(model.backbone.apply({'params': backbone}, images)[0])

  def forward(params, backbone, images, t, train):
    inputs, penalty = prefixes(params['prompts']['prompt'], query(backbone, images), t, train)
    pre, _ = model.backbone.apply({'params': backbone}, images, prefixes=inputs)
    return pre, model.logits({'backbone': backbone, **params}, pre), penalty

  def train_forward(params, state, backbone, images, mask, t):
    """Training-mode logits (components of tasks < t frozen); aux = {'ortho'}."""
    _, logits, penalty = forward(params, backbone, images, t, train=True)
    return logits, {'ortho': penalty}

  def loss(params, state, backbone, images, labels, mask, t, context):
    logits, aux = train_forward(params, state, backbone, images, mask, t)
    penalty = aux['ortho']
    logits = mask_logits(logits, context['task_mask'])
    ce = cross_entropy(logits, labels, mask)
    return ce + penalty, {'ce': ce, 'ortho': penalty, 'accuracy': accuracy(logits, labels, mask)}

  def features(params, state, backbone, images, t, mask):
    return forward(params, backbone, images, t, train=False)[0]

  def predict(params, state, backbone, images, prompt_ids, mask):
    # Test time uses the components of every task learned so far.
    _, logits, _ = forward(params, backbone, images, state['task'], train=False)
    return logits, prompt_ids

  return Method('coda', model, init, lr_multipliers, loss, features, predict, init_state=init_state,
                begin_task=begin_task,
                uses_statistics=True, statistics_train_transform=True,
                alignment_samples_per_class=int(config.batch_size * p.ca_samples_ratio),
                mask_test_logits=True, train_forward=train_forward, metric_definition='smope')
