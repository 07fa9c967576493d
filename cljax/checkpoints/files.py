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


# What each suffix promises, in words.
FORMATS = {'.npz': 'a NumPy .npz archive', '.safetensors': 'a safetensors file',
           **{s: 'a PyTorch checkpoint' for s in TORCH_SUFFIXES}}


def sniff(path: str) -> str:
  """What a file holds, judged by its first bytes: 'zip', 'pickle', 'safetensors', 'npy',
  'tar', 'gzip', 'hdf5', 'html', 'text', 'empty' or 'binary' (anything else)."""
  with open(path, 'rb') as f:
    head = f.read(1024)
    f.seek(0, os.SEEK_END)
    size = f.tell()
  if not head:
    return 'empty'
  if head.startswith(b'PK\x03\x04') or head.startswith(b'PK\x05\x06'):
    return 'zip'
  if head.startswith(b'\x93NUMPY'):
    return 'npy'
  if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
    return 'pickle'
  if head.startswith(b'\x1f\x8b'):
    return 'gzip'
  if head.startswith(b'\x89HDF'):
    return 'hdf5'
  if len(head) > 262 and head[257:262] == b'ustar':
    return 'tar'
  if len(head) >= 9 and head[8:9] == b'{' and 0 < int.from_bytes(head[:8], 'little') <= size - 8:
    return 'safetensors'
  text = head.lstrip()
  if text[:1] == b'<' and b'html' in text[:200].lower():
    return 'html'
  try:
    head.decode('utf-8')
    return 'text'
  except UnicodeDecodeError:
    return 'binary'


_WHAT_IT_IS = {
    'empty': 'it is empty', 'text': 'it is a text file', 'html': 'it is an HTML page (a download '
    'that returned a web page?)', 'binary': 'its bytes match no checkpoint format',
    'zip': 'it is a zip archive', 'pickle': 'it is a pickle stream', 'npy': 'it is a single .npy array',
    'gzip': 'it is gzip-compressed', 'hdf5': 'it is an HDF5 (Keras) file', 'tar': 'it is a tar archive',
    'safetensors': 'it is a safetensors file',
}


def _zip_kind(path: str) -> str:
  """'npz' (NumPy arrays), 'torch' (a PyTorch zip checkpoint) or 'zip' (neither)."""
  import zipfile  # pylint: disable=g-import-not-at-top
  try:
    with zipfile.ZipFile(path) as z:
      names = z.namelist()
  except (zipfile.BadZipFile, OSError):
    return 'damaged'
  if any(n.endswith('data.pkl') for n in names):
    return 'torch'
  if names and all(n.endswith('.npy') for n in names):
    return 'npz'
  return 'zip'


def check_format(path: str) -> None:
  """Raise CheckpointError unless the file's bytes are of the format its suffix names: the
  message says what the file is not, what it appears to be and what to do (never a library's
  advice to unpickle it)."""
  suffix = os.path.splitext(path)[1].lower()
  kind = sniff(path)
  expected = FORMATS[suffix]
  if kind == 'zip':
    zip_kind = _zip_kind(path)
    if zip_kind == 'damaged':
      raise CheckpointError(f'{path} is a damaged or truncated zip archive, not a readable '
                            f'{expected[2:]}; download it again')
    if (suffix == '.npz' and zip_kind == 'npz') or (suffix in TORCH_SUFFIXES and zip_kind == 'torch'):
      return
    kind = {'torch': 'torch-zip', 'npz': 'npz'}.get(zip_kind, 'zip')
  elif (suffix == '.safetensors' and kind == 'safetensors') or (
      suffix in TORCH_SUFFIXES and kind in ('pickle', 'tar')):
    return
  what = {'torch-zip': 'it is a PyTorch checkpoint (rename it to .pth)',
          'npz': 'it is a NumPy .npz archive (rename it to .npz)',
          'zip': 'it is a zip archive of other files', **_WHAT_IT_IS}[kind]
  if kind == 'safetensors':
    what += ' (rename it to .safetensors)'
  if kind == 'pickle' and suffix not in TORCH_SUFFIXES:
    what = 'it is a pickle stream (a legacy PyTorch checkpoint? rename it to .pth)'
  raise CheckpointError(f'{path} is not {expected}: {what}; download the checkpoint again or '
                        f'point to the right file')


def read(path: str) -> Dict[str, Any]:
  """The file's content as a dict of numpy arrays (nested dicts kept).

  Raises CheckpointError for a missing file, an unknown suffix, bytes that are not of the
  suffix's format (`check_format`) or a file its library cannot parse."""
  if not os.path.exists(path):
    raise CheckpointError(f'checkpoint file {path} does not exist')
  suffix = os.path.splitext(path)[1].lower()
  if suffix not in SUFFIXES:
    raise CheckpointError(f'cannot read {path}: expected one of {", ".join(SUFFIXES)}')
  if os.path.isdir(path):
    raise CheckpointError(f'{path} is a folder, not {FORMATS[suffix]}; point to the file itself')
  check_format(path)
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
  except Exception as e:  # right format, but corrupt or truncated
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    text = str(e).lower()
    unsafe_advice = any(w in text for w in ('weights only', 'weights_only', 'unpickl', 'allow_pickle'))
    if unsafe_advice:    # never pass on a library's advice to unpickle: that would run the file's code
      first = f'{type(e).__name__}: not a valid stream of tensors'
    if suffix in TORCH_SUFFIXES and 'unsupported global' in text:
      raise CheckpointError(f'cannot read {FORMATS[suffix]} {path}: it holds objects other than '
                            f'tensors, which cljax does not unpickle (they could run code); save its '
                            f'state_dict alone (torch.save(model.state_dict(), ...)) and pass that') from e
    raise CheckpointError(f'cannot read {FORMATS[suffix]} {path} ({first}); it may be truncated or '
                          f'damaged: download it again') from e
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
