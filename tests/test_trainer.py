"""End to end on real Split-Digits with the shipped demo backbone (first 3 blocks, few epochs):
resume, reruns, export, devices."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from cljax.continual import trainer
from cljax.errors import ConfigError
from cljax_testing.helpers import demo_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(data_dir, method='norga'):
  return demo_config(data_dir, method, epochs=(3, 2), ca_epochs=(3, 3), log_every_steps=0)


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('tfds'))


@pytest.fixture(scope='module')
def full_run(tmp_path_factory, data_dir):
  workdir = str(tmp_path_factory.mktemp('full'))
  return workdir, trainer.run(tiny_config(data_dir), workdir)


def test_run_produces_metrics(full_run):
  workdir, results = full_run
  acc = np.array(results['accuracy_matrix'])
  assert acc.shape == (5, 5) and np.all(acc[np.tril_indices(5, -1)] == 0)
  assert 0 <= results['final_average_accuracy'] <= 100
  with open(os.path.join(workdir, 'results.json')) as f:
    assert json.load(f)['accuracy_matrix'] == results['accuracy_matrix']
  lines = [json.loads(l) for l in open(os.path.join(workdir, 'metrics.jsonl'))]
  assert sum(l.get('event') == 'evaluation' for l in lines) == 5


def test_interrupted_then_resumed_run_is_identical(full_run, tmp_path, data_dir):
  _, results = full_run
  c = tiny_config(data_dir)
  c.stop_after_task = 2
  first = trainer.run(c, str(tmp_path))
  partial = np.array(first['accuracy_matrix'])
  assert partial[:, 2:].sum() == 0 and first['tasks_completed'] == 2
  # A stopped run is scored on the tasks it completed, not on empty columns.
  assert first['final_average_accuracy'] == pytest.approx(partial[:2, 1].mean())
  assert first['cumulative_average_accuracy'] == pytest.approx((partial[0, 0] + partial[:2, 1].mean()) / 2)
  assert first['forgetting'] == pytest.approx(partial[0, :2].max() - partial[0, 1])
  c.stop_after_task = 0
  resumed = trainer.run(c, str(tmp_path))
  assert resumed['accuracy_matrix'] == results['accuracy_matrix']
  assert resumed['task_identity_matrix'] == results['task_identity_matrix']


def test_reused_stage1_features_change_nothing_without_augmentation(full_run, tmp_path, data_dir):
  # The demo turns config.task_identity.reuse_features on: its transform has no augmentation,
  # so stage 1 trained on features computed once must match per-epoch forward passes.
  workdir, results = full_run
  c = tiny_config(data_dir)
  assert c.task_identity.reuse_features
  c.task_identity.reuse_features = False
  c.stop_after_task = 2
  other = trainer.run(c, str(tmp_path))
  for key in ('accuracy_matrix', 'stage1_task_identity_accuracy', 'task_identity_matrix'):
    np.testing.assert_allclose(np.array(other[key])[:, :2], np.array(results[key])[:, :2], atol=1e-4)
  stage1 = lambda path: [json.loads(l) for l in open(os.path.join(path, 'metrics.jsonl'))
                         if '"loss"' in l and '"task_identity"' in l and '"alignment"' not in l]
  reused, per_epoch = stage1(workdir)[:6], stage1(str(tmp_path))
  assert len(per_epoch) == len(reused) == 6    # 2 tasks x 3 epochs
  for a, b in zip(reused, per_epoch):
    assert (a['task'], a['epoch']) == (b['task'], b['epoch'])
    assert abs(a['loss'] - b['loss']) <= 1e-5 * max(1.0, abs(a['loss'])), (a, b)


def test_finished_run_is_not_retrained(full_run, data_dir):
  workdir, results = full_run
  before = open(os.path.join(workdir, 'metrics.jsonl')).read()
  again = trainer.run(tiny_config(data_dir), workdir)
  assert again['accuracy_matrix'] == results['accuracy_matrix']
  assert open(os.path.join(workdir, 'metrics.jsonl')).read() == before


def test_workdir_of_another_config_is_refused(full_run, data_dir):
  workdir, _ = full_run
  c = tiny_config(data_dir)
  c.seed = 7
  with pytest.raises(ConfigError, match=r'holds a run of a different config \(seed: 42 != 7\)'):
    trainer.run(c, workdir)


def test_eight_simulated_devices_give_the_same_matrix(full_run, tmp_path, data_dir):
  _, results = full_run
  script = (
      'import json, sys\n'
      'sys.path.insert(0, %r)\n'
      'from tests.test_trainer import tiny_config\n'
      'from cljax.continual import trainer\n'
      'import jax\n'
      'assert jax.device_count() == 8\n'
      'c = tiny_config(%r)\n'
      'c.batch_size = 12\n'
      'try:\n'
      '  trainer.Experiment(c, %r, load_data=False)\n'
      'except Exception as e:\n'
      '  print("BATCHERROR" + str(e))\n'
      'c = tiny_config(%r)\n'
      'c.checkpoint_every_steps = 5   # sharded state through mid-stage checkpoints too\n'
      'r = trainer.run(c, %r)\n'
      'print("RESULT" + json.dumps(r["accuracy_matrix"]))\n') % (ROOT, data_dir, str(tmp_path), data_dir, str(tmp_path))
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8', JAX_PLATFORMS='cpu')
  out = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, env=env,
                       cwd=ROOT, timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  assert 'BATCHERROR' + 'config.batch_size=12 is not divisible by the 8 devices; use a multiple of 8\n' in out.stdout
  matrix = json.loads(out.stdout.split('RESULT')[-1])
  assert matrix == results['accuracy_matrix']
  # Every epoch's losses agree to float noise (the batch reductions run in another order on 8
  # devices).
  epochs = lambda path: [json.loads(l) for l in open(os.path.join(path, 'metrics.jsonl')) if '"loss"' in l]
  one, eight = epochs(full_run[0]), epochs(str(tmp_path))
  assert len(one) == len(eight) > 0
  for a, b in zip(one, eight):
    assert (a['stage'], a['task'], a['epoch']) == (b['stage'], b['task'], b['epoch'])
    assert abs(a['loss'] - b['loss']) <= 1e-5 * max(1.0, abs(a['loss'])), (a, b)


def test_exported_task_checkpoint_runs_in_the_pytorch_oracle(full_run, tmp_path, capsys):
  """`convert export` writes the references' {'model': state_dict}; the oracle loads it strictly
  and gives the logits cljax gives."""
  import torch
  from cljax import convert
  from cljax_testing import torch_oracle
  from cljax.continual import saved_stages
  workdir, _ = full_run
  out = tmp_path / 'task5_checkpoint.pth'
  convert.main(['export', workdir, str(out), '--task', '5'])
  state = torch.load(out, weights_only=True)['model']
  assert state['e_prompt.prompt'].shape == (3, 2, 5, 4, 4, 32)
  assert state['e_prompt.act_scale'].shape == (3, 2, 1, 1)
  model = torch_oracle.PromptedViT(dim=128, depth=3, heads=4, patch=4, image=28, num_classes=10,
                                   prompt_layers=(0, 1, 2), pool=5, length=4, gate='norga', gate_act='tanh')
  model.load_state_dict(state)
  params = saved_stages.load_params(workdir, 4)
  spec = trainer.Experiment(tiny_config(os.path.dirname(workdir)), workdir, load_data=False).method.model
  x = np.random.default_rng(0).random((4, 28, 28, 3), np.float32)
  idx = np.array([0, 2, 4, 1])
  _, ours, _ = spec(params, x, idx)
  _, ref = model(torch.from_numpy(x).permute(0, 3, 1, 2), torch.from_numpy(idx))
  np.testing.assert_allclose(np.asarray(ours), ref.detach().numpy(), rtol=1e-4, atol=1e-5)
  with pytest.raises(SystemExit) as e:     # a user error: exit status 2, the line on stderr
    convert.main(['export', workdir, str(out), '--task', '8'])
  assert e.value.code == 2 and 'no prompt checkpoint of task 8' in capsys.readouterr().err
