"""One rule between cljax parameter paths and PyTorch state-dict keys.

cljax modules are named as the PyTorch modules they mirror, with '.' before a digit written '_'
(Flax names cannot nest lists): ``blocks_3/attn/qkv/kernel`` <-> ``blocks.3.attn.qkv.weight``,
``mlp/net_1_2/scale`` <-> ``mlp.net.1.2.weight``. Leaves:

* Dense ``kernel`` [in, out] <-> ``weight`` [out, in] (transpose)
* Conv ``kernel`` [h, w, in, out] <-> ``weight`` [out, in, h, w]
* LayerNorm ``scale`` <-> ``weight``; ``bias`` <-> ``bias``
* anything else (cls_token, pos_embed, prompt, act_scale, prompt_key) by name, unchanged.

A model's params are grouped (``{'backbone': ..., 'classifier': ..., 'prompts': ...}``); every
group lands in the same flat PyTorch namespace, as in the references' single nn.Module.
Transposes are exact, so a round trip is bit-exact.
"""

from __future__ import annotations

import re
from typing import Any, Dict, Iterable, Mapping, Tuple

import numpy as np
from flax import traverse_util

from cljax.errors import CheckpointError

_LEAF_TO_TORCH = {'kernel': 'weight', 'scale': 'weight'}


def torch_key(path: Tuple[str, ...]) -> str:
  """cljax parameter path (without the group) -> PyTorch key."""
  *modules, leaf = path
  modules = [re.sub(r'_(\d+)', r'.\1', m) for m in modules]
  return '.'.join(modules + [_LEAF_TO_TORCH.get(leaf, leaf)])


def to_torch_layout(leaf_name: str, value: np.ndarray) -> np.ndarray:
  if leaf_name == 'kernel' and value.ndim == 2:
    return value.T
  if leaf_name == 'kernel' and value.ndim == 4:
    return value.transpose(3, 2, 0, 1)
  return value


def from_torch_layout(leaf_name: str, value: np.ndarray) -> np.ndarray:
  if leaf_name == 'kernel' and value.ndim == 2:
    return value.T
  if leaf_name == 'kernel' and value.ndim == 4:
    return value.transpose(2, 3, 1, 0)
  return value


def _group_items(groups: Mapping[str, Any]):
  """(group, path-in-group, leaf) over every group's params."""
  for group, tree in groups.items():
    for path, leaf in traverse_util.flatten_dict(dict(tree)).items():
      yield group, path, leaf


def key_map(groups: Mapping[str, Any]) -> Dict[str, Tuple[str, Tuple[str, ...], tuple]]:
  """PyTorch key -> (group, path, PyTorch shape) for a (possibly abstract) grouped param tree."""
  out = {}
  for group, path, leaf in _group_items(groups):
    key = torch_key(path)
    if key in out:
      raise ValueError(f'two parameters map onto the PyTorch key {key!r}')
    shape = tuple(leaf.shape)
    if path[-1] == 'kernel' and len(shape) == 2:
      shape = shape[::-1]
    elif path[-1] == 'kernel' and len(shape) == 4:
      shape = (shape[3], shape[2], shape[0], shape[1])
    out[key] = (group, path, shape)
  return out


def to_state_dict(groups: Mapping[str, Any]) -> Dict[str, np.ndarray]:
  """Grouped cljax params -> flat PyTorch-layout numpy state dict (C-contiguous copies)."""
  out = {}
  for group, path, leaf in _group_items(groups):
    out[torch_key(path)] = np.ascontiguousarray(to_torch_layout(path[-1], np.asarray(leaf)))
  return out


def name_list(keys: Iterable[str], limit: int = 8) -> str:
  keys = sorted(keys)
  shown = ', '.join(keys[:limit])
  return shown + (f' and {len(keys) - limit} more' if len(keys) > limit else '')


def check_keys(state_dict: Mapping[str, np.ndarray], shapes: Mapping[str, tuple], what: str) -> None:
  """A state dict holds exactly the keys of ``shapes`` with those shapes; else a CheckpointError
  naming the missing, unexpected or mis-shaped keys."""
  missing = [k for k in shapes if k not in state_dict]
  unexpected = [k for k in state_dict if k not in shapes]
  if missing:
    raise CheckpointError(f'{what} lacks {len(missing)} key(s) the model needs: {name_list(missing)}')
  if unexpected:
    raise CheckpointError(f'{what} has {len(unexpected)} unexpected key(s): {name_list(unexpected)}')
  wrong = [f'{k} {tuple(np.shape(state_dict[k]))} (model: {shape})'
           for k, shape in shapes.items() if tuple(np.shape(state_dict[k])) != tuple(shape)]
  if wrong:
    raise CheckpointError(f'{what} has {len(wrong)} mis-shaped key(s): {name_list(wrong, 4)}')


def from_state_dict(state_dict: Mapping[str, np.ndarray], template: Mapping[str, Any],
                    what: str = 'checkpoint') -> Dict[str, Any]:
  """Flat PyTorch state dict -> grouped cljax params shaped like ``template``.

  Strict: a key the template lacks, a key the template needs, or a shape that differs is a
  CheckpointError naming the keys. Values become float32 numpy arrays (integer entries keep
  their dtype).
  """
  expected = key_map(template)
  check_keys(state_dict, {k: shape for k, (_, _, shape) in expected.items()}, what)
  flat = {}
  for key, (group, path, _) in expected.items():
    value = np.asarray(state_dict[key])
    if np.issubdtype(value.dtype, np.floating):
      value = value.astype(np.float32)
    flat[(group,) + path] = from_torch_layout(path[-1], value)
  return traverse_util.unflatten_dict(flat)
