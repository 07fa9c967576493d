"""Every shipped config validates and dry-runs (every task, every stage) with a tiny model."""

import glob
import importlib.util
import os
import subprocess
import sys

import pytest

from cljax import config as config_lib
from cljax.continual import trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, 'configs', '*.py')))


def load(path, arg=None):
  spec = importlib.util.spec_from_file_location('cfg', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def tiny(c):
  """The CI size: a 5-block ViT-Ti/8 at 16x16, batches of 4, one step per loop."""
  c.dry_run = True
  c.dry_run_steps = 1
  c.model_override = 'vit_ti8'
  c.backbone.image_size = 16
  c.backbone.depth = 5
  c.batch_size = c.eval_batch_size = 4
  c.log_every_steps = 0
  return c


def test_configs_exist():
  names = {os.path.basename(p) for p in CONFIGS}
  for d in ('cifar100', 'imr', 'cub', 'five_datasets'):
    for m in ('norga', 'hideprompt'):
      assert f'{d}_{m}.py' in names
  assert 'demo.py' in names


@pytest.mark.parametrize('path', CONFIGS, ids=os.path.basename)
def test_config_dry_runs(path, tmp_path):
  c = config_lib.validate(load(path))
  results = trainer.run(tiny(c), str(tmp_path))
  T = c.benchmark.num_tasks
  assert len(results['accuracy_matrix']) == T
  assert os.path.exists(tmp_path / 'checkpoints' / 'resume' / str(2 * T))


@pytest.mark.parametrize('backbone', ['ibot21k', 'ibot1k', 'dino', 'mocov3'])
def test_paper_backbone_variants_validate(backbone):
  c = config_lib.validate(load(os.path.join(ROOT, 'configs', 'cifar100_norga.py'), backbone))
  assert c.backbone.name == config_lib.BACKBONE_ALIASES[backbone]


def test_reference_hyperparameters_of_a_cell():
  c = load(os.path.join(ROOT, 'configs', 'imr_norga.py'))
  assert (c.prompt.epochs, c.prompt.schedule, c.prompt.length, c.prompt.reg) == (150, 'cosine', 20, 0.5)
  assert (c.prompt.activation, c.prompt.gate, c.prompt.momentum) == ('sigmoid', 'norga', 0.01)
  assert c.prompt.lr * config_lib.lr_scale(c) == pytest.approx(0.015)
  h = load(os.path.join(ROOT, 'configs', 'five_datasets_hideprompt.py'))
  assert (h.prompt.gate, h.prompt.clip_grad, h.task_identity.mlp_hidden, h.prompt.batchwise_prompt) == \
      ('linear', 2.0, (4, 4), True)


def test_cli_dry_run_and_clear_errors(tmp_path):
  base = [sys.executable, '-m', 'cljax.main', '--config=configs/demo.py', f'--workdir={tmp_path}']
  run = lambda *extra: subprocess.run(base + list(extra), capture_output=True, text=True, cwd=ROOT, timeout=600)
  out = run('--config.prompt.gate=nonlinear')
  assert out.returncode == 2
  assert out.stderr.strip().splitlines()[-1] == \
      "error: unknown gate (config.prompt.gate) 'nonlinear'; valid: linear, norga"
  out = run('--config.prompt.gate=linear')
  assert out.returncode == 2 and out.stderr.strip().splitlines()[-1] == (
      "error: method norga uses gate 'norga', but config.prompt.gate is 'linear'; set method=hideprompt instead")
  out = run('--config.benchmark.num_tasks=3')
  assert out.returncode == 2 and 'do not divide into 3 tasks' in out.stderr
  out = run('--config.prompt.layers=(0,9)')
  assert out.returncode == 2 and 'config.prompt.layers index 9 is outside' in out.stderr
  out = run('--config.dry_run', '--config.dry_run_steps=1', '--config.stop_after_task=1')
  assert out.returncode == 0, out.stderr[-2000:]
  assert 'after task 1: average accuracy' in out.stdout
