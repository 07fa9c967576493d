"""A whole prompted classifier as the references build it: backbone + prompt pool + classifier.

Params are grouped ``{'backbone', 'classifier', 'prompts'}``; the groups share one PyTorch
namespace (see `cljax.checkpoints.torch_names`), so ``to_state_dict(params)`` is exactly the
references' ``model.state_dict()``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp

from cljax.models.heads import Classifier
from cljax.models.prompts import PoolSpec
from cljax.models.vit import VisionTransformer, ViTConfig


@dataclasses.dataclass(frozen=True)
class PromptedViTSpec:
  vit: ViTConfig
  num_classes: int
  pool: Optional[PoolSpec] = None
  mlp_hidden: Tuple[int, ...] = ()
  fc_norm: bool = False
  head_init: str = 'timm'
  dtype: Any = jnp.float32
  attention: str = 'explicit'      # config.attention: explicit | fused (see vit.Attention)

  def __post_init__(self):
    object.__setattr__(self, 'mlp_hidden', tuple(self.mlp_hidden))
    if self.pool is not None:
      from cljax.models.vit import check_prompt_layers  # pylint: disable=g-import-not-at-top
      check_prompt_layers(self.pool.layers, self.vit.depth)

  @property
  def backbone(self) -> VisionTransformer:
    return VisionTransformer(self.vit, dtype=self.dtype, attention=self.attention)

  @property
  def classifier(self) -> Classifier:
    return Classifier(self.num_classes, self.mlp_hidden, self.fc_norm, self.head_init, self.dtype)

  def init(self, rng):
    k_vit, k_clf, k_prompt = jax.random.split(rng, 3)
    images = jnp.zeros((1, self.vit.image_size, self.vit.image_size, self.vit.in_channels))
    params = {
        'backbone': self.backbone.init(k_vit, images)['params'],
        'classifier': self.classifier.init(k_clf, jnp.zeros((1, self.vit.embed_dim)))['params'],
    }
    if self.pool is not None:
      params['prompts'] = {'e_prompt': self.pool.init(k_prompt, self.vit)}
    return params

  def init_trainable(self, rng):
    """The classifier (and prompts) alone: what methods train; the backbone is loaded."""
    _, k_clf, k_prompt = jax.random.split(rng, 3)
    params = {'classifier': self.classifier.init(k_clf, jnp.zeros((1, self.vit.embed_dim)))['params']}
    if self.pool is not None:
      params['prompts'] = {'e_prompt': self.pool.init(k_prompt, self.vit)}
    return params

  def template(self):
    """Shape-only params (no computation), for checkpoint conversion."""
    return jax.eval_shape(self.init, jax.random.PRNGKey(0))

  def features(self, params, images, idx=None, prompt=None, num_valid=None):
    """Pooled features (pre_logits) and the ViT's aux; idx selects pool entries per example."""
    inputs = {}
    if self.pool is not None and idx is not None:
      inputs = self.pool.inputs(params['prompts']['e_prompt'], idx, prompt, num_valid)
    return self.backbone.apply({'params': params['backbone']}, images, **inputs)

  def logits(self, params, pre_logits):
    return self.classifier.apply({'params': params['classifier']}, pre_logits)

  def __call__(self, params, images, idx=None):
    pre, aux = self.features(params, images, idx)
    return pre, self.logits(params, pre), aux
