"""Orbax checkpoints of a run: after every stage of every task, and optionally inside a stage.

``<workdir>/checkpoints/resume``: the whole run state (every stage's params, class statistics,
accuracy matrices, the step counter); only the latest is kept, as statistics can be large
(200 covariance matrices of 768 x 768 for ImageNet-R).
``<workdir>/checkpoints/tasks``: each stage's trainable params after each task, all kept (the
references' ``task{t}_checkpoint.pth``; `python -m cljax.convert export` writes them in the
references' layout).
``<workdir>/checkpoints/mid_stage``: with ``config.checkpoint_every_steps``, the stage being
trained (params, optimizer state, method state, data position, running loss sums), written
asynchronously; the latest two are kept and they are deleted when the stage completes.

Step numbers count completed stages: stage s (0 = task identity, 1 = prompts) of task t is step
``2 t + s + 1``. Rerunning the same command resumes after the last completed stage, from the
latest mid-stage checkpoint of the next stage if there is one.

Every checkpoint is written by Orbax into a temporary directory that is renamed when complete,
so a kill during a write leaves the previous checkpoint as the latest. Each holds CRC32
checksums of its arrays, and ``<workdir>/checkpoints/saved.json`` records the last completed
stage checkpoint: a checkpoint that is truncated, corrupted or missing is reported as a
`CheckpointError`, never replaced by a fresh start.
"""

from __future__ import annotations

import json
import os
import zlib
from typing import Any, Dict, Optional, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp

from cljax import parallel
from cljax.errors import CheckpointError

STAGES = ('task_identity', 'prompt')
# Mid-stage checkpoint numbers: stage_step * MID_STAGE_SCALE + training steps done in the stage,
# so they increase through the run as Orbax requires. They must fit in 32 bits (Orbax's
# preemption check on several processes passes them to C++ as int): 10^7 steps a stage, 200 stages.
MID_STAGE_SCALE = 10 ** 7


def stage_step(t: int, stage: str) -> int:
  return 2 * t + STAGES.index(stage) + 1


def step_stage(step: int):
  """(task, stage) completed at ``step``."""
  return (step - 1) // 2, STAGES[(step - 1) % 2]


def describe(step: int) -> str:
  task, stage = step_stage(step)
  return f'the {stage} stage of task {task + 1}'


to_host = parallel.tree_to_host   # numpy copies, on every process


def checksums(tree) -> np.ndarray:
  """CRC32 of every leaf's bytes, in tree order."""
  return np.array([zlib.crc32(np.ascontiguousarray(x).tobytes()) for x in jax.tree.leaves(tree)],
                  np.uint32)


def _first_line(e: Exception) -> str:
  return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


class RunCheckpoints:
  def __init__(self, workdir: str, devices: int = 0):
    """``devices``: the run's mesh size, recorded with the number of processes (0: all)."""
    self.layout = {'processes': jax.process_count(), 'devices': devices or jax.device_count()}
    self.metrics = os.path.join(workdir, 'metrics.jsonl')
    self.saved_tasks = []     # the task checkpoints the ledger lists (`_latest_step`)
    self.last = None          # the latest checkpoint this run has, for `describe_last`
    root = os.path.abspath(os.path.join(workdir, 'checkpoints'))
    self.root = root
    self.ledger = os.path.join(root, 'saved.json')
    # The size of metrics.jsonl when each checkpoint was taken: a resume drops the lines written
    # after the checkpoint it continues from (they are written again).
    self.offsets = os.path.join(root, 'metrics_offsets.json')
    # cleanup_tmp_directories: the leftovers of a write that was killed go at the next start.
    options = lambda **kw: ocp.CheckpointManagerOptions(create=True, cleanup_tmp_directories=True, **kw)
    self.resume = ocp.CheckpointManager(os.path.join(root, 'resume'), options=options(max_to_keep=1))
    self.tasks = ocp.CheckpointManager(task_directory(workdir), options=options())
    self.mid = ocp.CheckpointManager(os.path.join(root, 'mid_stage'), options=options(max_to_keep=2))

  # ------------------------------------------------------------------------- stage ends

  def latest_step(self) -> Optional[int]:
    """The last completed stage that has a checkpoint; an error if the ledger names a later one
    (its checkpoint was deleted or damaged after it was written), or if the run was started on
    another number of processes or devices (`check_layout`). On several processes, decided by
    process 0 and agreed by all (`cljax.parallel.agree`)."""
    found = parallel.agree(self._latest_step, 'latest checkpoint')
    self.last, self.saved_tasks = found['latest'], found['tasks']
    self.verify_tasks()
    return self.last

  def describe_last(self) -> str:
    """What the workdir's latest checkpoint holds, in words."""
    if self.last > MID_STAGE_SCALE:
      done = self.last % MID_STAGE_SCALE
      return f'a checkpoint {done} training steps into {describe(self.last // MID_STAGE_SCALE)}'
    return f'the checkpoint after {describe(self.last)}'

  def _ledger(self) -> Dict[str, Any]:
    if not os.path.exists(self.ledger):
      return {}
    try:
      with open(self.ledger) as f:
        ledger = json.load(f)
      int(ledger['step'])
      return ledger
    except (ValueError, KeyError, TypeError) as e:
      raise CheckpointError(f'{self.ledger} is damaged ({_first_line(e)}); delete the workdir '
                            f'to start over') from e

  def _latest_step(self) -> Dict[str, Any]:
    latest = self.resume.latest_step()
    ledger = self._ledger()
    check_layout(ledger, self.layout, self.ledger)
    expected = int(ledger['step']) if ledger.get('step') else None
    if expected is not None and (latest is None or latest < expected):
      raise CheckpointError(
          f'the checkpoint after {describe(expected)} (step {expected}) is missing from '
          f'{self.resume.directory} (latest found: {latest}); restore it, or delete the workdir '
          f'to start over')
    self.saved_tasks = [int(s) for s in ledger.get('tasks', [])]
    present = set(self.tasks.all_steps())
    for s in self.saved_tasks:
      if s not in present:
        raise CheckpointError(f'task checkpoint {self._task_path(s)} (after {describe(s)}) is '
                              f'missing; {self._retrain(s)}')
    return {'latest': latest, 'tasks': self.saved_tasks}

  def _task_path(self, step: int) -> str:
    return os.path.join(str(self.tasks.directory), str(step))

  @staticmethod
  def _retrain(step: int) -> str:
    return f'{describe(step)} has to be trained again: delete the workdir to start over'

  def verify_tasks(self) -> None:
    """Read every task checkpoint the ledger lists and check its checksums (convert export and
    evaluation read them): a truncated or corrupted one is an error now, not at export time.
    Every process takes part (an Orbax restore is collective)."""
    for s in self.saved_tasks:
      restore_verified(self.tasks, s, None, self._task_path(s), self._retrain(s))

  def save(self, step: int, state: Dict[str, Any], stage_params: Dict[str, Any]) -> None:
    host = to_host(state)
    params = to_host(stage_params)
    # One Orbax write at a time: on several processes each write's barriers run in a background
    # thread, and two writes in flight could reach them in another order on another process.
    self.mid.wait_until_finished()
    self.tasks.save(step, args=ocp.args.StandardSave({'params': params, 'checksums': checksums(params)}))
    self.tasks.wait_until_finished()
    self.resume.save(step, args=ocp.args.StandardSave({'state': host, 'checksums': checksums(host)}))
    self.resume.wait_until_finished()
    self.saved_tasks = sorted(set(self.saved_tasks) | {step})
    self._note_offset(step)
    self._write_ledger(step)
    self.last = step
    self.clear_mid_stage()

  def write_ledger(self, step: int) -> None:
    if step == 0 and '0' not in self._offsets():    # a run starting: what it writes from here on
      self._note_offset(0)
    self._write_ledger(step)

  def _write_ledger(self, step: int) -> None:
    """Process 0 records the last completed stage (0: none yet) and the run's layout; the
    others wait until it has (a reader after the barrier sees the new ledger)."""
    if parallel.is_main():
      tmp = self.ledger + '.tmp'
      os.makedirs(self.root, exist_ok=True)
      with open(tmp, 'w') as f:
        json.dump({'step': step, 'completed': describe(step) if step else 'nothing yet',
                   **self.layout, 'tasks': self.saved_tasks}, f)
      os.replace(tmp, self.ledger)
    parallel.barrier(f'ledger {step}')

  def restore(self, step: int, template: Dict[str, Any]) -> Dict[str, Any]:
    abstract = to_host(template)
    tree = {'state': abstract, 'checksums': checksums(abstract)}
    path = os.path.join(str(self.resume.directory), str(step))
    restored = restore_verified(self.resume, step, tree, path, 'delete the workdir to start over')
    return restored['state']

  # ------------------------------------------------------------------------- inside a stage

  def save_mid_stage(self, step: int, done: int, progress: Dict[str, Any]) -> None:
    """Asynchronously: the stage completing at ``step`` after ``done`` training steps."""
    host = to_host(progress)
    self._note_offset(step * MID_STAGE_SCALE + done)
    self.mid.save(step * MID_STAGE_SCALE + done,
                  args=ocp.args.StandardSave({'progress': host, 'checksums': checksums(host)}))
    self.last = step * MID_STAGE_SCALE + done

  def _note_offset(self, checkpoint: int) -> None:
    if not parallel.is_main():
      return
    offsets = self._offsets()
    offsets[str(checkpoint)] = os.path.getsize(self.metrics) if os.path.exists(self.metrics) else 0
    tmp = self.offsets + '.tmp'
    os.makedirs(self.root, exist_ok=True)
    with open(tmp, 'w') as f:
      json.dump(offsets, f)
    os.replace(tmp, self.offsets)

  def _offsets(self) -> Dict[str, int]:
    try:
      with open(self.offsets) as f:
        return json.load(f)
    except (OSError, ValueError):
      return {}

  def forget_later_records(self, checkpoint: int) -> None:
    """Process 0 cuts metrics.jsonl back to its size when ``checkpoint`` (a stage step, or a
    mid-stage checkpoint number) was taken: what a killed run wrote after it is written again
    by the resumed run, once."""
    size = self._offsets().get(str(checkpoint))
    if parallel.is_main() and size is not None and os.path.exists(self.metrics) and \
        os.path.getsize(self.metrics) > size:
      with open(self.metrics, 'r+') as f:
        f.truncate(size)

  def restore_mid_stage(self, step: int) -> Optional[Tuple[int, Dict[str, Any]]]:
    """(steps done, progress) of the latest mid-stage checkpoint of the stage completing at
    ``step``; None if there is none (older ones are deleted)."""
    latest = self.mid.latest_step()
    if latest is None:
      return None
    if latest // MID_STAGE_SCALE != step:    # of a stage completed since, or never resumable
      self.clear_mid_stage()
      return None
    path = os.path.join(str(self.mid.directory), str(latest))
    restored = restore_verified(self.mid, latest, None, path,
                        f'delete {path} to resume from the start of {describe(step)}')
    return latest % MID_STAGE_SCALE, restored['progress']

  def clear_mid_stage(self) -> None:
    self.mid.wait_until_finished()
    for s in self.mid.all_steps():
      self.mid.delete(s)

  def close(self):
    self.mid.wait_until_finished()
    for manager in (self.resume, self.tasks, self.mid):
      manager.close()


def check_layout(ledger: Dict[str, Any], now: Dict[str, int], path: str) -> None:
  """Refuse to resume a run begun on another number of processes or devices: the data order and
  global batches do not depend on them, but the sums over devices are taken in another order,
  so the run would not give the numbers of an uninterrupted one."""
  if 'processes' not in ledger:    # a ledger of a version before layouts were recorded
    return
  if (ledger['processes'], ledger['devices']) != (now['processes'], now['devices']):
    raise CheckpointError(
        f'this run was started on {ledger["processes"]} process(es) with {ledger["devices"]} '
        f'device(s) in all ({path}), and this one has {now["processes"]} process(es) with '
        f'{now["devices"]} device(s): resume it with the same layout, or start over in another '
        f'--workdir')


def restore_verified(manager, step: int, template, path: str, fix: str) -> Dict[str, Any]:
  """Restore and verify the checksums; every failure is a CheckpointError naming the path."""
  try:
    if template is None:    # the saved tree as it is (numpy leaves)
      restored = manager.restore(step, args=ocp.args.StandardRestore())
    else:
      restored = manager.restore(step, args=ocp.args.StandardRestore(template))
  except Exception as e:  # truncated, corrupted or of another run layout
    raise CheckpointError(f'checkpoint {path} cannot be read ({_first_line(e)}); {fix}') from e
  content = next(v for k, v in restored.items() if k != 'checksums')
  if not np.array_equal(checksums(content), np.asarray(restored['checksums'])):
    raise CheckpointError(f'checkpoint {path} is corrupted (its arrays do not match their '
                          f'checksums); {fix}')
  return restored


def task_directory(workdir: str) -> str:
  return os.path.abspath(os.path.join(workdir, 'checkpoints', 'tasks'))
