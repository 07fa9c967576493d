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


def one_of(what: str, value, valid) -> ConfigError:
  """The error for a value outside a fixed set, listing the valid ones."""
  return ConfigError(f'unknown {what} {value!r}; valid: {", ".join(map(str, valid))}')


class RunInterrupted(CljaxError):
  """Ctrl-C: the message says where the run stopped and that the same command resumes (exit
  status 130, as a shell reports an interrupt)."""
