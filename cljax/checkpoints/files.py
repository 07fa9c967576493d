"""Reading and writing PyTorch-world checkpoint files as flat numpy state dicts.

* ``.safetensors`` and ``.npz`` load with numpy alone.
* ``.pth``/``.pt``/``.bin``/``.tar`` need torch (optional; only for these files) and are always
  unpickled with ``weights_only=True``. The references' training checkpoints also pickle their
  ``argparse.Namespace``; that one plain class is allow-listed, nothing else.
"""

from __future__ import annotations

import argparse
import os
from typing import Any, Dict, Mapping, Optional

import numpy as np

from cljax.errors import CheckpointError

TORCH_SUFFIXES = ('.pth', '.pt', '.bin', '.tar')
SUFFIXES = TORCH_SUFFIXES + ('.safetensors', '.npz')


def _torch():
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise CheckpointError('reading .pth/.bin files needs PyTorch (pip install torch); '
                          '.npz and .safetensors files load without it') from e
  return torch


def _to_numpy(obj):
  """Tensors -> numpy (bf16/fp16 -> float32), recursively through dicts and lists."""
  torch = _torch()
  if isinstance(obj, torch.Tensor):
    t = obj.detach().cpu()
    if t.dtype in (torch.bfloat16, torch.float16):
      t = t.float()
    return t.numpy()
  if isinstance(obj, Mapping):
    return {k: _to_numpy(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return type(obj)(_to_numpy(v) for v in obj)
  return obj


def read(path: str) -> Dict[str, Any]:
  """The file's content as a dict of numpy arrays (nested dicts kept)."""
  if not os.path.exists(path):
    raise CheckpointError(f'checkpoint file {path} does not exist')
  suffix = os.path.splitext(path)[1].lower()
  if suffix not in SUFFIXES:
    raise CheckpointError(f'cannot read {path}: expected one of {", ".join(SUFFIXES)}')
  try:
    if suffix == '.safetensors':
      from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
      return dict(load_file(path))
    if suffix == '.npz':
      with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}
    torch = _torch()
    with torch.serialization.safe_globals([argparse.Namespace]):
      obj = torch.load(path, map_location='cpu', weights_only=True)
  except CheckpointError:
    raise
  except Exception as e:  # corrupt, truncated or not a checkpoint at all
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise CheckpointError(f'cannot read checkpoint {path}: {first}') from e
  if not isinstance(obj, Mapping):
    raise CheckpointError(f'{path} holds a {type(obj).__name__}, not a state dict')
  return _to_numpy(obj)


# Where the references keep the weights inside a checkpoint dict, in the order they are tried:
# training checkpoints and DeiT-converted MoCo ('model'), iBOT-21K ('teacher'), iBOT-1K and raw
# MoCo v3 ('state_dict').
NESTING_KEYS = ('model', 'teacher', 'state_dict')


def unwrap(obj: Mapping[str, Any]) -> Dict[str, np.ndarray]:
  """The flat state dict inside a checkpoint dict."""
  for key in NESTING_KEYS:
    if key in obj and isinstance(obj[key], Mapping):
      return unwrap(obj[key])
  flat = {k: v for k, v in obj.items() if isinstance(v, np.ndarray)}
  if not flat:
    raise CheckpointError(f'found no weights in checkpoint (top-level keys: {", ".join(list(obj)[:8])})')
  return flat


def write(path: str, state_dict: Mapping[str, np.ndarray], wrap_key: str = 'model',
          extra: Optional[Mapping[str, Any]] = None) -> None:
  """Write a flat state dict: ``.pth`` as ``{wrap_key: state_dict, **extra}`` (the references'
  training checkpoint layout, e.g. extra={'args': Namespace}), ``.safetensors`` flat, ``.npz``
  flat (``extra`` is dropped there)."""
  suffix = os.path.splitext(path)[1].lower()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  if suffix in TORCH_SUFFIXES:
    torch = _torch()
    tensors = {k: torch.from_numpy(np.array(v, copy=True)) for k, v in state_dict.items()}
    torch.save({wrap_key: tensors, **dict(extra or {})} if wrap_key else tensors, path)
  elif suffix == '.safetensors':
    from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
    save_file({k: np.ascontiguousarray(v) for k, v in state_dict.items()}, path)
  elif suffix == '.npz':
    np.savez(path, **state_dict)
  else:
    raise CheckpointError(f'cannot write {path}: expected one of {", ".join(SUFFIXES)}')
