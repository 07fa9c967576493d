"""cljax's ViT, gates, prompts and heads against the PyTorch oracle, from one state dict.

Tolerances (fp32): forward 1e-5 relative (max |diff| / max |ref|), gradients 1e-4.
"""

import numpy as np
import pytest

from cljax.models.prefix import ACTIVATIONS
from cljax.models.prompts import PoolSpec
from cljax.models.vit import ViTConfig, vit_config
from cljax_testing.torch_oracle import Pair, rel_err

SMALL = ViTConfig(embed_dim=64, depth=3, num_heads=4, patch_size=8, image_size=32)
FWD, GRAD = 1e-5, 1e-4
RNG = np.random.RandomState(0)
IMAGES = RNG.rand(6, 32, 32, 3).astype(np.float32)
LABELS = np.array([0, 3, 6, 1, 2, 5])
IDX = np.array([0, 1, 2, 3, 1, 0])    # per-example pool entries (test-time selection)


def check(pair, idx=IDX, images=IMAGES, labels=LABELS, grad_keys=()):
  pre, logits, grads = pair.cljax(images, idx, labels)
  t_pre, t_logits, t_grads = pair.reference(images, idx, labels)
  errors = {'pre_logits': rel_err(pre, t_pre), 'logits': rel_err(logits, t_logits)}
  assert errors['pre_logits'] < FWD and errors['logits'] < FWD, errors
  assert set(grads) == set(t_grads), (sorted(grads), sorted(t_grads))
  for key in grads:
    errors[key] = rel_err(grads[key], t_grads[key])
    assert errors[key] < GRAD, (key, errors[key])
  for key in grad_keys:   # the parameters the case is about must really receive gradient
    assert np.abs(t_grads[key]).max() > 0, key
  return errors


@pytest.mark.parametrize('kv_layout', ['reference', 'correct'])
def test_linear_prefix_hideprompt(kv_layout):
  spec = PoolSpec(layers=(0, 1), pool_size=4, length=5, gate='linear', kv_layout=kv_layout)
  check(Pair(SMALL, spec=spec), grad_keys=('e_prompt.prompt', 'head.weight'))


@pytest.mark.parametrize('activation', sorted(ACTIVATIONS))
def test_norga_gate_every_activation(activation):
  spec = PoolSpec(layers=(0, 1, 2), pool_size=4, length=5, gate='norga', activation=activation)
  check(Pair(SMALL, spec=spec), grad_keys=('e_prompt.prompt', 'e_prompt.act_scale', 'head.bias'))


def test_norga_single_entry_training_batch():
  # Training: every example uses entry t, so the reshape quirk pairs (K,K) and (V,V).
  spec = PoolSpec(layers=(0, 1, 2), pool_size=4, length=5, gate='norga', activation='sigmoid')
  check(Pair(SMALL, spec=spec), idx=np.full(6, 2))


def test_prompt_tuning_tokens_top_k():
  spec = PoolSpec(layers=(0,), pool_size=6, length=3, kind='tokens')
  idx = np.stack([IDX, (IDX + 2) % 6], 1)     # top_k = 2 entries per example
  check(Pair(SMALL, spec=spec), idx=idx, grad_keys=('e_prompt.prompt',))


@pytest.mark.parametrize('hidden,fc_norm', [((2,), False), ((4, 4), False), ((2,), True)])
def test_task_identity_mlp_mapping(hidden, fc_norm):
  cfg = ViTConfig(embed_dim=64, depth=2, num_heads=4, patch_size=8, image_size=32,
                  final_norm=not fc_norm)
  errors = check(Pair(cfg, mlp_hidden=hidden, fc_norm=fc_norm), idx=None,
                 grad_keys=('mlp.net.0.0.weight', 'head.weight'))
  assert 'mlp.net.0.0.weight' in errors


def test_vit_b16_norga_reference_layout():
  """Acceptance: ViT-B/16 at 224, NoRGa in the reference checkpoint layout."""
  spec = PoolSpec(layers=(0, 1, 2, 3, 4), pool_size=10, length=20, gate='norga',
                  activation='tanh')
  pair = Pair(vit_config('vit_b16'), num_classes=100, spec=spec)
  assert pair.state_dict['e_prompt.prompt'].shape == (5, 2, 10, 20, 12, 64)
  assert pair.state_dict['e_prompt.act_scale'].shape == (5, 2, 1, 1)
  images = np.random.RandomState(1).rand(2, 224, 224, 3).astype(np.float32)
  pre, logits, _ = pair.cljax(images, np.array([3, 7]))
  t_pre, t_logits, _ = pair.reference(images, np.array([3, 7]))
  assert rel_err(logits, t_logits) < FWD
  assert rel_err(pre, t_pre) < FWD


def test_vit_b16_plain_backbone_timm_layout():
  pair = Pair(vit_config('vit_b16'), num_classes=10)
  images = np.random.RandomState(2).rand(2, 224, 224, 3).astype(np.float32)
  assert rel_err(pair.cljax(images)[1], pair.reference(images)[1]) < FWD
