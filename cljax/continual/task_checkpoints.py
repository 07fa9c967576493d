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

from cljax.errors import CheckpointError

STAGES = ('task_identity', 'prompt')
# Mid-stage checkpoint numbers: stage_step * MID_STAGE_SCALE + training steps done in the stage,
# so they increase through the run as Orbax requires.
MID_STAGE_SCALE = 10 ** 9


def stage_step(t: int, stage: str) -> int:
  return 2 * t + STAGES.index(stage) + 1


def step_stage(step: int):
  """(task, stage) completed at ``step``."""
  return (step - 1) // 2, STAGES[(step - 1) % 2]


def describe(step: int) -> str:
  task, stage = step_stage(step)
  return f'the {stage} stage of task {task + 1}'


def to_host(tree):
  """Numpy copies: the jitted steps donate their buffers, which a view would alias."""
  return jax.tree.map(lambda x: np.array(x, copy=True), tree)


def checksums(tree) -> np.ndarray:
  """CRC32 of every leaf's bytes, in tree order."""
  return np.array([zlib.crc32(np.ascontiguousarray(x).tobytes()) for x in jax.tree.leaves(tree)],
                  np.uint32)


def _first_line(e: Exception) -> str:
  return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


class RunCheckpoints:
  def __init__(self, workdir: str):
    root = os.path.abspath(os.path.join(workdir, 'checkpoints'))
    self.root = root
    self.ledger = os.path.join(root, 'saved.json')
    # cleanup_tmp_directories: the leftovers of a write that was killed go at the next start.
    options = lambda **kw: ocp.CheckpointManagerOptions(create=True, cleanup_tmp_directories=True, **kw)
    self.resume = ocp.CheckpointManager(os.path.join(root, 'resume'), options=options(max_to_keep=1))
    self.tasks = ocp.CheckpointManager(task_directory(workdir), options=options())
    self.mid = ocp.CheckpointManager(os.path.join(root, 'mid_stage'), options=options(max_to_keep=2))

  # ------------------------------------------------------------------------- stage ends

  def latest_step(self) -> Optional[int]:
    """The last completed stage that has a checkpoint; an error if the ledger names a later one
    (its checkpoint was deleted or damaged after it was written)."""
    latest = self.resume.latest_step()
    expected = None
    if os.path.exists(self.ledger):
      try:
        with open(self.ledger) as f:
          expected = int(json.load(f)['step'])
      except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f'{self.ledger} is damaged ({_first_line(e)}); delete the workdir '
                              f'to start over') from e
    if expected is not None and (latest is None or latest < expected):
      raise CheckpointError(
          f'the checkpoint after {describe(expected)} (step {expected}) is missing from '
          f'{self.resume.directory} (latest found: {latest}); restore it, or delete the workdir '
          f'to start over')
    return latest

  def save(self, step: int, state: Dict[str, Any], stage_params: Dict[str, Any]) -> None:
    host = to_host(state)
    params = to_host(stage_params)
    self.tasks.save(step, args=ocp.args.StandardSave({'params': params, 'checksums': checksums(params)}))
    self.resume.save(step, args=ocp.args.StandardSave({'state': host, 'checksums': checksums(host)}))
    self.tasks.wait_until_finished()
    self.resume.wait_until_finished()
    tmp = self.ledger + '.tmp'
    with open(tmp, 'w') as f:
      json.dump({'step': step, 'completed': describe(step)}, f)
    os.replace(tmp, self.ledger)
    self.clear_mid_stage()

  def restore(self, step: int, template: Dict[str, Any]) -> Dict[str, Any]:
    abstract = to_host(template)
    tree = {'state': abstract, 'checksums': checksums(abstract)}
    path = os.path.join(str(self.resume.directory), str(step))
    restored = _restore(self.resume, step, tree, path, 'delete the workdir to start over')
    return restored['state']

  # ------------------------------------------------------------------------- inside a stage

  def save_mid_stage(self, step: int, done: int, progress: Dict[str, Any]) -> None:
    """Asynchronously: the stage completing at ``step`` after ``done`` training steps."""
    host = to_host(progress)
    self.mid.save(step * MID_STAGE_SCALE + done,
                  args=ocp.args.StandardSave({'progress': host, 'checksums': checksums(host)}))

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
    restored = _restore(self.mid, latest, None, path,
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


def _restore(manager, step: int, template, path: str, fix: str) -> Dict[str, Any]:
  """Restore and verify the checksums; every failure is a CheckpointError naming the path."""
  try:
    if template is None:    # the saved tree as it is (numpy leaves)
      restored = manager.restore(step)
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


def run_config(workdir: str):
  """The config a cljax workdir was run with (its config.json)."""
  from cljax import config as config_lib  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise CheckpointError(f'{workdir} holds no cljax run (no config.json)')
  with open(path) as f:
    return config_lib.from_json(json.load(f))


def load_params(workdir: str, task: int, stage: str = 'prompt', experiment=None):
  """Grouped params (backbone included) of a finished stage of task ``task`` (0-based), as the
  references' model held them: for `python -m cljax.convert export` and `cljax.evaluate`
  (``experiment``: the run's `trainer.Experiment`, built from its config if not given)."""
  from cljax.continual import trainer  # pylint: disable=g-import-not-at-top
  if experiment is None:
    experiment = trainer.Experiment(run_config(workdir), workdir, load_data=False)
  step = stage_step(task, stage)
  # Read-only: a run may be writing to this workdir (its temporary directories must stay).
  manager = ocp.CheckpointManager(task_directory(workdir),
                                  options=ocp.CheckpointManagerOptions(read_only=True))
  if step not in manager.all_steps():
    raise CheckpointError(f'{workdir} has no {stage} checkpoint of task {task + 1} '
                          f'(completed steps: {sorted(manager.all_steps())})')
  template = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), experiment.stage_template(stage))
  path = os.path.join(str(manager.directory), str(step))
  params = _restore(manager, step, {'params': template, 'checksums': checksums(template)}, path,
                    'that task has to be trained again')['params']
  return {'backbone': jax.tree.map(np.asarray, experiment.backbone), **params}
