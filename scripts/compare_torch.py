"""Compare cljax with the PyTorch implementation of the references, layer by layer.

  # one model, random init or a checkpoint, per-layer max abs / rel differences:
  python scripts/compare_torch.py --model vit_b16 --gate norga --activation tanh \
      --prompt-layers 0,1,2,3,4 --length 20 --pool 10 [--checkpoint ViT-B_16.npz]
  python scripts/compare_torch.py --model vit_b16 --reference-checkpoint task10_checkpoint.pth ...
  # the parity table of README (forward and gradient errors of every gate):
  python scripts/compare_torch.py --table

Needs torch (pip install -e '.[test]').
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from cljax.checkpoints import backbones, files, torch_names
from cljax.errors import CljaxError
from cljax.models.prefix import ACTIVATIONS
from cljax.models.prompts import PoolSpec
from cljax.models.vit import ViTConfig, vit_config
from cljax_testing.torch_oracle import Pair, rel_err


def parse():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--model', default='vit_b16')
  p.add_argument('--image-size', type=int, default=224)
  p.add_argument('--num-classes', type=int, default=100)
  p.add_argument('--gate', default='none', help='none | linear | norga | tokens')
  p.add_argument('--activation', default='tanh')
  p.add_argument('--prompt-layers', default='0,1,2,3,4')
  p.add_argument('--length', type=int, default=20)
  p.add_argument('--pool', type=int, default=10)
  p.add_argument('--kv-layout', default='reference')
  p.add_argument('--mlp-hidden', default='', help='e.g. 2 or 4,4: the task-identity MLP head')
  p.add_argument('--fc-norm', action='store_true', help='MoCo v3 layout (no final norm, fc_norm)')
  p.add_argument('--checkpoint', help='backbone weights (.npz, .pth, .bin, .safetensors)')
  p.add_argument('--reference-checkpoint', help='a MoE_PromptCL/HiDe-Prompt task checkpoint')
  p.add_argument('--batch', type=int, default=2)
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--table', action='store_true', help='print the parity table of every gate')
  return p.parse_args()


def pool_spec(args):
  if args.gate == 'none':
    return None
  layers = tuple(int(x) for x in args.prompt_layers.split(',') if x)
  if args.gate == 'tokens':
    return PoolSpec(layers, args.pool, args.length, kind='tokens', kv_layout=args.kv_layout)
  return PoolSpec(layers, args.pool, args.length, gate=args.gate, activation=args.activation,
                  kv_layout=args.kv_layout)


def load_into_pair(pair, state, strict):
  """Load a state dict into the oracle, then convert the oracle's full state dict to cljax."""
  pair.torch.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()},
                             strict=strict)
  pair.state_dict = {k: v.detach().numpy().copy() for k, v in pair.torch.state_dict().items()}
  pair.params = torch_names.from_state_dict(pair.state_dict, pair.model.template())


def compare_one(args):
  cfg = vit_config(args.model, image_size=args.image_size, final_norm=not args.fc_norm)
  hidden = tuple(int(x) for x in args.mlp_hidden.split(',') if x)
  pair = Pair(cfg, args.num_classes, pool_spec(args), hidden, args.fc_norm, seed=args.seed)
  if args.checkpoint:          # backbone weights into both sides (heads/prompts stay random)
    sd = backbones.normalise_keys(files.read(args.checkpoint))
    params, notes = backbones.backbone_from_state_dict(sd, cfg, args.checkpoint)
    print('\n'.join(f'note: {n}' for n in notes))
    load_into_pair(pair, torch_names.to_state_dict({'backbone': params}), strict=False)
  elif args.reference_checkpoint:
    load_into_pair(pair, files.unwrap(files.read(args.reference_checkpoint)), strict=True)
  rng = np.random.RandomState(args.seed)
  images = rng.rand(args.batch, cfg.image_size, cfg.image_size, 3).astype(np.float32)
  idx = None
  if pair.spec is not None:
    idx = rng.randint(0, pair.spec.pool_size, size=args.batch)
  print(f'{"layer":<14}{"max abs diff":>14}{"rel diff":>12}')
  for name, abs_diff, rel in pair.layer_diffs(images, idx):
    print(f'{name:<14}{abs_diff:>14.3e}{rel:>12.3e}')


def table():
  small = ViTConfig(embed_dim=64, depth=3, num_heads=4, patch_size=8, image_size=32)
  rng = np.random.RandomState(0)
  images = rng.rand(6, 32, 32, 3).astype(np.float32)
  labels, idx = np.array([0, 3, 6, 1, 2, 5]), np.array([0, 1, 2, 3, 1, 0])
  cases = [('linear (HiDe), kv reference', small, PoolSpec((0, 1), 4, 5), (), False, idx),
           ('linear (HiDe), kv correct', small, PoolSpec((0, 1), 4, 5, kv_layout='correct'), (), False, idx)]
  cases += [(f'norga {a}', small, PoolSpec((0, 1, 2), 4, 5, gate='norga', activation=a), (), False, idx)
            for a in ACTIVATIONS]
  cases += [('prompt tuning (L2P), top-2', small, PoolSpec((0,), 6, 3, kind='tokens'), (), False,
             np.stack([idx, (idx + 2) % 6], 1)),
            ('task-identity MLP [2]', small, None, (2,), False, None),
            ('task-identity MLP [4,4]', small, None, (4, 4), False, None),
            ('task-identity MLP, MoCo fc_norm', ViTConfig(**{**small.__dict__, 'final_norm': False}),
             None, (2,), True, None)]
  print('| case | pre_logits rel | logits rel | max grad rel (prompts, gates, head) |')
  print('|---|---|---|---|')
  for name, cfg, spec, hidden, fc_norm, ix in cases:
    pair = Pair(cfg, 7, spec, hidden, fc_norm)
    pre, logits, grads = pair.cljax(images, ix, labels)
    t_pre, t_logits, t_grads = pair.reference(images, ix, labels)
    g = max(rel_err(grads[k], t_grads[k]) for k in t_grads)
    print(f'| {name} | {rel_err(pre, t_pre):.1e} | {rel_err(logits, t_logits):.1e} | {g:.1e} |')
  spec = PoolSpec((0, 1, 2, 3, 4), 10, 20, gate='norga', activation='tanh')
  pair = Pair(vit_config('vit_b16'), 100, spec)
  big = rng.rand(2, 224, 224, 3).astype(np.float32)
  pre, logits, _ = pair.cljax(big, np.array([3, 7]))
  t_pre, t_logits, _ = pair.reference(big, np.array([3, 7]))
  print(f'| ViT-B/16 224, NoRGa tanh, layers 0-4, L=20, P=10 | {rel_err(pre, t_pre):.1e} | '
        f'{rel_err(logits, t_logits):.1e} | - |')


def main():
  args = parse()
  start = time.time()
  try:
    table() if args.table else compare_one(args)
  except CljaxError as e:
    sys.exit(f'error: {e}')
  print(f'({time.time() - start:.1f} s)')


if __name__ == '__main__':
  main()
