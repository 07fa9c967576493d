"""The CPU-scale results table: every method on Split-Digits with the demo backbone, 3 seeds.

  python scripts/demo_table.py [--methods norga,hideprompt,...] [--seeds 42,40,44] [--root workdirs/demo_table]

Each method is `python -m cljax.seeds --config=configs/demo.py:METHOD --seeds=SEEDS
--workdir=ROOT/METHOD` (`cljax.seeds.run_seeds`, in this process): seed S runs in
ROOT/METHOD/seed_S as `python -m cljax.main --config.seed=S` would, and finished runs are reused
(rerunning resumes), so the table can be built in pieces. Writes benchmarks/demo_table.md
(quoted in README) with `cljax.report`, and each run's training time from its results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ('l2p', 'dualprompt', 'sprompt', 'coda', 'smope', 'hideprompt', 'norga', 'sequential_head')


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--methods', default=','.join(METHODS))
  p.add_argument('--seeds', default='42,40,44')
  p.add_argument('--root', default=os.path.join(ROOT, 'workdirs', 'demo_table'))
  p.add_argument('--out', default=os.path.join(ROOT, 'benchmarks', 'demo_table.md'))
  args = p.parse_args(argv)
  sys.path.insert(0, ROOT)
  from cljax import report, seeds  # pylint: disable=g-import-not-at-top
  from cljax.continual.run_log import quiet_libraries  # pylint: disable=g-import-not-at-top
  from cljax.dry_run import load_config  # pylint: disable=g-import-not-at-top
  from cljax.errors import CljaxError, exit_with  # pylint: disable=g-import-not-at-top
  quiet_libraries()
  methods = args.methods.split(',')
  try:
    seed_list = seeds.parse_seeds(args.seeds)
    workdirs = {}
    for method in methods:
      config = load_config(os.path.join(ROOT, 'configs', f'demo.py:{method}'))
      workdirs[method], _ = seeds.run_seeds(config, os.path.join(args.root, method), seed_list)
    text = report.render(report.aggregate(report.load_runs(
        [w for m in methods for w in workdirs[m]])), 'markdown')
    seconds = {m: [] for m in methods}   # each run's last invocation (a reused run: its report)
    for method in methods:
      for w in workdirs[method]:
        with open(os.path.join(w, 'results.json')) as f:
          seconds[method].append(json.load(f)['seconds_this_invocation'])
    report.write_table(args.out, text + '\n\nTraining time per run on the machine that made this table '
                       '(2-core CPU; results.json\'s seconds_this_invocation: a reused, finished run '
                       'counts its report only):\n\n' + '\n'.join(
                           f'- {m}: {", ".join(f"{s:.0f} s" for s in seconds[m])}' for m in methods))
  except CljaxError as e:
    exit_with(e)
  print(text)


if __name__ == '__main__':
  main()
