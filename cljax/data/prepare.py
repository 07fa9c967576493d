"""Prepare a benchmark's tfds datasets once, in the array_record format cljax reads.

  python -m cljax.data.prepare cifar100|cub|imr|five_datasets|split_digits|<tfds name> \
      [--data_dir DIR] [--notmnist_dir DIR]

The paper benchmarks download through tfds (network needed once) and tfds encodes their images
with TensorFlow (and CUB's masks with OpenCV): install them with ``pip install -e .[prepare]``.
Every module the builders need is checked before the first download. The offline builders
(split_digits, fashion_mnist_debian, not_mnist_local) need none of them. A user error is one
``error:`` line and exit status 2.
"""

from __future__ import annotations

import argparse
import sys

from cljax.errors import CljaxError, DataError, exit_with

BENCHMARK_BUILDERS = {
    'cifar100': ['cifar100'],
    'cub': ['caltech_birds2011'],
    'imr': ['imagenet_r'],
    'five_datasets': ['svhn_cropped', 'mnist', 'cifar10', 'fashion_mnist', 'not_mnist_local'],
    'split_digits': ['split_digits'],
}
OFFLINE = ('split_digits', 'fashion_mnist_debian', 'not_mnist_local')


# Import names of the modules tfds's builders load lazily -> the pip package that provides them.
PIP_NAMES = {'cv2': 'opencv-python-headless', 'PIL': 'pillow', 'skimage': 'scikit-image',
             'bs4': 'beautifulsoup4', 'tensorflow': 'tensorflow-cpu', 'apache_beam': 'apache-beam',
             'tensorflow_io': 'tensorflow-io', 'pycocotools': 'pycocotools', 'h5py': 'h5py',
             'scipy': 'scipy', 'pandas': 'pandas', 'pydub': 'pydub', 'lxml': 'lxml'}


# What pyproject.toml's `prepare` extra installs (import names).
PREPARE_EXTRA = ('tensorflow', 'cv2')


def builder_needs(name: str) -> list:
  """The modules ``name``'s tfds builder imports lazily while it prepares (tfds's
  ``lazy_imports.<module>`` in the builder's source, e.g. cv2 for caltech_birds2011), plus
  TensorFlow, which tfds needs to encode the images of every builder but cljax's offline ones."""
  import inspect  # pylint: disable=g-import-not-at-top
  import re  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from cljax.data import builders  # pylint: disable=g-import-not-at-top,unused-import
  from tensorflow_datasets.core import lazy_imports_lib  # pylint: disable=g-import-not-at-top
  try:
    cls = tfds.builder_cls(name)
  except Exception as e:  # pylint: disable=broad-except
    raise DataError(f'tfds has no builder {name!r}: {str(e).strip().splitlines()[0]}') from e
  importer = inspect.getsource(lazy_imports_lib)
  needs = [] if name in OFFLINE else ['tensorflow']
  for attr in re.findall(r'lazy_imports\.(\w+)', inspect.getsource(inspect.getmodule(cls))):
    if attr in ('lazy_imports',):
      continue
    found = re.search(rf'def {attr}\(cls\):\s*(?:#.*\s*)*return _try_import\("([\w.]+)"\)', importer)
    module = (found.group(1) if found else attr).split('.')[0]
    if module not in needs:
      needs.append(module)
  return needs


def check_needs(names) -> None:
  """Raise DataError listing every module the builders of ``names`` need and this environment
  lacks, with the pip command: before any download starts."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  missing = {}
  for name in names:
    for module in builder_needs(name):
      if importlib.util.find_spec(module) is None:
        missing.setdefault(module, []).append(name)
  if missing:
    what = ', '.join(f'{m} (for {", ".join(n)})' for m, n in missing.items())
    extra = [m for m in missing if m not in PREPARE_EXTRA]
    hint = ' and '.join((['pip install -e .[prepare]'] if len(extra) < len(missing) else []) +
                        ([f'pip install {" ".join(PIP_NAMES.get(m, m) for m in extra)}'] if extra else []))
    raise DataError(f'preparing {", ".join(names)} needs modules that are not installed: {what}; '
                    f'run {hint}; nothing was downloaded')


def prepare(name: str, data_dir: str = '', notmnist_dir: str = '') -> None:
  """Download (through tfds) and prepare one tfds dataset as array_record under ``data_dir``.

  Raises DataError for a missing manual folder or a failed preparation."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from cljax.data import benchmarks  # pylint: disable=g-import-not-at-top
  from cljax.data import builders  # pylint: disable=g-import-not-at-top,unused-import
  kwargs = {}
  if name == 'not_mnist_local':
    builders.NotMnistLocal.check_manual_dir(notmnist_dir)
    kwargs['download_config'] = tfds.download.DownloadConfig(manual_dir=notmnist_dir)
  benchmarks.check_format(name, data_dir)
  builder = tfds.builder(name, data_dir=data_dir or None, file_format='array_record')
  try:
    builder.download_and_prepare(file_format='array_record', **kwargs)
  except DataError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise DataError(f'preparing {name} failed: {first}') from e
  print(f'{name}: prepared at {builder.data_dir}')


def main(argv=None):
  p = argparse.ArgumentParser(prog='python -m cljax.data.prepare', description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('name', help='a benchmark (cifar100, cub, imr, five_datasets, split_digits) or a tfds name')
  p.add_argument('--data_dir', default='')
  p.add_argument('--notmnist_dir', default='')
  args = p.parse_args(argv)
  names = BENCHMARK_BUILDERS.get(args.name, [args.name])
  try:
    check_needs(names)     # everything every builder needs, before the first download
    if 'not_mnist_local' in names:
      from cljax.data import offline  # pylint: disable=g-import-not-at-top
      offline.check_notmnist_dir(args.notmnist_dir)
    for name in names:
      prepare(name, args.data_dir, args.notmnist_dir)
  except CljaxError as e:
    exit_with(e)


if __name__ == '__main__':
  main()
