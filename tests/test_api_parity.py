"""What a parity script needs from `cljax.api`, against the PyTorch oracle: a reference
checkpoint loaded with `api.load_checkpoint`, training-mode logits (prompt mask + momentum), the
task-identity model's prediction, SMoPE's noisy training forward; numpy params accepted."""

import argparse

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from cljax import api
from cljax import config as config_lib
from cljax_testing import torch_oracle
from cljax.errors import CheckpointError
from cljax.methods import hide
from cljax_testing.torch_oracle import rel_err

KW = dict(dim=128, depth=6, heads=4, patch=4, image=28, num_classes=10)   # the demo ViT
IMAGES = np.random.RandomState(1).rand(5, 28, 28, 3).astype(np.float32)
X = torch.from_numpy(IMAGES).permute(0, 3, 1, 2)
FWD = 1e-5


def _args(**kw):
  return argparse.Namespace(config='split_digits_norgaprompt', nb_classes=10, batch_size=32, **kw)


@pytest.fixture(scope='module')
def norga(tmp_path_factory):
  tmp = tmp_path_factory.mktemp('api')
  torch.manual_seed(0)
  model = torch_oracle.PromptedViT(prompt_layers=(0, 1, 2), pool=5, length=4, gate='norga', gate_act='tanh', **KW)
  with torch.no_grad():
    model.e_prompt.act_scale.uniform_(0.5, 2.0)
  tii = torch_oracle.PromptedViT(mlp_hidden=(2,), **KW)
  path, tii_path = tmp / 'task3_checkpoint.pth', tmp / 'tii.pth'
  torch.save({'model': model.state_dict(), 'args': _args(gate_act='tanh', e_prompt_layer_idx=[0, 1, 2],
                                                         length=4, size=5, head_type='token')}, path)
  torch.save({'model': tii.state_dict(), 'args': _args(original_model_mlp_structure=[2],
                                                       train_inference_task_only=True)}, tii_path)
  return api.build(config_lib.demo('norga'), data=False), model, tii, str(path), str(tii_path)


def test_training_logits_with_prompt_mask_and_momentum(norga):
  setup, model, _, path, _ = norga
  params, backbone = api.load_checkpoint(setup, path)
  t, m = 2, setup.config.prompt.momentum
  logits, _ = api.training_logits(setup, params, {}, backbone, IMAGES, task=t)
  with torch.no_grad():
    pool = model.e_prompt.prompt.clone()
    pool[:, :, t] = (1 - m) * pool[:, :, t] + m * pool[:, :, :t].mean(2)
    ref = model.classify(model.features(X, torch.full((5,), t), prompt=pool))
  assert rel_err(logits, ref.numpy()) < FWD
  # Test mode (no momentum) differs, so the comparison above is not vacuous.
  assert rel_err(api.predict(setup, params, {}, backbone, IMAGES, np.full(5, t)), ref.numpy()) > 1e-4


def test_predict_task_of_the_task_identity_model(norga):
  setup, _, tii, _, tii_path = norga
  params, backbone = api.load_checkpoint(setup, tii_path, stage='task_identity')
  ids, logits = api.predict_task(setup, params, backbone, IMAGES, task=2)
  with torch.no_grad():
    ref = tii(X)[1].numpy()
  assert rel_err(logits, ref) < FWD
  split = api._split(setup)  # pylint: disable=protected-access
  seen = split.seen_mask(2)
  expected = split.class_to_task[np.argmax(np.where(seen, ref, -np.inf), -1)]
  assert np.array_equal(np.asarray(ids), expected) and set(np.asarray(ids)) <= {0, 1, 2}


def test_numpy_params_work_where_jax_arrays_do(norga):
  setup, _, _, path, _ = norga
  params, backbone = api.load_checkpoint(setup, path)
  pool = np.asarray(params['prompts']['e_prompt']['prompt'])
  assert isinstance(pool, np.ndarray)
  np.testing.assert_array_equal(hide.momentum_pool(pool, 2, 0.01), hide.momentum_pool(jnp.asarray(pool), 2, 0.01))


def test_a_checkpoint_of_another_activation_is_refused(norga):
  setup, _, _, path, _ = norga
  gelu = api.with_activation(setup, 'gelu')
  with pytest.raises(CheckpointError, match='checkpoint says gate_act=tanh, config.prompt.activation=gelu'):
    api.load_checkpoint(gelu, path)


def test_smope_noisy_training_forward(tmp_path):
  c = config_lib.demo('smope')
  c.prompt.update(layers=(0, 2), length=12, experts_top_k=2)
  setup = api.build(c, data=False)
  torch.manual_seed(0)
  model = torch_oracle.SmopeViT(expert_layers=(0, 2), experts=6, top_k=2, eps=c.prompt.noise_eps, **KW)
  path = tmp_path / 'class.pth'
  torch.save(torch_oracle.learner_state_dict(model), path)
  params, backbone = api.load_checkpoint(setup, str(path))
  rng = np.random.default_rng(0)
  frequent = rng.random((2, 4, 6)) < 0.5
  state = {**setup.method.init_state(), 'frequent': frequent}
  logits, aux = api.smope_training_logits(setup, params, state, backbone, IMAGES, task=1)
  with torch.no_grad():
    ref, scores = model(X, torch.from_numpy(np.where(frequent, c.prompt.noise_eps, 0.0)).float())
  assert rel_err(logits, ref.numpy()) < FWD
  assert set(aux['router']) == {0, 2}
  dense, _ = api.smope_training_logits(setup, params, state, backbone, IMAGES, task=0, dense=True)
  with torch.no_grad():
    ref_dense, _ = model(X, torch.zeros(2, 4, 6), dense=True)
  assert rel_err(dense, ref_dense.numpy()) < FWD
