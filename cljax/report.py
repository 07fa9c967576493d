"""Turn finished runs into the papers' Table 1: FA / CA / FM as mean +- std over seeds.

  python -m cljax.report workdirs/*/ [--format markdown|latex] [--out table.md]

Every workdir holds one run (its results.json and config). Runs are grouped by backbone,
benchmark and method; seeds of the same group are averaged (std with ddof=1, as over the papers'
three seeds). Rows are backbone x method, column groups are benchmarks, as in the NoRGa paper.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
from typing import Dict, List, Sequence

import numpy as np

from cljax.errors import CljaxError, DataError, exit_with

METRICS = (('final_average_accuracy', 'FA'), ('cumulative_average_accuracy', 'CA'), ('forgetting', 'FM'))
METHOD_NAMES = {'l2p': 'L2P', 'dualprompt': 'DualPrompt', 'sprompt': 'S-Prompt', 'coda': 'CODA-Prompt',
                'hideprompt': 'HiDe-Prompt', 'norga': 'NoRGa', 'smope': 'SMoPE',
                'sequential_head': 'Sequential head'}
METHOD_ORDER = list(METHOD_NAMES)
BENCHMARK_NAMES = {'cifar100': 'Split CIFAR-100', 'imr': 'Split ImageNet-R', 'cub': 'Split CUB-200',
                   'five_datasets': '5-Datasets', 'split_digits': 'Split-Digits'}


def load_runs(workdirs: Sequence[str]) -> List[Dict]:
  runs = []
  for d in workdirs:
    path = os.path.join(d, 'results.json')
    if not os.path.exists(path):
      raise DataError(f'{d} holds no finished run (no results.json)')
    with open(path) as f:
      r = json.load(f)
    c = r['config']
    if r.get('tasks_completed', c['benchmark']['num_tasks']) < c['benchmark']['num_tasks']:
      raise DataError(f'{d} is not finished ({r["tasks_completed"]} of {c["benchmark"]["num_tasks"]} '
                      f'tasks); rerun its command to complete it, or leave it out')
    runs.append({'workdir': d, 'method': c['method'], 'benchmark': c['benchmark']['name'],
                 'backbone': c['backbone']['name'], 'seed': c['seed'],
                 # results.json before the per-reference definitions held HiDe's forgetting only
                 'metric_definition': r.get('metric_definition', 'hide'),
                 **{k: r[k] for k, _ in METRICS}})
  return runs


def aggregate(runs: List[Dict]):
  """{(backbone, method): {benchmark: {metric: (mean, std, n)}}}."""
  groups = collections.defaultdict(list)
  for r in runs:
    groups[(r['backbone'], r['method'], r['benchmark'])].append(r)
  table = collections.defaultdict(dict)
  definitions = collections.defaultdict(set)
  for r in runs:
    definitions[r['method']].add(r['metric_definition'])
  for method, names in definitions.items():
    if len(names) > 1:
      raise DataError(f'the {method} runs report forgetting by different definitions '
                      f'({", ".join(sorted(names))}); rerun the older ones to report them alike')
  for (backbone, method, bench), rs in groups.items():
    seeds = [r['seed'] for r in rs]
    if len(set(seeds)) != len(seeds):
      raise DataError(f'{method} on {bench} ({backbone}) has several runs with the same seed: '
                      + ', '.join(r['workdir'] for r in rs))
    cell = {}
    for key, _ in METRICS:
      values = np.array([r[key] for r in rs], np.float64)
      cell[key] = (values.mean(), values.std(ddof=1) if len(values) > 1 else 0.0, len(values))
    cell['metric_definition'] = rs[0]['metric_definition']
    table[(backbone, method)][bench] = cell
  return table


def definitions_note(table) -> str:
  """Which forgetting definition the table's rows use (cljax.continual.metrics.DEFINITIONS)."""
  by_definition = collections.defaultdict(list)
  for (_, method), row in sorted(table.items(), key=lambda k: METHOD_ORDER.index(k[0][1])
                                 if k[0][1] in METHOD_ORDER else 99):
    for cell in row.values():
      name = METHOD_NAMES.get(method, method)
      if name not in by_definition[cell['metric_definition']]:
        by_definition[cell['metric_definition']].append(name)
  words = {'hide': "HiDe's (max over the columns up to and including t)",
           'smope': "SMoPE's (max over the columns before t, can be negative)"}
  return '; '.join(f'FM by {words.get(d, d)} definition: {", ".join(m)}' for d, m in by_definition.items())


def render(table, fmt: str = 'markdown') -> str:
  benches = sorted({b for row in table.values() for b in row}, key=list(BENCHMARK_NAMES).index)
  rows = sorted(table, key=lambda k: (k[0], METHOD_ORDER.index(k[1]) if k[1] in METHOD_ORDER else 99))
  pm = ' $\\pm$ ' if fmt == 'latex' else ' ± '

  def cell(bench_cells, key):
    if key not in bench_cells:
      return '-'
    mean, std, n = bench_cells[key]
    return f'{mean:.2f}{pm}{std:.2f}' if n > 1 else f'{mean:.2f}'

  header = ['Backbone', 'Method'] + [f'{BENCHMARK_NAMES.get(b, b)} {label}' for b in benches
                                     for _, label in METRICS]
  body = []
  for backbone, method in rows:
    values = [cell(table[(backbone, method)].get(b, {}), key) for b in benches for key, _ in METRICS]
    body.append([backbone, METHOD_NAMES.get(method, method)] + values)
  seeds = sorted({v[2] for row in table.values() for c in row.values() for k, v in c.items()
                  if k != 'metric_definition'})
  note = f'mean ± std over {"/".join(map(str, seeds))} seeds' if fmt != 'latex' else ''
  if fmt == 'latex':
    lines = ['\\begin{tabular}{ll' + 'ccc' * len(benches) + '}', '\\toprule',
             ' & '.join(header) + ' \\\\', '\\midrule']
    lines += [' & '.join(r) + ' \\\\' for r in body]
    lines += ['\\bottomrule', '\\end{tabular}']
    return '\n'.join(lines)
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  lines += ['| ' + ' | '.join(r) + ' |' for r in body]
  return '\n'.join(lines) + f'\n\n({note}; FA/CA/FM in %; {definitions_note(table)})'


def main(argv=None):
  p = argparse.ArgumentParser(prog='python -m cljax.report', description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('workdirs', nargs='+')
  p.add_argument('--format', default='markdown', choices=('markdown', 'latex'))
  p.add_argument('--out', default='')
  args = p.parse_args(argv)
  try:
    text = render(aggregate(load_runs(args.workdirs)), args.format)
    if args.out:
      write_table(args.out, text)
  except CljaxError as e:
    exit_with(e)
  print(text)


def write_table(path: str, text: str) -> None:
  """Write ``text`` to ``path``, creating its folder; DataError (one line) if it cannot."""
  folder = os.path.dirname(os.path.abspath(path))
  try:
    os.makedirs(folder, exist_ok=True)
    with open(path, 'w') as f:
      f.write(text + '\n')
  except OSError as e:
    raise DataError(f'cannot write the table to {path} ({e.strerror or e}); pass another --out') from e


if __name__ == '__main__':
  main()
