"""Every bad input is a one-line `CljaxError` naming the key (or file) and the fix, raised before
anything is compiled; on the command line, `error: <that line>` and exit status 2."""

import json
import os
import socket
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from cljax import config as config_lib
from cljax.continual import trainer
from cljax.errors import CheckpointError, CljaxError, ConfigError, DataError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_WEIGHTS = os.path.join(ROOT, 'cljax', 'assets', 'demo_vit_fmnist.safetensors')


def _retype(group, key, value):
  """A config file that rebuilds a group (bypassing ConfigDict's type safety)."""
  def apply(c):
    d = c[group].to_dict()
    d[key] = value
    c[group] = ml_collections.ConfigDict(d)
  return apply


def _set(path, value):
  def apply(c):
    *groups, key = path.split('.')
    node = c
    for g in groups:
      node = node[g]
    node[key] = value
  return apply


def _add_key(path):
  def apply(c):
    *groups, key = path.split('.')
    node = c
    for g in groups:
      node = node[g]
    node[key] = 1
  return apply


@pytest.fixture(scope='module')
def files(tmp_path_factory):
  """Bad weights files and workdirs."""
  d = tmp_path_factory.mktemp('bad')
  from cljax.checkpoints import files as files_lib
  sd = files_lib.read(DEMO_WEIGHTS)
  sd['blocks.0.norm1.weight'] = np.zeros(7, np.float32)
  np.savez(d / 'misshaped.npz', **sd)
  import torch
  torch.save([1, 2], d / 'list.pth')
  (d / 'weights.json').write_text('{}')
  (d / 'a_file').write_text('')
  other = d / 'other_run'
  other.mkdir()
  c = config_lib.demo()
  c.seed = 7
  (other / 'config.json').write_text(json.dumps(config_lib.to_json(c)))
  damaged = d / 'damaged_run'
  damaged.mkdir()
  (damaged / 'config.json').write_text('{"seed": 4')
  # Backbone files that are not what their suffix says (issue 17).
  (d / 'text.npz').write_text('version https://git-lfs.github.com/spec/v1\n')
  (d / 'random.pth').write_bytes(b'\x01\x9c' + np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
  (d / 'text.pth').write_text('not a checkpoint\n')
  (d / 'page.safetensors').write_text('<!DOCTYPE html><html><body>Sign in</body></html>')
  torch.save({'a': torch.zeros(2)}, d / 'torch.npz')
  torch.save({'a': torch.zeros(2)}, d / 'whole.pth')
  data = (d / 'whole.pth').read_bytes()
  (d / 'truncated.pth').write_bytes(data[: len(data) // 2])
  # notMNIST folders: one without Test/B, one empty.
  from PIL import Image
  for split in ('Train', 'Test'):
    for letter in 'ABCDEFGHIJ':
      if (split, letter) != ('Test', 'B'):
        os.makedirs(d / 'notmnist_partial' / split / letter)
        Image.fromarray(np.zeros((28, 28), np.uint8)).save(d / 'notmnist_partial' / split / letter / 'a.png')
  (d / 'notmnist_empty').mkdir()
  return d


def _five_datasets(notmnist):
  return lambda c: c.benchmark.update(name='five_datasets', num_tasks=5, notmnist_dir=notmnist)


# (id, change to the demo config, error type, the message; '...' at the end: a prefix)
CASES = [
    ('unknown key', _add_key('foo'), ConfigError, 'unknown config key config.foo; valid keys: attention, backbone, batch_size, ...'),
    ('misspelt key', _add_key('prompt.lenght'), ConfigError,
     'unknown config key config.prompt.lenght; did you mean config.prompt.length?'),
    ('value of the wrong type', _retype('prompt', 'epochs', '10'), ConfigError,
     "config.prompt.epochs must be an integer, got '10'"),
    ('layers not integers', _set('prompt.layers', ('a',)), ConfigError,
     "config.prompt.layers must be a tuple of integers, got ('a',)"),
    ('unknown method', _set('method', 'norgaa'), ConfigError,
     "unknown method (config.method) 'norgaa'; valid: hideprompt, norga, l2p, dualprompt, sprompt, coda, smope, sequential_head"),
    ('unknown gate', _set('prompt.gate', 'nonlinear'), ConfigError,
     "unknown gate (config.prompt.gate) 'nonlinear'; valid: linear, norga"),
    ('gate of another method', _set('prompt.gate', 'linear'), ConfigError,
     "method norga uses gate 'norga', but config.prompt.gate is 'linear'; set method=hideprompt instead"),
    ('unknown activation', _set('prompt.activation', 'swish'), ConfigError,
     "unknown gate activation (config.prompt.activation) 'swish'; valid: ..."),
    ('unknown backbone', _set('backbone.name', 'vit_h14'), ConfigError,
     "unknown backbone (config.backbone.name) 'vit_h14'; valid: ..."),
    ('unknown schedule', _set('prompt.schedule', 'linear'), ConfigError,
     "unknown schedule (config.prompt.schedule) 'linear'; valid: constant, step, cosine, smope_cosine, coswm"),
    ('unknown statistics', _set('statistics.method', 'full'), ConfigError,
     "unknown statistics method (config.statistics.method) 'full'; valid: covariance, variance, multi-centroid"),
    ('classes not divisible into tasks', _set('benchmark.num_tasks', 3), ConfigError,
     '10 classes of split_digits do not divide into 3 tasks (config.benchmark.num_tasks); use a divisor of 10'),
    ('prompt layer beyond depth', lambda c: (c.backbone.update(depth=2), c.prompt.update(layers=(0, 9))), ConfigError,
     "config.prompt.layers index 9 is outside the backbone's blocks 0..1"),
    ('depth beyond the backbone', _set('backbone.depth', 20), ConfigError,
     'config.backbone.depth=20 exceeds the 6 blocks of demo_fmnist; use 1..6 (0 = all)'),
    ('image size not divisible by patch', _set('backbone.image_size', 30), ConfigError,
     'image_size 30 is not divisible by patch_size 4; use a multiple of 4'),
    ('more devices than visible', _set('num_devices', 4), ConfigError,
     'config.num_devices=4 but only 1 device(s) are visible; use 0 for all of them'),
    ('negative seed', _set('seed', -1), ConfigError, 'config.seed must be >= 0 (numpy seeds are non-negative), got -1'),
    ('stop after a task beyond the last', _set('stop_after_task', 9), ConfigError,
     'config.stop_after_task=9 must be in 0..5 (0 = run every task)'),
    ('negative checkpoint interval', _set('checkpoint_every_steps', -1), ConfigError,
     'config.checkpoint_every_steps must be >= 0 (0 = checkpoint at stage ends only), got -1'),
    ('zero learning rate', _set('prompt.lr', 0.0), ConfigError, 'config.prompt.lr must be > 0, got 0.0'),
    ('pool smaller than the tasks', _set('prompt.pool_size', 2), ConfigError,
     'config.prompt.pool_size 2 is smaller than the 5 tasks; use 0 (one per task)'),
    ('momentum out of range', _set('prompt.momentum', 1.0), ConfigError,
     'config.prompt.momentum must be in [0, 1), got 1.0'),
    ('unknown dtype', _set('dtype', 'float16'), ConfigError, "config.dtype must be float32 or bfloat16, got 'float16'"),
    ('missing weights', _set('backbone.weights', '{d}/nothere.npz'), CheckpointError,
     'backbone weights {d}/nothere.npz do not exist: get demo_vit_fmnist.safetensors ...'),
    ('mis-shaped weights', _set('backbone.weights', '{d}/misshaped.npz'), CheckpointError,
     '{d}/misshaped.npz has 1 mis-shaped key(s): blocks.0.norm1.weight (7,) (model: (128,))'),
    ('weights file of the wrong kind', _set('backbone.weights', '{d}/list.pth'), CheckpointError,
     '{d}/list.pth holds a list, not a state dict'),
    ('weights in an unknown format', _set('backbone.weights', '{d}/weights.json'), CheckpointError,
     'cannot read {d}/weights.json: expected one of .pth, .pt, .bin, .tar, .safetensors, .npz'),
    ('dataset not prepared', lambda c: (c.benchmark.update(name='cifar100', num_tasks=10, data_dir='{d}/tfds'),
                                        c.backbone.update(image_size=32, weights=DEMO_WEIGHTS)), DataError,
     "tfds dataset 'cifar100' is not prepared in array_record format under {d}/tfds: run "
     '`python -m cljax.data.prepare cifar100 --data_dir={d}/tfds` once ...'),
    # issue 17: every numeric hyper-parameter, duplicate layers
    ('negative alignment lr', _set('prompt.ca_lr', -1.0), ConfigError, 'config.prompt.ca_lr must be > 0, got -1.0'),
    ('zero epochs', _set('prompt.epochs', 0), ConfigError, 'config.prompt.epochs must be >= 1, got 0'),
    ('negative regulariser', _set('prompt.reg', -0.1), ConfigError, 'config.prompt.reg must be >= 0, got -0.1'),
    ('infinite lr', _set('task_identity.lr', float('inf')), ConfigError,
     'config.task_identity.lr must be a finite number, got inf'),
    ('zero alignment epochs', _set('prompt.ca_epochs', 0), ConfigError,
     "config.prompt.ca_epochs must be >= 1: norga aligns this stage's head (0 would leave it unaligned), got 0"),
    ('decay rate above 1', _set('schedule.decay_rate', 2.0), ConfigError,
     'config.schedule.decay_rate must be in (0, 1], got 2.0'),
    ('test fraction of 1', _set('benchmark.test_fraction', 1.0), ConfigError,
     'config.benchmark.test_fraction must be in (0, 1), got 1.0'),
    ('duplicate layers', _set('prompt.layers', (1, 1)), ConfigError,
     'config.prompt.layers=(1, 1) lists block(s) 1 more than once; list each block once'),
    # issue 17: files that are not what their suffix says; never advice to unpickle
    ('text file named .npz', _set('backbone.weights', '{d}/text.npz'), CheckpointError,
     '{d}/text.npz is not a NumPy .npz archive: it is a text file; download the checkpoint again or point to the right file'),
    ('random bytes named .pth', _set('backbone.weights', '{d}/random.pth'), CheckpointError,
     '{d}/random.pth is not a PyTorch checkpoint: its bytes match no checkpoint format; download the checkpoint again or point to the right file'),
    ('text file named .pth', _set('backbone.weights', '{d}/text.pth'), CheckpointError,
     '{d}/text.pth is not a PyTorch checkpoint: it is a text file; download the checkpoint again or point to the right file'),
    ('web page named .safetensors', _set('backbone.weights', '{d}/page.safetensors'), CheckpointError,
     '{d}/page.safetensors is not a safetensors file: it is an HTML page (a download that returned a web page?); download the checkpoint again or point to the right file'),
    ('PyTorch file named .npz', _set('backbone.weights', '{d}/torch.npz'), CheckpointError,
     '{d}/torch.npz is not a NumPy .npz archive: it is a PyTorch checkpoint (rename it to .pth); download the checkpoint again or point to the right file'),
    ('truncated .pth', _set('backbone.weights', '{d}/truncated.pth'), CheckpointError,
     '{d}/truncated.pth is a damaged or truncated zip archive, not a readable PyTorch checkpoint; download it again'),
    # issue 17: datasets, before the backbone
    ('dataset checked before the backbone', lambda c: (c.benchmark.update(name='cifar100', num_tasks=10, data_dir='{d}/tfds'),
                                                       c.backbone.update(image_size=32, weights='{d}/nothere.npz')), DataError,
     "tfds dataset 'cifar100' is not prepared in array_record format under {d}/tfds: ..."),
    ('notMNIST folder without Test/B', _five_datasets('{d}/notmnist_partial'), DataError,
     'notMNIST folder {d}/notmnist_partial lacks Test/B; config.benchmark.notmnist_dir must hold Train/A..J '
     'and Test/A..J with the PNG images of the ACL notMNIST.zip'),
    ('empty notMNIST folder', _five_datasets('{d}/notmnist_empty'), DataError,
     'notMNIST folder {d}/notmnist_empty lacks Train/, Test/; config.benchmark.notmnist_dir must hold Train/A..J '
     'and Test/A..J with the PNG images of the ACL notMNIST.zip'),
    ('workdir of another config', _set('workdir', '{d}/other_run'), ConfigError,
     '{d}/other_run holds a run of a different config (seed: 7 != 42); use another --workdir, delete that one '
     'to start over, or continue its remaining stages with the new values: --config.rerun_with_changes=True'),
    ('workdir is a file', _set('workdir', '{d}/a_file'), ConfigError,
     'workdir {d}/a_file is a file, not a folder; pass another --workdir'),
    ('damaged config.json in the workdir', _set('workdir', '{d}/damaged_run'), CheckpointError,
     '{d}/damaged_run/config.json is damaged (...'),
]


def _fill(value, d):
  return value.replace('{d}', str(d)) if isinstance(value, str) else value


def first_error(c, workdir):
  """The error `trainer.run` raises; and nothing was compiled before it."""
  import jax
  compiled = []
  listener = lambda name, secs, **kw: compiled.append(name) if 'backend_compile' in name else None
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    with pytest.raises(CljaxError) as e:
      trainer.run(c, workdir)
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  assert compiled == [], f'{len(compiled)} compilations before: {e.value}'
  return e.value


@pytest.mark.parametrize('name,change,kind,message', CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_a_one_line_error(name, change, kind, message, files, tmp_path):
  c = config_lib.demo()
  workdir = str(tmp_path / 'run')
  probe = ml_collections.ConfigDict({'workdir': workdir})
  if name.startswith(('workdir', 'damaged')):
    change(probe)
    workdir = _fill(probe.workdir, files)
  else:
    c.benchmark.data_dir = str(tmp_path / 'tfds')
    change(c)
    for group in (c, c.benchmark, c.backbone):    # '{d}' in paths -> the fixture's folder
      for k in group.keys():
        if isinstance(group[k], str) and '{d}' in group[k]:
          group[k] = _fill(group[k], files)
  error = first_error(c, workdir)
  text, expected = str(error), _fill(message, files)
  assert type(error) is kind, text
  assert '\n' not in text
  assert not any(w in text for w in ('allow_pickle', 'weights_only', 'unpickl')), text
  if expected.endswith('...'):
    assert text.startswith(expected[:-3]), text
  else:
    assert text == expected
  if not name.startswith(('workdir', 'damaged')):
    assert not os.path.exists(workdir)     # a config that fails does not claim a workdir


def test_unprepared_dataset_touches_no_network(monkeypatch, tmp_path):
  attempts = []
  def refuse(*args, **kwargs):
    attempts.append(args)
    raise OSError('network disabled by the test')
  monkeypatch.setattr(socket.socket, 'connect', refuse)
  monkeypatch.setattr(socket, 'getaddrinfo', refuse)
  monkeypatch.setattr(socket, 'create_connection', refuse)
  c = config_lib.demo()
  c.benchmark.update(name='cifar100', num_tasks=10, data_dir=str(tmp_path / 'tfds'))
  c.backbone.update(image_size=32, weights=DEMO_WEIGHTS)
  assert isinstance(first_error(c, str(tmp_path / 'run')), DataError)
  assert attempts == []


CLI = [
    (['--config.foo=1'], 'error: unknown config key config.foo; valid keys: attention, backbone, batch_size, '),
    (['--config.prompt.lenght=4'],
     'error: unknown config key config.prompt.lenght; did you mean config.prompt.length? (in --config.prompt.lenght=4)'),
    (['--config.prompt.epochs=abc'],
     "error: flag --config.prompt.epochs=abc: invalid literal for int() with base 10: 'abc'"),
    (['--config.seed.x=1'], 'error: config.seed has no sub-keys (cannot set config.seed.x) (in --config.seed.x=1)'),
    (['extra'], 'error: unexpected arguments: extra; settings are flags, e.g. --config.seed=1'),
    # issue 17: a scalar where a tuple is expected; a suggestion from every key path
    (['--config.prompt.layers=5'], 'error: config.prompt.layers is a tuple, got the single value \'5\' (in '
     '--config.prompt.layers=5); write --config.prompt.layers="(5,)" for one entry, or list them: "(0, 1, 2)"'),
    (['--config.task_identity.mlp_hidden=(4)'], 'error: config.task_identity.mlp_hidden is a tuple, got the single '
     'value \'(4)\' (in --config.task_identity.mlp_hidden=(4)); write --config.task_identity.mlp_hidden="(4,)" '),
    (['--config.lerning_rate=0.1'], 'error: unknown config key config.lerning_rate; did you mean config.prompt.lr '
     'or config.task_identity.lr? (in --config.lerning_rate=0.1)'),
    (['--config.prompt.ca_lr=-1'], 'error: config.prompt.ca_lr must be > 0, got -1.0'),
]


def test_command_line_mistakes_are_one_error_line(tmp_path):
  def run(args, config='configs/demo.py'):
    return subprocess.run([sys.executable, '-m', 'cljax.main', f'--config={config}',
                           f'--workdir={tmp_path / "run"}'] + args,
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
  for args, expected in CLI:
    out = run(args)
    assert out.returncode == 2, (args, out.stderr[-2000:])
    lines = out.stderr.strip().splitlines()
    assert lines[-1].startswith(expected) and 'Traceback' not in out.stderr, (args, out.stderr[-2000:])
  out = run([], config='configs/nonexistent.py')
  assert out.returncode == 2 and out.stderr.strip().splitlines()[-1] == (
      "error: cannot load the config file: [Errno 2] No such file or directory: 'configs/nonexistent.py'")
  scalar = tmp_path / 'scalar_layers.py'    # a scalar for a tuple key inside a config file
  scalar.write_text('from cljax import config as config_lib\n\ndef get_config(arg=None):\n'
                    '  c = config_lib.demo()\n  c.prompt.layers = 5\n  return c\n')
  out = run([], config=str(scalar))
  assert out.returncode == 2 and out.stderr.strip().splitlines()[-1] == (
      f'error: the config file {scalar} sets layers to the single value 5, but '
      'config.prompt.layers is a tuple; write (5,) for one entry, or list them: (0, 1, 2)')
  out = run([], config='configs/cifar100_norga.py:vit_h14')
  assert out.returncode == 2 and 'Traceback' not in out.stderr
  assert out.stderr.strip().splitlines()[-1].startswith(
      "error: the references have no norga run of cifar100 with backbone 'vit_h14'; available: ")
  assert not os.path.exists(tmp_path / 'run')     # nothing was written
