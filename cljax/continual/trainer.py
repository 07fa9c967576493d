"""The continual-learning trainer: `run(config, workdir)`, one trainer for every method.

`run` checks the config and the workdir before anything loads, then trains and evaluates every
task (`Experiment.run`), resuming what the workdir holds; a dry run goes to `dry_run.run`. The
trainer knows no method by name: it calls the `Method`'s pure functions. Where things are:

  experiment.py        `Experiment`: the run's setup and its loop over tasks and stages (resume)
  steps.py             a stage's pure steps (train, align, features, predict), jitted once per run
  stage_training.py    one stage's training loop (epochs, mid-stage checkpoints) and alignment
  class_statistics.py  the statistics pass over a task's training images
  evaluation.py        a column of the accuracy matrix, and the test-feature cache
  run_outputs.py       log lines, metrics, plots and results.json after each task
  streams.py           the batch streams;  task_checkpoints.py  Orbax checkpoints and ledger
  workdir_claim.py     whose run a workdir holds;  workdir_lock.py  one live run per workdir
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from cljax import compilation_cache, config as config_lib
from cljax import parallel
from cljax.continual import dry_run, workdir_claim, workdir_lock
from cljax.continual.experiment import Experiment


def run(config, workdir: str, joined: Optional[str] = None) -> Dict[str, Any]:
  """Run ``config`` in ``workdir`` (resuming what it holds); ``joined``: see Experiment.run."""
  # The config and the workdir (another config's run, or a live run) are checked before
  # anything is loaded or compiled.
  config = config_lib.validate(config)
  compilation_cache.enable(config.compilation_cache, workdir)
  if config.dry_run:    # at a batch that fits the machine, checked as such (cljax/continual/dry_run.py)
    return dry_run.run(config, workdir)
  parallel.agree(lambda: (workdir_claim.check_workdir(config, workdir),
                          workdir_lock.WorkdirLock(workdir).check()), 'workdir')
  return Experiment(config, workdir).run(joined)
