"""Sample efficiency of linear vs NoRGa prompt gates: the simulation behind Theorems 4.1 / 4.3.

Fits the prefix-tuning MoE of Le et al. (NeurIPS 2024) by least squares for n on a log grid and
several seeds: NoRGa with one-layer (GELU) experts (Theorem 4.3's setting), the linear gate with
the same experts (the gate-only comparison) and the linear gate with linear experts (plain prefix
tuning, Theorem A.1).  Writes

  OUT/gating_sample_efficiency.json   every number (per n and seed) and the configuration
  OUT/gating_sample_efficiency.md     mean ± std over seeds and the fitted log-log slopes
  OUT/gating_sample_efficiency.png    log-log plot with reference slopes -1/2

Usage:
  python scripts/gating_sample_efficiency.py                 # default size, ~8 min on 2 cores
  python scripts/gating_sample_efficiency.py --size small    # smoke run, well under a minute
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from cljax.theory import gating_simulation as gs

STEM = 'gating_sample_efficiency'
# One colour per model, so the two panels read together.
COLOURS = {'norga+gelu': 'tab:blue', 'linear+linear': 'tab:red', 'linear+gelu': 'tab:gray',
           'norga+linear': 'tab:olive'}


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--size', choices=('default', 'small'), default='default',
                      help='default: 8 sample sizes 1e2..1e5 (the README numbers); '
                           'small: a smoke run')
  parser.add_argument('--seeds', type=int, default=None,
                      help='data sets per sample size (default 6, or 2 with --size small)')
  parser.add_argument('--models', default=None,
                      help='comma-separated gate+expert pairs, e.g. norga+gelu,linear+linear '
                           '(gates: norga, linear; experts: gelu, linear)')
  parser.add_argument('--out', default=os.path.join('benchmarks', 'theory'),
                      help='output directory (default benchmarks/theory)')
  return parser.parse_args(argv)


def parse_models(spec):
  models = []
  for item in spec.split(','):
    gate, _, expert = item.strip().partition('+')
    if gate not in gs.GATES or expert not in gs.EXPERTS:
      raise SystemExit(f'bad model {item!r}: want gate+expert with gate in {gs.GATES} '
                       f'and expert in {gs.EXPERTS}')
    models.append((gate, expert))
  return tuple(models)


def plot(result: dict, path: str) -> None:
  """Two log-log panels (L2 error, Voronoi loss): per-seed points, means, fitted power laws and
  a reference slope of -1/2."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  ns = np.asarray(result['config']['ns'], float)
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
  panels = (('regression_error', 'regression_slope', r'$\|g_{\hat G_n} - g_{G_*}\|_{L_2(\mu)}$'),
            ('parameter_loss', 'parameter_slope', r'Voronoi loss $\mathcal{L}_1(\hat G_n, G_*)$'))
  for ax, (key, slope_key, label) in zip(axes, panels):
    all_logs = []
    for name, res in result['models'].items():
      values = np.asarray(res[key], float)
      colour = COLOURS.get(name)
      ax.scatter(np.repeat(ns, values.shape[1]), values.ravel(), s=8, alpha=0.3, color=colour)
      ax.plot(ns, values.mean(axis=1), 'o-', color=colour,
              label=f'{name}: mean, fitted slope {res[slope_key]:.2f}')
      # The fitted power law (least squares on all log values), so the quoted slope is visible.
      logs = np.log(values)
      intercept = np.mean(logs) - res[slope_key] * np.mean(np.log(ns))
      ax.plot(ns, np.exp(intercept) * ns ** res[slope_key], ':', lw=1.2, color=colour)
      all_logs.append(logs)
    # One n^{-1/2} guide through the centre of all the data: "parallel to the dashed line"
    # reads as "rate n^{-1/2}".
    centre = np.exp(np.mean(all_logs))
    mid = np.exp(np.mean(np.log(ns)))
    ax.plot(ns, centre * (ns / mid) ** -0.5, 'k--', lw=1.0, label=r'reference slope $-1/2$')
    ax.set_xscale('log')
    ax.set_yscale('log')
    ax.set_xlabel('sample size n')
    ax.set_ylabel(label)
    ax.grid(True, which='both', alpha=0.25)
    ax.legend(fontsize=8)
  cfg = result['config']
  fig.suptitle(f"Prompt-expert MoE (gate+expert), L*={cfg['n_true_prompts']} true / "
               f"L'={cfg['n_fit_prompts']} fitted prompt experts; points: {cfg['n_seeds']} "
               f"seeds, dotted: fitted power law", fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=130)
  plt.close(fig)


def main(argv=None) -> int:
  args = parse_args(argv)
  # Recorded in the outputs, so each table says how to reproduce it.
  command = ' '.join(['python', f'scripts/{STEM}.py']
                     + list(sys.argv[1:] if argv is None else argv))
  overrides = {}
  if args.models:
    overrides['models'] = parse_models(args.models)
  cfg = gs.config_for_size(args.size, n_seeds=args.seeds, **overrides)
  os.makedirs(args.out, exist_ok=True)
  t0 = time.time()
  print(f'size={args.size}: n in {list(cfg.ns)}, {cfg.n_seeds} seeds, '
        f'models {[gs.model_name(m) for m in cfg.models]}', flush=True)
  result = gs.run_simulation(cfg, log=lambda line: print(line, flush=True))
  result['size'] = args.size
  result['command'] = command
  table = gs.summary_table(result)
  base = os.path.join(args.out, STEM)
  with open(base + '.json', 'w') as f:
    json.dump(result, f, indent=1)
  with open(base + '.md', 'w') as f:
    f.write(f'# Sample efficiency of prompt gates ({args.size} size)\n\n'
            f'Mean ± std over {cfg.n_seeds} seeds; slopes are least-squares fits of log value '
            f'on log n over all seeds, ± their bootstrap std over seeds (and over the upper '
            f'half of the grid only).  Produced by '
            f'`{command}` in {time.time() - t0:.0f} s.\n\n' + table)
  plot(result, base + '.png')
  print()
  print(table)
  print(f'wrote {base}.json, .md, .png ({time.time() - t0:.0f} s)')
  return 0


if __name__ == '__main__':
  sys.exit(main())
