"""Files written by the original reference code (tests/data/original/README.md) load into cljax
and give the original forward's logits."""

import dataclasses
import os

import jax.numpy as jnp
import numpy as np
import pytest

from cljax import api
from cljax import config as config_lib
from cljax import convert
from cljax import methods as methods_lib
from cljax.checkpoints import reference
from cljax.methods import task_identity
from cljax.models.vit import ViTConfig
from cljax_testing.torch_oracle import rel_err

DATA = os.path.join(os.path.dirname(__file__), 'data', 'original')
EXPECTED = np.load(os.path.join(DATA, 'original_expected.npz'))
DP_EXPECTED = np.load(os.path.join(DATA, 'original_dp_expected.npz'))
IMAGES = EXPECTED['images']
FWD = 1e-5


def vit(depth):
  return ViTConfig(embed_dim=32, depth=depth, num_heads=2, patch_size=8, image_size=16)


def method_for(name):
  c = config_lib.demo('norga' if name == 'task_identity' else name)
  if name in ('norga', 'task_identity'):
    c.prompt.update(layers=(0, 1), length=2)
    return c, (task_identity.build(c, vit(3), 6) if name == 'task_identity' else methods_lib.build(c, vit(3), 6, 3))
  if name == 'smope':
    c.prompt.update(layers=(0, 1, 2, 3, 4, 5), length=8, experts_top_k=2)
  else:
    c.prompt.update(layers=(0, 1, 2, 3, 4), pool_size=6, length=4)
  return c, methods_lib.build(c, vit(6), 6, 3)


def logits(method, params, state, ids):
  trainable = {k: v for k, v in params.items() if k != 'backbone'}
  out, _ = method.predict(trainable, state, params['backbone'], IMAGES, jnp.asarray(ids, jnp.int32),
                          jnp.ones(len(IMAGES), bool))
  return np.asarray(out)


@pytest.mark.parametrize('name,file,key', [
    ('norga', 'norga_task3_checkpoint.pth', 'norga_logits'),
    ('task_identity', 'norga_tii_task3_checkpoint.pth', 'tii_logits'),
    ('smope', 'smope_class.pth', 'smope_logits'),
    ('coda', 'coda_class.pth', 'coda_logits')])
def test_original_file_gives_the_original_logits(name, file, key):
  c, method = method_for(name)
  path = os.path.join(DATA, file)
  ckpt = reference.read(path)
  assert ckpt.method == name
  params = reference.load(path, reference.method_template(method), layers=tuple(c.prompt.layers))
  state = {'smope': method.init_state(), 'coda': {'task': jnp.int32(1)}}.get(name, {})
  ids = EXPECTED['norga_prompt_ids'] if name == 'norga' else np.zeros(len(IMAGES))
  assert rel_err(logits(method, params, state, ids), EXPECTED[key]) < FWD


def test_original_norga_training_forward_through_the_api():
  """Prompt mask + momentum (task 2, m=0.01) as the original's forward(train=True)."""
  c, method = method_for('norga')
  setup = dataclasses.replace(api.build(c, data=False), method=method)
  path = os.path.join(DATA, 'norga_task3_checkpoint.pth')
  params = reference.load(path, reference.method_template(method))
  backbone = params.pop('backbone')
  out, _ = api.training_logits(setup, params, {}, backbone, IMAGES, task=2)
  assert rel_err(out, EXPECTED['norga_train_logits']) < FWD


def test_original_file_refused_with_another_activation(capsys):
  path = os.path.join(DATA, 'norga_task3_checkpoint.pth')
  convert.main(['inspect', path])
  assert 'NoRGa (norga) in the MoE_PromptCL/HiDe-Prompt' in capsys.readouterr().out
  with pytest.raises(SystemExit) as e:
    convert.main(['reference', path, '/tmp/unused.pth', '--activation', 'gelu'])
  assert e.value.code == 2     # a user error: exit status 2, the line on stderr
  assert capsys.readouterr().err == f'error: {path}: checkpoint says gate_act=tanh, --activation=gelu\n'


KEYED = {'l2p': dict(layers=(0,), pool_size=6, length=2, top_k=2, batchwise_prompt=True),
         'dualprompt': dict(layers=(2,), g_layers=(0, 1), g_length=2, pool_size=3, length=2, top_k=1,
                            batchwise_prompt=False),
         'sprompt': dict(layers=(0, 1, 2), pool_size=3, length=2, top_k=1, batchwise_prompt=False)}


@pytest.mark.parametrize('name', sorted(KEYED))
def test_original_keyed_file_gives_the_original_logits_and_choices(name):
  c = config_lib.demo(name)
  c.prompt.update(**KEYED[name])
  method = methods_lib.build(c, vit(3), 6, 3)
  path = os.path.join(DATA, f'{name}_task3_checkpoint.pth')
  assert reference.read(path).method == name
  params = reference.load(path, reference.method_template(method))
  trainable = {k: v for k, v in params.items() if k != 'backbone'}
  out, idx = method.predict(trainable, {}, params['backbone'], DP_EXPECTED['images'],
                            jnp.zeros(6, jnp.int32), jnp.ones(6, bool))
  assert rel_err(out, DP_EXPECTED[f'{name}_logits']) < FWD
  # The same entries (L2P's vote ties: torch.topk leaves their order open; the logits agree).
  assert np.array_equal(np.sort(np.asarray(idx), -1), np.sort(DP_EXPECTED[f'{name}_prompt_idx'], -1))
