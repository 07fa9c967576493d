"""Check configs before they cost accelerator hours: every task and stage for a step.

  python -m cljax.dry_run configs/imr_norga.py configs/cub_coda.py:ibot21k ...
  python -m cljax.dry_run --tiny configs/*.py      # a 5-block ViT-Ti/8 at 16x16 (what CI runs)
  python -m cljax.main --config=configs/cifar100_norga.py --workdir=W --config.dry_run

A dry run (`run`, which `trainer.run` calls for ``config.dry_run``) validates the config, builds
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


GB = 1e9


def device_memory() -> tuple:
  """(bytes one device holds, its platform): the accelerator's memory limit, or the host's RAM
  for the CPU."""
  import jax  # pylint: disable=g-import-not-at-top
  device = jax.local_devices()[0]
  stats = device.memory_stats() or {}
  if stats.get('bytes_limit'):
    return int(stats['bytes_limit']), device.platform
  return int(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')), device.platform


def step_bytes(config, batch: int) -> int:
  """Bytes one device needs for the prompt stage's training step (the largest: it
  back-propagates through the ViT) at ``batch`` examples per device: XLA's memory analysis of
  the step compiled for abstract inputs (nothing is allocated or loaded)."""
  from cljax.continual import step_inputs, trainer  # pylint: disable=g-import-not-at-top
  probe = config.copy_and_resolve_references()
  probe.num_devices = 1
  probe.batch_size = probe.eval_batch_size = batch
  exp = trainer.Experiment(probe, '', load_data=False, verbose=False, load_backbone=False)
  stage = exp.stages[-1]
  args, flags = step_inputs.train_args(exp, stage, batch)
  memory = exp._steps(stage)['train'].lower(*args, flags=flags).compile().memory_analysis()  # pylint: disable=protected-access
  return int(memory.argument_size_in_bytes + memory.output_size_in_bytes
             + memory.temp_size_in_bytes - memory.alias_size_in_bytes)


def plan(config, devices: int) -> dict:
  """The batch a dry run of ``config`` runs at and what the real batch would need:
  {'batch_size', 'eval_batch_size', 'real_batch_size', 'estimated_bytes_per_device',
  'device_bytes', 'platform', 'fits'} (the estimate only when the batch is reduced)."""
  capacity, platform = device_memory()
  real = int(config.batch_size)
  out = {'real_batch_size': real, 'batch_size': real, 'eval_batch_size': int(config.eval_batch_size),
         'platform': platform, 'device_bytes': capacity}
  small = int(config.dry_run_batch_size) or min(real, 2 * devices)
  if small >= real and config.dry_run_batch_size:
    return out
  if config.model_override:     # a stand-in model (CI): nothing to estimate for the real one
    out.update(batch_size=min(real, small), eval_batch_size=min(int(config.eval_batch_size), small))
    return out
  need = step_bytes(config, max(real // devices, 1))
  fits = need <= 0.9 * capacity
  out.update(estimated_bytes_per_device=need, fits=fits)
  if not (fits and platform != 'cpu' and not config.dry_run_batch_size):
    out.update(batch_size=min(real, small), eval_batch_size=min(int(config.eval_batch_size), small))
  return out


def describe(p: dict) -> str:
  """The dry run's one line about memory and batch."""
  line = f'dry run at batch {p["batch_size"]}'
  if 'estimated_bytes_per_device' in p:
    line += (f'; the real batch {p["real_batch_size"]} would need about '
             f'{p["estimated_bytes_per_device"] / GB:.1f} GB per device (XLA\'s estimate for the '
             f'prompt stage\'s training step); {p["platform"]} has {p["device_bytes"] / GB:.1f} GB')
    if not p['fits']:
      line += ': it would not fit; lower config.batch_size or run on more devices'
  return line


def run(config, workdir: str, verbose: bool = True):
  """A dry run of a validated ``config`` (``dry_run`` set) in ``workdir``, at the batch `plan`
  picks; returns results.json's dict, with the plan under ``dry_run``."""
  import json  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from cljax import parallel  # pylint: disable=g-import-not-at-top
  from cljax.continual import trainer  # pylint: disable=g-import-not-at-top
  devices = parallel.make_mesh(config.num_devices).devices.size
  p = plan(config, devices)
  c = config.copy_and_resolve_references()
  c.batch_size, c.eval_batch_size = p['batch_size'], p['eval_batch_size']
  trainer.check_workdir(c, workdir)   # the dry run's config, as its config.json records it
  exp = trainer.Experiment(c, workdir, verbose=verbose)
  exp.run_log.print(describe(p))
  results = exp.run()
  results['dry_run'] = {k: v for k, v in p.items()}
  if jax.process_index() == 0 and workdir and os.path.isdir(workdir):
    with open(os.path.join(workdir, 'results.json'), 'w') as f:
      json.dump(results, f, indent=2)
  return results


def check(spec: str, make_tiny: bool) -> str:
  c = load_config(spec)
  c.dry_run = True
  c.log_every_steps = 0
  if make_tiny:
    c = tiny(c)
  from cljax import config as config_lib  # pylint: disable=g-import-not-at-top
  c = config_lib.validate(c)
  with tempfile.TemporaryDirectory() as workdir:
    results = run(c, workdir, verbose=False)
  return f'{results["tasks_completed"]} tasks, {describe(results["dry_run"])}'


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
