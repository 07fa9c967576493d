"""End to end on real Split-Digits with a tiny random backbone: resume, reruns, devices."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from cljax import config as config_lib
from cljax.continual import trainer
from cljax.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(data_dir, method='norga'):
  c = config_lib.demo(method)
  c.benchmark.data_dir = data_dir
  c.model_override = 'vit_ti8'
  c.backbone.image_size = 16
  c.backbone.depth = 2
  c.prompt.layers = (0, 1)
  c.task_identity.update(epochs=2, ca_epochs=2)
  c.prompt.update(epochs=2, ca_epochs=2)
  return c


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
  assert np.array(first['accuracy_matrix'])[:, 2:].sum() == 0
  c.stop_after_task = 0
  resumed = trainer.run(c, str(tmp_path))
  assert resumed['accuracy_matrix'] == results['accuracy_matrix']
  assert resumed['task_identity_matrix'] == results['task_identity_matrix']


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
      'r = trainer.run(tiny_config(%r), %r)\n'
      'print("RESULT" + json.dumps(r["accuracy_matrix"]))\n') % (ROOT, data_dir, str(tmp_path))
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8', JAX_PLATFORMS='cpu')
  out = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, env=env,
                       cwd=ROOT, timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  matrix = json.loads(out.stdout.split('RESULT')[-1])
  assert matrix == results['accuracy_matrix']
