"""What the command-line entry points share: one `error:` line and exit status 2 for every
mistake in the command, the config file or an override, never a traceback."""

from __future__ import annotations

import sys

from absl import flags

from cljax.errors import CljaxError, ConfigError


def flag_error(argv, error: Exception) -> str:
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
    return _config_file_type_error(argv, lines[-1]) or f'cannot load the config file: {lines[-1]}'
  return lines[0]


def _config_file_type_error(argv, reason: str):
  """ml_collections' type refusal inside a config file, as cljax's tuple message (the key's
  full path is found among the schema's tuple keys), or None for any other reason."""
  import re  # pylint: disable=g-import-not-at-top
  from cljax import config as config_lib  # pylint: disable=g-import-not-at-top
  m = re.search(r"Could not override field '(\w+)'.*?\. (.+) is of original type <class '(\w+)'> "
                r"and cannot be casted to type <class 'tuple'>", reason)
  if not m:
    return None
  field, value = m.group(1), m.group(2)
  paths = [k for k in config_lib.tuple_keys() if k.split('.')[-1] == field] or [field]
  files = [a.split('=', 1)[1] for a in argv[1:] if a.startswith('--config=')]
  where = f'the config file {files[0].split(":")[0]}' if files else 'the config file'
  return (f'{where} sets {field} to the single value {value}, but '
          f'{" or ".join("config." + p for p in paths)} is a tuple; write ({value},) for one '
          f'entry, or list them: (0, 1, 2)')


def parse_flags(argv):
  """absl's flag parsing, with every mistake as one `error:` line and exit status 2."""
  from cljax import config as config_lib  # pylint: disable=g-import-not-at-top
  argv = last_overrides(argv)
  try:
    parsed = flags.FLAGS(argv)
  except Exception as e:  # pylint: disable=broad-except
    print(f'error: {flag_error(argv, e)}', file=sys.stderr)
    sys.exit(2)
  try:
    config_lib.check_overrides(argv)
  except CljaxError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  return parsed


def last_overrides(argv):
  """``argv`` with only the last ``--config.KEY=VALUE`` of each KEY: the last one wins, as for
  every absl flag (ml_collections joins repeated tuple overrides: ``--config.prompt.layers=(1,)
  --config.prompt.layers=(2,)`` gave (1, 2))."""
  key = lambda a: a.split('=', 1)[0] if a.startswith('--config.') and '=' in a else None
  last = {key(a): i for i, a in enumerate(argv) if key(a)}
  return [a for i, a in enumerate(argv) if key(a) is None or last[key(a)] == i]


def config_value(config_flag):
  """The config a config_flags flag holds; a config file that failed to load raises here, not at
  parse time."""
  if config_flag.value is None:
    raise ConfigError('--config is required, e.g. --config=configs/demo.py')
  try:
    config = config_flag.value
    config.keys()
  except Exception as e:  # pylint: disable=broad-except
    raise ConfigError(flag_error(sys.argv, e)) from e
  return config


def check_no_arguments(argv):
  if len(argv) > 1:
    raise ConfigError(f'unexpected arguments: {" ".join(argv[1:])}; settings are flags, '
                      f'e.g. --config.seed=1')
