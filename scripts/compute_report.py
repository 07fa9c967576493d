"""Learnable parameters and GFLOPs per image of every method, from XLA's cost analysis.

  python scripts/compute_report.py [--benchmark imr] [--batch 16] [--out benchmarks/compute_report.md]

For each method the real jitted steps of cljax's trainer are lowered at ViT-B/16, 224x224, with
the method's paper config on the benchmark (Split ImageNet-R, 10 tasks, by default), and XLA's
cost analysis counts their floating-point operations (a multiply-add is 2). Per image =
per step / batch. Training: the method's training step (forward, backward, update); the
two-stage methods (HiDe-Prompt, NoRGa) also train their task-identity model, listed apart and
added to the total. Inference: the whole test-time path (query or task-identity forward plus
the prompted forward; SMoPE needs only its own forward). Layout of SMoPE's cost comparison
(seed paper 002, figure 3): values and % of L2P. No weights or data are needed.
"""

from __future__ import annotations

import argparse
import os

import jax
import numpy as np

from cljax import config as config_lib
from cljax.continual import step_inputs, trainer

METHODS = ('l2p', 'dualprompt', 'coda', 'hideprompt', 'norga', 'smope')
NAMES = {'l2p': 'L2P', 'dualprompt': 'DualPrompt', 'coda': 'CODA-Prompt', 'hideprompt': 'HiDe-Prompt',
         'norga': 'NoRGa', 'smope': 'SMoPE'}


def method_config(method: str, benchmark: str):
  if method == 'smope':
    return config_lib.smope(benchmark, 10)
  return config_lib.paper(benchmark, method, 'sup21k')


def count(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def stage_costs(exp, stage, batch: int, t: int = 1):
  """(learnable params, train GFLOPs/img) of one stage's training step at task t."""
  args, flags = step_inputs.train_args(exp, stage, batch, t)
  flops = exp.stage_steps(stage)['train'].lower(*args, flags=flags).cost_analysis()['flops']
  return count(args[0]), flops / batch / 1e9


def inference_cost(exp, batch: int):
  args = step_inputs.eval_args(exp, batch)
  return exp.eval_step('prompt', per_example=False).lower(*args).cost_analysis()['flops'] / batch / 1e9


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--benchmark', default='imr')
  p.add_argument('--batch', type=int, default=16)
  p.add_argument('--out', default=os.path.join(os.path.dirname(__file__), '..', 'benchmarks', 'compute_report.md'))
  args = p.parse_args()
  rows = []
  for method in METHODS:
    c = method_config(method, args.benchmark)
    c.dry_run = True      # never looks for weights; nothing is run
    c.batch_size = c.eval_batch_size = args.batch
    exp = trainer.Experiment(c, '', load_data=False, verbose=False, load_backbone=False)
    exp.split = None
    main_params, main_train = stage_costs(exp, exp.stages[-1], args.batch)
    tii_params, tii_train = (stage_costs(exp, exp.stages[0], args.batch) if len(exp.stages) > 1 else (0, 0.0))
    infer = inference_cost(exp, args.batch)
    rows.append((method, main_params + tii_params, main_train, tii_train, infer))
    print(f'{method}: {rows[-1]}', flush=True)
  base = rows[0]
  lines = [f'Split {"ImageNet-R" if args.benchmark == "imr" else args.benchmark} (10 tasks), ViT-B/16 at 224, '
           f'XLA cost analysis (`python scripts/compute_report.py`), per image:', '',
           '| method | learnable params (M) | training GFLOPs (prompt stage + task-identity stage) | '
           'inference GFLOPs | params % of L2P | training % of L2P | inference % of L2P |',
           '|---|---|---|---|---|---|---|']
  for method, params, train, tii, infer in rows:
    total = train + tii
    split = f'{total:.1f} ({train:.1f} + {tii:.1f})' if tii else f'{total:.1f}'
    lines.append(f'| {NAMES[method]} | {params / 1e6:.3f} | {split} | {infer:.1f} | '
                 f'{100 * params / base[1]:.0f}% | {100 * total / (base[2] + base[3]):.0f}% | '
                 f'{100 * infer / base[4]:.0f}% |')
  text = '\n'.join(lines)
  with open(args.out, 'w') as f:
    f.write(text + '\n')
  print(text)


if __name__ == '__main__':
  main()
