"""A finished run read back from its workdir: the config it ran with, and the params of a
completed stage as the references' model held them (backbone included), for
`python -m cljax.convert export` and `python -m cljax.evaluate`.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp

from cljax import config as config_lib
from cljax.continual import task_checkpoints, trainer
from cljax.errors import CheckpointError


def run_config(workdir: str):
  """The config a cljax workdir was run with (its config.json)."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise CheckpointError(f'{workdir} holds no cljax run (no config.json)')
  with open(path) as f:
    return config_lib.from_json(json.load(f))


def load_params(workdir: str, task: int, stage: str = 'prompt', experiment=None):
  """Grouped params (backbone included) of a finished stage of task ``task`` (0-based), as the
  references' model held them: for `python -m cljax.convert export` and `cljax.evaluate`
  (``experiment``: the run's `trainer.Experiment`, built from its config if not given)."""
  if experiment is None:
    experiment = trainer.Experiment(run_config(workdir), workdir, load_data=False)
  step = task_checkpoints.stage_step(task, stage)
  # Read-only: a run may be writing to this workdir (its temporary directories must stay).
  manager = ocp.CheckpointManager(task_checkpoints.task_directory(workdir),
                                  options=ocp.CheckpointManagerOptions(read_only=True))
  if step not in manager.all_steps():
    raise CheckpointError(f'{workdir} has no {stage} checkpoint of task {task + 1} '
                          f'(completed steps: {sorted(manager.all_steps())})')
  template = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), experiment.stage_template(stage))
  path = os.path.join(str(manager.directory), str(step))
  params = task_checkpoints.restore_verified(
      manager, step, {'params': template, 'checksums': task_checkpoints.checksums(template)}, path,
      'that task has to be trained again')['params']
  return {'backbone': jax.tree.map(np.asarray, experiment.backbone), **params}
