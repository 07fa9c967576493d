"""Datasets that need no download: shipped with Debian or scikit-learn.

* Fashion-MNIST from Debian's ``dataset-fashion-mnist`` package: the standard 60k/10k idx files
  under ``/usr/share/datasets/fashion-mnist`` (Debian recompressed them, so tfds's own builder
  rejects their checksums; the decompressed content is the standard set).
* scikit-learn's bundled digits (1,797 8x8 images, 10 classes), split train/test by a seeded,
  stratified split: the Split-Digits demo benchmark.

Each loader returns ``{'train': (images uint8 [N,H,W,1], labels int64 [N]), 'test': ...}``.
"""

from __future__ import annotations

import gzip
import os
from typing import Dict, Tuple

import numpy as np

from cljax.errors import DataError

FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist'
FASHION_MNIST_CLASSES = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt',
                         'Sneaker', 'Bag', 'Ankle boot')

Split = Tuple[np.ndarray, np.ndarray]


def read_idx(path: str) -> np.ndarray:
  """An idx file (MNIST format), gzip'd or not."""
  opener = gzip.open if path.endswith('.gz') else open
  with opener(path, 'rb') as f:
    data = f.read()
  if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 8:
    raise DataError(f'{path} is not an idx file of unsigned bytes')
  ndim = data[3]
  shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], 'big') for i in range(ndim))
  array = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
  if array.size != int(np.prod(shape)):
    raise DataError(f'{path} is truncated: {array.size} values for shape {shape}')
  return array.reshape(shape)


def fashion_mnist(directory: str = FASHION_MNIST_DIR) -> Dict[str, Split]:
  names = {'train': 'train-{}-idx{}-ubyte.gz', 'test': 't10k-{}-idx{}-ubyte.gz'}
  out = {}
  for split, pattern in names.items():
    images = os.path.join(directory, pattern.format('images', 3))
    labels = os.path.join(directory, pattern.format('labels', 1))
    if not (os.path.exists(images) and os.path.exists(labels)):
      raise DataError(f'Fashion-MNIST not found at {directory}: install Debian\'s package '
                      f'(sudo apt-get install dataset-fashion-mnist) or pass the folder holding '
                      f'{os.path.basename(images)} and {os.path.basename(labels)}')
    out[split] = (read_idx(images)[..., None], read_idx(labels).astype(np.int64))
  return out


def check_notmnist_dir(root: str, letters: str = 'ABCDEFGHIJ') -> None:
  """Raise DataError naming what a notMNIST folder lacks: Train/ and Test/, each with one
  non-empty folder per letter A..J (the ACL notMNIST.zip layout)."""
  how = ('config.benchmark.notmnist_dir must hold Train/A..J and Test/A..J with the PNG images '
         'of the ACL notMNIST.zip')
  if not root or not os.path.isdir(root):
    raise DataError(f'notMNIST folder {root or "(none given)"} does not exist; {how}')
  missing, empty = [], []
  for split in ('Train', 'Test'):
    if not os.path.isdir(os.path.join(root, split)):
      missing.append(f'{split}/')
      continue
    for letter in letters:
      folder = os.path.join(root, split, letter)
      if not os.path.isdir(folder):
        missing.append(f'{split}/{letter}')
      elif not any(os.path.isfile(os.path.join(folder, n)) for n in os.listdir(folder)):
        empty.append(f'{split}/{letter}')
  if missing or empty:
    parts = ([f'lacks {", ".join(missing)}'] if missing else []) + (
        [f'has no images in {", ".join(empty)}'] if empty else [])
    raise DataError(f'notMNIST folder {root} {" and ".join(parts)}; {how}')


def digits(seed: int = 0, test_fraction: float = 0.3) -> Dict[str, Split]:
  """scikit-learn's digits as uint8 images (0..16 scaled to 0..255), stratified split."""
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  from sklearn.model_selection import train_test_split  # pylint: disable=g-import-not-at-top
  d = load_digits()
  images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
  labels = d.target.astype(np.int64)
  x_tr, x_te, y_tr, y_te = train_test_split(images, labels, test_size=test_fraction,
                                            random_state=seed, stratify=labels)
  return {'train': (x_tr, y_tr), 'test': (x_te, y_te)}
