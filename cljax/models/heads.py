"""What sits on the pooled feature: optional MLP mapping, optional fc_norm, linear head.

`Classifier` is the reference's ``forward_head`` after pooling (its ``fc_only`` path):
``logits = head(fc_norm(mlp(pre_logits)))``. With ``mlp_hidden=()`` and ``fc_norm=False`` it is
a plain linear head (stage 2 of HiDe/NoRGa, the baselines, SMoPE); with ``mlp_hidden=(2,)`` it
is HiDe's task-identity "original model" head. Parameter names follow the PyTorch keys
``mlp.net.{i}.{j}.*``, ``mlp.norm.*``, ``fc_norm.*``, ``head.*``.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cljax.errors import one_of
from cljax.models import prefix as prefix_lib
from cljax.models.vit import layer_norm

HEAD_INITS = ('timm', 'torch_default')


def timm_trunc_normal(std: float = 0.02):
  """timm's ``trunc_normal_(std=std)`` (timm/models/layers/weight_init.py, used by the
  references' ``_init_weights`` for every Linear): N(0, std) truncated at +-2 *absolute*, so its
  standard deviation is std. flax's ``truncated_normal(std)`` truncates at +-2 std instead and
  has std 0.88 x std (0.0176 for 0.02)."""
  bound = 2.0 / std
  return nn.initializers.truncated_normal(std, lower=-bound, upper=bound)


def _uniform(bound):
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


class Linear(nn.Module):
  """y = x W + b, initialised as timm (`timm_trunc_normal`, zero bias) or as torch's nn.Linear
  (U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias; SMoPE's head)."""
  features: int
  head_init: str = 'timm'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    fan_in = x.shape[-1]
    if self.head_init == 'timm':
      kernel_init, bias_init = timm_trunc_normal(0.02), nn.initializers.zeros
    elif self.head_init == 'torch_default':
      kernel_init = bias_init = _uniform(1.0 / fan_in ** 0.5)
    else:
      raise one_of('head init', self.head_init, HEAD_INITS)
    kernel = self.param('kernel', kernel_init, (fan_in, self.features))
    bias = self.param('bias', bias_init, (self.features,))
    return x.astype(self.dtype) @ kernel.astype(self.dtype) + bias.astype(self.dtype)


class MlpMapping(nn.Module):
  """HiDe's residual MLP: LN_1e-5(net(x) + x); hidden multiples of the input width."""
  hidden: Sequence[int]
  final_norm: bool = True   # False when an fc_norm follows (MoCo v3)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    dim = x.shape[-1]
    widths = [dim * h for h in self.hidden]
    n = len(self.hidden)
    out = x
    for i in range(n + 1):
      width = dim if i == n else widths[i]
      out = Linear(width, 'timm', self.dtype, name=f'net_{i}_0')(out)
      if i == n:
        break
      if 0 < i and i == n // 2:
        # The middle layer of a deeper stack is Linear -> Dropout -> LayerNorm (no activation).
        out = nn.LayerNorm(epsilon=1e-5, use_fast_variance=False, dtype=self.dtype,
                           name=f'net_{i}_2')(out)
      else:
        out = prefix_lib.gelu(out)
    out = out + x
    if self.final_norm:
      out = nn.LayerNorm(epsilon=1e-5, use_fast_variance=False, dtype=self.dtype, name='norm')(out)
    return out


class Classifier(nn.Module):
  num_classes: int
  mlp_hidden: Sequence[int] = ()
  fc_norm: bool = False
  head_init: str = 'timm'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, features):
    x = features
    if self.mlp_hidden:
      x = MlpMapping(tuple(self.mlp_hidden), final_norm=not self.fc_norm, dtype=self.dtype,
                     name='mlp')(x)
    if self.fc_norm:
      x = layer_norm('fc_norm', dtype=self.dtype)(x)
    return Linear(self.num_classes, self.head_init, self.dtype, name='head')(x)
