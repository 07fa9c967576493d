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


class StorageError(CljaxError, OSError):
  """The filesystem refused a write: disk full, quota, file size limit, read-only or no
  permission. The message names the path and the fix; the same command resumes afterwards."""


# errno -> (what happened, what to do). tensorstore (Orbax's writer) reports the errno as
# "[os_error_code='28']" in a ValueError's text, not as an OSError.
_FULL = {28: 'no space left on the device', 122: 'the disk quota is exceeded',
         27: 'the file is larger than this process may write (ulimit -f)'}
_REFUSED = {13: 'permission denied', 1: 'operation not permitted', 30: 'the file system is read-only'}
_STRERROR = {'No space left on device': 28, 'Disk quota exceeded': 122, 'File too large': 27,
             'Permission denied': 13, 'Operation not permitted': 1, 'Read-only file system': 30}


def storage_error(exc: BaseException, workdir: str = '') -> 'StorageError | None':
  """The `StorageError` for an exception a full or unwritable filesystem caused, else None.

  Walks ``exc``'s cause/context chain for an OSError with one of the errnos above, or for
  tensorstore's message carrying one, and names the file it was writing."""
  import re  # pylint: disable=g-import-not-at-top
  seen = set()
  while exc is not None and id(exc) not in seen:
    seen.add(id(exc))
    code, path = None, ''
    if isinstance(exc, OSError) and exc.errno in {**_FULL, **_REFUSED}:
      code, path = exc.errno, exc.filename or ''
    else:
      text = str(exc)
      m = re.search(r"os_error_code='(\d+)'", text)
      code = int(m.group(1)) if m else next((c for s, c in _STRERROR.items() if s in text), None)
      paths = re.findall(r'"(/[^"]+)"', text)
      path = paths[-1] if paths else ''
    if code in _FULL or code in _REFUSED:
      return _storage_message(code, str(path), workdir)
    exc = exc.__cause__ or exc.__context__
  return None


def _storage_message(code: int, path: str, workdir: str) -> StorageError:
  import os  # pylint: disable=g-import-not-at-top
  where = path or workdir or 'the workdir'
  # A checkpoint being written lives in "<step>.orbax-checkpoint-tmp"; name the final folder.
  shown = where.split('.orbax-checkpoint-tmp')[0] if '.orbax-checkpoint-tmp' in where else where
  resume = 'then rerun the same command: it continues from the last complete checkpoint'
  if shown != where:
    resume += ' (the one being written is discarded; the ones before it are intact)'
  if code == 27:
    return StorageError(f'cannot write {shown}: {_FULL[code]}; raise the limit (ulimit -f '
                        f'unlimited), {resume}')
  if code in _FULL:
    folder = workdir or os.path.dirname(shown) or shown
    return StorageError(f'cannot write {shown}: {_FULL[code]}; free space where {folder} lives '
                        f'(or move the workdir to a larger disk), {resume}')
  return StorageError(f'cannot write {shown}: {_REFUSED[code]}; make {workdir or shown} writable '
                      f'for this user (chmod/chown, or remount read-write), {resume}')
