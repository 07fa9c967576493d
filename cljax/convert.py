"""Checkpoint conversion commands.

  python -m cljax.convert inspect FILE
      what a checkpoint file holds: the method and layout of a reference checkpoint (or the
      backbone family), its args, key count, the first keys and shapes.
  python -m cljax.convert backbone IN OUT --model vit_b16 [--image-size 224] [--fc-norm]
      any supported backbone file (Google .npz, timm/HF .bin/.pth/.safetensors, DINO, iBOT,
      MoCo v3, the SMoPE learner's feat.*) -> a checked timm-named OUT (.safetensors needs no
      torch to read back).
  python -m cljax.convert reference IN OUT --model vit_b16 --num-classes 100 [--method M]
      [--activation tanh --prompt-layers 0,1,2,3,4 --length 20 --pool 10 | --mlp-hidden 2]
      check a reference checkpoint of any method against a model layout (strict: missing,
      unexpected and mis-shaped keys are named; a checkpoint's args are read, and a flag that
      disagrees with them is refused) and write it again in its own layout (.pth), or flat in
      cljax's names (.safetensors, .npz). The method is the file's (detected) unless --method.
  python -m cljax.convert export WORKDIR OUT --task T [--stage prompt|task_identity]
      a cljax run's checkpoint after task T (counted from 1, as the run prints it) -> the
      reference layout of its method: {'model': state_dict, 'args': ...} (NoRGa, HiDe-Prompt,
      L2P, DualPrompt, S-Prompt, the task-identity model) or the SMoPE learner's class.pth
      (SMoPE, CODA-Prompt).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from cljax.checkpoints import backbones, files, reference, torch_names
from cljax.errors import CheckpointError, CljaxError
from cljax.models.vit import vit_config


def detect_family(raw) -> str:
  """What a read file is: a reference checkpoint's method and layout, else its backbone family."""
  keys = set(raw)
  if 'teacher' in keys:
    return 'iBOT (teacher)'
  sd = files.unwrap(raw)
  if backbones.is_google_npz(sd):
    return 'Google ViT npz'
  ckpt = reference.detect(raw)
  if ckpt.method != 'sequential_head' or ckpt.args is not None or any(k.startswith('head.') for k in sd):
    return ckpt.describe()
  names = list(sd)
  if any(k.startswith('module.base_encoder.') for k in names):
    return 'MoCo v3 (raw)'
  if any(k.startswith('backbone.') for k in names):
    return 'prefixed backbone (iBOT style)'
  return 'timm-named ViT'


def _args_line(args) -> str:
  fields = ('config', 'gate_act', 'e_prompt_layer_idx', 'length', 'size', 'top_k', 'nb_classes',
            'head_type', 'original_model_mlp_structure', 'batch_size')
  return ', '.join(f'{k}={args[k]}' for k in fields if k in args)


def cmd_inspect(args):
  raw = files.read(args.file)
  sd = files.unwrap(raw)
  print(f'{args.file}: {detect_family(raw)}, {len(sd)} arrays, '
        f'{sum(int(np.prod(v.shape)) for v in sd.values()) / 1e6:.2f}M values')
  ckpt_args = reference._args_of(raw)  # pylint: disable=protected-access
  if ckpt_args:
    print(f'  args: {_args_line(ckpt_args)}')
  for k in list(sd)[: args.limit]:
    print(f'  {k:<60} {tuple(sd[k].shape)} {sd[k].dtype}')
  if len(sd) > args.limit:
    print(f'  ... {len(sd) - args.limit} more')


def _vit(args):
  overrides = dict(image_size=args.image_size, final_norm=not args.fc_norm)
  if args.model == 'demo':
    return backbones.demo_vit_config(**overrides)
  return vit_config(args.model, **overrides)


def cmd_backbone(args):
  params, notes = backbones.load_backbone(args.input, _vit(args))
  for n in notes:
    print(f'note: {n}')
  files.write(args.output, torch_names.to_state_dict({'backbone': params}), wrap_key=None)
  print(f'wrote {args.output}')


def _ints(text: str):
  return tuple(int(x) for x in text.split(',') if x)


def layout_config(method: str, args, ckpt):
  """A cljax config holding the layout of ``method``: from the checkpoint's args where it has
  them, else from the flags (a flag that disagrees with the args is refused)."""
  from cljax import config as config_lib  # pylint: disable=g-import-not-at-top
  c = config_lib.base()
  c.method = 'norga' if method == 'task_identity' else method
  flags = {'gate_act': ('activation', str), 'e_prompt_layer_idx': ('prompt_layers', _ints),
           'length': ('length', int), 'size': ('pool', int), 'nb_classes': ('num_classes', int),
           'original_model_mlp_structure': ('mlp_hidden', _ints)}
  values = {arg: None if getattr(args, flag) is None else kind(getattr(args, flag))
            for arg, (flag, kind) in flags.items()}
  given = {arg: v for arg, v in values.items() if v is not None and (arg != 'gate_act' or method == 'norga')}
  reference.check_args(ckpt, given, {arg: '--' + flag.replace('_', '-') for arg, (flag, _) in flags.items()})
  saved = ckpt.args or {}
  for arg in values:
    if saved.get(arg) is not None and (arg != 'gate_act' or method == 'norga'):
      values[arg] = tuple(saved[arg]) if isinstance(saved[arg], (list, tuple)) else saved[arg]
  ckpt = saved
  if values['nb_classes'] is None:
    raise CheckpointError(f'{args.input} carries no args: give --num-classes')
  if method == 'norga' and values['gate_act'] is None:
    print('note: no args in the checkpoint and no --activation: gate activation identity assumed')
    values['gate_act'] = 'identity'
  p = c.prompt
  p.gate = 'norga' if method == 'norga' else 'linear'
  p.activation = values['gate_act'] if method == 'norga' else 'identity'
  p.layers = values['e_prompt_layer_idx'] or _ints(args.default_layers(method))
  p.length = values['length'] or args.default_length(method)
  p.pool_size = values['size'] or args.default_pool
  p.prompt_key = bool(args.prompt_key or ckpt.get('prompt_key', False))
  if method == 'dualprompt':
    p.g_layers = tuple(ckpt.get('g_prompt_layer_idx', _ints(args.g_layers)))
    p.g_length = int(ckpt.get('g_prompt_length', args.g_length))
  p.top_k = int(ckpt.get('top_k', args.top_k))
  c.task_identity.mlp_hidden = values['original_model_mlp_structure'] or ()
  return c, int(values['nb_classes'])


def cmd_reference(args):
  ckpt = reference.read(args.input)
  method = args.method or ckpt.method
  if args.method:
    reference.check_method(ckpt, args.method, '--method')
  c, num_classes = layout_config(method, args, ckpt)
  vit = _vit(args)
  from cljax import methods as methods_lib  # pylint: disable=g-import-not-at-top
  from cljax.methods import task_identity  # pylint: disable=g-import-not-at-top
  num_tasks = c.prompt.pool_size
  if method == 'task_identity':
    built = task_identity.frozen_backbone_classifier('task_identity', c, vit, num_classes, c.task_identity.mlp_hidden)
  else:
    c.method = method
    built = methods_lib.build(c, vit, num_classes, num_tasks)
  layers = tuple(c.prompt.layers)
  params = reference.from_state_dict(method, ckpt.state_dict, reference.method_template(built),
                                     what=args.input, layers=layers)
  if args.output.endswith(files.TORCH_SUFFIXES):
    extra = reference.reference_args(c, method, num_classes, num_tasks) if ckpt.args is None else \
        argparse.Namespace(**ckpt.args)
    reference.export(args.output, params, method, layers, args=extra)
  else:
    files.write(args.output, torch_names.to_state_dict(params), wrap_key=None)
  print(f'{args.input}: {ckpt.describe()}; layout checked; wrote {args.output}')


def cmd_export(args):
  from cljax.continual import saved_stages  # pylint: disable=g-import-not-at-top
  if args.task < 1:
    raise CheckpointError(f'--task counts tasks from 1 (as the run prints them), got {args.task}')
  from cljax import config as config_lib  # pylint: disable=g-import-not-at-top
  config = saved_stages.run_config(args.workdir)
  params = saved_stages.load_params(args.workdir, args.task - 1, args.stage)
  method = 'task_identity' if args.stage == 'task_identity' else config.method
  ref_args = reference.reference_args(config, method, config_lib.num_classes(config),
                                      config.benchmark.num_tasks)
  reference.export(args.output, params, method, tuple(config.prompt.layers), args=ref_args)
  print(f'wrote {args.output} (task {args.task}, {args.stage} stage, '
        f'{reference.METHOD_NAMES[method]} in {reference.LAYOUTS[reference.METHOD_LAYOUT[method]]})')


class _Defaults:
  """Layout defaults of `convert reference` when neither flags nor args give them."""
  default_pool = 10

  def __init__(self, ns):
    self.__dict__.update(vars(ns))

  @staticmethod
  def default_layers(method):
    return {'smope': '0,1,2,3,4,5', 'l2p': '0', 'dualprompt': '2,3,4'}.get(method, '0,1,2,3,4')

  @staticmethod
  def default_length(method):
    return {'smope': 50, 'coda': 8}.get(method, 5)


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
    s.add_argument('--model', default='vit_b16', help='vit_b16, vit_ti8, ... or demo (the demo backbone)')
    s.add_argument('--image-size', type=int, default=224)
    s.add_argument('--fc-norm', action='store_true', help='MoCo v3: no final norm, fc_norm head')
    s.set_defaults(fn=fn)
    if name == 'reference':
      s.add_argument('--method', default=None, choices=sorted(reference.METHOD_LAYOUT),
                     help='default: the file\'s (its args, else its keys)')
      s.add_argument('--num-classes', default=None, help='default: the checkpoint\'s args.nb_classes')
      s.add_argument('--gate', default=None, help='deprecated: the method says it (norga: --method norga)')
      s.add_argument('--activation', default=None, help='NoRGa gate activation (default: args.gate_act)')
      s.add_argument('--prompt-layers', default=None)
      s.add_argument('--length', default=None)
      s.add_argument('--pool', default=None)
      s.add_argument('--prompt-key', action='store_true')
      s.add_argument('--top-k', type=int, default=1)
      s.add_argument('--g-layers', default='0,1')
      s.add_argument('--g-length', type=int, default=5)
      s.add_argument('--mlp-hidden', default=None)
  s = sub.add_parser('export')
  s.add_argument('workdir')
  s.add_argument('output')
  s.add_argument('--task', type=int, required=True, help='task number, counted from 1 as the run prints it')
  s.add_argument('--stage', default='prompt', choices=('prompt', 'task_identity'))
  s.set_defaults(fn=cmd_export)
  return p


def main(argv=None):
  args = parser().parse_args(argv)
  if args.command == 'reference':
    if args.gate and not args.method:   # the flag of earlier versions: norga | linear | none
      args.method = {'norga': 'norga', 'none': 'task_identity'}.get(args.gate)
    args = _Defaults(args)
  try:
    args.fn(args)
  except CljaxError as e:
    __import__('cljax.errors').errors.exit_with(e)   # one exit status for user errors: 2


if __name__ == '__main__':
  main()
