"""Pretrained ViT backbones from timm/PyTorch and Google checkpoints.

The references load every backbone into a timm ``vit_base_patch16_224_in21k`` and keep only
the keys the model knows (ALGORITHMS.md 8.1): Google npz (Sup-21K), timm/HF .bin and
.safetensors (AugReg), DINO (flat), iBOT ('teacher' or 'state_dict', 'backbone.' prefix),
MoCo v3 ('model', or raw 'state_dict' with 'module.base_encoder.'). `load_backbone` does the
same: it strips wrappers and prefixes, converts Google names, drops what is not backbone
(heads, projection MLPs, iBOT's masked_embed) and reports it, resizes the position embedding
like timm when the patch grid differs, and then loads strictly: a missing or mis-shaped backbone
key is an error naming it.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Dict, List, Tuple

import jax
import numpy as np

from cljax.checkpoints import files, torch_names
from cljax.errors import CheckpointError, ConfigError
from cljax.models.vit import VisionTransformer, ViTConfig, vit_config

BACKBONE_PREFIXES = ('cls_token', 'pos_embed', 'patch_embed.', 'blocks.', 'norm.')
# feat.: the SMoPE repository's learner file (its ViT is ViTZoo.feat).
STRIP_PREFIXES = ('module.base_encoder.', 'module.', 'backbone.', 'encoder.', 'feat.')


# ----------------------------------------------------------------------------- Google npz

def is_google_npz(sd) -> bool:
  return any(k.endswith('embedding/kernel') for k in sd)


def google_to_timm(npz: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
  """Google ViT .npz names and layouts -> timm names and PyTorch layouts (ALGORITHMS.md 8.2)."""
  pre = 'opt/target/' if 'opt/target/embedding/kernel' in npz else ''
  w = {k[len(pre):]: v for k, v in npz.items() if k.startswith(pre)}
  out = {
      'patch_embed.proj.weight': w['embedding/kernel'].transpose(3, 2, 0, 1),
      'patch_embed.proj.bias': w['embedding/bias'],
      'cls_token': w['cls'],
      'pos_embed': w['Transformer/posembed_input/pos_embedding'],
      'norm.weight': w['Transformer/encoder_norm/scale'],
      'norm.bias': w['Transformer/encoder_norm/bias'],
  }
  if 'head/kernel' in w:
    out['head.weight'] = w['head/kernel'].T
    out['head.bias'] = w['head/bias']
  i = 0
  while f'Transformer/encoderblock_{i}/LayerNorm_0/scale' in w:
    b, t = f'Transformer/encoderblock_{i}/', f'blocks.{i}.'
    mha = b + 'MultiHeadDotProductAttention_1/'
    out[t + 'norm1.weight'] = w[b + 'LayerNorm_0/scale']
    out[t + 'norm1.bias'] = w[b + 'LayerNorm_0/bias']
    # query/key/value kernels are [D, H, d] -> [D, D] (in, out); torch stacks them along out.
    qkv = [w[f'{mha}{n}/kernel'].reshape(w[f'{mha}{n}/kernel'].shape[0], -1).T
           for n in ('query', 'key', 'value')]
    out[t + 'attn.qkv.weight'] = np.concatenate(qkv, 0)
    out[t + 'attn.qkv.bias'] = np.concatenate(
        [w[f'{mha}{n}/bias'].reshape(-1) for n in ('query', 'key', 'value')])
    kernel = w[mha + 'out/kernel']                                 # [H, d, D]
    out[t + 'attn.proj.weight'] = kernel.reshape(-1, kernel.shape[-1]).T
    out[t + 'attn.proj.bias'] = w[mha + 'out/bias']
    out[t + 'norm2.weight'] = w[b + 'LayerNorm_2/scale']
    out[t + 'norm2.bias'] = w[b + 'LayerNorm_2/bias']
    for r in range(2):
      out[t + f'mlp.fc{r + 1}.weight'] = w[b + f'MlpBlock_3/Dense_{r}/kernel'].T
      out[t + f'mlp.fc{r + 1}.bias'] = w[b + f'MlpBlock_3/Dense_{r}/bias']
    i += 1
  return {k: np.ascontiguousarray(v) for k, v in out.items()}


# ----------------------------------------------------------------------------- pos-embed resize

def _cubic_weights(t, a=-0.75):
  """torch's bicubic convolution weights (A = -0.75) for the 4 taps around a sample."""
  def near(x):  # |x| <= 1
    return ((a + 2) * x - (a + 3)) * x * x + 1
  def far(x):   # 1 < |x| < 2
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
  return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], -1)


def _resize_axis(x, new, axis):
  """Bicubic resize of one axis as torch F.interpolate(align_corners=False): clamped borders."""
  old = x.shape[axis]
  src = (np.arange(new) + 0.5) * (old / new) - 0.5
  base = np.floor(src).astype(np.int64)
  weights = _cubic_weights(src - base)                      # [new, 4]
  taps = np.clip(base[:, None] + np.arange(-1, 3)[None], 0, old - 1)
  moved = np.moveaxis(x, axis, 0)                           # [old, ...]
  out = np.einsum('nk,nk...->n...', weights, moved[taps])
  return np.moveaxis(out, 0, axis)


def resize_pos_embed(pos_embed: np.ndarray, new_grid: int, num_prefix_tokens: int = 1) -> np.ndarray:
  """timm's resize of [1, prefix + g*g, D] position embeddings to a new_grid x new_grid grid
  (bicubic, align_corners=False, no antialias, as timm 0.6.7 pinned by the references)."""
  prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[0, num_prefix_tokens:]
  old = int(round(math.sqrt(grid.shape[0])))
  if old * old != grid.shape[0]:
    raise CheckpointError(f'pos_embed with {grid.shape[0]} grid tokens is not a square grid')
  grid = grid.reshape(old, old, -1).astype(np.float64)
  grid = _resize_axis(_resize_axis(grid, new_grid, 0), new_grid, 1)
  grid = grid.reshape(1, new_grid * new_grid, -1).astype(pos_embed.dtype)
  return np.concatenate([prefix, grid], axis=1)


# ----------------------------------------------------------------------------- backbone loading

def normalise_keys(state_dict) -> Dict[str, np.ndarray]:
  """Strip the wrappers and prefixes of the known checkpoint families; Google -> timm names."""
  sd = files.unwrap(state_dict)
  if is_google_npz(sd):
    return google_to_timm(sd)
  out = {}
  for k, v in sd.items():
    for p in STRIP_PREFIXES:
      if k.startswith(p):
        k = k[len(p):]
        break
    out[k] = v
  return out


def template(config: ViTConfig):
  """Abstract (shape-only) backbone params for a config."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  model = VisionTransformer(config)
  # Shapes only, nothing compiled: a checkpoint's keys are checked before any compilation.
  dummy = jax.ShapeDtypeStruct((1, config.image_size, config.image_size, config.in_channels), jnp.float32)
  return jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x), dummy)['params']


def backbone_from_state_dict(sd: Dict[str, np.ndarray], config: ViTConfig,
                             what: str = 'checkpoint', truncate: bool = False) -> Tuple[dict, List[str]]:
  """Backbone params from a normalised timm-named state dict; returns (params, notes).

  ``truncate`` keeps the first config.depth blocks of a deeper checkpoint (tests, debugging)."""
  notes = []
  if truncate:
    deeper = [k for k in sd if k.startswith('blocks.') and int(k.split('.')[1]) >= config.depth]
    if deeper:
      notes.append(f'kept the first {config.depth} blocks ({len(deeper)} keys of deeper blocks dropped)')
      sd = {k: v for k, v in sd.items() if k not in set(deeper)}
  dropped = sorted(k for k in sd if not k.startswith(BACKBONE_PREFIXES))
  if not config.final_norm:
    dropped += sorted(k for k in sd if k.startswith('norm.'))   # MoCo v3: norm -> fc_norm
  if dropped:
    notes.append(f'ignored {len(dropped)} non-backbone key(s): {torch_names.name_list(dropped)}')
  sd = {k: v for k, v in sd.items() if k not in set(dropped)}
  pos = sd.get('pos_embed')
  if pos is not None and pos.ndim == 3 and pos.shape[1] != config.num_tokens:
    old = pos.shape[1]
    sd['pos_embed'] = resize_pos_embed(pos, config.grid)
    notes.append(f'resized pos_embed from {old} to {config.num_tokens} tokens')
  params = torch_names.from_state_dict(sd, {'backbone': template(config)}, what)['backbone']
  return params, notes


def load_backbone(path: str, config: ViTConfig, truncate: bool = False) -> Tuple[dict, List[str]]:
  """Backbone params (numpy float32) from any supported checkpoint file; returns (params, notes)."""
  return backbone_from_state_dict(normalise_keys(files.read(path)), config, what=path, truncate=truncate)


# ----------------------------------------------------------------------------- named backbones

@dataclasses.dataclass(frozen=True)
class NamedBackbone:
  """A pretrained backbone by unambiguous name (ALGORITHMS.md D4)."""
  arch: str                 # vit_config name, or 'demo'
  file: str                 # the file name the references expect
  how_to_get: str
  fc_norm: bool = False     # MoCo v3: pool before the final norm; trainable fc_norm instead
  paper_name: str = ''


NAMED = {
    'vit_b16_in21k': NamedBackbone(
        'vit_b16', 'ViT-B_16.npz', 'Google\'s original ImageNet-21k ViT-B/16: '
        'gs://vit_models/imagenet21k/ViT-B_16.npz', paper_name='Sup-21K (HiDe, NoRGa, L2P, DualPrompt, S-Prompt)'),
    'vit_b16_augreg_in21k': NamedBackbone(
        'vit_b16', 'vit_base_patch16_224_augreg_in21k.bin', 'HF hub timm/vit_base_patch16_224.augreg_in21k '
        '(pytorch_model.bin or model.safetensors)', paper_name='Sup-21K (SMoPE, CUB)'),
    'vit_b16_augreg2_in21k_ft_in1k': NamedBackbone(
        'vit_b16', 'vit_base_patch16_224_augreg2_in21k_ft_in1k.bin', 'HF hub '
        'timm/vit_base_patch16_224.augreg2_in21k_ft_in1k', paper_name='Sup-1K (SMoPE default)'),
    'ibot_in21k': NamedBackbone(
        'vit_b16', 'checkpoint.pth', 'iBOT ViT-B/16 ImageNet-22K teacher checkpoint (github.com/bytedance/ibot)',
        paper_name='iBOT-21K'),
    'ibot_in1k': NamedBackbone(
        'vit_b16', 'ibot_vitbase16_pretrain.pth', 'iBOT ViT-B/16 ImageNet-1K pretrain checkpoint '
        '(github.com/bytedance/ibot)', paper_name='iBOT-1K'),
    'dino_in1k': NamedBackbone(
        'vit_b16', 'dino_vitbase16_pretrain.pth', 'DINO ViT-B/16 (github.com/facebookresearch/dino)',
        paper_name='DINO-1K'),
    'mocov3_in1k': NamedBackbone(
        'vit_b16', 'mocov3-vit-base-300ep.pth', 'MoCo v3 ViT-B 300ep (github.com/facebookresearch/moco-v3, '
        'vit-b-300ep.pth.tar or its DeiT conversion)', fc_norm=True, paper_name='MoCo v3-1K'),
    'demo_fmnist': NamedBackbone(
        'demo', 'demo_vit_fmnist.safetensors', 'shipped in cljax/assets; regenerate with '
        'python scripts/pretrain_demo_backbone.py', paper_name='demo ViT (Fashion-MNIST)'),
}

ASSETS = os.path.join(os.path.dirname(os.path.dirname(__file__)), 'assets')


def demo_vit_config(**overrides) -> ViTConfig:
  """The offline demo's backbone: 28x28 inputs, 4x4 patches (49 tokens), 6 blocks of width 128."""
  return ViTConfig(**{'embed_dim': 128, 'depth': 6, 'num_heads': 4, 'patch_size': 4,
                      'image_size': 28, **overrides})


def run_vit_config(c) -> ViTConfig:
  """The ViT of a run's config: the named backbone's architecture (or config.model_override) at
  config.backbone.image_size, cut to its first config.backbone.depth blocks (0 = all). Raises
  ConfigError for a depth beyond the architecture's."""
  info = NAMED[c.backbone.name]
  overrides = dict(image_size=c.backbone.image_size, final_norm=not info.fc_norm)
  if c.model_override:
    full = vit_config(c.model_override, **overrides)
  elif info.arch == 'demo':
    full = demo_vit_config(**overrides)
  else:
    full = vit_config(info.arch, **overrides)
  if c.backbone.depth > full.depth:
    raise ConfigError(f'config.backbone.depth={c.backbone.depth} exceeds the {full.depth} blocks of '
                      f'{c.model_override or c.backbone.name}; use 1..{full.depth} (0 = all)')
  return dataclasses.replace(full, depth=c.backbone.depth) if c.backbone.depth else full
