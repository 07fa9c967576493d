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
import jax.numpy as jnp
import numpy as np

from cljax import config as config_lib
from cljax.continual import trainer
from cljax.continual.alignment import ClassStats

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
  method = stage.method
  steps = exp._steps(stage)
  params = jax.eval_shape(method.init, jax.random.PRNGKey(0))
  state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), method.init_state())
  opt = jax.eval_shape(steps['tx'].init, params)
  lr_tree = jax.tree.map(jnp.float32, method.lr_multipliers(params, t))
  size = exp.vit_cfg.image_size
  stats = ClassStats.empty(exp.num_classes, exp.vit_cfg.embed_dim, stage.stats_method, exp.config.statistics.n_centroids)
  means, valid = stats.means()
  context = {'task_mask': jnp.zeros(exp.num_classes, bool), 'seen_mask': jnp.zeros(exp.num_classes, bool),
             'means': jnp.asarray(means), 'means_valid': jnp.asarray(valid)}
  flags = method.training_phases(t, stage.cfg.epochs)[-1].flags
  args = (params, opt, state, exp.backbone, jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32),
          jnp.zeros(batch, jnp.int32), jnp.ones(batch, bool), jnp.int32(t), context, jnp.float32(1e-3), lr_tree)
  flops = steps['train'].lower(*args, flags=flags).cost_analysis()['flops']
  return count(params), flops / batch / 1e9


def inference_cost(exp, batch: int):
  stage = exp.stages[-1]
  step = exp._eval_step('prompt', per_example=False)
  params = jax.eval_shape(stage.method.init, jax.random.PRNGKey(0))
  state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), stage.method.init_state())
  tii = jax.eval_shape(exp.stages[0].method.init, jax.random.PRNGKey(0)) if len(exp.stages) > 1 else None
  size = exp.vit_cfg.image_size
  args = (params, state, tii, exp.backbone, jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32),
          jnp.zeros(batch, jnp.int32), jnp.ones(batch, bool), jnp.ones(exp.num_classes, bool),
          jnp.zeros(exp.num_classes, jnp.int32))
  return step.lower(*args).cost_analysis()['flops'] / batch / 1e9


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
