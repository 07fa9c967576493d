"""What a user meets when rerunning: Ctrl-C as one line, interrupts never lost, one run per
workdir (a lock with the owner's pid and host), clean records after a resume (no duplicate
epoch lines, no Orbax or asyncio noise), a finished run left as it was, every task checkpoint
verified, and a divergence that a documented override continues."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from cljax.continual import interrupts, workdir_lock
from cljax.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Two tasks of the demo with a 1-block backbone: 8 steps an epoch; checkpoints every 4 steps.
TINY = ['--config=configs/demo.py', '--config.backbone.depth=1', '--config.prompt.layers=(0,)',
        '--config.task_identity.epochs=2', '--config.task_identity.ca_epochs=1',
        '--config.prompt.epochs=2', '--config.prompt.ca_epochs=1', '--config.stop_after_task=2',
        '--config.checkpoint_every_steps=4']
ENV = dict({k: v for k, v in os.environ.items()     # the session's compilation cache kept
            if not k.startswith(('JAX_', 'XLA_')) or k.startswith('JAX_PERSISTENT_CACHE_')
            or k == 'JAX_COMPILATION_CACHE_DIR'}, PYTHONPATH=ROOT, JAX_PLATFORMS='cpu')


def start(workdir, *flags, **kw):
  return subprocess.Popen([sys.executable, '-m', 'cljax.main', f'--workdir={workdir}', *TINY, *flags],
                          cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, **kw)


def run(workdir, *flags):
  proc = start(workdir, *flags)
  out, err = proc.communicate(timeout=300)
  return proc.returncode, out, err


def wait_for_mid_stage(workdir, proc, stage_step):
  mid = os.path.join(workdir, 'checkpoints', 'mid_stage')
  deadline = time.time() + 240
  while not (os.path.isdir(mid) and any(n.isdigit() and int(n) // 10 ** 7 == stage_step
                                        for n in os.listdir(mid))):
    assert time.time() < deadline and proc.poll() is None
    time.sleep(0.1)


def epoch_records(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    rows = [json.loads(l) for l in f]
  return [r for r in rows if 'epoch' in r and 'event' not in r]


@pytest.fixture(scope='module')
def finished(tmp_path_factory):
  """An uninterrupted run: its results and records."""
  workdir = str(tmp_path_factory.mktemp('reruns') / 'whole')
  code, out, err = run(workdir)
  assert code == 0, err
  with open(os.path.join(workdir, 'results.json')) as f:
    return workdir, json.load(f)


def test_ctrl_c_is_one_line_and_the_same_command_resumes(finished, tmp_path):
  workdir = str(tmp_path / 'run')
  proc = start(workdir)
  wait_for_mid_stage(workdir, proc, 3)        # inside task 2's task-identity stage
  proc.send_signal(signal.SIGINT)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 130
  lines = [l for l in err.splitlines() if l.strip()]
  assert lines[-1].startswith('error: interrupted in the task_identity stage of task 2 (epoch ')
  assert lines[-1].endswith('); nothing is lost: the workdir keeps a checkpoint '
                            f'{lines[-1].split("keeps a checkpoint ")[1].split(" ")[0]} training steps '
                            'into the task_identity stage of task 2, and the same command resumes from it')
  assert 'Traceback' not in err
  code, out, err = run(workdir)
  assert code == 0, err
  assert 'resuming' in out
  with open(os.path.join(workdir, 'results.json')) as f:
    assert json.load(f)['accuracy_matrix'] == finished[1]['accuracy_matrix']


def test_an_interrupt_swallowed_by_a_callback_still_stops_the_run():
  interrupts.install()
  try:
    try:    # as a C++ callback does: the exception is caught and printed, never re-raised
      os.kill(os.getpid(), signal.SIGINT)
      time.sleep(0.05)
    except KeyboardInterrupt:
      pass
    with pytest.raises(KeyboardInterrupt):
      interrupts.check()
  finally:
    interrupts.reset()
    signal.signal(signal.SIGINT, signal.default_int_handler)


def test_a_second_run_in_a_live_workdir_is_refused(tmp_path):
  workdir = str(tmp_path / 'run')
  # A first run that outlasts the checks (a warm compilation cache makes TINY finish in seconds),
  # stopped with Ctrl-C once they are done.
  long = '--config.prompt.epochs=1000'
  first = start(workdir, long)
  deadline = time.time() + 120
  while not os.path.exists(os.path.join(workdir, 'cljax.lock')):
    assert time.time() < deadline and first.poll() is None
    time.sleep(0.1)
  for delay in (0.3, 2.0):    # at once, and while the first trains
    time.sleep(delay)
    code, out, err = run(workdir, long)
    assert code == 2
    assert err == (f'error: {workdir} is in use by cljax process {first.pid} on {socket.gethostname()}: '
                   f'wait for that run to finish or stop it, or pass another --workdir\n')
  assert first.poll() is None
  first.send_signal(signal.SIGINT)
  assert first.wait(timeout=300) == 130
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    lines = f.readlines()
  assert len(lines) == len(set(lines))      # every line once


def test_a_killed_runs_lock_is_taken_over(tmp_path):
  workdir = str(tmp_path / 'w')
  holder = subprocess.Popen([sys.executable, '-c', (
      'import sys, time; from cljax.continual import workdir_lock; '
      f'lock = workdir_lock.WorkdirLock({workdir!r}); lock.acquire(); print("held", flush=True); '
      'time.sleep(600)')],
      cwd=ROOT, env=ENV, stdout=subprocess.PIPE, text=True)
  assert holder.stdout.readline() == 'held\n'
  with pytest.raises(ConfigError, match=f'in use by cljax process {holder.pid} on '):
    workdir_lock.WorkdirLock(workdir).acquire()
  holder.kill()
  holder.wait()
  lock = workdir_lock.WorkdirLock(workdir)
  lock.acquire()      # the stale file of the killed process is taken over
  with open(os.path.join(workdir, 'cljax.lock')) as f:
    assert json.load(f)['pid'] == os.getpid()
  lock.release()


def test_a_resumed_run_leaves_clean_records(finished, tmp_path):
  workdir = str(tmp_path / 'run')
  proc = start(workdir)
  # Killed after an epoch's line was written and after a later mid-stage checkpoint of task 2.
  wait_for_mid_stage(workdir, proc, 3)
  time.sleep(1.0)
  proc.kill()
  proc.wait()
  code, out, err = run(workdir)
  assert code == 0, err
  for noise in ('could not be restored', 'Event loop is closed', 'Traceback'):
    assert noise not in err
  records = epoch_records(workdir)
  keys = [(r['stage'], r['task'], r['epoch']) for r in records]
  assert keys == [(r['stage'], r['task'], r['epoch']) for r in epoch_records(finished[0])]
  rates = [r['img_per_s'] for r in records]
  assert min(rates) > max(rates) / 50, rates     # no epoch's rate from a handful of batches
  with open(os.path.join(workdir, 'results.json')) as f:
    assert json.load(f)['accuracy_matrix'] == finished[1]['accuracy_matrix']


def test_rerunning_a_finished_run_changes_nothing(finished):
  workdir, results = finished
  code, out, err = run(workdir)
  assert code == 0, err
  with open(os.path.join(workdir, 'results.json')) as f:
    again = json.load(f)
  assert again == results and again['seconds_this_invocation'] > 0


@pytest.mark.parametrize('damage', ['delete', 'truncate'])
def test_a_damaged_task_checkpoint_is_noticed_by_a_rerun(finished, tmp_path, damage):
  import shutil
  workdir = str(tmp_path / 'copy')
  shutil.copytree(finished[0], workdir)
  path = os.path.join(workdir, 'checkpoints', 'tasks', '2')
  if damage == 'delete':
    shutil.rmtree(path)
  else:
    for folder, _, files in os.walk(os.path.join(path, 'default')):
      for name in files:
        if os.path.basename(folder) == 'd' and os.path.getsize(os.path.join(folder, name)) > 1000:
          with open(os.path.join(folder, name), 'r+b') as f:
            f.truncate(50)
  code, out, err = run(workdir)
  assert code == 2
  line = err.strip().splitlines()[-1]
  assert line.startswith(f'error: task checkpoint {path} (after the prompt stage of task 1) is missing'
                         if damage == 'delete' else f'error: checkpoint {path} cannot be read (')
  assert line.endswith('the prompt stage of task 1 has to be trained again: delete the workdir to start over')
  assert len(err.strip().splitlines()) == 1


def test_a_diverged_run_continues_with_a_lower_lr(tmp_path):
  workdir = str(tmp_path / 'run')
  code, out, err = run(workdir, '--config.prompt.lr=1e30')
  assert code == 2
  assert err.strip().endswith('lower config.prompt.lr (or check the inputs) and rerun with '
                              '--config.rerun_with_changes=True to continue from it')
  code, out, err = run(workdir)
  assert code == 2 and 'holds a run of a different config (prompt.lr: 1e+30 != 0.1)' in err
  assert err.strip().endswith('or continue its remaining stages with the new values: '
                              '--config.rerun_with_changes=True')
  code, out, err = run(workdir, '--config.rerun_with_changes=True')
  assert code == 0, err
  assert 'resuming' in out
  with open(os.path.join(workdir, 'config.json')) as f:
    saved = json.load(f)
  assert saved['prompt']['lr'] == 0.1
  assert [h['changed'] for h in saved['_history']] == [['prompt.lr: 1e+30 != 0.1']]


def _file_size_limit(limit):
  """preexec_fn: writes past ``limit`` bytes fail with EFBIG, as a full disk fails them."""
  def apply():
    import resource  # pylint: disable=g-import-not-at-top
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
  return apply


def test_a_write_the_filesystem_refuses_is_one_line_and_loses_nothing(finished, tmp_path):
  # The first mid-stage checkpoint holds a ~370 kB file: Orbax's writer fails in its threads.
  workdir = str(tmp_path / 'w')
  proc = start(workdir, preexec_fn=_file_size_limit(200_000))
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 2, err
  assert err.count('\n') == 1 and err.startswith(f'error: cannot write {workdir}/checkpoints/'), err
  assert 'ulimit -f' in err and 'rerun the same command: it continues from the last complete' in err
  assert 'Traceback' not in err + out and 'orbax' not in err
  code, out, err = run(workdir)    # the limit lifted: the same command finishes the run
  assert code == 0, err
  with open(os.path.join(workdir, 'results.json')) as f:
    assert json.load(f)['accuracy_matrix'] == finished[1]['accuracy_matrix']
