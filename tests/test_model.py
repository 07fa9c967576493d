"""Model-layer behaviour beyond parity: config errors, the sparse-expert path, prompt gathers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cljax.errors import ConfigError
from cljax.models import prefix as prefix_lib
from cljax.models.assembly import PromptedViTSpec
from cljax.models.prompts import PoolSpec, gather_prefix_pool
from cljax.models.vit import ViTConfig, VisionTransformer, vit_config

SMALL = ViTConfig(embed_dim=32, depth=2, num_heads=4, patch_size=8, image_size=16)


@pytest.mark.parametrize('build,match', [
    (lambda: PoolSpec((0,), 4, 5, gate='nonlinear'), "unknown gate 'nonlinear'; valid: linear, norga, sparse"),
    (lambda: PoolSpec((0,), 4, 5, gate='norga', activation='swish'),
     "unknown gate activation 'swish'; valid: identity, tanh, sigmoid, gelu, relu, softplus, elu"),
    (lambda: PoolSpec((0,), 4, 5, kv_layout='fixed'), "unknown kv_layout 'fixed'; valid: reference, correct"),
    (lambda: PoolSpec((0,), 4, 5, kind='tokens', gate='norga'), 'needs prefix prompts'),
    (lambda: PromptedViTSpec(SMALL, 10, PoolSpec((0, 5), 4, 5)), r'prompt layer index 5 is outside .* blocks 0\.\.1'),
    (lambda: ViTConfig(image_size=225), 'image_size 225 is not divisible by patch_size 16'),
    (lambda: vit_config('vit_h14'), "unknown model 'vit_h14'; valid: vit_ti8"),
    (lambda: ViTConfig(embed_dim=100, num_heads=12), 'embed_dim 100 is not divisible by num_heads 12'),
])
def test_config_errors_are_one_line(build, match):
  with pytest.raises(ConfigError, match=match) as info:
    build()
  assert '\n' not in str(info.value)


def test_wrong_image_shape_is_a_clear_error():
  vit = VisionTransformer(SMALL)
  params = vit.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))['params']
  with pytest.raises(ConfigError, match=r'images of shape \(32, 32, 3\) given to a ViT built for \(16, 16, 3\)'):
    vit.apply({'params': params}, jnp.zeros((1, 32, 32, 3)))


def test_reference_kv_layout_pairs_chunks():
  """Example b gets chunks 2b, 2b+1 of [K_0..K_{B-1}, V_0..V_{B-1}] (ALGORITHMS.md 11.1)."""
  pool = np.arange(1 * 2 * 3 * 1 * 1 * 1, dtype=np.float32).reshape(1, 2, 3, 1, 1, 1)
  # entry e has key value e and value value 3 + e.
  keys, values = gather_prefix_pool(pool, np.array([0, 1, 2, 2]), 'reference')
  chunks = [0, 1, 2, 2, 3, 4, 5, 5]          # K_0 K_1 K_2 K_2 V_0 V_1 V_2 V_2
  assert keys[0, :, 0, 0, 0].tolist() == chunks[0::2]
  assert values[0, :, 0, 0, 0].tolist() == chunks[1::2]
  keys, values = gather_prefix_pool(pool, np.array([0, 1, 2, 2]), 'correct')
  assert keys[0, :, 0, 0, 0].tolist() == [0, 1, 2, 2]
  assert values[0, :, 0, 0, 0].tolist() == [3, 4, 5, 5]


def naive_sparse_attention(q, k, v, pk, pv, top_k, noise, scale):
  """Loop-per-(example, head) numpy version of SMoPE's sparse prefix attention."""
  batch, heads, tokens, _ = q.shape
  out = np.zeros_like(q)
  for b in range(batch):
    for h in range(heads):
      r = pk[:, h] @ q[b, h].mean(0)                                # [E]
      adjusted = r - noise[h] * (r.max() - r.min())
      chosen = np.argsort(-adjusted, kind='stable')[:top_k]
      logits = np.concatenate([np.tile(r[chosen] * scale, (tokens, 1)), q[b, h] @ k[b, h].T * scale], 1)
      w = np.exp(logits - logits.max(1, keepdims=True))
      w /= w.sum(1, keepdims=True)
      out[b, h] = w @ np.concatenate([pv[chosen, h], v[b, h]], 0)
  return out


def test_sparse_experts_match_naive_loop():
  rng = np.random.RandomState(0)
  q, k, v = (rng.randn(3, 2, 5, 4).astype(np.float32) for _ in range(3))
  pk, pv = rng.rand(6, 2, 4).astype(np.float32), rng.rand(6, 2, 4).astype(np.float32)
  noise = np.zeros((2, 6), np.float32)
  noise[0, [1, 4]] = 0.4
  experts = prefix_lib.SparseExperts(jnp.asarray(pk), jnp.asarray(pv), jnp.asarray(noise), top_k=3)
  out, aux = prefix_lib.attend(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), 0.5, experts)
  np.testing.assert_allclose(out, naive_sparse_attention(q, k, v, pk, pv, 3, noise, 0.5), rtol=1e-5, atol=1e-6)
  assert aux['selected'].shape == (3, 2, 3) and aux['scores'].shape == (3, 2, 6)
  # A mask removes an expert from selection even if it scores highest.
  best = int(np.asarray(aux['selected'])[0, 1, 0])
  mask = np.ones((2, 6), bool)
  mask[1, best] = False
  masked = prefix_lib.SparseExperts(jnp.asarray(pk), jnp.asarray(pv), None, jnp.asarray(mask), top_k=3)
  _, aux = prefix_lib.attend(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), 0.5, masked)
  assert best not in np.asarray(aux['selected'])[:, 1].ravel()


def test_sparse_dense_mode_uses_every_expert_and_inside_vit():
  vit = VisionTransformer(SMALL)
  x = jnp.asarray(np.random.RandomState(0).rand(2, 16, 16, 3), jnp.float32)
  params = vit.init(jax.random.PRNGKey(0), x)['params']
  key = jax.random.uniform(jax.random.PRNGKey(1), (5, 4, 8))
  plain, _ = vit.apply({'params': params}, x)
  for top_k in (-1, 2):
    experts = {1: prefix_lib.SparseExperts(key, key, top_k=top_k)}
    pooled, aux = vit.apply({'params': params}, x, prefixes=experts)
    assert aux['router'][1]['scores'].shape == (2, 4, 5)
    assert not np.allclose(pooled, plain)


def test_reference_kv_layout_with_padding_pairs_within_real_examples():
  pool = np.arange(2 * 5, dtype=np.float32).reshape(1, 2, 5, 1, 1, 1)   # key e = e, value e = 5 + e
  idx = np.array([0, 1, 2, 4, 4])
  padded_keys, padded_values = gather_prefix_pool(pool, idx, 'reference', num_valid=3)
  keys, values = gather_prefix_pool(pool, idx[:3], 'reference')
  np.testing.assert_array_equal(padded_keys[:, :3], keys)
  np.testing.assert_array_equal(padded_values[:, :3], values)
  assert keys[0, :, 0, 0, 0].tolist() == [0, 2, 6]      # chunks K0 K1 K2 V0 V1 V2 -> 0, 2, 6
  assert values[0, :, 0, 0, 0].tolist() == [1, 5, 7]


@pytest.mark.parametrize('attention', ['explicit', 'fused'])
def test_the_last_block_computing_only_the_pooled_token_changes_no_feature_or_gradient(attention):
  # return_tokens=True runs every block whole; the pooled call computes the last block's
  # query, attention row and MLP for the pooled token alone. Same features and prompt gradients.
  cfg = ViTConfig(embed_dim=32, depth=3, num_heads=4, patch_size=8, image_size=16)
  vit = VisionTransformer(cfg, attention=attention)
  images = jax.random.normal(jax.random.PRNGKey(0), (3, 16, 16, 3))
  params = vit.init(jax.random.PRNGKey(1), images)
  k = jax.random.split(jax.random.PRNGKey(2), 4)
  norga = prefix_lib.Prefix(jax.random.normal(k[0], (3, 4, 2, 8)), jax.random.normal(k[1], (3, 4, 2, 8)),
                            tau=jnp.float32(1.3), alpha=jnp.float32(0.4), gate='norga', activation='tanh')
  linear = prefix_lib.Prefix(jax.random.normal(k[2], (1, 4, 2, 8)), jax.random.normal(k[3], (1, 4, 2, 8)))
  tokens = jax.random.normal(k[0], (1, 5, 32))
  cases = [{}, {'prefixes': {2: norga, 0: linear}}, {'prefixes': {2: linear}},
           {'prompt_tokens': {0: tokens}}, {'prompt_tokens': {2: tokens}, 'prefixes': {1: norga}}]
  for kwargs in cases:
    pooled, _ = vit.apply(params, images, **kwargs)
    whole, aux = vit.apply(params, images, return_tokens=True, **kwargs)
    assert pooled.shape == (3, 32)
    np.testing.assert_allclose(pooled, whole, atol=2e-6)
    num_prepended = sum(t.shape[1] for t in kwargs.get('prompt_tokens', {}).values())
    np.testing.assert_allclose(pooled, aux['tokens'][:, num_prepended], atol=2e-6)

  def pooled_sum(prefix, return_tokens):
    return vit.apply(params, images, prefixes={2: prefix}, return_tokens=return_tokens)[0].sum()
  g_pooled = jax.grad(pooled_sum)(norga, False)
  g_whole = jax.grad(pooled_sum)(norga, True)
  for a, b in zip(jax.tree.leaves(g_pooled), jax.tree.leaves(g_whole)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_sparse_experts_in_the_last_block_keep_it_whole():
  # SMoPE scores experts with the mean query over all tokens: a pooled-only last block would
  # change which experts are chosen, so that block runs whole.
  cfg = ViTConfig(embed_dim=32, depth=2, num_heads=4, patch_size=8, image_size=16)
  vit = VisionTransformer(cfg)
  images = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 16, 3))
  params = vit.init(jax.random.PRNGKey(1), images)
  k = jax.random.split(jax.random.PRNGKey(3), 2)
  experts = prefix_lib.SparseExperts(jax.random.normal(k[0], (6, 4, 8)), jax.random.normal(k[1], (6, 4, 8)), top_k=2)
  pooled, aux = vit.apply(params, images, prefixes={1: experts})
  whole, aux_whole = vit.apply(params, images, prefixes={1: experts}, return_tokens=True)
  np.testing.assert_array_equal(aux['router'][1]['selected'], aux_whole['router'][1]['selected'])
  np.testing.assert_allclose(pooled, whole, atol=2e-6)
