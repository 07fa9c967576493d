"""Helpers the test files share: the demo config at test size, and a script as a module."""

from __future__ import annotations

import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def demo_config(data_dir: str, method: str = 'norga', depth: int = 3, epochs=(3, 2),
                ca_epochs=(3, 3), log_every_steps=None):
  """The demo's config (`cljax.config.demo`) on the Split-Digits under ``data_dir``, with its
  backbone cut to its first ``depth`` blocks and (task-identity, prompt) stage ``epochs`` and
  alignment ``ca_epochs``."""
  from cljax import config as config_lib  # pylint: disable=g-import-not-at-top
  c = config_lib.demo(method)
  c.benchmark.data_dir = data_dir
  c.backbone.depth = depth
  c.task_identity.update(epochs=epochs[0], ca_epochs=ca_epochs[0])
  c.prompt.update(epochs=epochs[1], ca_epochs=ca_epochs[1])
  if log_every_steps is not None:
    c.log_every_steps = log_every_steps
  return c


def load_script(name: str):
  """scripts/<name>.py of this checkout as a module (scripts are not a package)."""
  spec = importlib.util.spec_from_file_location(f'cljax_script_{name}',
                                                os.path.join(ROOT, 'scripts', f'{name}.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module
