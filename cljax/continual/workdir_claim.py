"""Which run a workdir holds: its config.json, written when a run claims the workdir and compared
on every rerun, so that a workdir never mixes the stages of two configs. With
config.rerun_with_changes, the stages not yet completed continue with new hyper-parameters and
config.json keeps the history of the changes.
"""

from __future__ import annotations

import json
import os
import time

from cljax import config as config_lib
from cljax.errors import CheckpointError, ConfigError


# config.json's record of the changes a rerun made with config.rerun_with_changes.
HISTORY = '_history'
# Keys that do not change a run's numbers: a rerun may change them.
RERUN_MAY_CHANGE = ('log_every_steps', 'stop_after_task', 'checkpoint_every_steps',
                    'distributed_timeout_s', 'rerun_with_changes', 'compilation_cache',
                    'data_workers', HISTORY)


def check_workdir(config, workdir: str, claim: bool = False) -> None:
  """Refuse a ``workdir`` holding another config's run; with ``claim``, write config.json into
  it (only once everything is validated: a config that fails does not claim a workdir)."""
  if not workdir:
    raise ConfigError('no workdir given: pass --workdir=<folder for checkpoints and results>')
  if '://' in workdir:
    raise ConfigError(f'workdir {workdir} is a URL, and cljax writes its workdir (results, logs, '
                      f'ledger) as files: mount the bucket (e.g. gcsfuse) or use a filesystem every '
                      f'host sees, and pass its path')
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ConfigError(f'workdir {workdir} is a file, not a folder; pass another --workdir')
  path = os.path.join(workdir, 'config.json')
  current = config_lib.to_json(config)
  if os.path.exists(path):
    try:
      with open(path) as f:
        saved = json.load(f)
    except ValueError as e:
      raise CheckpointError(f'{path} is damaged ({str(e).splitlines()[0]}); delete {workdir} to start '
                            f'over, or use another --workdir') from e
    differ = config_lib.differences(saved, current, ignore=RERUN_MAY_CHANGE)
    if differ and not config.rerun_with_changes:
      raise ConfigError(f'{workdir} holds a run of a different config ({"; ".join(differ[:4])}); '
                        f'use another --workdir, delete that one to start over, or continue its '
                        f'remaining stages with the new values: --config.rerun_with_changes=True')
    if differ and claim:    # the stages not yet completed run with the new values
      history = saved.get(HISTORY, []) + [{'time': round(time.time(), 1), 'changed': differ}]
      _write_json(path, {**current, HISTORY: history})
  elif claim:
    try:
      os.makedirs(workdir, exist_ok=True)
    except OSError as e:
      raise ConfigError(f'cannot create workdir {workdir} ({e.strerror}); pass another --workdir') from e
    _write_json(path, current)


def _write_json(path: str, value) -> None:
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(value, f, indent=2, sort_keys=True)
  os.replace(tmp, path)    # a kill leaves no half-written file
