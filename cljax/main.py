"""Run a continual-learning experiment.

  python -m cljax.main --config=configs/imr_norga.py --workdir=workdirs/imr_norga \
      [--config.backbone.weights=/path/ViT-B_16.npz] [--config.seed=40] [--config.dry_run]

Rerunning the same command resumes after the last completed stage (or inside a stage, with
--config.checkpoint_every_steps=N); a finished run only reports. Mistakes in the command, the
config, the files or the workdir print one `error: ...` line and exit with status 2.
Results: <workdir>/results.json (accuracy matrices, FA/CA/FM, task-identity accuracy),
<workdir>/metrics.jsonl (per-epoch and per-task lines), Orbax checkpoints under
<workdir>/checkpoints.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags
from ml_collections import config_flags

from cljax import cli
from cljax.errors import CljaxError, RunInterrupted

_CONFIG = config_flags.DEFINE_config_file('config', None, 'a config file in configs/', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'where checkpoints and results go')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  from cljax.continual.run_log import quiet_libraries  # pylint: disable=g-import-not-at-top
  quiet_libraries()
  from cljax import parallel  # pylint: disable=g-import-not-at-top
  from cljax.continual import interrupts, trainer  # pylint: disable=g-import-not-at-top
  interrupts.install()
  try:
    cli.check_no_arguments(argv)
    config = cli.config_value(_CONFIG)
    joined = parallel.initialize_distributed(config.distributed_timeout_s)
    results = trainer.run(config, _WORKDIR.value, joined)
  except CljaxError as e:
    # An error every process agreed on is printed once, by process 0.
    if not getattr(e, 'agreed', False) or parallel.is_main():
      print(f'error: {e}', file=sys.stderr)
    if isinstance(e, parallel.DistributedError):
      _exit_now(2)
    sys.exit(130 if isinstance(e, RunInterrupted) else 2)
  except KeyboardInterrupt:    # before the run began training (loading, compiling)
    print('error: interrupted before training began; no checkpoint was written by this command, '
          'and the same command starts again', file=sys.stderr)
    sys.exit(130)
  except Exception as e:  # pylint: disable=broad-except
    from cljax.errors import storage_error  # pylint: disable=g-import-not-at-top
    full_or_refused = storage_error(e, _WORKDIR.value)
    if full_or_refused is not None:   # the disk, not cljax: one line, and Orbax's threads stop
      print(f'error: {full_or_refused}', file=sys.stderr)
      _exit_now(2)
    stopped = parallel.describe_stop(e)
    if stopped is None:    # this process's own error
      raise
    print(f'error: {stopped}', file=sys.stderr)
    _exit_now(2)
  if not parallel.is_main():
    return
  from cljax.continual.metrics import summary_line  # pylint: disable=g-import-not-at-top
  print(f'{summary_line(results, results.get("metric_definition", ""))}  ({_WORKDIR.value}/results.json)')


def _exit_now(status: int) -> None:
  """Exit without JAX's shutdown barrier, which would wait for the missing process and then
  abort with a C++ stack trace."""
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(status)  # pylint: disable=protected-access


def run():
  from cljax import host_memory  # pylint: disable=g-import-not-at-top
  host_memory.reexec_with_huge_pages([sys.executable, '-m', 'cljax.main'] + sys.argv[1:])
  from cljax import launch  # pylint: disable=g-import-not-at-top
  try:
    supervised = launch.needs_supervisor()
  except CljaxError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  if supervised:    # one process of several: its training runs in a child (see cljax.launch)
    sys.exit(launch.supervise([sys.executable, '-m', 'cljax.main'] + sys.argv[1:]))
  app.run(main, flags_parser=cli.parse_flags)


if __name__ == '__main__':
  run()
