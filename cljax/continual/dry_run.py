"""A dry run at a batch that fits the machine: what `trainer.run` does for ``config.dry_run``
(`python -m cljax.dry_run` is its command line).

It runs every task and stage for ``config.dry_run_steps`` steps on synthetic inputs at a small
batch (``config.dry_run_batch_size``; 0 = the real batch on an accelerator that holds it, else 2
per device), and reports what the real batch would need: XLA's memory analysis of the prompt
stage's training step compiled at that batch. results.json records the plan under ``dry_run``.
"""

from __future__ import annotations

import json
import os

import jax

from cljax import parallel
from cljax.continual import step_inputs, workdir_claim
from cljax.continual.experiment import Experiment


GB = 1e9


def device_memory() -> tuple:
  """(bytes one device holds, its platform): the accelerator's memory limit, or the host's RAM
  for the CPU."""
  device = jax.local_devices()[0]
  stats = device.memory_stats() or {}
  if stats.get('bytes_limit'):
    return int(stats['bytes_limit']), device.platform
  return int(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')), device.platform


def step_bytes(config, batch: int) -> int:
  """Bytes one device needs for the prompt stage's training step (the largest: it
  back-propagates through the ViT) at ``batch`` examples per device: XLA's memory analysis of
  the step compiled for abstract inputs (nothing is allocated or loaded)."""
  probe = config.copy_and_resolve_references()
  probe.num_devices = 1
  probe.batch_size = probe.eval_batch_size = batch
  exp = Experiment(probe, '', load_data=False, verbose=False, load_backbone=False)
  stage = exp.stages[-1]
  args, flags = step_inputs.train_args(exp, stage, batch)
  memory = exp.stage_steps(stage)['train'].lower(*args, flags=flags).compile().memory_analysis()
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
  devices = parallel.make_mesh(config.num_devices).devices.size
  p = plan(config, devices)
  c = config.copy_and_resolve_references()
  c.batch_size, c.eval_batch_size = p['batch_size'], p['eval_batch_size']
  workdir_claim.check_workdir(c, workdir)   # the dry run's config, as its config.json records it
  exp = Experiment(c, workdir, verbose=verbose)
  exp.run_log.print(describe(p))
  results = exp.run()
  results['dry_run'] = {k: v for k, v in p.items()}
  if jax.process_index() == 0 and workdir and os.path.isdir(workdir):
    with open(os.path.join(workdir, 'results.json'), 'w') as f:
      json.dump(results, f, indent=2)
  return results
