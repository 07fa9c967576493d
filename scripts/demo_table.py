"""The CPU-scale results table: every method on Split-Digits with the demo backbone, 3 seeds.

  python scripts/demo_table.py [--methods norga,hideprompt,...] [--seeds 42,40,44] [--root workdirs/demo_table]

Each run is `python -m cljax.main --config=configs/demo.py:METHOD --config.seed=SEED` in
ROOT/METHOD_sSEED; finished runs are reused (rerunning resumes), so the table can be built in
pieces. Writes benchmarks/demo_table.md (quoted in README) through `python -m cljax.report`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ('l2p', 'dualprompt', 'sprompt', 'coda', 'smope', 'hideprompt', 'norga', 'sequential_head')


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--methods', default=','.join(METHODS))
  p.add_argument('--seeds', default='42,40,44')
  p.add_argument('--root', default=os.path.join(ROOT, 'workdirs', 'demo_table'))
  p.add_argument('--out', default=os.path.join(ROOT, 'benchmarks', 'demo_table.md'))
  args = p.parse_args()
  workdirs, times = [], {}
  for method in args.methods.split(','):
    for seed in args.seeds.split(','):
      workdir = os.path.join(args.root, f'{method}_s{seed}')
      workdirs.append(workdir)
      start = time.time()
      cmd = [sys.executable, '-m', 'cljax.main', f'--config=configs/demo.py:{method}',
             f'--workdir={workdir}', f'--config.seed={seed}']
      print(' '.join(cmd[1:]), flush=True)
      out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
      if out.returncode:
        sys.exit(f'{method} seed {seed} failed:\n{out.stderr[-3000:]}')
      times[(method, seed)] = time.time() - start
      print(f'  {out.stdout.strip().splitlines()[-1]} ({times[(method, seed)]:.0f} s)', flush=True)
  subprocess.run([sys.executable, '-m', 'cljax.report', *workdirs, '--out', args.out], cwd=ROOT, check=True)
  with open(args.out, 'a') as f:
    f.write('\nWall time per run on the machine that made this table (2-core CPU; a reused, '
            'finished run counts its report only):\n\n')
    for method in args.methods.split(','):
      ts = [times[(method, s)] for s in args.seeds.split(',')]
      f.write(f'- {method}: {", ".join(f"{t:.0f} s" for t in ts)}\n')


if __name__ == '__main__':
  main()
