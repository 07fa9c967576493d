"""Run a continual-learning experiment.

  python -m cljax.main --config=configs/imr_norga.py --workdir=workdirs/imr_norga \
      [--config.backbone.weights=/path/ViT-B_16.npz] [--config.seed=40] [--config.dry_run]

Rerunning the same command resumes after the last completed stage; a finished run only reports.
Results: <workdir>/results.json (accuracy matrices, FA/CA/FM, task-identity accuracy),
<workdir>/metrics.jsonl (per-epoch and per-task lines), Orbax checkpoints under
<workdir>/checkpoints.
"""

from __future__ import annotations

import sys

from absl import app, flags
from ml_collections import config_flags

from cljax.errors import CljaxError

_CONFIG = config_flags.DEFINE_config_file('config', None, 'a config file in configs/', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'where checkpoints and results go')
flags.mark_flags_as_required(['config', 'workdir'])


def quiet_libraries():
  """Orbax and tfds log every file operation at INFO; cljax prints its own progress."""
  import logging  # pylint: disable=g-import-not-at-top
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  if absl_logging.get_verbosity() <= absl_logging.INFO and '--verbosity' not in ' '.join(sys.argv):
    absl_logging.set_verbosity(absl_logging.WARNING)
  for name in ('orbax', 'absl', 'tensorflow_datasets'):
    logging.getLogger(name).setLevel(logging.WARNING)
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    tfds.disable_progress_bar()
  except ImportError:
    pass


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  quiet_libraries()
  from cljax import parallel  # pylint: disable=g-import-not-at-top
  from cljax.continual import trainer  # pylint: disable=g-import-not-at-top
  try:
    parallel.initialize_distributed()
    results = trainer.run(_CONFIG.value, _WORKDIR.value)
  except CljaxError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  print(f'final average accuracy {results["final_average_accuracy"]:.2f} | cumulative '
        f'{results["cumulative_average_accuracy"]:.2f} | forgetting {results["forgetting"]:.2f} | '
        f'task identity {results["task_identity_accuracy"]:.2f}  ({_WORKDIR.value}/results.json)')


def run():
  app.run(main)


if __name__ == '__main__':
  run()
