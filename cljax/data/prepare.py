"""Prepare a benchmark's tfds datasets once, in the array_record format cljax reads.

  python -m cljax.data.prepare cifar100|cub|imr|five_datasets|split_digits|<tfds name> \
      [--data_dir DIR] [--notmnist_dir DIR]

The paper benchmarks download through tfds (network needed once) and tfds encodes their images
with TensorFlow: install it with ``pip install -e .[prepare]``. The offline builders
(split_digits, fashion_mnist_debian, not_mnist_local) need neither.
"""

from __future__ import annotations

import argparse
import sys

from cljax.errors import CljaxError, DataError

BENCHMARK_BUILDERS = {
    'cifar100': ['cifar100'],
    'cub': ['caltech_birds2011'],
    'imr': ['imagenet_r'],
    'five_datasets': ['svhn_cropped', 'mnist', 'cifar10', 'fashion_mnist', 'not_mnist_local'],
    'split_digits': ['split_digits'],
}
OFFLINE = ('split_digits', 'fashion_mnist_debian', 'not_mnist_local')


def prepare(name: str, data_dir: str = '', notmnist_dir: str = '') -> None:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from cljax.data import builders  # pylint: disable=g-import-not-at-top,unused-import
  if name not in OFFLINE:
    try:
      import tensorflow  # pylint: disable=g-import-not-at-top,unused-import
    except ImportError as e:
      raise DataError(f'preparing {name} with tfds needs TensorFlow to encode its images: '
                      f'pip install -e .[prepare]') from e
  kwargs = {}
  if name == 'not_mnist_local':
    if not notmnist_dir:
      raise DataError('not_mnist_local needs --notmnist_dir: the folder holding notMNIST Train/ and Test/')
    kwargs['download_config'] = tfds.download.DownloadConfig(manual_dir=notmnist_dir)
  builder = tfds.builder(name, data_dir=data_dir or None, file_format='array_record')
  builder.download_and_prepare(file_format='array_record', **kwargs)
  print(f'{name}: prepared at {builder.data_dir}')


def main(argv=None):
  p = argparse.ArgumentParser(prog='python -m cljax.data.prepare', description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('name', help='a benchmark (cifar100, cub, imr, five_datasets, split_digits) or a tfds name')
  p.add_argument('--data_dir', default='')
  p.add_argument('--notmnist_dir', default='')
  args = p.parse_args(argv)
  try:
    for name in BENCHMARK_BUILDERS.get(args.name, [args.name]):
      prepare(name, args.data_dir, args.notmnist_dir)
  except CljaxError as e:
    sys.exit(f'error: {e}')


if __name__ == '__main__':
  main()
