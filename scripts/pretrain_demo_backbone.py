"""Pretrain the demo backbone: a small ViT on real Fashion-MNIST (Debian's files), offline.

The offline demo needs a "pretrained model" the way the papers use ViT-B/16 Sup-21K. This script
trains one supervised on Fashion-MNIST (60k images, 28x28 grey -> RGB, [0, 1]) and writes its
backbone in timm names to ``cljax/assets/demo_vit_fmnist.safetensors`` (the file the repo ships),
plus a JSON with its test accuracy. Seeded: rerunning it regenerates the same file on the same
machine and library versions.

  python scripts/pretrain_demo_backbone.py [--epochs 4] [--out cljax/assets/demo_vit_fmnist.safetensors]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cljax.checkpoints import files, torch_names
from cljax.data import offline
from cljax.models.heads import Classifier
from cljax.models.vit import VisionTransformer
from cljax.checkpoints.backbones import demo_vit_config

DEFAULT_OUT = os.path.join(os.path.dirname(__file__), '..', 'cljax', 'assets', 'demo_vit_fmnist.safetensors')


def to_inputs(images):
  x = images.astype(np.float32) / 255.0
  return np.repeat(x, 3, axis=-1)


def augment(rng, images):
  """Random shifts of up to 2 pixels (pad + crop) and horizontal flips."""
  n, h, w, _ = images.shape
  padded = np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)))
  dy, dx = rng.integers(0, 5, n), rng.integers(0, 5, n)
  out = np.stack([padded[i, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
  flip = rng.random(n) < 0.5
  out[flip] = out[flip, :, ::-1]
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--epochs', type=int, default=4)
  p.add_argument('--batch', type=int, default=128)
  p.add_argument('--lr', type=float, default=1e-3)
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--data-dir', default=offline.FASHION_MNIST_DIR)
  p.add_argument('--out', default=DEFAULT_OUT)
  args = p.parse_args()

  data = offline.fashion_mnist(args.data_dir)
  x_train, y_train = data['train']
  x_test, y_test = data['test']
  cfg = demo_vit_config()
  vit, head = VisionTransformer(cfg), Classifier(10)
  k1, k2 = jax.random.split(jax.random.PRNGKey(args.seed))
  params = {'backbone': vit.init(k1, jnp.zeros((1, 28, 28, 3)))['params'],
            'classifier': head.init(k2, jnp.zeros((1, cfg.embed_dim)))['params']}
  steps_per_epoch = len(x_train) // args.batch
  total = steps_per_epoch * args.epochs
  schedule = optax.warmup_cosine_decay_schedule(0.0, args.lr, min(500, total // 10), total)
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=0.05))
  opt_state = tx.init(params)

  def logits_fn(params, x):
    pre, _ = vit.apply({'params': params['backbone']}, x)
    return head.apply({'params': params['classifier']}, pre)

  @jax.jit
  def train_step(params, opt_state, x, y):
    def loss_fn(p):
      return optax.softmax_cross_entropy_with_integer_labels(logits_fn(p, x), y).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  predict = jax.jit(lambda p, x: jnp.argmax(logits_fn(p, x), -1))

  def accuracy(params):
    correct = 0
    for i in range(0, len(x_test), 500):
      correct += int((np.asarray(predict(params, to_inputs(x_test[i:i + 500]))) == y_test[i:i + 500]).sum())
    return correct / len(x_test)

  rng = np.random.default_rng(args.seed)
  start = time.time()
  for epoch in range(args.epochs):
    order = rng.permutation(len(x_train))
    losses = []
    for s in range(steps_per_epoch):
      idx = order[s * args.batch:(s + 1) * args.batch]
      x = to_inputs(augment(rng, x_train[idx]))
      params, opt_state, loss = train_step(params, opt_state, x, y_train[idx])
      losses.append(float(loss))
      if s % 50 == 0:
        done = epoch * steps_per_epoch + s + 1
        eta = (time.time() - start) / done * (total - done)
        print(f'epoch {epoch + 1}/{args.epochs} step {s}/{steps_per_epoch} loss {np.mean(losses[-50:]):.4f} '
              f'({done * args.batch / (time.time() - start):.0f} img/s, eta {eta / 60:.1f} min)', flush=True)
    print(f'epoch {epoch + 1}: test accuracy {accuracy(params):.4f}', flush=True)

  acc = accuracy(params)
  files.write(args.out, torch_names.to_state_dict({'backbone': params['backbone']}), wrap_key=None)
  info = {'fashion_mnist_test_accuracy': acc, 'epochs': args.epochs, 'seed': args.seed,
          'vit': cfg.__dict__, 'train_seconds': round(time.time() - start, 1),
          'jax': jax.__version__}
  with open(os.path.splitext(args.out)[0] + '.json', 'w') as f:
    json.dump(info, f, indent=2)
  print(json.dumps(info, indent=2))


if __name__ == '__main__':
  main()
