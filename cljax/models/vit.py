"""A pure-functional Vision Transformer in the timm layout, with prompts.

Module names follow timm's so that a parameter path maps one to one onto a PyTorch state-dict
key (`cljax.checkpoints.torch_names`): ``blocks_3/attn/qkv/kernel`` <-> ``blocks.3.attn.qkv.weight``.

Images are NHWC floats. The ViT returns the pooled class token ("pre_logits", timm's
``head_type='token'``) and an aux dict; heads live in `cljax.models.heads`. Prompts enter as
call arguments, never as ViT parameters, so the backbone's params stay a frozen pytree and the
method's trainable prompts are a separate one:

* ``prefixes``: {layer index: Prefix | SparseExperts} for prefix tuning (see `prefix.py`).
* ``prompt_tokens``: {layer index: [B, L, D]} tokens prepended before that block (prompt
  tuning, L2P); the class token then sits after all prepended tokens, as in the reference.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from cljax.errors import ConfigError, one_of
from cljax.models import prefix as prefix_lib

Array = Any

# name -> (embed_dim, depth, num_heads), as timm's vit_{tiny,small,base,large}.
SIZES = {
    'ti': (192, 12, 3),
    's': (384, 12, 6),
    'b': (768, 12, 12),
    'l': (1024, 24, 16),
}
PATCHES = (8, 16, 32)

_trunc_normal = nn.initializers.truncated_normal(stddev=0.02)


@dataclasses.dataclass(frozen=True)
class ViTConfig:
  """Architecture of a ViT; validated on construction."""
  embed_dim: int = 768
  depth: int = 12
  num_heads: int = 12
  patch_size: int = 16
  image_size: int = 224
  in_channels: int = 3
  mlp_ratio: float = 4.0
  # False for MoCo v3 in the reference: the final norm is dropped and a trainable fc_norm is
  # applied after pooling instead (see heads.LinearHead).
  final_norm: bool = True

  def __post_init__(self):
    if self.image_size % self.patch_size:
      raise ConfigError(f'image_size {self.image_size} is not divisible by patch_size '
                        f'{self.patch_size}; use a multiple of {self.patch_size}')
    if self.embed_dim % self.num_heads:
      raise ConfigError(f'embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}')

  @property
  def grid(self) -> int:
    return self.image_size // self.patch_size

  @property
  def num_tokens(self) -> int:
    return self.grid ** 2 + 1

  @property
  def head_dim(self) -> int:
    return self.embed_dim // self.num_heads


def vit_config(name: str, **overrides) -> ViTConfig:
  """`vit_b16` -> ViT-B/16; sizes ti/s/b/l, patches 8/16/32; overrides e.g. image_size=28."""
  m = re.fullmatch(r'vit_(ti|s|b|l)(\d+)', name)
  if not m or int(m.group(2)) not in PATCHES:
    valid = [f'vit_{s}{p}' for s in SIZES for p in PATCHES]
    raise one_of('model', name, valid)
  dim, depth, heads = SIZES[m.group(1)]
  return ViTConfig(**{'embed_dim': dim, 'depth': depth, 'num_heads': heads,
                      'patch_size': int(m.group(2)), **overrides})


def check_prompt_layers(layers, depth: int, what: str = 'prompt layer') -> None:
  for layer in layers:
    if not 0 <= int(layer) < depth:
      raise ConfigError(f'{what} index {layer} is outside the backbone\'s blocks 0..{depth - 1}')


def layer_norm(name: str, epsilon: float = 1e-6, dtype=None):
  # Two-pass variance as in torch, so parity holds to float noise.
  return nn.LayerNorm(epsilon=epsilon, use_fast_variance=False, dtype=dtype, name=name)


class Attention(nn.Module):
  num_heads: int
  dtype: Any = jnp.float32
  attention: str = 'explicit'    # 'fused': jax.nn.dot_product_attention where exact (prefix.fusable)

  @nn.compact
  def __call__(self, x, prefix=None, query_row=None):
    """x [B,N,D] -> ([B,N,D], aux); with query_row=r only token r's output, [B,1,D]: its
    attention row and projection alone (the qkv projection still runs for every token, whose
    keys and values the row attends to)."""
    batch, tokens, dim = x.shape
    head_dim = dim // self.num_heads
    qkv = nn.Dense(3 * dim, kernel_init=_trunc_normal, dtype=self.dtype, name='qkv')(x)
    qkv = qkv.reshape(batch, tokens, 3, self.num_heads, head_dim)
    rows = slice(None) if query_row is None else slice(query_row, query_row + 1)
    if self.attention == 'fused' and prefix_lib.fusable(prefix):
      out, aux = prefix_lib.attend_fused(qkv[:, rows, 0], qkv[:, :, 1], qkv[:, :, 2], head_dim ** -0.5, prefix), {}
    else:
      qkv = qkv.transpose(2, 0, 3, 1, 4)
      q, k, v = qkv[0][:, :, rows], qkv[1], qkv[2]                 # [B,H,N,d]
      out, aux = prefix_lib.attend(q, k, v, head_dim ** -0.5, prefix)
      out = out.transpose(0, 2, 1, 3)
    out = out.reshape(batch, -1, dim)
    return nn.Dense(dim, kernel_init=_trunc_normal, dtype=self.dtype, name='proj')(out), aux


class Mlp(nn.Module):
  hidden: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    dim = x.shape[-1]
    x = nn.Dense(self.hidden, kernel_init=_trunc_normal, dtype=self.dtype, name='fc1')(x)
    x = prefix_lib.gelu(x)
    return nn.Dense(dim, kernel_init=_trunc_normal, dtype=self.dtype, name='fc2')(x)


class PatchEmbed(nn.Module):
  embed_dim: int
  patch_size: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images):
    p = (self.patch_size,) * 2
    return nn.Conv(self.embed_dim, p, strides=p, padding='VALID', dtype=self.dtype,
                   name='proj')(images.astype(self.dtype))


class Block(nn.Module):
  num_heads: int
  mlp_hidden: int
  dtype: Any = jnp.float32
  attention: str = 'explicit'

  @nn.compact
  def __call__(self, x, prefix=None, query_row=None):
    """x [B,N,D] -> ([B,N,D], aux), or only token query_row's output [B,1,D] (see Attention)."""
    y, aux = Attention(self.num_heads, self.dtype, self.attention, name='attn')(
        layer_norm('norm1', dtype=self.dtype)(x), prefix, query_row)
    if query_row is not None:
      x = x[:, query_row:query_row + 1]
    x = x + y
    x = x + Mlp(self.mlp_hidden, self.dtype, name='mlp')(layer_norm('norm2', dtype=self.dtype)(x))
    return x, aux


class VisionTransformer(nn.Module):
  """ViT encoder; __call__(images, prefixes=None, prompt_tokens=None) -> (pre_logits, aux).

  aux = {'router': {layer: sparse-expert aux}} for layers with SparseExperts, and
  'tokens' (the final, normed token sequence) when return_tokens=True.
  """
  config: ViTConfig
  dtype: Any = jnp.float32   # compute dtype; params are always float32
  attention: str = 'explicit'   # see Attention

  @nn.compact
  def __call__(self, images, prefixes: Optional[Mapping[int, Any]] = None,
               prompt_tokens: Optional[Mapping[int, Array]] = None, return_tokens: bool = False):
    cfg = self.config
    prefixes = dict(prefixes or {})
    prompt_tokens = dict(prompt_tokens or {})
    check_prompt_layers(list(prefixes) + list(prompt_tokens), cfg.depth)
    expected = (cfg.image_size, cfg.image_size, cfg.in_channels)
    if tuple(images.shape[1:]) != expected:
      raise ConfigError(f'images of shape {tuple(images.shape[1:])} given to a ViT built for '
                        f'{expected} (NHWC); resize the inputs or set image_size')
    x = PatchEmbed(cfg.embed_dim, cfg.patch_size, self.dtype, name='patch_embed')(images)
    batch = x.shape[0]
    x = x.reshape(batch, -1, cfg.embed_dim)
    cls = self.param('cls_token', nn.initializers.normal(1e-6), (1, 1, cfg.embed_dim))
    pos = self.param('pos_embed', _trunc_normal, (1, cfg.num_tokens, cfg.embed_dim))
    x = jnp.concatenate([jnp.broadcast_to(cls, (batch, 1, cfg.embed_dim)).astype(x.dtype), x], 1)
    x = x + pos.astype(x.dtype)

    router = {}
    num_prepended = 0
    for i in range(cfg.depth):
      if i in prompt_tokens:
        tokens = jnp.broadcast_to(prompt_tokens[i], (batch,) + prompt_tokens[i].shape[1:])
        x = jnp.concatenate([tokens.astype(x.dtype), x], axis=1)
        num_prepended += tokens.shape[1]
      # Only the pooled token leaves the last block, and every op after its attention is
      # per token: that block computes the pooled token's attention row, projection and MLP
      # alone (569 -> 533 GFLOP for NoRGa's ViT-B/16 train step). Exact, up to float rounding.
      # SMoPE's experts score the mean query over all tokens, so their layers stay whole.
      pooled_only = (i == cfg.depth - 1 and not return_tokens
                     and not isinstance(prefixes.get(i), prefix_lib.SparseExperts))
      x, aux = Block(cfg.num_heads, int(cfg.embed_dim * cfg.mlp_ratio), self.dtype, self.attention,
                     name=f'blocks_{i}')(x, prefixes.get(i), num_prepended if pooled_only else None)
      if aux:
        router[i] = aux
    if cfg.final_norm:
      x = layer_norm('norm', dtype=self.dtype)(x)
    out = {'router': router}
    if return_tokens:
      out['tokens'] = x
    return x[:, 0 if pooled_only else num_prepended], out
