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

from cljax.errors import CljaxError, ConfigError

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
  quiet_libraries()
  from cljax import parallel  # pylint: disable=g-import-not-at-top
  from cljax.continual import trainer  # pylint: disable=g-import-not-at-top
  try:
    if len(argv) > 1:
      raise ConfigError(f'unexpected arguments: {" ".join(argv[1:])}; settings are flags, '
                        f'e.g. --config.seed=1')
    try:
      config = _CONFIG.value
      config.keys()   # a config file that failed to load raises here, not at parse time
    except Exception as e:  # pylint: disable=broad-except
      raise ConfigError(_flag_error(sys.argv, e)) from e
    parallel.initialize_distributed()
    results = trainer.run(config, _WORKDIR.value)
  except CljaxError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  print(f'final average accuracy {results["final_average_accuracy"]:.2f} | cumulative '
        f'{results["cumulative_average_accuracy"]:.2f} | forgetting {results["forgetting"]:.2f} | '
        f'task identity {results["task_identity_accuracy"]:.2f}  ({_WORKDIR.value}/results.json)')


def _flag_error(argv, error: Exception) -> str:
  """One line for a command-line mistake. An override of a key the config lacks fails deep
  inside ml_collections (a bare KeyError), so overrides are checked against the schema first."""
  from cljax import config as config_lib  # pylint: disable=g-import-not-at-top
  cause = error
  while cause is not None and not isinstance(cause, CljaxError):
    cause = cause.__cause__ or cause.__context__
  lines = [l.strip() for l in str(cause or error).splitlines() if l.strip()] or [type(error).__name__]
  # ml_collections re-raises a config file's error with its traceback as the message.
  raised = [l for l in lines if l.startswith('cljax.errors.')]
  if raised:
    return raised[-1].split(': ', 1)[1]
  if cause is not None:
    return lines[0]
  for arg in argv[1:]:
    if arg.startswith('--config.'):
      try:
        config_lib.check_key_path(arg[len('--config.'):].split('=', 1)[0])
      except CljaxError as e:
        return f'{e} (in {arg})'
  if 'config file' in lines[0]:   # ml_collections puts the reason after it
    return f'cannot load the config file: {lines[-1]}'
  return lines[0]


def parse_flags(argv):
  """absl's flag parsing, with every mistake as one `error:` line and exit status 2."""
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # pylint: disable=broad-except
    print(f'error: {_flag_error(argv, e)}', file=sys.stderr)
    sys.exit(2)


def run():
  app.run(main, flags_parser=parse_flags)


if __name__ == '__main__':
  run()
