"""What a run tells its user: terminal progress, JSON lines and TensorBoard events.

* Terminal: on a TTY a live line per training loop (step, loss, accuracy, img/s, ETA) that is
  rewritten in place; otherwise (CI, log files) a plain line every ``every_seconds``. Epoch and
  task summaries are printed either way.
* ``<workdir>/metrics.jsonl``: one JSON object per epoch, evaluation and stage.
* ``<workdir>/tensorboard``: the same numbers as TensorBoard scalars (tensorboardX).
Only process 0 of a multi-host run writes.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Dict, Optional

import jax


def quiet_libraries():
  """Orbax and tfds log every file operation at INFO; cljax prints its own progress."""
  import logging  # pylint: disable=g-import-not-at-top
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  if absl_logging.get_verbosity() <= absl_logging.INFO and '--verbosity' not in ' '.join(sys.argv):
    absl_logging.set_verbosity(absl_logging.WARNING)
  for name in ('orbax', 'absl', 'tensorflow_datasets'):
    logging.getLogger(name).setLevel(logging.WARNING)
  # A failed Orbax write logs its traceback from each of its background threads before the main
  # thread re-raises it; cljax reports that one exception (one line for a full or read-only disk).
  logging.getLogger('absl').addFilter(
      lambda r: not (r.levelno >= logging.ERROR and f'{os.sep}orbax{os.sep}' in r.pathname))
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    tfds.disable_progress_bar()
  except ImportError:
    pass
  # After a failed Orbax read, tensorstore's pending callbacks reach an asyncio loop that Orbax
  # has closed; Python prints each as an "Exception ignored" traceback after cljax's error line.
  default_hook = sys.unraisablehook

  def hook(unraisable):
    if not (isinstance(unraisable.exc_value, RuntimeError) and
            str(unraisable.exc_value) == 'Event loop is closed'):
      default_hook(unraisable)
  sys.unraisablehook = hook


def duration(seconds: float) -> str:
  seconds = max(0, int(seconds))
  h, rest = divmod(seconds, 3600)
  m, s = divmod(rest, 60)
  return f'{h}h{m:02d}m' if h else (f'{m}m{s:02d}s' if m else f'{s}s')


class RunLog:
  def __init__(self, workdir: str, verbose: bool = True, tensorboard: bool = True,
               every_seconds: float = 30.0, stream=None):
    self.workdir = workdir
    self.main = jax.process_index() == 0
    self.verbose = verbose and self.main
    self.stream = stream or sys.stdout
    self.tty = bool(getattr(self.stream, 'isatty', lambda: False)())
    self.every = every_seconds
    self._last_plain = 0.0
    self._last_live = 0.0
    self._live = False
    self._writer = None
    self._tensorboard = tensorboard and bool(workdir) and self.main
    self.steps: Dict[str, int] = {}

  # --------------------------------------------------------------------------- terminal

  def print(self, message: str) -> None:
    if not self.verbose:
      return
    if self._live:   # replace the live progress line
      self.stream.write('\r\033[2K')
      self._live = False
    self.stream.write(message + '\n')
    self.stream.flush()

  def progress(self, tag: str, done: int, total: int, start: float, metrics: Dict[str, Any],
               images: int = 0, force: bool = False) -> None:
    """A training loop's progress: live on a TTY (at most 5 redraws a second), a plain line
    every `every` seconds (or when `force`) elsewhere. Metric values may be device arrays: they
    are read (a device sync) only when a line is drawn."""
    if not self.verbose or total <= 0:
      return
    now = time.time()
    if self.tty:
      if now - self._last_live < 0.2 and done < total:
        return
      self._last_live = now
    elif not (force or now - self._last_plain >= self.every):
      return
    values = ' '.join(f'{k} {float(v):.4f}' for k, v in metrics.items())
    # After the read above: steps are dispatched asynchronously, so only now is `done` done.
    elapsed = time.time() - start
    eta = elapsed / max(done, 1) * (total - done)
    rate = f', {images / max(elapsed, 1e-9):.0f} img/s' if images else ''
    if self.tty:
      width = 30
      filled = int(width * done / total)
      self.stream.write(f'\r\033[2K  {tag} [{"#" * filled}{"." * (width - filled)}] {done}/{total} '
                        f'{values}{rate}, eta {duration(eta)}')
      self.stream.flush()
      self._live = True
    else:
      self._last_plain = now
      self.print(f'  {tag} {done}/{total} {values}{rate}, eta {duration(eta)}')

  # --------------------------------------------------------------------------- files

  @property
  def writer(self):
    if self._writer is None and self._tensorboard:
      self._writer = _summary_writer(os.path.join(self.workdir, 'tensorboard'))
    return self._writer

  def record(self, entry: Dict[str, Any], scalars_prefix: Optional[str] = None,
             step: Optional[int] = None) -> None:
    """A JSON line, and its numbers as TensorBoard scalars under scalars_prefix at step."""
    if not self.main or not self.workdir:
      return
    with open(os.path.join(self.workdir, 'metrics.jsonl'), 'a') as f:
      f.write(json.dumps({'time': round(time.time(), 3), **entry}) + '\n')
    if scalars_prefix is not None and self.writer is not None:
      for key, value in entry.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in ('task', 'epoch'):
          self.writer.add_scalar(f'{scalars_prefix}/{key}', value, step)
      self.writer.flush()

  def close(self) -> None:
    if self._live:
      self.print('')
    if self._writer is not None:
      self._writer.close()
      self._writer = None


def _summary_writer(logdir: str):
  """tensorboardX's SummaryWriter, imported without PyTorch. tensorboardX imports torch, when it
  is installed, only to accept torch tensors; cljax writes floats, and that import cost about 2 s
  at the start of every run (measured with cProfile on a tiny demo run)."""
  blocked = 'torch' not in sys.modules
  if blocked:
    sys.modules['torch'] = None     # `import torch` raises ImportError, which tensorboardX expects
  try:
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
  finally:
    if blocked:
      del sys.modules['torch']      # a later `import torch` (a .pth backbone) works as before
  return SummaryWriter(logdir)
