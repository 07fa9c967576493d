"""XLA's persistent compilation cache for repeated runs (issue 18).

A rerun, a resume, another seed or another config of the same shapes compiles the same jitted
steps again; with the cache the second compile is a file read. `enable` is called once per
process before the first step is compiled.
"""

from __future__ import annotations

import os

from cljax.errors import ConfigError

# Steps that compile faster than this are not written (the demo's are ~0.1-2 s on a CPU).
MIN_COMPILE_SECONDS = 0.2


def folder(setting: str, workdir: str) -> str:
  """The cache folder ``config.compilation_cache`` selects: 'auto' = ``.jax_cache`` beside the
  workdir (shared by the runs of one parent folder), 'off' = '' (no cache), else the path given.

  Raises ConfigError for an empty setting."""
  if setting == 'off':
    return ''
  if setting == 'auto':
    parent = os.path.dirname(os.path.abspath(workdir.rstrip('/'))) if workdir else ''
    return os.path.join(parent, '.jax_cache') if parent else ''
  if not setting:
    raise ConfigError("config.compilation_cache is empty; use 'auto', 'off' or a folder")
  return os.path.abspath(os.path.expanduser(setting))


def enable(setting: str, workdir: str) -> str:
  """Point jax at the cache folder (unless JAX_COMPILATION_CACHE_DIR or jax's config already
  names one, which wins); returns the folder in use ('' when off)."""
  import jax  # pylint: disable=g-import-not-at-top
  if jax.config.jax_compilation_cache_dir:
    return jax.config.jax_compilation_cache_dir
  path = folder(setting, workdir)
  if path:
    jax.config.update('jax_compilation_cache_dir', path)
    jax.config.update('jax_persistent_cache_min_compile_time_secs', MIN_COMPILE_SECONDS)
  return path
