"""Orbax checkpoints of a run, after every stage of every task.

``<workdir>/checkpoints/resume``: the whole run state (every stage's params, class statistics,
accuracy matrices, the step counter); only the latest is kept, as statistics can be large
(200 covariance matrices of 768 x 768 for ImageNet-R).
``<workdir>/checkpoints/tasks``: each stage's trainable params after each task, all kept (the
references' ``task{t}_checkpoint.pth``; `python -m cljax.convert export` writes them in the
references' layout).

Step numbers count completed stages: stage s (0 = task identity, 1 = prompts) of task t is step
``2 t + s + 1``. Rerunning the same command resumes after the last completed stage.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from cljax.errors import CheckpointError

STAGES = ('task_identity', 'prompt')


def stage_step(t: int, stage: str) -> int:
  return 2 * t + STAGES.index(stage) + 1


def step_stage(step: int):
  """(task, stage) completed at ``step``."""
  return (step - 1) // 2, STAGES[(step - 1) % 2]


class RunCheckpoints:
  def __init__(self, workdir: str):
    root = os.path.abspath(os.path.join(workdir, 'checkpoints'))
    self.resume = ocp.CheckpointManager(os.path.join(root, 'resume'),
                                        options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True))
    self.tasks = ocp.CheckpointManager(os.path.join(root, 'tasks'),
                                       options=ocp.CheckpointManagerOptions(create=True))

  def latest_step(self) -> Optional[int]:
    return self.resume.latest_step()

  def save(self, step: int, state: Dict[str, Any], stage_params: Dict[str, Any]) -> None:
    host = jax.tree.map(np.asarray, state)
    self.tasks.save(step, args=ocp.args.StandardSave(jax.tree.map(np.asarray, stage_params)))
    self.resume.save(step, args=ocp.args.StandardSave(host))
    self.tasks.wait_until_finished()
    self.resume.wait_until_finished()

  def restore(self, step: int, template: Dict[str, Any]) -> Dict[str, Any]:
    abstract = jax.tree.map(np.asarray, template)
    try:
      return self.resume.restore(step, args=ocp.args.StandardRestore(abstract))
    except Exception as e:
      first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
      raise CheckpointError(f'cannot restore the run checkpoint at step {step} '
                            f'({self.resume.directory}): {first}') from e

  def close(self):
    self.resume.close()
    self.tasks.close()


def load_params(workdir: str, task: int, stage: str = 'prompt'):
  """Grouped params (backbone included) of a finished stage of task ``task`` (0-based), as the
  references' model held them: for `python -m cljax.convert export`."""
  from cljax import config as config_lib  # pylint: disable=g-import-not-at-top
  from cljax.continual import trainer  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise CheckpointError(f'{workdir} holds no cljax run (no config.json)')
  with open(path) as f:
    config = config_lib.from_json(json.load(f))
  experiment = trainer.Experiment(config, workdir, load_data=False)
  step = stage_step(task, stage)
  manager = RunCheckpoints(workdir).tasks
  if step not in manager.all_steps():
    raise CheckpointError(f'{workdir} has no {stage} checkpoint of task {task} '
                          f'(completed steps: {sorted(manager.all_steps())})')
  template = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), experiment.stage_template(stage))
  params = manager.restore(step, args=ocp.args.StandardRestore(template))
  return {'backbone': jax.tree.map(np.asarray, experiment.backbone), **params}
