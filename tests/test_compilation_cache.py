"""config.compilation_cache: where XLA's persistent cache goes, and that a second run reads it."""

import os
import subprocess
import sys

import pytest

from cljax import compilation_cache
from cljax.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_setting_names_the_folder(tmp_path):
  assert compilation_cache.folder('auto', str(tmp_path / 'runs' / 'demo')) == str(tmp_path / 'runs' / '.jax_cache')
  assert compilation_cache.folder('auto', str(tmp_path / 'runs' / 'demo') + '/') == str(tmp_path / 'runs' / '.jax_cache')
  assert compilation_cache.folder('off', str(tmp_path / 'demo')) == ''
  assert compilation_cache.folder(str(tmp_path / 'c'), 'x') == str(tmp_path / 'c')
  with pytest.raises(ConfigError, match="config.compilation_cache is empty; use 'auto', 'off' or a folder"):
    compilation_cache.folder('', 'x')


def test_a_second_run_compiles_from_the_cache(tmp_path):
  """The first run of a tiny demo writes the cache beside its workdir; a second run in another
  workdir of the same parent finds every step there (jax logs each cache hit at debug level)."""
  env = {k: v for k, v in os.environ.items() if not k.startswith(('JAX_', 'XLA_'))}
  env.update(PYTHONPATH=ROOT, JAX_PLATFORMS='cpu', JAX_DEBUG_LOG_MODULES='jax._src.compiler')
  tiny = ['--config=configs/demo.py', '--config.backbone.depth=1', '--config.prompt.layers=(0,)',
          '--config.task_identity.epochs=1', '--config.task_identity.ca_epochs=1',
          '--config.prompt.epochs=1', '--config.prompt.ca_epochs=1', '--config.stop_after_task=1']

  def run(name):
    return subprocess.run([sys.executable, '-m', 'cljax.main', f'--workdir={tmp_path / name}', *tiny],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  first = run('a')
  assert first.returncode == 0, first.stderr[-2000:]
  cached = os.listdir(tmp_path / '.jax_cache')
  assert len(cached) >= 3, cached
  second = run('b')
  assert second.returncode == 0, second.stderr[-2000:]
  hits = [l for l in second.stderr.splitlines() if 'Persistent compilation cache hit' in l]
  assert len(hits) >= 3 and any('train_step' in l for l in hits), second.stderr[-3000:]
