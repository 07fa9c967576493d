"""The tfds loading code of every benchmark, on data made offline.

The paper benchmarks' builders (cifar100, caltech_birds2011, imagenet_r, svhn_cropped, mnist,
cifar10, fashion_mnist) are exercised through tfds's own mock of ``as_data_source`` with encoded
images, as tfds hands them to cljax; the builders cljax ships (not_mnist_local,
fashion_mnist_debian, split_digits) really prepare and read their files.
"""

import io
import zlib
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from cljax import config as config_lib
from cljax.data import benchmarks, offline, pipeline


def encoded(array, fmt='PNG'):
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, format=fmt)
  return buf.getvalue()


def fake_source(builder, split, decoders=None, **kwargs):
  """Examples as tfds returns them with SkipDecoding: encoded image bytes."""
  rng = np.random.default_rng(zlib.crc32(f'{builder.name}{split}'.encode()))
  name = builder.name
  if name == 'imagenet_r':
    wnids = [f'n{1000 + c:08d}' for c in range(200)]
    return [{'image': encoded(rng.integers(0, 255, (40 + i % 7, 50, 3), dtype=np.uint8), 'JPEG'),
             'label': 300 + i % 200, 'file_name': f'{wnids[i % 200]}/img_{i}.jpg'.encode()}
            for i in range(400)]
  if name == 'caltech_birds2011':
    return [{'image': encoded(rng.integers(0, 255, (30 + i % 5, 40, 3), dtype=np.uint8), 'JPEG'),
             'label': i % 200} for i in range(400)]
  classes = 100 if name == 'cifar100' else 10
  grey = name in ('mnist', 'fashion_mnist')
  shape = (28, 28, 1) if grey else (32, 32, 3)
  return [{'image': encoded(rng.integers(0, 255, shape, dtype=np.uint8).squeeze()), 'label': i % classes}
          for i in range(2 * classes)]


def paper_config(name, tmp_path):
  c = config_lib.paper(name, 'norga')
  c.benchmark.data_dir = str(tmp_path)
  return c


def test_cifar100_through_tfds(tmp_path):
  with tfds.testing.mock_data(as_data_source_fn=fake_source):
    data = benchmarks.load(paper_config('cifar100', tmp_path))
  assert len(data.train) == 200 and data.description == 'Split CIFAR-100'
  assert data.train.labels[:3].tolist() == [0, 1, 2]
  assert data.train.image(5).shape == (32, 32, 3) and data.train.family(0) == 'cifar'
  batch = next(pipeline.batches(data.train, data.train.indices_of(data.split.tasks[0]), 8, 224,
                                train=True, seed=(0,), shuffle=True))
  assert batch.images.shape == (8, 224, 224, 3) and batch.mask.sum() == 8
  assert set(batch.labels.tolist()) <= set(data.split.tasks[0])
  # Normalised with CIFAR-100 statistics: values leave [0, 1].
  assert batch.images.dtype == np.uint8 and (batch.norm == 1).all()
  assert pipeline.host_input(batch).images.min() < 0


def test_cub_variable_size_jpegs_decode_lazily(tmp_path):
  with tfds.testing.mock_data(as_data_source_fn=fake_source):
    data = benchmarks.load(paper_config('cub', tmp_path))
    image = data.train.image(3)
  assert image.ndim == 3 and image.shape[2] == 3 and image.shape[0] == 33
  assert data.split.num_tasks == 10 and len(data.split.tasks[0]) == 20


def test_imagenet_r_random_split_through_tfds(tmp_path):
  c = paper_config('imr', tmp_path)
  c.benchmark.imr_split = 'random_80_20'
  with tfds.testing.mock_data(as_data_source_fn=fake_source):
    data = benchmarks.load(c)
    assert len(data.train) == 320 and len(data.test) == 80
    assert data.train.labels.max() < 200 and data.train.image(0).shape[2] == 3
  assert 'random_80_20' in data.description


def test_imagenet_r_coda_split_lists(tmp_path):
  import yaml
  train = {'data': [f'data/imagenet-r/n{1000 + c:08d}/img_{c}.jpg' for c in range(150)],
           'targets': [(7 * c) % 200 for c in range(150)]}
  test = {'data': [f'data/imagenet-r/n{1000 + c:08d}/img_{c}.jpg' for c in range(150, 200)],
          'targets': [c for c in range(150, 200)]}
  for name, content in (('train', train), ('test', test)):
    with open(tmp_path / f'imagenet-r_{name}.yaml', 'w') as f:
      yaml.safe_dump(content, f)
  c = paper_config('imr', tmp_path)
  c.benchmark.imr_split_file = str(tmp_path)
  with tfds.testing.mock_data(as_data_source_fn=fake_source):
    data = benchmarks.load(c)
  assert len(data.train) == 150 and len(data.test) == 50
  assert data.train.labels.tolist() == train['targets']    # the lists' own class numbering


def test_five_datasets_through_tfds(tmp_path):
  root = make_notmnist(tmp_path / 'notmnist', per_letter=2)
  c = paper_config('five_datasets', tmp_path)
  c.benchmark.notmnist_dir = str(root)
  with tfds.testing.mock_data(as_data_source_fn=fake_source):
    data = benchmarks.load(c)
  # seed 42: notMNIST, MNIST, CIFAR-10, Fashion-MNIST, SVHN, labels offset by 10 per task.
  assert data.split.tasks[2] == tuple(range(20, 30))
  assert sorted(set(data.train.labels.tolist())) == list(range(50))
  assert data.train.image(0).shape[-1] in (1, 3)


def make_notmnist(root, per_letter=3):
  rng = np.random.default_rng(0)
  for split in ('Train', 'Test'):
    for letter in 'ABCDEFGHIJ':
      os.makedirs(root / split / letter, exist_ok=True)
      for i in range(per_letter):
        Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8)).save(root / split / letter / f'{i}.png')
      (root / split / letter / 'broken.png').write_bytes(b'not an image')
  return root


def test_notmnist_local_builder(tmp_path):
  root = make_notmnist(tmp_path / 'notMNIST')
  member = benchmarks.member_from_tfds('not_mnist_local', 'train', 'default', str(tmp_path / 'tfds'), str(root))
  assert len(member.labels) == 30 and sorted(set(member.labels.tolist())) == list(range(10))
  assert member.fetch(0).shape == (28, 28, 1)


def test_notmnist_missing_folder_is_explained(tmp_path):
  from cljax.errors import DataError
  with pytest.raises(DataError, match='does not exist.*Train/A..J'):
    benchmarks.member_from_tfds('not_mnist_local', 'train', 'default', str(tmp_path), str(tmp_path / 'nope'))


@pytest.mark.skipif(not os.path.exists(offline.FASHION_MNIST_DIR),
                    reason="Debian's dataset-fashion-mnist is not installed (CI installs it)")
def test_fashion_mnist_from_debian_files(tmp_path):
  data = offline.fashion_mnist()
  assert data['train'][0].shape == (60000, 28, 28, 1) and data['test'][0].shape == (10000, 28, 28, 1)
  assert np.bincount(data['test'][1]).tolist() == [1000] * 10       # the standard test set
  member = benchmarks.member_from_tfds('fashion_mnist_debian', 'test', 'default', str(tmp_path))
  assert len(member.labels) == 10000 and member.fetch(0).shape == (28, 28, 1)


def test_idx_reader_rejects_truncated(tmp_path):
  from cljax.errors import DataError
  import gzip
  path = tmp_path / 'x-idx3-ubyte.gz'
  with gzip.open(path, 'wb') as f:
    f.write(bytes([0, 0, 8, 3]) + (10).to_bytes(4, 'big') + (28).to_bytes(4, 'big') * 2 + b'\0' * 100)
  with pytest.raises(DataError, match='truncated'):
    offline.read_idx(str(path))


def test_pipeline_padding_and_determinism(tmp_path):
  c = config_lib.demo()
  c.benchmark.data_dir = str(tmp_path)
  data = benchmarks.load(c)
  idx = data.train.indices_of([7, 3])
  a = list(pipeline.batches(data.train, idx, 100, 28, train=False, seed=(1, 2), shuffle=True))
  b = list(pipeline.batches(data.train, idx, 100, 28, train=False, seed=(1, 2), shuffle=True))
  assert len(a) == 3 and a[-1].mask.sum() == len(idx) - 200 and not a[-1].mask[-1]
  assert all(np.array_equal(x.images, y.images) and np.array_equal(x.labels, y.labels) for x, y in zip(a, b))
  assert a[-1].images[~a[-1].mask].max() == 0
  c2 = list(pipeline.batches(data.train, idx, 100, 28, train=False, seed=(1, 3), shuffle=True))
  assert not np.array_equal(a[0].labels, c2[0].labels)
