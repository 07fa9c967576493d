"""Prefix attention and its gates.

A prompted attention layer receives, per example, extra key/value vectors ("prefixes") in head
space. Seen as a mixture of experts (seed paper 000), each prefix is a new expert whose gating
score is the query-prefix attention score s. The gate decides how s enters the softmax:

* ``linear``  plain prefix tuning (HiDe-Prompt, DualPrompt, S-Prompt, CODA): s as is.
* ``norga``   non-linear residual gate (NoRGa): s + alpha * act(tau * s), with the learnable
              scalars tau, alpha of the layer.
* ``sparse``  SMoPE: one shared set of E experts per layer and head. Each expert's score is the
              mean query (over all tokens) times its key; the top-K experts per example and head
              are kept, and their score (times the usual 1/sqrt(d_h)) is the logit of every query
              token. Noise coefficients and an eligibility mask come in from the method, so that
              adaptive noise and usage bookkeeping live outside the model.

Everything here is a pure function of arrays; the Flax ViT calls `attend`.
"""

from __future__ import annotations

from typing import Any, Optional, Union

import flax.struct
import jax
import jax.numpy as jnp

from cljax.errors import one_of

Array = Any

GATES = ('linear', 'norga', 'sparse')

def gelu(x: Array) -> Array:
  """Exact GELU, x * Phi(x), in the erf form torch's nn.GELU() computes (ATen's GeluKernel).

  jax.nn.gelu(approximate=False) uses 0.5 x erfc(-x / sqrt 2), which agrees to ~1e-7 but whose
  derivative XLA:CPU lowers to a slower fusion (issue 18: demo step 97 -> 88 ms); the erf form
  is also the one the references' numbers come from. Shape and dtype of x are kept.
  """
  x = jnp.asarray(x)
  sqrt_half = jnp.asarray(0.5 ** 0.5, x.dtype)
  return x * 0.5 * (1.0 + jax.lax.erf(x * sqrt_half))


# The activations the reference accepts for NoRGa's gate ([N] ViT __init__), by cljax name.
ACTIVATIONS = {
    'identity': lambda x: x,
    'tanh': jnp.tanh,
    'sigmoid': jax.nn.sigmoid,
    'gelu': gelu,
    'relu': jax.nn.relu,
    'softplus': jax.nn.softplus,
    'elu': jax.nn.elu,
}


def check_gate(gate: str, activation: str = 'identity') -> None:
  """Raise a ConfigError naming the valid choices for an unknown gate or activation."""
  if gate not in GATES:
    raise one_of('gate', gate, GATES)
  if activation not in ACTIVATIONS:
    raise one_of('gate activation', activation, ACTIVATIONS)


@flax.struct.dataclass
class Prefix:
  """Per-example key/value prefixes of one layer, in head space.

  key, value: [B, H, L, d_h] (a leading 1 broadcasts over the batch).
  tau, alpha: NoRGa's scalars for this layer (any shape broadcastable to the scores).
  """
  key: Array
  value: Array
  tau: Optional[Array] = None
  alpha: Optional[Array] = None
  gate: str = flax.struct.field(pytree_node=False, default='linear')
  activation: str = flax.struct.field(pytree_node=False, default='identity')

  def __post_init__(self):
    check_gate(self.gate, self.activation)
    if self.gate == 'sparse':
      raise one_of('gate for Prefix', self.gate, ('linear', 'norga'))
    if self.gate == 'norga' and (self.tau is None or self.alpha is None):
      raise ValueError('a norga Prefix needs tau and alpha')


@flax.struct.dataclass
class SparseExperts:
  """SMoPE's shared prompt experts of one layer.

  key, value: [E, H, d_h] shared by every example.
  top_k:      experts kept per example and head; -1 keeps all (SMoPE's dense warm-up).
  noise:      [..., H, E] coefficients eps_j; the selection score is
              r_j - eps_j * (max_j r - min_j r), the range taken without gradient (SMoPE's
              adaptive noise; the reference's test-time exclusion is eps_j = 2).
  mask:       optional bool [..., H, E]: False experts can never be selected.
  """
  key: Array
  value: Array
  noise: Optional[Array] = None
  mask: Optional[Array] = None
  top_k: int = flax.struct.field(pytree_node=False, default=-1)


PrefixLike = Union[Prefix, SparseExperts]


def _softmax_attend(logits, values):
  """softmax over the last axis (in fp32) then the weighted sum of values [B,H,M,d]."""
  weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(values.dtype)
  return jnp.einsum('bhnm,bhmd->bhnd', weights, values)


def _broadcast_batch(x, batch):
  return jnp.broadcast_to(x, (batch,) + x.shape[1:])


def prefix_scores(q, key, scale):
  """s = q key^T / sqrt(d_h): [B,H,N,d] x [B,H,L,d] -> [B,H,N,L]."""
  return jnp.einsum('bhnd,bhld->bhnl', q, key) * scale


def gate_scores(s, prefix: Prefix):
  """Apply the prefix's gate to its scores."""
  if prefix.gate == 'norga':
    act = ACTIVATIONS[prefix.activation]
    return s + prefix.alpha * act(prefix.tau * s)
  return s


def expert_scores(q, key):
  """SMoPE's aggregated score r: mean query over tokens times each expert key (no scale).

  q: [B,H,N,d], key: [E,H,d] -> [B,H,E] float32. In float32 whatever the compute dtype, as the
  losses are: under bf16 compute, near-tied experts would otherwise flip with the dtype.
  """
  return jnp.einsum('bhd,ehd->bhe', q.astype(jnp.float32).mean(axis=2), key.astype(jnp.float32),
                    precision=jax.lax.Precision.HIGHEST)


def select_experts(r, experts: SparseExperts):
  """Top-K expert indices [B,H,K] from the noise-adjusted, masked scores, and the range used."""
  score_range = jax.lax.stop_gradient(r.max(-1, keepdims=True) - r.min(-1, keepdims=True))
  adjusted = r
  if experts.noise is not None:
    adjusted = adjusted - experts.noise * score_range
  if experts.mask is not None:
    adjusted = jnp.where(experts.mask, adjusted, -jnp.inf)
  _, idx = jax.lax.top_k(jax.lax.stop_gradient(adjusted), experts.top_k)
  return idx, score_range


ATTENTION = ('explicit', 'fused')


def fusable(prefix: Optional[PrefixLike]) -> bool:
  """Whether a layer's attention is plain softmax(q [pk; k]^T) [pv; v], which
  `jax.nn.dot_product_attention` computes exactly: no prefix, or a linear-gate prefix. NoRGa's
  gate and sparse experts transform the prefix scores first and keep the explicit path."""
  return prefix is None or (isinstance(prefix, Prefix) and prefix.gate == 'linear')


def attend_fused(q, k, v, scale, prefix: Optional[Prefix] = None):
  """`attend` through `jax.nn.dot_product_attention` (cuDNN flash attention on GPU where it
  applies, XLA elsewhere); q, k, v in its layout [B, N, H, d]. Only for `fusable` prefixes."""
  if prefix is not None:
    batch = q.shape[0]
    pk = _broadcast_batch(prefix.key, batch).astype(k.dtype).transpose(0, 2, 1, 3)   # [B,L,H,d]
    pv = _broadcast_batch(prefix.value, batch).astype(v.dtype).transpose(0, 2, 1, 3)
    k, v = jnp.concatenate([pk, k], axis=1), jnp.concatenate([pv, v], axis=1)
  return jax.nn.dot_product_attention(q, k, v, scale=scale)


def attend(q, k, v, scale, prefix: Optional[PrefixLike] = None):
  """Attention of queries q over [prefix; k, v]. q, k, v: [B,H,N,d].

  Returns (out [B,H,N,d], aux) where aux is {} except for sparse experts:
  {'scores': r [B,H,E], 'selected': [B,H,K], 'range': [B,H,1]} for the method's losses.
  """
  batch, _, num_tokens, _ = q.shape
  s_x = jnp.einsum('bhnd,bhmd->bhnm', q, k) * scale
  aux = {}
  if prefix is None:
    return _softmax_attend(s_x, v), aux
  if isinstance(prefix, Prefix):
    pk = _broadcast_batch(prefix.key, batch).astype(q.dtype)
    pv = _broadcast_batch(prefix.value, batch).astype(v.dtype)
    s_p = gate_scores(prefix_scores(q, pk, scale), prefix)
  elif isinstance(prefix, SparseExperts):
    r = expert_scores(q, prefix.key)                           # [B,H,E] float32
    if prefix.top_k < 0:                                       # dense: every expert
      chosen_r = r
      pv = jnp.broadcast_to(jnp.swapaxes(prefix.value, 0, 1)[None],
                            (batch,) + jnp.swapaxes(prefix.value, 0, 1).shape)
      aux = {'scores': r}
    else:
      idx, score_range = select_experts(r, prefix)
      chosen_r = jnp.take_along_axis(r, idx, axis=-1)          # [B,H,K], un-noised scores
      values_hed = jnp.swapaxes(prefix.value, 0, 1)            # [H,E,d]
      pv = jax.vmap(lambda i: jnp.take_along_axis(values_hed, i[..., None], axis=1))(idx)
      aux = {'scores': r, 'selected': idx, 'range': score_range}
    pv = pv.astype(v.dtype)
    # The same expert logit for every query token ("row-expanded" in the paper's figure 1).
    s_p = jnp.broadcast_to((chosen_r * scale)[:, :, None, :],
                           (batch, chosen_r.shape[1], num_tokens, chosen_r.shape[-1]))
  else:
    raise TypeError(f'prefix must be a Prefix or SparseExperts, got {type(prefix).__name__}')
  logits = jnp.concatenate([s_p.astype(s_x.dtype), s_x], axis=-1)
  values = jnp.concatenate([pv, v], axis=2)
  return _softmax_attend(logits, values), aux
