"""The functional API in a notebook-sized script (CPU, well under a minute).

  python scripts/functional_api_example.py [--epochs 3]

NoRGa's prompt stage on the first task of Split-Digits with the shipped demo backbone: build the
model and method, load the backbone, train with a pure jitted step, then swap the gate's
activation (tanh -> gelu) and keep training the same params. Prints the mean loss per epoch and
the test accuracy of task 1.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top

from cljax import api  # pylint: disable=g-import-not-at-top
from cljax import config as config_lib  # pylint: disable=g-import-not-at-top


def main(epochs: int = 3, data_dir: str = '', depth: int = 0):
  config = config_lib.demo('norga')          # Split-Digits, demo ViT, NoRGa gate with tanh
  config.benchmark.data_dir = data_dir
  config.backbone.depth = depth              # > 0: the first blocks only (a faster test)
  setup = api.build(config)                  # validated config -> model, method, benchmark
  backbone = api.load_backbone(setup)        # frozen ViT params (cljax/assets)
  params, method_state = api.init(setup, jax.random.PRNGKey(0))
  opt_state = api.init_optimizer(setup, params)
  step = api.train_step(setup, backbone, task=0)

  losses = []
  for epoch in range(epochs):
    epoch_losses = []
    for batch in api.batches(setup, task=0, seed=epoch):
      params, opt_state, metrics = step(params, opt_state, batch)
      epoch_losses.append(float(metrics['loss']))
    losses.append(sum(epoch_losses) / len(epoch_losses))
    print(f'tanh gate, epoch {epoch + 1}: loss {losses[-1]:.4f}', flush=True)
  acc = api.accuracy(setup, params, method_state, backbone, task=0)
  print(f'task 1 test accuracy {acc:.2f}%')

  # Another gate activation: a new method over the same params pytree.
  gelu = api.with_activation(setup, 'gelu')
  assert jax.tree.structure(gelu.method.init(jax.random.PRNGKey(0))) == jax.tree.structure(params)
  step = api.train_step(gelu, backbone, task=0)
  gelu_losses = []
  for batch in api.batches(gelu, task=0, seed=epochs):
    params, opt_state, metrics = step(params, opt_state, batch)
    gelu_losses.append(float(metrics['loss']))
  acc_gelu = api.accuracy(gelu, params, method_state, backbone, task=0)
  print(f'gelu gate, one more epoch: loss {sum(gelu_losses) / len(gelu_losses):.4f}; '
        f'task 1 test accuracy {acc_gelu:.2f}%')
  return {'losses': losses, 'gelu_loss': sum(gelu_losses) / len(gelu_losses), 'accuracy': acc,
          'accuracy_gelu': acc_gelu}


if __name__ == '__main__':
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--epochs', type=int, default=3)
  p.add_argument('--depth', type=int, default=0, help='> 0: keep only the first blocks')
  args = p.parse_args()
  main(args.epochs, depth=args.depth)
