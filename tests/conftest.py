"""Session setup: one XLA compilation cache per test session.

The suite starts dozens of small cljax runs in subprocesses, and most compile the same steps (a
tiny demo run takes 25 s with a cold cache and 14 s with a warm one on a 2-core CPU). The
controller makes a fresh folder each session, so no test depends on an earlier session. The
xdist workers, and every process they start, inherit it through JAX_COMPILATION_CACHE_DIR.
Compiled programs do not change results: every number a test asserts is the same with a cold
cache, a warm one, or none.
"""

import os
import shutil
import tempfile

_OWNED = []


def pytest_configure(config):
  if os.environ.get('PYTEST_XDIST_WORKER') or os.environ.get('JAX_COMPILATION_CACHE_DIR'):
    return    # a worker (it inherited the controller's folder) or a cache chosen by the user
  folder = tempfile.mkdtemp(prefix='cljax-test-compilation-cache-')
  _OWNED.append(folder)
  os.environ['JAX_COMPILATION_CACHE_DIR'] = folder
  os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
  os.environ['JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES'] = '0'


def pytest_unconfigure(config):
  for folder in _OWNED:
    shutil.rmtree(folder, ignore_errors=True)
