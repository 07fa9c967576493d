"""Transparent huge pages for the host memory of XLA:CPU steps.

XLA:CPU allocates a step's activations afresh at every call (about 1.5 GB for NoRGa's ViT-B/16
train step at batch 8), and glibc maps blocks that large with mmap and returns them at free. With
4 KiB pages every step then faults its whole working set in again: 376k faults a step, about
2.3 us each in a virtual machine (0.9 s of a 7 s step on a 2-core CPU). glibc's
`glibc.malloc.hugetlb=1` tunable makes malloc ask for transparent huge pages (madvise), which
cuts the faults 300-fold; numbers are unchanged. The tunable is read when a
process starts, so an entry point that wants it re-executes itself once with it set.

Only Linux with glibc and the kernel's THP mode `madvise` is affected ('always' already gives
huge pages, 'never' refuses them). `CLJAX_HUGE_PAGES=0` keeps the process as started.
"""

from __future__ import annotations

import os
import platform
import sys
from typing import Mapping, Optional, Sequence

TUNABLE = 'glibc.malloc.hugetlb'
THP_MODE_FILE = '/sys/kernel/mm/transparent_hugepage/enabled'
ADDED = 'CLJAX_HUGE_PAGES_ADDED'     # marks a process whose tunable cljax set


def _thp_mode(path: str = THP_MODE_FILE) -> Optional[str]:
  """The kernel's bracketed THP mode ('always', 'madvise', 'never'), None if unknown."""
  try:
    with open(path) as f:
      text = f.read()
  except OSError:
    return None
  start, end = text.find('['), text.find(']')
  return text[start + 1:end] if 0 <= start < end else None


def tuned_environment(environ: Mapping[str, str], thp_mode: Optional[str],
                      libc: Sequence[str]) -> Optional[dict]:
  """The environment to re-execute with, or None when this process should run as it is:
  already tuned (or asked not to be), not glibc 2.35+ (the tunable's first release), or a
  THP mode other than 'madvise'. `libc` is platform.libc_ver()."""
  if environ.get('CLJAX_HUGE_PAGES', '1') == '0' or TUNABLE in environ.get('GLIBC_TUNABLES', ''):
    return None
  name, version = (tuple(libc) + ('', ''))[:2]
  try:
    major_minor = tuple(int(v) for v in version.split('.')[:2])
  except ValueError:
    return None
  if name != 'glibc' or major_minor < (2, 35) or thp_mode != 'madvise':
    return None
  tunables = ':'.join(t for t in (environ.get('GLIBC_TUNABLES', ''), f'{TUNABLE}=1') if t)
  return {**environ, 'GLIBC_TUNABLES': tunables, ADDED: '1'}


def as_started(environ: Mapping[str, str]) -> dict:
  """`environ` without what reexec_with_huge_pages added: for a child that must run as the user
  started this command (scripts/benchmark.py's runs of the original PyTorch code)."""
  env = dict(environ)
  if env.pop(ADDED, None):
    kept = [t for t in env.get('GLIBC_TUNABLES', '').split(':') if t and t != f'{TUNABLE}=1']
    if kept:
      env['GLIBC_TUNABLES'] = ':'.join(kept)
    else:
      env.pop('GLIBC_TUNABLES', None)
  return env


def reexec_with_huge_pages(argv: Sequence[str]) -> None:
  """Replace this process by `argv` (the same command) with huge pages on, where that helps
  (see tuned_environment); otherwise return. Call before anything starts threads (imports of
  jax or torch). argv[0] must be the interpreter, e.g. [sys.executable, '-m', 'cljax.main', ...]."""
  if not sys.platform.startswith('linux'):
    return
  env = tuned_environment(os.environ, _thp_mode(), platform.libc_ver())
  if env is None:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  try:
    os.execve(argv[0], list(argv), env)
  except OSError:
    return     # not re-executable (an odd interpreter path): run as started
