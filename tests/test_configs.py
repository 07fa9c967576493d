"""Every shipped config validates and dry-runs (every task, every stage) with a tiny model."""

import glob
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from cljax import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, 'configs', '*.py')))


def load(path, arg=None):
  spec = importlib.util.spec_from_file_location('cfg', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


# Dry-running all 30 configs takes about 9 minutes of the suite; these cover every method and
# every paper benchmark (the demo is dry-run by test_cli_dry_run_and_clear_errors). The rest are
# the same shared pieces in other combinations, and each one is still validated at its real size
# below. `python -m cljax.dry_run --tiny configs/*.py` dry-runs them all.
DRY_RUN = ['configs/cifar100_norga.py', 'configs/imr_hideprompt.py', 'configs/cub_l2p.py',
           'configs/five_datasets_dualprompt.py', 'configs/cifar100_sprompt.py',
           'configs/imr_coda.py', 'configs/cub_smope.py']
SHARDS = 2


def dry_run(paths, optimize=False):
  """`python -m cljax.dry_run --tiny` in a subprocess; XLA's backend optimisations off (a dry
  run checks wiring, not speed), which halves its compile time."""
  env = dict(os.environ)
  if not optimize:
    env['XLA_FLAGS'] = (env.get('XLA_FLAGS', '') + ' --xla_backend_optimization_level=0').strip()
  return subprocess.run([sys.executable, '-m', 'cljax.dry_run', '--tiny'] + list(paths),
                        capture_output=True, text=True, cwd=ROOT, env=env, timeout=1800)


def test_configs_exist():
  names = {os.path.basename(p) for p in CONFIGS}
  for d in ('cifar100', 'imr', 'cub', 'five_datasets'):
    for m in ('norga', 'hideprompt', 'l2p', 'dualprompt', 'sprompt', 'coda'):
      assert f'{d}_{m}.py' in names
  assert 'demo.py' in names


@pytest.mark.parametrize('path', [os.path.relpath(p, ROOT) for p in CONFIGS])
def test_every_shipped_config_validates(path):
  config_lib.validate(load(os.path.join(ROOT, path)))


def test_the_dry_run_configs_cover_every_method_and_benchmark():
  chosen = [load(os.path.join(ROOT, p)) for p in DRY_RUN]
  everything = [load(p) for p in CONFIGS]
  assert {c.method for c in chosen} == {c.method for c in everything}
  assert {c.benchmark.name for c in chosen} == {c.benchmark.name for c in everything} - {'split_digits'}


@pytest.mark.parametrize('shard', range(SHARDS))
def test_shipped_configs_dry_run(shard):
  paths = DRY_RUN[shard::SHARDS]
  out = dry_run(paths)
  assert out.returncode == 0, out.stdout + out.stderr[-3000:]
  for path in paths:
    assert f'PASS {path}' in out.stdout, out.stdout


def test_dry_run_reports_a_broken_config(tmp_path):
  bad = tmp_path / 'bad.py'
  bad.write_text('from cljax import config\n\ndef get_config():\n  c = config.demo()\n'
                 '  c.prompt.activation = "swish"\n  return c\n')
  out = dry_run([str(bad)])
  assert out.returncode == 2    # a config error is a user error (exit status 2, as main)
  assert "FAIL" in out.stdout and "unknown gate activation (config.prompt.activation) 'swish'" in out.stdout


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
  env = dict(os.environ, XLA_FLAGS=(os.environ.get('XLA_FLAGS', '') + ' --xla_backend_optimization_level=0').strip())
  run = lambda *extra: subprocess.run(base + list(extra), capture_output=True, text=True, cwd=ROOT,
                                      env=env, timeout=600)
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
  # A key given twice: the last value wins, as for any flag (ml_collections joined the tuples).
  out = run('--config.dry_run', '--config.dry_run_steps=1', '--config.stop_after_task=1',
            '--config.prompt.layers=(0,1)', '--config.prompt.layers=(1,2)')
  assert out.returncode == 0, out.stderr[-2000:]
  assert 'after task 1: average accuracy' in out.stdout
  with open(os.path.join(tmp_path, 'results.json')) as f:
    assert json.load(f)['config']['prompt']['layers'] == [1, 2]
