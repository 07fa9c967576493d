"""User-facing errors.

Everything a researcher can get wrong (a config key, a checkpoint file, a dataset that is not
prepared) raises a subclass of `CljaxError` with a one-line message that names the culprit and
the fix. The command-line entry points print that line and exit with status 2 instead of
showing a traceback from deep inside jax.
"""


class CljaxError(Exception):
  """Base class: the message is meant to be read by a user, as is."""


class ConfigError(CljaxError, ValueError):
  """A config value is unknown, impossible or inconsistent."""


class CheckpointError(CljaxError, ValueError):
  """A checkpoint file is missing, of the wrong kind, or has missing/unexpected/mis-shaped keys."""


class DataError(CljaxError, ValueError):
  """A dataset is missing or not prepared."""


class TrainingDivergedError(CljaxError, FloatingPointError):
  """A loss or parameter became NaN/Inf; the message names stage, task, epoch and step."""


# The exit status of every entry point (main, seeds, report, convert, prepare, dry_run) when the
# user got something wrong; 1 is left for failures of cljax itself.
USER_ERROR = 2


def exit_with(error: Exception):
  """Print ``error: <message>`` on stderr and exit with `USER_ERROR` (the entry points' one rule)."""
  import sys  # pylint: disable=g-import-not-at-top
  print(f'error: {error}', file=sys.stderr)
  sys.exit(USER_ERROR)


def one_of(what: str, value, valid) -> ConfigError:
  """The error for a value outside a fixed set, listing the valid ones."""
  return ConfigError(f'unknown {what} {value!r}; valid: {", ".join(map(str, valid))}')


class RunInterrupted(CljaxError):
  """Ctrl-C: the message says where the run stopped and that the same command resumes (exit
  status 130, as a shell reports an interrupt)."""
