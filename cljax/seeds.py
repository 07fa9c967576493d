"""Run one config over several seeds and tabulate them (the papers report 3 seeds).

  python -m cljax.seeds --config=configs/demo.py --seeds=42,40,44 --workdir=workdirs/demo_seeds \
      [--config.prompt.epochs=5 ...]

Seed S runs into WORKDIR/seed_S exactly as ``python -m cljax.main --config.seed=S`` would (rerunning
resumes; a finished seed only reports), one after another in this process, sharing compiled
steps through XLA's persistent cache in WORKDIR/.jax_cache. Then
``python -m cljax.report`` aggregates them: the table (FA, CA, FM as mean +- std) is printed and
written to WORKDIR/table.md and WORKDIR/table.tex.
"""

from __future__ import annotations

import os

from absl import app, flags
from ml_collections import config_flags

from cljax import cli
from cljax.errors import CljaxError, ConfigError, exit_with

_CONFIG = config_flags.DEFINE_config_file('config', None, 'a config file in configs/', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'root folder: one seed_S workdir per seed')
_SEEDS = flags.DEFINE_string('seeds', '42,40,44', 'comma-separated seeds')
flags.mark_flags_as_required(['config', 'workdir'])


def parse_seeds(text: str):
  try:
    seeds = [int(s) for s in text.split(',') if s.strip()]
  except ValueError:
    raise ConfigError(f'--seeds must be comma-separated integers, got {text!r}') from None
  if not seeds or len(set(seeds)) != len(seeds):
    raise ConfigError(f'--seeds must name distinct seeds, got {text!r}')
  return seeds


def run_seeds(config, root: str, seeds):
  """Train config once per seed into root/seed_S; returns the workdirs and the tables."""
  import jax  # pylint: disable=g-import-not-at-top
  from cljax import report  # pylint: disable=g-import-not-at-top
  from cljax.continual import trainer  # pylint: disable=g-import-not-at-top
  # Seeds compile the same steps: XLA's persistent cache, which trainer.run turns on
  # (config.compilation_cache 'auto': root/.jax_cache, beside the seed workdirs), makes the
  # second seed's start cheap (on a 2-core CPU, 17 s -> 5 s for a tiny demo run).
  workdirs = []
  for seed in seeds:
    c = config.copy_and_resolve_references()
    c.seed = seed
    workdir = os.path.join(root, f'seed_{seed}')
    print(f'=== seed {seed}: {workdir}', flush=True)
    trainer.run(c, workdir)
    workdirs.append(workdir)
  table = report.aggregate(report.load_runs(workdirs))
  tables = {fmt: report.render(table, fmt) for fmt in ('markdown', 'latex')}
  for fmt, ext in (('markdown', 'md'), ('latex', 'tex')) if jax.process_index() == 0 else ():
    with open(os.path.join(root, f'table.{ext}'), 'w') as f:
      f.write(tables[fmt] + '\n')
  return workdirs, tables


def main(argv):
  from cljax.continual.run_log import quiet_libraries  # pylint: disable=g-import-not-at-top
  quiet_libraries()
  from cljax import parallel  # pylint: disable=g-import-not-at-top
  try:
    cli.check_no_arguments(argv)
    config = cli.config_value(_CONFIG)
    seeds = parse_seeds(_SEEDS.value)
    parallel.initialize_distributed()
    _, tables = run_seeds(config, _WORKDIR.value, seeds)
  except CljaxError as e:
    exit_with(e)
  print(tables['markdown'])
  print(f'({_WORKDIR.value}/table.md, table.tex)')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
