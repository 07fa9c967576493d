"""Matmul precision is a stated choice (config.matmul_precision), visible in the lowered steps;
SMoPE's router scores are float32 whatever the compute dtype."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cljax import config as config_lib
from cljax.continual import step_inputs, trainer
from cljax.models import prefix as prefix_lib


def dot_precisions(text: str):
  """The precision of every dot_general in a lowered StableHLO module."""
  dots = [l for l in text.splitlines() if 'stablehlo.dot_general' in l]
  found = [re.search(r'precision = \[(\w+), (\w+)\]', l) for l in dots]
  return [m.groups() if m else ('DEFAULT', 'DEFAULT') for m in found]


@pytest.mark.parametrize('dtype, setting, expected', [
    ('float32', 'auto', 'HIGHEST'),
    ('bfloat16', 'auto', 'DEFAULT'),
    ('float32', 'default', 'DEFAULT'),
    ('float32', 'high', 'HIGH'),
    ('bfloat16', 'highest', 'HIGHEST'),
])
def test_every_dot_of_the_train_step_has_the_configured_precision(dtype, setting, expected):
  c = config_lib.demo('norga')
  c.dtype, c.matmul_precision = dtype, setting
  c.batch_size = c.eval_batch_size = 4
  exp = trainer.Experiment(c, '', load_data=False, verbose=False)
  stage = exp.stages[-1]
  args, flags = step_inputs.train_args(exp, stage, 4)
  text = exp.stage_steps(stage)['train'].lower(*args, flags=flags).as_text()
  precisions = dot_precisions(text)
  assert len(precisions) > 50      # the prompted ViT's forward and backward
  # SMoPE-style router dots are pinned to HIGHEST; NoRGa has none, so all follow the setting.
  assert set(precisions) == {(expected, expected)}, set(precisions)
  assert config_lib.matmul_precision(c) == expected.lower()


def test_smope_routes_the_same_experts_in_bf16_as_in_fp32():
  rng = np.random.default_rng(3)
  # Near-tied expert keys: bf16 arithmetic can reorder them.
  q32 = jnp.asarray(rng.normal(size=(16, 4, 10, 8)), jnp.float32)
  base = rng.normal(size=(1, 4, 8))
  key = jnp.asarray(base + 1e-3 * rng.normal(size=(12, 4, 8)), jnp.float32)
  q16 = q32.astype(jnp.bfloat16)
  experts = prefix_lib.SparseExperts(key=key, value=jnp.zeros((12, 4, 8)), top_k=3)
  r = prefix_lib.expert_scores(q16, key)
  assert r.dtype == jnp.float32
  chosen = prefix_lib.select_experts(r, experts)[0]
  fp32 = jnp.einsum('bhd,ehd->bhe', q16.astype(jnp.float32).mean(axis=2), key,
                    precision=jax.lax.Precision.HIGHEST)
  np.testing.assert_array_equal(chosen, jax.lax.top_k(fp32, 3)[1])
  # What scoring in the compute dtype would have chosen: other experts for some heads.
  in_bf16 = jnp.einsum('bhd,ehd->bhe', q16.mean(axis=2), key.astype(jnp.bfloat16)).astype(jnp.float32)
  assert (np.sort(np.asarray(jax.lax.top_k(in_bf16, 3)[1]), -1) != np.sort(np.asarray(chosen), -1)).any()
