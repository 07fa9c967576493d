"""Prompt parameters and how a batch picks its prompts.

Prompt parameters use the PyTorch references' layouts so that checkpoints map one to one:

* prefix pool (HiDe, NoRGa, DualPrompt/S-Prompt E-prompts): [L_e, 2 (key, value), P, L_p, H, d_h]
* NoRGa gate scalars ``act_scale``: [L_e, 2 (tau, alpha), 1, 1]
* prompt-tuning pool (L2P): [L_e, P, L_p, D]

Selection turns a per-example pool index into the per-layer inputs of the ViT
(`cljax.models.prefix.Prefix`).

The ``kv_layout`` switch (ALGORITHMS.md 11.1): the references gather [L_e, 2, B, ...] and then
*reshape* to [L_e, B, 2, ...], so example b receives chunks 2b and 2b+1 of the flattened
[K_0..K_{B-1}, V_0..V_{B-1}] sequence. ``reference`` reproduces that; ``correct`` gives every
example its own key and value.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp

from cljax.errors import ConfigError, one_of
from cljax.models.prefix import Prefix, check_gate

Array = Any
KV_LAYOUTS = ('reference', 'correct')


def init_prefix_pool(key, num_layers, pool_size, length, num_heads, head_dim):
  """U(-1, 1) as the references' ``prompt_init='uniform'``."""
  shape = (num_layers, 2, pool_size, length, num_heads, head_dim)
  return jax.random.uniform(key, shape, jnp.float32, -1.0, 1.0)


def init_act_scale(num_layers):
  """NoRGa's (tau, alpha) per prompted layer, initialised to ones."""
  return jnp.ones((num_layers, 2, 1, 1), jnp.float32)


def init_token_pool(key, num_layers, pool_size, length, embed_dim):
  return jax.random.uniform(key, (num_layers, pool_size, length, embed_dim), jnp.float32, -1., 1.)


def gather_prefix_pool(pool, idx, kv_layout: str = 'reference', num_valid=None):
  """Per-example key and value prefixes from a pool.

  pool: [L_e, 2, P, L_p, H, d]; idx: [B] or [B, top_k] pool indices (top_k entries are
  concatenated along the prefix length). Returns (keys, values), each [L_e, B, H, top_k*L_p, d].

  ``num_valid`` (a traced int, default B): the number of real examples when a batch is padded.
  The reference layout pairs chunks within the real batch, as the references' smaller last
  batch does; padding rows get their own entries.
  """
  if kv_layout not in KV_LAYOUTS:
    raise one_of('kv_layout', kv_layout, KV_LAYOUTS)
  idx = jnp.asarray(idx)
  if idx.ndim == 1:
    idx = idx[:, None]
  raw = pool[:, :, idx]                                   # [L_e, 2, B, K, L_p, H, d]
  n_layers, _, batch, top_k, length, heads, dim = raw.shape
  b = jnp.arange(batch)
  if kv_layout == 'reference':
    # The references reshape [L_e, 2, B, ...] into [L_e, B, 2, ...]: example b reads chunks 2b
    # (key) and 2b + 1 (value) of the sequence K_0..K_{n-1}, V_0..V_{n-1}.
    n = batch if num_valid is None else num_valid
    real = b < n
    key_chunk, value_chunk = 2 * b, 2 * b + 1
    key_kv, key_ex = jnp.where(real, key_chunk // n, 0), jnp.where(real, key_chunk % n, b)
    value_kv, value_ex = jnp.where(real, value_chunk // n, 1), jnp.where(real, value_chunk % n, b)
  else:
    key_kv, key_ex, value_kv, value_ex = jnp.zeros_like(b), b, jnp.ones_like(b), b
  keys = raw[:, key_kv, key_ex]                           # [L_e, B, K, L_p, H, d]
  values = raw[:, value_kv, value_ex]
  shape = (n_layers, batch, top_k * length, heads, dim)
  return (keys.reshape(shape).transpose(0, 1, 3, 2, 4),
          values.reshape(shape).transpose(0, 1, 3, 2, 4))


def prefixes_for_layers(layers: Sequence[int], keys, values, gate: str = 'linear',
                        activation: str = 'identity', act_scale: Optional[Array] = None
                        ) -> Dict[int, Prefix]:
  """{layer: Prefix} from stacked [L_e, B, H, L, d] keys/values and optional act_scale."""
  out = {}
  for j, layer in enumerate(layers):
    tau = alpha = None
    if gate == 'norga':
      tau, alpha = act_scale[j, 0], act_scale[j, 1]
    out[int(layer)] = Prefix(keys[j], values[j], tau, alpha, gate=gate, activation=activation)
  return out


def gather_token_pool(pool, idx):
  """Prompt-tuning tokens: pool [L_e, P, L_p, D], idx [B] or [B, K] -> [L_e, B, K*L_p, D]."""
  idx = jnp.asarray(idx)
  if idx.ndim == 1:
    idx = idx[:, None]
  raw = pool[:, idx]                                      # [L_e, B, K, L_p, D]
  n_layers, batch, top_k, length, dim = raw.shape
  return raw.reshape(n_layers, batch, top_k * length, dim)


PROMPT_KINDS = ('prefix', 'tokens')


@dataclasses.dataclass(frozen=True)
class PoolSpec:
  """A pool of prompts in some layers, selected per example by an index (task id, key match).

  kind ``prefix``: key/value prefixes with a ``linear`` or ``norga`` gate (HiDe, NoRGa,
  DualPrompt E-prompts, S-Prompt); kind ``tokens``: prepended tokens (L2P). Params live under
  ``e_prompt`` as in the references: ``prompt``, NoRGa's ``act_scale``, optional ``prompt_key``.
  """
  layers: Tuple[int, ...]
  pool_size: int
  length: int
  kind: str = 'prefix'
  gate: str = 'linear'
  activation: str = 'identity'
  kv_layout: str = 'reference'
  prompt_key: bool = False

  def __post_init__(self):
    object.__setattr__(self, 'layers', tuple(int(l) for l in self.layers))
    if self.kind not in PROMPT_KINDS:
      raise one_of('prompt kind', self.kind, PROMPT_KINDS)
    check_gate(self.gate, self.activation)
    if self.gate == 'sparse':
      raise one_of('gate of a prompt pool', self.gate, ('linear', 'norga'))
    if self.kind == 'tokens' and self.gate != 'linear':
      raise ConfigError(f'gate {self.gate!r} needs prefix prompts, not prompt tuning (kind tokens)')
    if self.kv_layout not in KV_LAYOUTS:
      raise one_of('kv_layout', self.kv_layout, KV_LAYOUTS)
    if self.pool_size < 1 or self.length < 1:
      raise ConfigError(f'prompt pool_size and length must be >= 1, got {self.pool_size}, {self.length}')

  def init(self, rng, vit_config) -> Dict[str, Array]:
    k_prompt, k_key = jax.random.split(rng)
    n = len(self.layers)
    if self.kind == 'prefix':
      out = {'prompt': init_prefix_pool(k_prompt, n, self.pool_size, self.length,
                                        vit_config.num_heads, vit_config.head_dim)}
    else:
      out = {'prompt': init_token_pool(k_prompt, n, self.pool_size, self.length,
                                       vit_config.embed_dim)}
    if self.gate == 'norga':
      out['act_scale'] = init_act_scale(n)
    if self.prompt_key:
      out['prompt_key'] = jax.random.uniform(k_key, (self.pool_size, vit_config.embed_dim),
                                             jnp.float32, -1.0, 1.0)
    return out

  def inputs(self, params: Dict[str, Array], idx, prompt=None, num_valid=None) -> Dict[str, Any]:
    """ViT keyword inputs (prefixes or prompt_tokens) for pool indices idx [B] or [B, K].

    ``prompt`` replaces params['prompt'] (e.g. the momentum-mixed pool in training);
    ``num_valid`` is the number of real examples of a padded batch."""
    pool = params['prompt'] if prompt is None else prompt
    if self.kind == 'tokens':
      tokens = gather_token_pool(pool, idx)
      return {'prompt_tokens': {l: tokens[j] for j, l in enumerate(self.layers)}}
    keys, values = gather_prefix_pool(pool, idx, self.kv_layout, num_valid)
    return {'prefixes': prefixes_for_layers(self.layers, keys, values, self.gate, self.activation,
                                            params.get('act_scale'))}
