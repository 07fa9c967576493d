"""One workdir, one run: ``<workdir>/cljax.lock``, held with an OS file lock while a run goes on.

The lock file names its owner (pid and host). A second run in the same workdir is refused with
that name; a run that was killed releases the OS lock with its process, so its stale file is
taken over by the next run without a word. On several processes, process 0 holds it.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time

from cljax.errors import ConfigError

NAME = 'cljax.lock'


class WorkdirLock:
  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, NAME)
    self.workdir = workdir
    self._file = None

  def acquire(self) -> None:
    """Take the lock (creating the workdir); ConfigError if a live run holds it."""
    try:
      os.makedirs(self.workdir, exist_ok=True)
      f = open(self.path, 'a+')
    except OSError as e:
      existed = os.path.isdir(self.workdir)
      raise ConfigError(
          f'{"cannot write in workdir" if existed else "cannot create workdir"} {self.workdir} '
          f'({e.strerror}); {"make it writable for this user or " if existed else ""}pass '
          f'another --workdir') from e
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      f.seek(0)
      try:
        owner = json.loads(f.read() or '{}')
      except ValueError:
        owner = {}
      f.close()
      raise ConfigError(f'{self.workdir} is in use by cljax process {owner.get("pid", "?")} on '
                        f'{owner.get("host", "?")}: wait for that run to finish or stop it, or '
                        f'pass another --workdir') from None
    f.seek(0)
    f.truncate()
    json.dump({'pid': os.getpid(), 'host': socket.gethostname(), 'since': round(time.time(), 1)}, f)
    f.flush()
    self._file = f

  def check(self) -> None:
    """Refuse now if a live run holds the workdir (before anything large loads)."""
    if os.path.exists(self.path):
      self.acquire()
      self.release()

  def release(self) -> None:
    if self._file is not None:
      self._file.close()     # the OS lock goes with it; the file stays, naming the last owner
      self._file = None
