"""Check configs before they cost accelerator hours: every task and stage for a step.

  python -m cljax.dry_run configs/imr_norga.py configs/cub_coda.py:ibot21k ...
  python -m cljax.dry_run --tiny configs/*.py      # a 5-block ViT-Ti/8 at 16x16 (what CI runs)
  python -m cljax.main --config=configs/cifar100_norga.py --workdir=W --config.dry_run

A dry run (`cljax.continual.dry_run.run`, which `trainer.run` calls for ``config.dry_run``) validates the config, builds
every step at the real model and image size and runs every task and stage for
``config.dry_run_steps`` steps on synthetic inputs (a missing weights file is reported and
replaced by random weights), evaluating the current task after each (every task
runs: methods keep host-side state per task, e.g. CODA's Gram-Schmidt over earlier components). It fits the
machine: it runs at a small batch (``config.dry_run_batch_size``; 0 = the real batch on an
accelerator that holds it, else 2 per device) and reports what the real batch would need,
from XLA's memory analysis of the prompt stage's training step compiled at that batch: "the
real batch 128 would need 29.7 GB per device; cpu has 24.0 GB". results.json records it under
``dry_run``.

The multi-config command prints one line per config, PASS or FAIL and why; exit status 2 if a
config is wrong (a user error, as every entry point), 1 if cljax itself failed.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
import traceback


def load_config(spec: str):
  """'path.py' or 'path.py:arg' -> the config its get_config returns."""
  path, _, arg = spec.partition(':')
  if not os.path.exists(path):
    raise FileNotFoundError(f'no config file {path}')
  module_spec = importlib.util.spec_from_file_location('cljax_config_file', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def tiny(c):
  """The CI size: ViT-Ti/8 at 16x16 with just enough blocks for the prompted layers."""
  layers = list(c.prompt.layers) + list(c.prompt.g_layers if c.method == 'dualprompt' else [])
  c.model_override = 'vit_ti8'
  c.backbone.image_size = 16
  c.backbone.depth = max(layers, default=0) + 1
  c.batch_size = c.eval_batch_size = 4
  c.dry_run_steps = 1
  return c


def check(spec: str, make_tiny: bool) -> str:
  c = load_config(spec)
  c.dry_run = True
  c.log_every_steps = 0
  if make_tiny:
    c = tiny(c)
  from cljax import config as config_lib  # pylint: disable=g-import-not-at-top
  c = config_lib.validate(c)
  from cljax.continual import dry_run  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory() as workdir:
    results = dry_run.run(c, workdir, verbose=False)
  return f'{results["tasks_completed"]} tasks, {dry_run.describe(results["dry_run"])}'


def main(argv=None):
  p = argparse.ArgumentParser(prog='python -m cljax.dry_run', description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('configs', nargs='+', help='config files, optionally with :argument')
  p.add_argument('--tiny', action='store_true', help='replace the model by a tiny one (CI)')
  args = p.parse_args(argv)
  from cljax.continual.run_log import quiet_libraries  # pylint: disable=g-import-not-at-top
  quiet_libraries()
  from cljax.errors import CljaxError, USER_ERROR  # pylint: disable=g-import-not-at-top
  failed, internal = 0, 0
  for spec in args.configs:
    start = time.time()
    try:
      what = check(spec, args.tiny)
      print(f'PASS {spec}: {what} in {time.time() - start:.1f}s', flush=True)
    except Exception as e:  # report every config, then fail
      failed += 1
      internal += not isinstance(e, (CljaxError, FileNotFoundError))
      line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
      print(f'FAIL {spec}: {type(e).__name__}: {line}', flush=True)
      if os.environ.get('CLJAX_DRY_RUN_TRACEBACK'):
        traceback.print_exc()
  print(f'{len(args.configs) - failed} passed, {failed} failed', flush=True)
  sys.exit(1 if internal else USER_ERROR if failed else 0)


if __name__ == '__main__':
  main()
