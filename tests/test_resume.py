"""Interruption anywhere loses nothing: `kill -9` of the real command at several points (one
inside a checkpoint write), rerun, and the results are those of an uninterrupted run, bit for
bit. Every run here has the network disabled. Also: damaged checkpoints are errors, and a
diverging run stops with the last good checkpoint kept."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from cljax import config as config_lib
from cljax.continual import task_checkpoints, trainer
from cljax.errors import CheckpointError, TrainingDivergedError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Patched into every subprocess through PYTHONPATH: sockets refuse anything but local (AF_UNIX)
# use and log the attempt; CLJAX_TEST_STALL_SAVE stalls the Orbax write whose final path holds
# that text just before its atomic rename, after touching CLJAX_TEST_STALL_MARKER.
SITECUSTOMIZE = r'''
import os, socket
def _refuse(what):
  def refuse(*args, **kwargs):
    sock = args[0] if args and isinstance(args[0], socket.socket) else None
    if sock is not None and sock.family == socket.AF_UNIX:
      return _originals[what](*args, **kwargs)
    with open(os.environ['CLJAX_TEST_NETWORK_LOG'], 'a') as f:
      f.write(f'{what} {args[1:] if sock is not None else args}\n')
    raise OSError(f'network disabled by the test ({what})')
  return refuse
_originals = {'connect': socket.socket.connect, 'connect_ex': socket.socket.connect_ex,
              'sendto': socket.socket.sendto}
for _name in _originals:
  setattr(socket.socket, _name, _refuse(_name))
socket.getaddrinfo = _refuse('getaddrinfo')
socket.create_connection = _refuse('create_connection')

if os.environ.get('CLJAX_TEST_STALL_SAVE'):
  import time
  from orbax.checkpoint._src.path import atomicity
  _finalize = atomicity.AtomicRenameTemporaryPath.finalize
  async def finalize(self):
    if os.environ['CLJAX_TEST_STALL_SAVE'] in str(self._final_path):
      open(os.environ['CLJAX_TEST_STALL_MARKER'], 'w').close()
      time.sleep(600)
    return await _finalize(self)
  atomicity.AtomicRenameTemporaryPath.finalize = finalize
'''

# Two tasks of the demo with a 1-block backbone: 8 steps per epoch; 2 epochs in stage 1, 1 in
# stage 2; checkpoints every 4 steps (mid-epoch and at epoch ends).
TINY = ['--config.backbone.depth=1', '--config.prompt.layers=(0,)', '--config.task_identity.epochs=2',
        '--config.task_identity.ca_epochs=1', '--config.prompt.epochs=1', '--config.prompt.ca_epochs=1',
        '--config.stop_after_task=2']


@pytest.fixture(scope='module')
def env(tmp_path_factory):
  site = tmp_path_factory.mktemp('site')
  (site / 'sitecustomize.py').write_text(SITECUSTOMIZE)
  log = site / 'network.log'
  return dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), ROOT]), JAX_PLATFORMS='cpu',
              CLJAX_TEST_NETWORK_LOG=str(log))


def command(workdir, data_dir, every):
  return [sys.executable, '-m', 'cljax.main', '--config=configs/demo.py', f'--workdir={workdir}',
          f'--config.benchmark.data_dir={data_dir}', f'--config.checkpoint_every_steps={every}'] + TINY


def mid_stage_steps(workdir):
  path = os.path.join(workdir, 'checkpoints', 'mid_stage')
  return sorted(int(n) for n in os.listdir(path) if n.isdigit()) if os.path.isdir(path) else []


def kill_when(cmd, env, ready, timeout=300):
  """Start the command, SIGKILL it as soon as ready() holds; False if it finished first."""
  proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  deadline = time.time() + timeout
  while proc.poll() is None and time.time() < deadline:
    if ready():
      proc.send_signal(signal.SIGKILL)
      proc.wait()
      return True
    time.sleep(0.05)
  proc.kill()
  proc.wait()
  raise AssertionError(f'the run ended before the kill point: {proc.stderr.read().decode()[-2000:]}')


def epoch_lines(workdir):
  """The last record of every epoch (a resumed run may log an epoch again), timing removed."""
  out = {}
  for line in open(os.path.join(workdir, 'metrics.jsonl')):
    r = json.loads(line)
    if 'epoch' in r and 'loss' in r:
      out[(r['stage'], r.get('phase'), r['task'], r['epoch'])] = {
          k: v for k, v in r.items() if k not in ('time', 'img_per_s')}
  return out


def test_kill_9_anywhere_then_rerun_gives_the_uninterrupted_results(env, tmp_path):
  data_dir = str(tmp_path / 'tfds')
  # Uninterrupted, checkpoints at stage ends only.
  ref = tmp_path / 'ref'
  out = subprocess.run(command(ref, data_dir, 0), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]

  work = str(tmp_path / 'killed')
  cmd = command(work, data_dir, 4)
  scale = task_checkpoints.MID_STAGE_SCALE
  # 1. Inside the first stage, once it has checkpointed at the end of its first epoch (step 8).
  kill_when(cmd, env, lambda: scale + 8 in mid_stage_steps(work))
  # 2. Inside the write of the first completed stage's run checkpoint, before its rename.
  marker = tmp_path / 'stalled'
  stall = dict(env, CLJAX_TEST_STALL_SAVE=os.path.join('checkpoints', 'resume', '1'),
               CLJAX_TEST_STALL_MARKER=str(marker))
  kill_when(cmd, stall, marker.exists)
  resume_dir = os.path.join(work, 'checkpoints', 'resume')
  assert any('orbax-checkpoint-tmp' in n for n in os.listdir(resume_dir)), os.listdir(resume_dir)
  assert not os.path.exists(os.path.join(resume_dir, '1'))       # the half-written one is not taken
  # 3. Inside the prompt stage of task 2 (stage step 4), after it has checkpointed mid-epoch.
  kill_when(cmd, env, lambda: any(s // scale == 4 for s in mid_stage_steps(work)))
  # Rerun to the end.
  out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert 'resuming' in out.stdout and 'the prompt stage of task 2 after' in out.stdout, out.stdout[:3000]

  results = [json.load(open(os.path.join(w, 'results.json'))) for w in (ref, work)]
  for key in ('accuracy_matrix', 'accuracy_matrix_before_alignment', 'task_identity_matrix',
              'stage1_task_identity_accuracy'):
    assert results[0][key] == results[1][key], key
  assert np.array(results[0]['accuracy_matrix'])[:, :2].min() >= 0 and results[0]['tasks_completed'] == 2
  # Per-epoch losses and metrics too: the running sums were checkpointed with the position.
  assert epoch_lines(ref) == epoch_lines(work)
  assert mid_stage_steps(work) == []          # removed once their stage completed
  assert not os.path.exists(env['CLJAX_TEST_NETWORK_LOG']), open(env['CLJAX_TEST_NETWORK_LOG']).read()


# ----------------------------------------------------------------------------- damaged checkpoints

def small_state():
  return {'step': np.array(1, np.int32), 'w': np.arange(12, dtype=np.float32).reshape(3, 4)}


def saved_run(tmp_path):
  ckpt = task_checkpoints.RunCheckpoints(str(tmp_path))
  ckpt.save(1, small_state(), {'w': np.ones(3, np.float32)})
  ckpt.close()
  return os.path.join(str(tmp_path), 'checkpoints', 'resume', '1')


def data_files(path):
  return [os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs
          if os.path.basename(d) == 'd']


def test_intact_checkpoint_restores(tmp_path):
  saved_run(tmp_path)
  ckpt = task_checkpoints.RunCheckpoints(str(tmp_path))
  assert ckpt.latest_step() == 1
  np.testing.assert_array_equal(ckpt.restore(1, small_state())['w'], small_state()['w'])


def test_truncated_checkpoint_is_an_error(tmp_path):
  path = saved_run(tmp_path)
  for f in data_files(path):
    with open(f, 'r+b') as fh:
      fh.truncate(os.path.getsize(f) // 2)
  ckpt = task_checkpoints.RunCheckpoints(str(tmp_path))
  with pytest.raises(CheckpointError, match=rf'^checkpoint {path} cannot be read \(.*\); delete the workdir to start over$'):
    ckpt.restore(ckpt.latest_step(), small_state())
  ckpt.close()


def test_corrupted_checkpoint_is_an_error(tmp_path):
  path = saved_run(tmp_path)
  for f in data_files(path):     # flip bytes in the middle, keeping every file's size
    data = bytearray(open(f, 'rb').read())
    for i in range(len(data) // 3, len(data) // 3 + 16):
      data[i] ^= 0xFF
    open(f, 'wb').write(bytes(data))
  ckpt = task_checkpoints.RunCheckpoints(str(tmp_path))
  with pytest.raises(CheckpointError, match=rf'^checkpoint {path} (cannot be read \(.*\)|is corrupted \(.*\)); delete the workdir to start over$'):
    ckpt.restore(1, small_state())
  ckpt.close()


def test_arrays_that_differ_from_what_was_written_are_an_error(tmp_path, monkeypatch):
  """What the storage layer does not catch (a flipped bit in stored data) the checksums do."""
  real = task_checkpoints.checksums
  monkeypatch.setattr(task_checkpoints, 'checksums', lambda tree: real(tree) + 1)
  path = saved_run(tmp_path)
  monkeypatch.setattr(task_checkpoints, 'checksums', real)
  ckpt = task_checkpoints.RunCheckpoints(str(tmp_path))
  with pytest.raises(CheckpointError, match=rf'^checkpoint {path} is corrupted \(its arrays do not match their checksums\); delete the workdir to start over$'):
    ckpt.restore(1, small_state())
  ckpt.close()


def test_missing_checkpoint_is_not_a_fresh_start(tmp_path):
  import shutil
  shutil.rmtree(saved_run(tmp_path))
  ckpt = task_checkpoints.RunCheckpoints(str(tmp_path))
  with pytest.raises(CheckpointError, match=r'^the checkpoint after the task_identity stage of task 1 \(step 1\) is missing from .*resume \(latest found: None\); restore it, or delete the workdir to start over$'):
    ckpt.latest_step()
  ckpt.close()


def test_damaged_mid_stage_checkpoint_is_an_error(tmp_path):
  ckpt = task_checkpoints.RunCheckpoints(str(tmp_path))
  ckpt.save_mid_stage(2, 5, {'params': {'w': np.ones(4, np.float32)}, 'position': np.arange(5)})
  ckpt.close()
  step = 2 * task_checkpoints.MID_STAGE_SCALE + 5
  path = os.path.join(str(tmp_path), 'checkpoints', 'mid_stage', str(step))
  ckpt = task_checkpoints.RunCheckpoints(str(tmp_path))
  done, progress = ckpt.restore_mid_stage(2)
  assert done == 5 and progress['params']['w'].tolist() == [1, 1, 1, 1]
  assert ckpt.restore_mid_stage(4) is None and ckpt.mid.all_steps() == []    # stale ones go
  ckpt.save_mid_stage(2, 5, {'params': {'w': np.ones(4, np.float32)}, 'position': np.arange(5)})
  ckpt.close()
  for f in data_files(path):
    open(f, 'wb').close()
  ckpt = task_checkpoints.RunCheckpoints(str(tmp_path))
  with pytest.raises(CheckpointError, match=rf'^checkpoint {path} cannot be read \(.*\); delete {path} to resume from the start of the prompt stage of task 1$'):
    ckpt.restore_mid_stage(2)
  ckpt.close()


# ----------------------------------------------------------------------------- divergence

def test_diverging_run_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
  c = config_lib.demo('norga')
  c.benchmark.data_dir = str(tmp_path / 'tfds')
  c.backbone.depth = 1
  c.prompt.update(layers=(0,), epochs=1, lr=1e30)
  c.task_identity.enabled = False
  c.checkpoint_every_steps = 1
  with pytest.raises(TrainingDivergedError) as e:
    trainer.run(c, str(tmp_path / 'run'))
  assert str(e.value) == (
      'training diverged: non-finite parameters in the prompt stage, task 1, epoch 1/1, step 2/8; '
      'the workdir keeps the last good checkpoint; lower config.prompt.lr (or check the inputs) and rerun '
      'with --config.rerun_with_changes=True to continue from it')
  ckpt = task_checkpoints.RunCheckpoints(str(tmp_path / 'run'))
  done, progress = ckpt.restore_mid_stage(task_checkpoints.stage_step(0, 'prompt'))
  assert done == 1 and all(np.isfinite(x).all() for x in jax_leaves(progress['params']))


def jax_leaves(tree):
  import jax
  return jax.tree.leaves(tree)
