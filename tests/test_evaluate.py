"""`python -m cljax.evaluate` on reference checkpoints: a NoRGa checkpoint pair written by the
PyTorch oracle at demo size (the demo backbone, Split-Digits) gives the accuracies of the
oracle's own evaluation (the references' protocol), within one test image per task."""

import argparse
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from cljax import api
from cljax import config as config_lib
from cljax import evaluate
from cljax_testing import torch_oracle
from cljax.checkpoints import backbones, files

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _images(setup, task, train):
  xs, ys = [], []
  for b in api.batches(setup, task, train=train, batch_size=256, shuffle=False):
    xs.append(b['images'][b['mask']])
    ys.append(b['labels'][b['mask']])
  return np.concatenate(xs), np.concatenate(ys)


def _nearest_mean_head(head, features, labels, classes):
  """Set the head rows of ``classes`` to a nearest-class-mean classifier of ``features``."""
  with torch.no_grad():
    for k in classes:
      m = features[labels == k].mean(0)
      head.weight[k] = m
      head.bias[k] = -0.5 * (m * m).sum()


@pytest.fixture(scope='module')
def pair(tmp_path_factory):
  """Oracle stage-1 and stage-2 models after task 5 of the demo, saved as the references do."""
  tmp = tmp_path_factory.mktemp('oracle')
  config = config_lib.demo('norga')
  setup = api.build(config)
  tasks = [list(map(int, t)) for t in setup.data.split.tasks]
  kw = dict(dim=128, depth=6, heads=4, patch=4, image=28, num_classes=10)
  torch.manual_seed(0)
  model = torch_oracle.PromptedViT(prompt_layers=(0, 1, 2), pool=5, length=4, gate='norga',
                                   gate_act='tanh', **kw)
  tii = torch_oracle.PromptedViT(mlp_hidden=(2,), **kw)
  weights = files.read(os.path.join(backbones.ASSETS, 'demo_vit_fmnist.safetensors'))
  backbone = {k: torch.from_numpy(v) for k, v in weights.items() if k.startswith(backbones.BACKBONE_PREFIXES)}
  for m in (model, tii):
    missing, unexpected = m.load_state_dict(backbone, strict=False)
    assert not unexpected and all(not k.startswith(backbones.BACKBONE_PREFIXES) for k in missing)
  with torch.no_grad():
    model.e_prompt.act_scale.uniform_(0.5, 1.5)
    model.e_prompt.prompt.mul_(0.3)
    for i, classes in enumerate(tasks):    # heads that classify, so the numbers say something
      x, y = _images(setup, i, train=True)
      xt = torch.from_numpy(x).permute(0, 3, 1, 2)
      _nearest_mean_head(tii.head, tii.mlp(tii.features(xt)), torch.from_numpy(y), classes)
      _nearest_mean_head(model.head, model.features(xt, torch.full((len(y),), i)), torch.from_numpy(y), classes)
  common = dict(config='split_digits_norgaprompt', nb_classes=10, batch_size=32, seed=42)
  prompt_path, tii_path = tmp / 'prompt' / 'task5_checkpoint.pth', tmp / 'tii' / 'task5_checkpoint.pth'
  for p in (prompt_path, tii_path):
    p.parent.mkdir()
  torch.save({'model': model.state_dict(), 'optimizer': {}, 'args': argparse.Namespace(
      gate_act='tanh', e_prompt_layer_idx=[0, 1, 2], length=4, size=5, head_type='token', **common)},
      prompt_path)
  torch.save({'model': tii.state_dict(), 'epoch': 19, 'args': argparse.Namespace(
      original_model_mlp_structure=[2], train_inference_task_only=True, **common)}, tii_path)
  test_sets = [_images(setup, i, train=False) for i in range(5)]
  accuracy, identity = torch_oracle.evaluate_till_now(model, tii, test_sets, tasks, 4, batch_size=32)
  return config, str(prompt_path), str(tii_path), accuracy, identity, [len(y) for _, y in test_sets]


def test_oracle_checkpoint_pair_gives_the_oracle_accuracies(pair):
  config, prompt_path, tii_path, accuracy, identity, sizes = pair
  results = evaluate.evaluate(config, {5: prompt_path}, {5: tii_path}, verbose=False)
  ours = np.asarray(results['accuracy'])[:, 4]
  ids = np.asarray(results['task_identity_accuracy_matrix'])[:, 4]
  assert results['eval_batch_size'] == 32
  # Within one test image per task (float noise may flip an argmax).
  assert np.all(np.abs(ours - accuracy) * np.asarray(sizes) / 100 <= 1 + 1e-6), (ours, accuracy)
  assert np.all(np.abs(ids - identity) * np.asarray(sizes) / 100 <= 1 + 1e-6), (ids, identity)
  assert 30 < np.mean(accuracy) < 100      # a classifier, not chance
  assert results['final_average_accuracy'] == pytest.approx(np.mean(ours))


def _cli(*args):
  return subprocess.run([sys.executable, '-m', 'cljax.evaluate', '--config=configs/demo.py', *args],
                        cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_command_line_and_refusal_of_another_activation(pair, tmp_path):
  config, prompt_path, tii_path, accuracy, identity, sizes = pair
  out = tmp_path / 'r.json'
  done = _cli(f'--checkpoint={os.path.dirname(prompt_path)}', f'--task_identity_checkpoint={tii_path}',
              f'--output={out}')
  assert done.returncode == 0, done.stderr
  assert 'after task 5: task 1' in done.stdout
  results = json.loads(out.read_text())
  assert results['tasks'] == [5]
  np.testing.assert_allclose(np.asarray(results['accuracy'])[:, 4], accuracy, atol=100 / min(sizes) + 1e-6)
  done = _cli(f'--checkpoint={prompt_path}', f'--task_identity_checkpoint={tii_path}',
              '--config.prompt.activation=gelu')
  assert done.returncode == 2
  assert done.stderr.strip().splitlines()[-1] == \
      f'error: {prompt_path}: checkpoint says gate_act=tanh, config.prompt.activation=gelu'
  done = _cli(f'--checkpoint={prompt_path}')
  assert done.returncode == 2 and 'give --task_identity_checkpoint' in done.stderr
