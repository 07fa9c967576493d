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

import sys

from absl import app, flags
from ml_collections import config_flags

from cljax import cli
from cljax.errors import CljaxError

_CONFIG = config_flags.DEFINE_config_file('config', None, 'a config file in configs/', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'where checkpoints and results go')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  from cljax.continual.run_log import quiet_libraries  # pylint: disable=g-import-not-at-top
  quiet_libraries()
  from cljax import parallel  # pylint: disable=g-import-not-at-top
  from cljax.continual import trainer  # pylint: disable=g-import-not-at-top
  try:
    cli.check_no_arguments(argv)
    config = cli.config_value(_CONFIG)
    parallel.initialize_distributed()
    results = trainer.run(config, _WORKDIR.value)
  except CljaxError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  from cljax.continual.metrics import summary_line  # pylint: disable=g-import-not-at-top
  print(f'{summary_line(results, results.get("metric_definition", ""))}  ({_WORKDIR.value}/results.json)')


def run():
  app.run(main, flags_parser=cli.parse_flags)


if __name__ == '__main__':
  run()
