"""config.attention='fused' (jax.nn.dot_product_attention where exact) against the PyTorch oracle,
to the fp32 parity tolerances of test_model_parity.py."""

import dataclasses

import numpy as np
import pytest

from cljax.models import prefix as prefix_lib
from cljax.models.prompts import PoolSpec
from cljax.models.vit import ViTConfig
from cljax_testing.torch_oracle import Pair, rel_err

SMALL = ViTConfig(embed_dim=64, depth=3, num_heads=4, patch_size=8, image_size=32)
IMAGES = np.random.RandomState(0).rand(6, 32, 32, 3).astype(np.float32)
LABELS = np.array([0, 3, 6, 1, 2, 5])
IDX = np.array([0, 1, 2, 3, 1, 0])


@pytest.mark.parametrize('gate', ['none', 'linear', 'norga'])
def test_fused_attention_matches_the_oracle(gate, monkeypatch):
  spec = None if gate == 'none' else PoolSpec(layers=(0, 1), pool_size=4, length=5, gate=gate,
                                              activation='tanh' if gate == 'norga' else 'identity')
  pair = Pair(SMALL, spec=spec)
  pair.model = dataclasses.replace(pair.model, attention='fused')
  calls = []
  fused = prefix_lib.attend_fused
  monkeypatch.setattr(prefix_lib, 'attend_fused', lambda *a: calls.append(a[-1]) or fused(*a))
  idx = None if spec is None else IDX
  pre, logits, grads = pair.cljax(IMAGES, idx, LABELS)
  t_pre, t_logits, t_grads = pair.reference(IMAGES, idx, LABELS)
  assert rel_err(pre, t_pre) < 1e-5 and rel_err(logits, t_logits) < 1e-5
  assert set(grads) == set(t_grads)
  for key in grads:
    assert rel_err(grads[key], t_grads[key]) < 1e-4, key
  # Every layer fused, except NoRGa's gated prefix layers (their gate keeps the explicit path).
  assert calls and any(p is None for p in calls)
  assert any(p is not None for p in calls) == (gate == 'linear')
