"""Ctrl-C that stops a run cleanly and is never lost.

The first SIGINT only sets a flag, which `check` (called by the trainer between steps, batches
and alignment epochs) turns into KeyboardInterrupt: the run stops at a step boundary, never in
the middle of a checkpoint write. A second SIGINT raises KeyboardInterrupt at once. Python's own
handler raises wherever the main thread is, and inside a callback run by C++ (XLA's garbage
collection, a weakref finalizer) that exception is printed as "ignored" and the run goes on;
the flag stays set until `check` sees it, so no interrupt is swallowed.
"""

from __future__ import annotations

import signal
import sys
import threading

_PENDING = threading.Event()


def _handler(signum, frame):
  if _PENDING.is_set():
    raise KeyboardInterrupt
  _PENDING.set()
  sys.stderr.write('\n(Ctrl-C: stopping at the next step; press it again to stop at once)\n')
  sys.stderr.flush()


def install() -> None:
  """In the main thread: SIGINT sets the flag (the second one raises KeyboardInterrupt)."""
  if threading.current_thread() is threading.main_thread():
    reset()
    signal.signal(signal.SIGINT, _handler)


def check() -> None:
  """Raise KeyboardInterrupt if a SIGINT came since `install`."""
  if _PENDING.is_set():
    raise KeyboardInterrupt


def reset() -> None:
  """Forget a SIGINT that was seen (a new run in the same process starts clean)."""
  _PENDING.clear()


def ignore() -> None:
  """While a stopped run closes its files: another Ctrl-C does not cut that short."""
  if threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGINT, signal.SIG_IGN)
