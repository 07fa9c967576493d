"""The reference repositories' model checkpoints, for every method, both ways.

Two layouts, each that of the repository that defines the method:

* ``hide``: MoE_PromptCL (NoRGa) and HiDe-Prompt save ``{'model': model.state_dict(),
  'optimizer': ..., 'epoch': ..., 'args': argparse.Namespace}`` per task
  (``<output_dir>/checkpoint/task{T}_checkpoint.pth``, written by the ``engines/*_engine.py``
  files) for NoRGa, HiDe-Prompt, L2P, DualPrompt and S-Prompt, and for the stage-1
  task-identity model. One flat namespace: the timm ViT, ``e_prompt.prompt``,
  ``e_prompt.act_scale`` (NoRGa), ``e_prompt.prompt_key``, ``g_prompt`` (DualPrompt),
  ``mlp.net.*``/``mlp.norm.*`` (task identity), ``fc_norm.*``, ``head.*``: cljax's own names
  (`cljax.checkpoints.torch_names`).
* ``smope``: the SMoPE repository's learners save ``model.state_dict()`` flat as
  ``<dir>/class.pth`` (``learners/default.py`` save_model) for SMoPE (OnePrompt) and
  CODA-Prompt: ``feat.*`` (the ViT), ``last.*`` (the head), and ``prompt.*``: SMoPE's experts one
  key and one value per (layer, expert, head), ``prompt.e_pk_{layer}_{expert}_{head}`` and
  ``prompt.e_pv_...`` of shape [1, d_h] (``models/zoo.py`` OnePrompt); CODA's
  ``prompt.e_{p,k,a}_{layer}``. SMoPE's usage counts (``e_freq_*``) and old-key snapshot
  (``old_e_pk_*``) are plain attributes there, not in the state dict: a reloaded reference
  learner starts with zero counts, and so does a loaded file here.

`detect` names the method and layout of a file (its ``args`` first, then its keys); `read_args`
turns a checkpoint's ``args`` into the fields cljax checks against a model or config
(`check_args` refuses a mismatch in one line naming both values); `load` and `export` convert,
bit-exactly (transposes and reshapes only).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import jax
import numpy as np

from cljax.checkpoints import files, torch_names
from cljax.errors import CheckpointError

LAYOUTS = {
    'hide': "the MoE_PromptCL/HiDe-Prompt training checkpoint layout ({'model': state_dict, 'args', ...})",
    'smope': "the SMoPE repository's learner layout (flat state dict: feat.*, prompt.*, last.*)",
}
METHOD_LAYOUT = {'norga': 'hide', 'hideprompt': 'hide', 'l2p': 'hide', 'dualprompt': 'hide',
                 'sprompt': 'hide', 'task_identity': 'hide', 'sequential_head': 'hide',
                 'smope': 'smope', 'coda': 'smope'}
METHOD_NAMES = {'norga': 'NoRGa', 'hideprompt': 'HiDe-Prompt', 'l2p': 'L2P', 'dualprompt': 'DualPrompt',
                'sprompt': 'S-Prompt', 'task_identity': 'task-identity (stage 1) model of HiDe/NoRGa',
                'sequential_head': 'head-only model', 'smope': 'SMoPE', 'coda': 'CODA-Prompt'}
# args.config (MoE_PromptCL main.py: the config sub-command, e.g. cifar100_norgaprompt) -> method.
_CONFIG_METHODS = (('norgaprompt', 'norga'), ('hideprompt', 'hideprompt'), ('dualprompt', 'dualprompt'),
                   ('sprompt', 'sprompt'), ('l2p', 'l2p'))
_SMOPE_EXPERT = re.compile(r'^prompt\.e_p([kv])_(\d+)_(\d+)_(\d+)$')


# ----------------------------------------------------------------------------- what a file is

@dataclasses.dataclass
class Checkpoint:
  """A reference checkpoint read from disk: method, layout, flat state dict (reference names),
  its ``args`` as a dict (None without)."""
  path: str
  method: str
  layout: str
  state_dict: Dict[str, np.ndarray]
  args: Optional[Dict[str, Any]]

  def describe(self) -> str:
    return f'{METHOD_NAMES.get(self.method, self.method)} ({self.method}) in {LAYOUTS[self.layout]}'


def _args_of(raw: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
  a = raw.get('args')
  if isinstance(a, argparse.Namespace):
    return dict(vars(a))
  if isinstance(a, Mapping):
    return dict(a)
  return None


def method_from_args(args: Mapping[str, Any]) -> Optional[str]:
  """The method a MoE_PromptCL/HiDe ``args`` names (its ``config``), None if it names none."""
  name = str(args.get('config', ''))
  for part, method in _CONFIG_METHODS:
    if part in name:
      return method
  return None


def method_from_keys(sd: Mapping[str, np.ndarray]) -> str:
  """The method a state dict's keys imply (S-Prompt and HiDe-Prompt with a prompt key share a
  layout: reported as S-Prompt only with args saying so)."""
  keys = set(sd)
  if any(_SMOPE_EXPERT.match(k) for k in keys):
    return 'smope'
  if any(k.startswith('prompt.e_p_') for k in keys):
    return 'coda'
  if any(k.startswith('mlp.net.') for k in keys):
    return 'task_identity'
  if 'g_prompt' in keys:
    return 'dualprompt'
  if 'e_prompt.act_scale' in keys:
    return 'norga'
  if 'e_prompt.prompt' in keys:
    return 'l2p' if np.ndim(sd['e_prompt.prompt']) == 4 else 'hideprompt'
  return 'sequential_head'


def detect(raw: Mapping[str, Any], path: str = 'checkpoint') -> Checkpoint:
  """Method and layout of a read checkpoint (`files.read`): from its ``args`` where the keys
  leave a choice (stage-2 HiDe-family files), else from its keys."""
  sd = files.unwrap(raw)
  if sd and all(k.startswith('module.') for k in sd):   # saved from a DataParallel-wrapped model
    sd = {k[len('module.'):]: v for k, v in sd.items()}
  args = _args_of(raw)
  method = method_from_keys(sd)
  if args is not None and method in ('hideprompt', 'norga', 'l2p', 'dualprompt', 'sequential_head'):
    named = method_from_args(args)
    if args.get('train_inference_task_only', False) and method == 'sequential_head':
      method = 'task_identity'      # a stage-1 model without MLP (original_model_mlp_structure=[])
    elif named is not None and not args.get('train_inference_task_only', False):
      method = named
  return Checkpoint(path, method, METHOD_LAYOUT[method], sd, args)


def read(path: str) -> Checkpoint:
  return detect(files.read(path), path)


# ----------------------------------------------------------------------------- args

@dataclasses.dataclass(frozen=True)
class Field:
  arg: str          # the reference's args name
  config: str       # the cljax config key it sets (dotted, under config.)


# What cljax reads from a checkpoint's args, per stage: (args name, cljax config key).
PROMPT_FIELDS = (Field('gate_act', 'prompt.activation'), Field('e_prompt_layer_idx', 'prompt.layers'),
                 Field('length', 'prompt.length'), Field('size', 'prompt.pool_size'),
                 Field('nb_classes', 'num_classes'), Field('head_type', 'head_type'),
                 Field('top_k', 'prompt.top_k'), Field('g_prompt_layer_idx', 'prompt.g_layers'),
                 Field('g_prompt_length', 'prompt.g_length'))
TASK_IDENTITY_FIELDS = (Field('original_model_mlp_structure', 'task_identity.mlp_hidden'),
                        Field('nb_classes', 'num_classes'))


def _norm(value):
  if isinstance(value, (list, tuple)):
    return tuple(int(v) if isinstance(v, (int, np.integer)) else v for v in value)
  if isinstance(value, np.generic):
    return value.item()
  return value


def expected_args(config, method: str, num_classes: int, num_tasks: int) -> Dict[str, Any]:
  """What a reference run of ``config`` would have in its args, by args name (the fields of
  `PROMPT_FIELDS`/`TASK_IDENTITY_FIELDS` that apply to ``method``)."""
  p = config.prompt
  out: Dict[str, Any] = {'nb_classes': num_classes}
  if method == 'task_identity':
    out['original_model_mlp_structure'] = tuple(config.task_identity.mlp_hidden)
    return out
  if method in ('smope', 'coda', 'sequential_head'):
    return out
  out.update(e_prompt_layer_idx=tuple(p.layers), length=int(p.length),
             size=int(p.pool_size or num_tasks), head_type='token')
  if method == 'norga':
    out['gate_act'] = p.activation
  if method in ('l2p', 'dualprompt', 'sprompt'):
    out['top_k'] = int(p.top_k)
  if method == 'dualprompt':
    out.update(g_prompt_layer_idx=tuple(p.g_layers), g_prompt_length=int(p.g_length))
  return out


def check_args(ckpt: Checkpoint, expected: Mapping[str, Any], names: Mapping[str, str]) -> None:
  """Refuse a checkpoint whose args disagree with what the model or config says.

  ``expected``: args name -> value (`expected_args`); ``names``: args name -> how the user set
  it (``config.prompt.activation``, ``--activation``). Raises CheckpointError
  ``checkpoint says gate_act=tanh, config.prompt.activation=gelu``. Without args, nothing."""
  if ckpt.args is None:
    return
  for arg, want in expected.items():
    if arg not in ckpt.args or (arg == 'gate_act' and ckpt.args.get(arg) is None):
      continue
    if arg in ('g_prompt_layer_idx', 'g_prompt_length') and not ckpt.args.get('use_g_prompt', False):
      continue
    have = _norm(ckpt.args[arg])
    want = _norm(want)
    if isinstance(want, tuple) and not isinstance(have, tuple):
      have = (have,)
    if have != want:
      fmt = lambda v: ','.join(map(str, v)) if isinstance(v, tuple) else str(v)
      raise CheckpointError(f'{ckpt.path}: checkpoint says {arg}={fmt(have)}, '
                            f'{names.get(arg, arg)}={fmt(want)}')


def check_method(ckpt: Checkpoint, method: str, what: str) -> None:
  """Refuse a checkpoint of another method than ``method`` (named as the user set it)."""
  compatible = {('hideprompt', 'sprompt'), ('sprompt', 'hideprompt')} if ckpt.args is None else set()
  if ckpt.method != method and (ckpt.method, method) not in compatible:
    raise CheckpointError(f'{ckpt.path}: checkpoint says method={ckpt.method} '
                          f'({METHOD_NAMES.get(ckpt.method, ckpt.method)}), {what}={method}')


def reference_args(config, method: str, num_classes: int, num_tasks: int) -> argparse.Namespace:
  """The args an export carries: the fields cljax reads back (`expected_args`) plus the
  reference's name of the run (``config``) and its batch size."""
  names = {'norga': 'norgaprompt', 'hideprompt': 'hideprompt', 'l2p': 'l2p', 'dualprompt': 'dualprompt',
           'sprompt': 'sprompt', 'task_identity': 'norgaprompt' if config.method == 'norga' else 'hideprompt'}
  values = {k: list(v) if isinstance(v, tuple) else v
            for k, v in expected_args(config, method, num_classes, num_tasks).items()}
  values.update(config=f'{config.benchmark.name}_{names.get(method, method)}',
                batch_size=int(config.batch_size), seed=int(config.seed),
                num_tasks=int(num_tasks), train_inference_task_only=method == 'task_identity')
  if method == 'dualprompt':
    values['use_g_prompt'] = True
  if method in ('hideprompt', 'norga', 'sprompt', 'l2p', 'dualprompt'):
    values['prompt_key'] = bool(config.prompt.prompt_key) or method in ('l2p', 'dualprompt', 'sprompt')
    values['batchwise_prompt'] = bool(config.prompt.batchwise_prompt)
  return argparse.Namespace(**values)


# ----------------------------------------------------------------------------- names

def _smope_layers(keys) -> Tuple[int, ...]:
  return tuple(sorted({int(m.group(2)) for m in map(_SMOPE_EXPERT.match, keys) if m}))


def to_state_dict(method: str, params: Mapping[str, Any], layers: Sequence[int] = ()) -> Dict[str, np.ndarray]:
  """Grouped cljax params (backbone included) -> the reference's state dict of ``method``.

  ``layers``: the prompted layers (SMoPE's expert keys carry the layer number)."""
  if METHOD_LAYOUT[method] == 'hide':
    return torch_names.to_state_dict(params)
  out = {}
  for key, value in torch_names.to_state_dict({'backbone': params['backbone']}).items():
    out['feat.' + key] = value
  for key, value in torch_names.to_state_dict({'classifier': params['classifier']}).items():
    out[re.sub(r'^head\.', 'last.', key)] = value
  prompts = params['prompts']
  if method == 'coda':
    for name, value in prompts['prompt'].items():
      out[f'prompt.{name}'] = np.ascontiguousarray(np.asarray(value))
    return out
  for kind, leaf in (('k', 'keys'), ('v', 'values')):
    stacked = np.asarray(prompts['experts'][leaf])               # [L, E, H, d]
    for j, layer in enumerate(layers):
      for e in range(stacked.shape[1]):
        for h in range(stacked.shape[2]):
          out[f'prompt.e_p{kind}_{layer}_{e}_{h}'] = np.ascontiguousarray(stacked[j, e, h][None])
  return out


def from_state_dict(method: str, sd: Mapping[str, np.ndarray], template: Mapping[str, Any],
                    what: str = 'checkpoint', layers: Sequence[int] = ()) -> Dict[str, Any]:
  """The reference's state dict of ``method`` -> grouped cljax params shaped like ``template``
  (backbone included); strict: missing, unexpected and mis-shaped keys are a CheckpointError."""
  if METHOD_LAYOUT[method] == 'hide':
    return torch_names.from_state_dict(sd, template, what=what)
  flat, prompts = {}, {}
  for key, value in sd.items():
    if key.startswith('feat.'):
      flat[key[len('feat.'):]] = value
    elif key.startswith('last.'):
      flat['head.' + key[len('last.'):]] = value
    elif key.startswith('prompt.'):
      prompts[key] = value
    else:
      flat[key] = value
  rest = {k: v for k, v in template.items() if k != 'prompts'}
  params = torch_names.from_state_dict(flat, rest, what=what)
  if method == 'coda':
    want = {f'prompt.{n}': v for n, v in template['prompts']['prompt'].items()}
    torch_names.check_keys(prompts, {k: tuple(v.shape) for k, v in want.items()}, what)
    params['prompts'] = {'prompt': {k[len('prompt.'):]: np.asarray(prompts[k], np.float32) for k in want}}
    return params
  shape = tuple(template['prompts']['experts']['keys'].shape)     # [L, E, H, d]
  layers = tuple(layers) or _smope_layers(prompts)
  if len(layers) != shape[0]:
    raise CheckpointError(f'{what} has SMoPE experts in layers {",".join(map(str, layers)) or "none"}, '
                          f'the model has {shape[0]} prompted layers')
  want = {f'prompt.e_p{kind}_{layer}_{e}_{h}': (1, shape[3]) for kind in 'kv' for layer in layers
          for e in range(shape[1]) for h in range(shape[2])}
  torch_names.check_keys(prompts, want, what)
  experts = {}
  for kind, leaf in (('k', 'keys'), ('v', 'values')):
    stacked = np.zeros(shape, np.float32)
    for j, layer in enumerate(layers):
      for e in range(shape[1]):
        for h in range(shape[2]):
          stacked[j, e, h] = np.asarray(prompts[f'prompt.e_p{kind}_{layer}_{e}_{h}'])[0]
    experts[leaf] = stacked
  params['prompts'] = {'experts': experts}
  return params


# ----------------------------------------------------------------------------- files

def method_template(method_obj) -> Dict[str, Any]:
  """Shape-only grouped params of a `Method` with its backbone: what a checkpoint fills."""
  model = method_obj.model
  images = np.zeros((1, model.vit.image_size, model.vit.image_size, model.vit.in_channels), np.float32)
  backbone = jax.eval_shape(lambda k: model.backbone.init(k, images)['params'], jax.random.PRNGKey(0))
  return {'backbone': backbone, **jax.eval_shape(method_obj.init, jax.random.PRNGKey(0))}


def load(path: str, spec, method: Optional[str] = None, layers: Sequence[int] = ()) -> Dict[str, Any]:
  """Grouped cljax params (numpy float32, backbone included) from a reference checkpoint.

  ``spec``: a `PromptedViTSpec` (the HiDe layout's single model) or a template of grouped
  params (`method_template`); ``method`` picks the layout (default: detected from the file).
  Strict; raises CheckpointError naming the keys."""
  ckpt = read(path)
  if hasattr(spec, 'template'):
    check_args(ckpt, *_spec_args(spec, ckpt.method))
    template = spec.template()
  else:
    template = spec
  return from_state_dict(method or ckpt.method, ckpt.state_dict, template, what=path, layers=layers)


def _spec_args(spec, method: str):
  """(expected args, names) of a `PromptedViTSpec`: what a checkpoint's args must agree with."""
  expected, names = {'nb_classes': spec.num_classes}, {'nb_classes': 'model num_classes'}
  if method == 'task_identity':
    expected['original_model_mlp_structure'] = tuple(spec.mlp_hidden)
    names['original_model_mlp_structure'] = 'model mlp_hidden'
  elif spec.pool is not None:
    pool = spec.pool
    expected.update(e_prompt_layer_idx=tuple(pool.layers), length=pool.length, size=pool.pool_size)
    names.update(e_prompt_layer_idx='model prompt layers', length='model length', size='model pool size')
    if pool.gate == 'norga':
      expected['gate_act'], names['gate_act'] = pool.activation, 'model activation'
  return expected, names


def export(path: str, params: Dict[str, Any], method: str = 'norga', layers: Sequence[int] = (),
           args: Optional[argparse.Namespace] = None) -> Dict[str, np.ndarray]:
  """Write grouped cljax params (backbone included) as ``method``'s reference checkpoint:
  ``{'model': state_dict, 'args': dict}`` (HiDe layout; args if given) or the SMoPE learner's
  flat state dict. Returns the state dict."""
  state_dict = to_state_dict(method, params, layers)
  if METHOD_LAYOUT[method] == 'hide':
    # args as a plain dict (the references' own files pickle an argparse.Namespace): a dict of
    # numbers, strings and lists loads with torch.load(weights_only=True), torch's default since
    # 2.6; the reference code reads only checkpoint['model'].
    extra = {'args': dict(vars(args)) if isinstance(args, argparse.Namespace) else dict(args)} \
        if args is not None else {}
    files.write(path, state_dict, wrap_key='model', extra=extra)
  else:
    files.write(path, state_dict, wrap_key=None)
  return state_dict
