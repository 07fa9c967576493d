"""Where the trainer's own training step spends its time on this device: XLA's per-op trace.

  XLA_FLAGS=--xla_cpu_enable_xprof_traceme=true python scripts/train_step_profile.py \
      [--method norga] [--model b] [--batch 8] [--repeats 3]

Builds the step `Experiment` jits for the prompt stage (as `scripts/benchmark.py` does: the
method's Split ImageNet-R paper config, random weights), times it alone in this process (median
of --repeats after a warm-up; no PyTorch in the process, whose spinning OpenMP threads slow
XLA's), then traces two calls and prints the op time summed over XLA's worker threads, by op kind
and by the model part it comes from (forward `jvp(...)` or backward `transpose(jvp(...))`, with
block indices folded), so the split between matmuls (YNNPACK fusions and dots) and elementwise
fusions is visible.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

import backward_breakdown  # pylint: disable=g-import-not-at-top
import benchmark  # pylint: disable=g-import-not-at-top
from cljax.continual import step_inputs  # pylint: disable=g-import-not-at-top


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--method', default='norga')
  p.add_argument('--model', default='b', choices=('ti', 'b'))
  p.add_argument('--batch', type=int, default=8)
  p.add_argument('--repeats', type=int, default=3)
  p.add_argument('--top', type=int, default=30)
  args = p.parse_args()
  exp = benchmark.experiment(args.method, args.model, args.batch, {})
  stage = next(s for s in exp.stages if s.name == 'prompt')
  call, info = benchmark.cljax_train(exp, stage, args.batch)
  jax.block_until_ready(call())
  times = []
  for _ in range(args.repeats):
    start = time.perf_counter()
    jax.block_until_ready(call())
    times.append(time.perf_counter() - start)
  step_s = float(np.median(times))
  print(f'{args.method} vit_{args.model}16 prompt-stage train step, batch {args.batch}: {step_s:.3f} s '
        f'({args.batch / step_s:.2f} img/s), {info["flops"] / 1e9:.0f} GFLOP, load {os.getloadavg()[0]:.1f}')
  if '--xla_cpu_enable_xprof_traceme=true' not in os.environ.get('XLA_FLAGS', ''):
    print('no trace: set XLA_FLAGS=--xla_cpu_enable_xprof_traceme=true before jax starts')
    return
  step = exp.stage_steps(stage)['train']
  step_args, flags = step_inputs.train_args(exp, stage, args.batch, t=1, concrete=True)
  hlo = step.lower(*step_args, flags=flags).compile().as_text()
  origin = {m.group(1): m.group(2) for m in re.finditer(
      r'^\s*(?:ROOT )?%([\w.\-]+) = .*?op_name="([^"]*)"', hlo, re.M)}
  calls = 2
  per_op = collections.Counter()
  for name, _, duration_ns in backward_breakdown.xla_op_events(call, calls):
    per_op[name] += duration_ns
  total = sum(per_op.values())
  kinds, parts = collections.Counter(), collections.Counter()
  for name, ns in per_op.items():
    kinds[re.sub(r'[._]\d+$', '', name)] += ns
    where = re.sub(r'blocks_\d+', 'blocks_N', origin.get(name, '?')).replace('jit(train_step)/', '')
    parts[('matmul' if name.startswith(('ynn', 'dot')) else 'elementwise', where)] += ns
  ms = lambda ns: ns / calls / 1e6
  print(f'\nop time per step, summed over worker threads: {ms(total):.0f} ms')
  print('\nby op kind:')
  for kind, ns in kinds.most_common(args.top):
    print(f'  {ms(ns):8.1f} ms  {100 * ns / total:5.1f}%  {kind}')
  print('\nby model part (jvp = forward, transpose(jvp) = backward):')
  for (kind, where), ns in parts.most_common(args.top):
    print(f'  {ms(ns):8.1f} ms  {100 * ns / total:5.1f}%  {kind:11s} {where}')


if __name__ == '__main__':
  main()
