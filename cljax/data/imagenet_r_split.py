"""The CODA-Prompt/SMoPE ImageNet-R split (ALGORITHMS.md D3), shipped with cljax.

The SMoPE repository's `dataloaders/splits/imagenet-r_{train,test}.yaml` (MIT licence) list
24,000 train and 6,000 test images as `data/imagenet-r/<wnid>/<file>` paths with a class index
each. cljax ships them compactly in ``assets/imagenet_r_split.txt.gz`` (the wnid of each class
index once, then ``<class index> <file>`` per entry, in the listed order;
`scripts/ship_imagenet_r_split.py` regenerates it), so ``imr_split=coda`` needs no user file;
``config.benchmark.imr_split_file`` may still point to a folder holding the two YAML files.

A split is ``{'train': [(path, target)], 'test': [(path, target)]}`` with the YAML's paths.
"""

from __future__ import annotations

import gzip
import os
from typing import Dict, List, Tuple

from cljax.errors import DataError

SHIPPED = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'assets', 'imagenet_r_split.txt.gz')
SPLITS = ('train', 'test')
PREFIX = 'data/imagenet-r'

Split = Dict[str, List[Tuple[str, int]]]


def read_yaml(folder: str) -> Split:
  """The two YAML lists in ``folder`` (imagenet-r_train.yaml, imagenet-r_test.yaml).

  Raises DataError naming the missing file or the malformed entry."""
  import yaml  # pylint: disable=g-import-not-at-top
  out = {}
  for split in SPLITS:
    path = os.path.join(folder, f'imagenet-r_{split}.yaml')
    if not os.path.isfile(path):
      raise DataError(f'config.benchmark.imr_split_file={folder} lacks imagenet-r_{split}.yaml '
                      f'(the CODA-Prompt/SMoPE split list); leave imr_split_file empty to use the '
                      f'split cljax ships')
    try:
      with open(path) as f:
        listed = yaml.safe_load(f)
      data, targets = listed['data'], listed['targets']
    except Exception as e:  # pylint: disable=broad-except
      raise DataError(f'{path} is not a split list (a YAML mapping with lists data and targets): '
                      f'{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}') from e
    if len(data) != len(targets):
      raise DataError(f'{path} lists {len(data)} paths but {len(targets)} targets')
    out[split] = [(str(p), int(t)) for p, t in zip(data, targets)]
  return out


def write_shipped(split: Split, path: str = SHIPPED) -> None:
  """The compact form of ``split``; every path must be ``data/imagenet-r/<wnid>/<file>`` with
  one wnid per class index."""
  wnids = {}
  for entries in split.values():
    for p, t in entries:
      prefix, wnid, _ = p.rsplit('/', 2)
      if prefix != PREFIX or wnids.setdefault(t, wnid) != wnid:
        raise ValueError(f'{p} (class {t}) does not fit the compact form')
  lines = ['wnids ' + ' '.join(wnids[t] for t in range(len(wnids)))]
  for name in SPLITS:
    lines.append(f'[{name}] {len(split[name])}')
    lines += [f'{t} {p.rsplit("/", 1)[1]}' for p, t in split[name]]
  with gzip.GzipFile(path, 'wb', mtime=0) as f:   # mtime 0: the same bytes on every rebuild
    f.write(('\n'.join(lines) + '\n').encode('utf-8'))


def read_shipped(path: str = SHIPPED) -> Split:
  """The shipped split, as `read_yaml` returns the YAML files."""
  with gzip.open(path, 'rt', encoding='utf-8') as f:
    lines = f.read().splitlines()
  wnids = lines[0].split()[1:]
  out, current = {}, None
  for line in lines[1:]:
    if line.startswith('['):
      current = out.setdefault(line[1:line.index(']')], [])
      continue
    t, name = line.split(' ', 1)
    current.append((f'{PREFIX}/{wnids[int(t)]}/{name}', int(t)))
  return out


def load(split_file: str = '') -> Tuple[Split, str]:
  """(split, where it came from): the YAML files in ``split_file`` if given, else the shipped
  lists."""
  if split_file:
    return read_yaml(split_file), split_file
  return read_shipped(), 'shipped with cljax (SMoPE dataloaders/splits, MIT licence)'
