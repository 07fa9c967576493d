"""The benchmarks' data: tfds splits assembled into class-incremental train/test sets.

`load(config)` returns a `Benchmark`: the task split (which classes each task owns, see
`cljax.continual.benchmark`) and train/test `Dataset`s whose labels are head indices. Data comes
from tfds builders in array_record format read through ``as_data_source`` (random access, no
TensorFlow needed to read):

| benchmark     | tfds builder(s)                                         | labels |
|---------------|---------------------------------------------------------|--------|
| cifar100      | cifar100                                                | fine labels 0..99 |
| imr           | imagenet_r (one 30k split) + the ImageNet-R train/test split (D3) | 200 wnids |
| cub           | caltech_birds2011 (official 5,994 / 5,794 split)        | 0..199 |
| five_datasets | svhn_cropped, mnist, cifar10, not_mnist_local, fashion_mnist | +10 per member |
| split_digits  | split_digits (offline)                                  | 0..9 |

A benchmark that is not prepared gives a DataError saying how to prepare it and where.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from cljax import config as config_lib
from cljax.continual import benchmark as split_lib
from cljax.errors import DataError

# Datasets whose tfds builder cljax ships (prepared automatically, no network).
OFFLINE_BUILDERS = ('split_digits', 'fashion_mnist_debian')
MATERIALISE_BYTES = 1 << 30   # read fixed-shape datasets below 1 GiB into memory at once


@dataclasses.dataclass
class Member:
  """One dataset split: images (array or lazy accessor), labels, transform family."""
  fetch: Callable[[int], np.ndarray]
  labels: np.ndarray
  family: str


class Dataset:
  """A concatenation of members; index i -> (uint8 HWC image, head label, transform family)."""

  def __init__(self, members: Sequence[Member], label_offsets: Sequence[int]):
    self.members = list(members)
    self.offsets = np.cumsum([0] + [len(m.labels) for m in members])
    self.labels = np.concatenate([m.labels + off for m, off in zip(members, label_offsets)]).astype(np.int64)

  def __len__(self):
    return len(self.labels)

  def locate(self, i: int) -> Tuple[Member, int]:
    k = int(np.searchsorted(self.offsets, i, side='right') - 1)
    return self.members[k], int(i - self.offsets[k])

  def image(self, i: int) -> np.ndarray:
    member, j = self.locate(i)
    return member.fetch(j)

  def family(self, i: int) -> str:
    return self.locate(i)[0].family

  def indices_of(self, classes) -> np.ndarray:
    return np.flatnonzero(np.isin(self.labels, np.asarray(list(classes))))


@dataclasses.dataclass
class Benchmark:
  split: split_lib.Split
  train: Dataset
  test: Dataset
  image_size: int
  description: str
  # What results.json records about the data beyond the description (the ImageNet-R split used).
  record: Dict = dataclasses.field(default_factory=dict)


# ----------------------------------------------------------------------------- tfds access

def _prepare_hint(name: str, data_dir: str) -> str:
  where = data_dir or '~/tensorflow_datasets'
  return (f'tfds dataset {name!r} is not prepared in array_record format under {where}: run '
          f'`python -m cljax.data.prepare {name} --data_dir={where}` once (it downloads through '
          f'tfds and needs `pip install -e .[prepare]`), or set config.benchmark.data_dir')


def tfds_split(name: str, split: str, data_dir: str = '', manual_dir: str = ''):
  """(random-access source, info) of a tfds split; offline builders are prepared on first use."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from cljax.data import builders  # pylint: disable=g-import-not-at-top,unused-import  (registers)
  check_format(name, data_dir)
  try:
    builder = tfds.builder(name, data_dir=data_dir or None, file_format='array_record')
  except Exception as e:  # unknown name etc.
    raise DataError(f'tfds has no builder {name!r}: {str(e).splitlines()[0]}') from e
  check_complete(builder, name, data_dir)
  image_feature = builder.info.features['image']
  decoders = None
  if isinstance(image_feature, tfds.features.Image):
    decoders = {'image': tfds.decode.SkipDecoding()}   # decode lazily, per batch
  try:
    return builder.as_data_source(split, decoders=decoders), builder.info
  except Exception as e:  # not prepared (or prepared as tfrecord, which needs TensorFlow to read)
    if not (name in OFFLINE_BUILDERS or manual_dir):
      raise DataError(f'{_prepare_hint(name, data_dir)} ({str(e).strip().splitlines()[0]})') from e
  kwargs = {}
  if manual_dir:
    if hasattr(builder, 'check_manual_dir'):
      builder.check_manual_dir(manual_dir)
    elif not os.path.isdir(manual_dir):
      raise DataError(f'{name}: folder {manual_dir} does not exist. '
                      f'{getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", "")}')
    kwargs['download_config'] = tfds.download.DownloadConfig(manual_dir=manual_dir)
  try:
    builder.download_and_prepare(file_format='array_record', **kwargs)
    source = builder.as_data_source(split, decoders=decoders)
  except DataError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise DataError(f'preparing tfds dataset {name!r} under {data_dir or "~/tensorflow_datasets"} '
                    f'failed: {first}') from e
  return source, builder.info


def check_format(name: str, data_dir: str) -> None:
  """Raise DataError if ``name`` is prepared under ``data_dir`` only in another file format than
  the array_record cljax reads (tfds's default, tfrecord, needs TensorFlow to read): the line
  says how to convert or re-prepare it."""
  import glob  # pylint: disable=g-import-not-at-top
  import json  # pylint: disable=g-import-not-at-top
  root = os.path.expanduser(data_dir or os.environ.get('TFDS_DATA_DIR', '~/tensorflow_datasets'))
  formats = {}
  for path in glob.glob(os.path.join(root, name, '**', 'dataset_info.json'), recursive=True):
    try:
      with open(path) as f:
        formats[os.path.dirname(path)] = json.load(f).get('fileFormat', 'tfrecord')
    except (OSError, ValueError):
      continue
  if formats and 'array_record' not in formats.values():
    folder, fmt = sorted(formats.items())[-1]
    raise DataError(
        f'tfds dataset {name!r} is prepared as {fmt} in {folder}, but cljax reads array_record: '
        f'convert it with `tfds convert_format --dataset_version_dir={folder} '
        f'--out_file_format=array_record` (needs pip install -e .[prepare]), or delete {folder} and '
        f'run `python -m cljax.data.prepare {name} --data_dir={data_dir or "~/tensorflow_datasets"}`')


def check_complete(builder, name: str, data_dir: str) -> None:
  """Raise DataError if ``builder``'s prepared folder lacks some of the files its
  dataset_info.json lists (an interrupted or partly deleted preparation)."""
  folder = str(builder.data_dir)
  if not os.path.isfile(os.path.join(folder, 'dataset_info.json')):
    return
  files = set(os.listdir(folder))
  expected = [os.path.basename(str(p)) for split_info in builder.info.splits.values()
              for p in getattr(split_info, 'filepaths', [])]
  lacking = [f for f in expected if f not in files]
  if lacking:
    raise DataError(
        f'tfds dataset {name!r} in {folder} is incomplete: {len(lacking)} of {len(expected)} '
        f'files are missing (e.g. {lacking[0]}); delete {folder} and run `python -m '
        f'cljax.data.prepare {name} --data_dir={data_dir or "~/tensorflow_datasets"}`')


def _decode(value) -> np.ndarray:
  if isinstance(value, (bytes, np.bytes_)):
    import io  # pylint: disable=g-import-not-at-top
    from PIL import Image  # pylint: disable=g-import-not-at-top
    with Image.open(io.BytesIO(value)) as img:
      img = img.convert('RGB') if img.mode not in ('L', 'RGB') else img
      return np.asarray(img)
  return np.asarray(value)


def member_from_tfds(name: str, split: str, family: str, data_dir: str = '', manual_dir: str = '',
                     indices: Optional[np.ndarray] = None, label_map: Optional[np.ndarray] = None) -> Member:
  source, info = tfds_split(name, split, data_dir, manual_dir)
  n = len(source)
  indices = np.arange(n) if indices is None else np.asarray(indices)
  shape = getattr(info.features['image'], 'shape', None)
  fixed = shape is not None and None not in shape
  if fixed and len(indices) * int(np.prod(shape)) <= MATERIALISE_BYTES:
    examples = [source[int(i)] for i in indices]
    images = np.stack([_decode(e['image']) for e in examples])
    labels = np.array([int(e['label']) for e in examples], np.int64)
    fetch = images.__getitem__
  else:
    labels = np.array([int(source[int(i)]['label']) for i in indices], np.int64)
    fetch = lambda j: _decode(source[int(indices[j])]['image'])
  if label_map is not None:
    labels = label_map[labels]
  return Member(fetch, labels, family)


# ----------------------------------------------------------------------------- ImageNet-R split

def imagenet_r_split(source, info, split_mode: str, seed: int, split_file: str = ''):
  """(train indices, test indices, label per example) for tfds's single ImageNet-R split.

  ``coda``: the CODA-Prompt/SMoPE lists (`cljax.data.imagenet_r_split`: shipped, or the YAML
  files in ``split_file``), their class numbering; ``random_80_20``: a split drawn with ``seed``
  (the run passes config.benchmark.imr_split_seed, not config.seed), labels = sorted wnid index.
  Raises DataError when a listed image is not in the tfds dataset."""
  del info
  from cljax.errors import one_of  # pylint: disable=g-import-not-at-top
  from cljax.data import imagenet_r_split as lists_lib  # pylint: disable=g-import-not-at-top
  def text(value):
    return value.decode('utf-8') if isinstance(value, bytes) else str(value)
  names = [text(source[i]['file_name']) for i in range(len(source))]
  wnids = sorted({n.split('/')[0] for n in names})
  if split_mode == 'random_80_20':
    # The HiDe family's split (a torch random_split) cannot be reproduced outside PyTorch's RNG;
    # this is a seeded 80/20 split of the same kind, labels = sorted wnid index (ImageFolder).
    labels = np.array([wnids.index(n.split('/')[0]) for n in names], np.int64)
    order = np.random.default_rng(seed).permutation(len(names))
    n_train = int(round(0.8 * len(names)))
    return np.sort(order[:n_train]), np.sort(order[n_train:]), labels
  if split_mode == 'coda':
    lists, where = lists_lib.load(split_file)
    position = {n: i for i, n in enumerate(names)}
    labels = np.full(len(names), -1, np.int64)
    out = []
    for s in lists_lib.SPLITS:
      idx = []
      for path, target in lists[s]:
        key = '/'.join(path.split('/')[-2:])
        if key not in position:
          raise DataError(f'the ImageNet-R {s} list ({where}) has {key}, which the prepared tfds '
                          f'imagenet_r ({len(names)} images) lacks: re-prepare it with `python -m '
                          f'cljax.data.prepare imr`')
        idx.append(position[key])
        labels[position[key]] = int(target)
      out.append(np.array(idx))
    return out[0], out[1], labels
  raise one_of('ImageNet-R split', split_mode, ('coda', 'random_80_20'))


def imagenet_r_split_record(b) -> dict:
  """What results.json records of the ImageNet-R split a run used (ALGORITHMS.md D3)."""
  if b.imr_split == 'random_80_20':
    return {'imr_split': 'random_80_20', 'seed': int(b.imr_split_seed)}
  return {'imr_split': 'coda', 'lists': b.imr_split_file or 'shipped with cljax'}


# ----------------------------------------------------------------------------- benchmarks

FIVE_DATASETS_TFDS = {
    'svhn': 'svhn_cropped', 'mnist': 'mnist', 'cifar10': 'cifar10',
    'notmnist': 'not_mnist_local', 'fashion_mnist': 'fashion_mnist',
}


def transform_family(c) -> str:
  """The benchmark's transforms: the HiDe family's, or [S]'s (SMoPE, CODA-Prompt)."""
  family = config_lib.BENCHMARKS[c.benchmark.name][2]
  if c.benchmark.transforms == 'smope' and family != 'demo':
    return 'smope_cifar' if family == 'cifar' else 'smope'
  return family


def load(c) -> Benchmark:
  """The benchmark of a validated config."""
  b = c.benchmark
  size = c.backbone.image_size
  num_classes = config_lib.num_classes(c)
  family = transform_family(c)
  data_dir = b.data_dir
  if b.name == 'five_datasets':
    order = split_lib.five_datasets_order(c.seed, b.shuffle_classes)
    train, test, counts = [], [], []
    carry = False
    for member in order:
      fam = 'cifar' if member == 'cifar10' else 'default'
      # Reference quirk 11.4: after CIFAR-10, the CIFAR transforms stay in force.
      if carry and b.five_datasets_transform_carry_over:
        fam = 'cifar'
      carry = carry or member == 'cifar10'
      name = FIVE_DATASETS_TFDS[member]
      manual = b.notmnist_dir if member == 'notmnist' else ''
      if member == 'notmnist' and not manual:
        raise DataError('five_datasets needs notMNIST, which tfds cannot download: unpack the ACL '
                        'notMNIST.zip (Train/A..J, Test/A..J) and set config.benchmark.notmnist_dir')
      train.append(member_from_tfds(name, 'train', fam, data_dir, manual))
      test.append(member_from_tfds(name, 'test', fam, data_dir, manual))
      counts.append(10)
    split = split_lib.offset_split(counts)
    offsets = [t[0] for t in split.tasks]
    return Benchmark(split, Dataset(train, offsets), Dataset(test, offsets), size,
                     f'5-Datasets ({", ".join(order)})')
  split = split_lib.class_incremental(num_classes, b.num_tasks, c.seed, b.shuffle_classes)
  if b.name == 'imr':
    source, info = tfds_split('imagenet_r', 'test', data_dir)
    tr, te, labels = imagenet_r_split(source, info, b.imr_split, b.imr_split_seed, b.imr_split_file)
    # Example-indexed label map: member_from_tfds maps tfds labels; here labels come per index.
    train = _indexed_member('imagenet_r', tr, labels, family, data_dir)
    test = _indexed_member('imagenet_r', te, labels, family, data_dir)
    desc = f'Split ImageNet-R ({b.imr_split} split)'
    return Benchmark(split, Dataset([train], [0]), Dataset([test], [0]), size, desc,
                     {'imagenet_r_split': imagenet_r_split_record(b)})
  else:
    name = {'cifar100': 'cifar100', 'cub': 'caltech_birds2011', 'split_digits': 'split_digits'}[b.name]
    train = member_from_tfds(name, 'train', family, data_dir)
    test = member_from_tfds(name, 'test', family, data_dir)
    desc = {'cifar100': 'Split CIFAR-100', 'cub': 'Split CUB-200', 'split_digits': 'Split-Digits'}[b.name]
  return Benchmark(split, Dataset([train], [0]), Dataset([test], [0]), size, desc)


def _indexed_member(name, indices, labels_by_example, family, data_dir) -> Member:
  source, _ = tfds_split(name, 'test', data_dir)
  return Member(lambda j: _decode(source[int(indices[j])]['image']),
                labels_by_example[indices], family)


def synthetic(c, examples_per_class: int = 2) -> Benchmark:
  """Random images with the benchmark's class split and shapes: for dry runs and tests."""
  num_classes = config_lib.num_classes(c)
  b = c.benchmark
  if b.name == 'five_datasets':
    split = split_lib.offset_split([10] * 5)
  else:
    split = split_lib.class_incremental(num_classes, b.num_tasks, c.seed, b.shuffle_classes)
  rng = np.random.default_rng(c.seed)
  labels = np.repeat(np.arange(num_classes), examples_per_class)
  side = 8 if b.name == 'split_digits' else 32
  images = rng.integers(0, 256, (len(labels), side, side, 3), dtype=np.uint8)
  member = Member(images.__getitem__, labels, transform_family(c))
  return Benchmark(split, Dataset([member], [0]), Dataset([member], [0]), c.backbone.image_size,
                   'synthetic')
