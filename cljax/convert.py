"""Checkpoint conversion commands.

  python -m cljax.convert inspect FILE
      what a checkpoint file holds: detected family, key count, the first keys and shapes.
  python -m cljax.convert backbone IN OUT --model vit_b16 [--image-size 224] [--fc-norm]
      any supported backbone file (Google .npz, timm/HF .bin/.pth/.safetensors, DINO, iBOT,
      MoCo v3) -> a checked timm-named OUT (.safetensors needs no torch to read back).
  python -m cljax.convert reference IN OUT --model vit_b16 --num-classes 100 \
      [--gate norga --prompt-layers 0,1,2,3,4 --length 20 --pool 10 | --mlp-hidden 2]
      check a MoE_PromptCL/HiDe-Prompt training checkpoint against a model layout (strict:
      missing, unexpected and mis-shaped keys are named) and write it again (.pth as
      {'model': state_dict}, .safetensors or .npz flat).
  python -m cljax.convert export WORKDIR OUT --task T [--stage prompt|task_identity]
      a cljax run's task checkpoint -> the references' {'model': state_dict} file.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from cljax.checkpoints import backbones, files, reference, torch_names
from cljax.errors import CljaxError
from cljax.models.assembly import PromptedViTSpec
from cljax.models.prompts import PoolSpec
from cljax.models.vit import vit_config


def detect_family(raw) -> str:
  keys = set(raw)
  if 'teacher' in keys:
    return 'iBOT (teacher)'
  sd = files.unwrap(raw)
  if backbones.is_google_npz(sd):
    return 'Google ViT npz'
  names = list(sd)
  if any(k.startswith('e_prompt.') for k in names):
    return 'reference prompt-stage checkpoint'
  if any(k.startswith('mlp.net.') for k in names):
    return 'reference task-identity checkpoint'
  if any(k.startswith('module.base_encoder.') for k in names):
    return 'MoCo v3 (raw)'
  if any(k.startswith('backbone.') for k in names):
    return 'prefixed backbone (iBOT style)'
  return 'timm-named ViT'


def cmd_inspect(args):
  raw = files.read(args.file)
  sd = files.unwrap(raw)
  print(f'{args.file}: {detect_family(raw)}, {len(sd)} arrays, '
        f'{sum(int(np.prod(v.shape)) for v in sd.values()) / 1e6:.2f}M values')
  for k in list(sd)[: args.limit]:
    print(f'  {k:<60} {tuple(sd[k].shape)} {sd[k].dtype}')
  if len(sd) > args.limit:
    print(f'  ... {len(sd) - args.limit} more')


def cmd_backbone(args):
  cfg = vit_config(args.model, image_size=args.image_size, final_norm=not args.fc_norm)
  params, notes = backbones.load_backbone(args.input, cfg)
  for n in notes:
    print(f'note: {n}')
  files.write(args.output, torch_names.to_state_dict({'backbone': params}), wrap_key=None)
  print(f'wrote {args.output}')


def model_spec(args) -> PromptedViTSpec:
  cfg = vit_config(args.model, image_size=args.image_size, final_norm=not args.fc_norm)
  pool = None
  if args.gate != 'none':
    layers = tuple(int(x) for x in args.prompt_layers.split(','))
    pool = PoolSpec(layers, args.pool, args.length, gate=args.gate, activation='identity',
                    prompt_key=args.prompt_key)
  hidden = tuple(int(x) for x in args.mlp_hidden.split(',') if x)
  return PromptedViTSpec(cfg, args.num_classes, pool, hidden, args.fc_norm)


def cmd_reference(args):
  params = reference.load(args.input, model_spec(args))
  reference.export(args.output, params) if args.output.endswith(files.TORCH_SUFFIXES) else \
      files.write(args.output, torch_names.to_state_dict(params), wrap_key=None)
  print(f'{args.input}: layout checked; wrote {args.output}')


def cmd_export(args):
  from cljax.continual import task_checkpoints  # pylint: disable=g-import-not-at-top
  params = task_checkpoints.load_params(args.workdir, args.task, args.stage)
  reference.export(args.output, params)
  print(f'wrote {args.output} (task {args.task}, {args.stage} stage)')


def parser():
  p = argparse.ArgumentParser(prog='python -m cljax.convert', description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = p.add_subparsers(dest='command', required=True)
  s = sub.add_parser('inspect')
  s.add_argument('file')
  s.add_argument('--limit', type=int, default=20)
  s.set_defaults(fn=cmd_inspect)
  for name, fn in (('backbone', cmd_backbone), ('reference', cmd_reference)):
    s = sub.add_parser(name)
    s.add_argument('input')
    s.add_argument('output')
    s.add_argument('--model', default='vit_b16')
    s.add_argument('--image-size', type=int, default=224)
    s.add_argument('--fc-norm', action='store_true', help='MoCo v3: no final norm, fc_norm head')
    s.set_defaults(fn=fn)
    if name == 'reference':
      s.add_argument('--num-classes', type=int, required=True)
      s.add_argument('--gate', default='none', help='none (task-identity model) | linear | norga')
      s.add_argument('--prompt-layers', default='0,1,2,3,4')
      s.add_argument('--length', type=int, default=5)
      s.add_argument('--pool', type=int, default=10)
      s.add_argument('--prompt-key', action='store_true')
      s.add_argument('--mlp-hidden', default='')
  s = sub.add_parser('export')
  s.add_argument('workdir')
  s.add_argument('output')
  s.add_argument('--task', type=int, required=True, help='0-based task index')
  s.add_argument('--stage', default='prompt', choices=('prompt', 'task_identity'))
  s.set_defaults(fn=cmd_export)
  return p


def main(argv=None):
  args = parser().parse_args(argv)
  try:
    args.fn(args)
  except CljaxError as e:
    __import__('cljax.errors').errors.exit_with(e)   # one exit status for user errors: 2


if __name__ == '__main__':
  main()
