"""The ImageNet-R split cljax ships (issue 17, item 8; ALGORITHMS.md D3): the CODA-Prompt/SMoPE
lists entry for entry, used by default, and the seeded 80/20 split with its own seed."""

import os

import numpy as np
import pytest

from cljax import config as config_lib
from cljax.data import benchmarks, imagenet_r_split

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(ROOT, '..', 'shared', 'data', 'imagenet_r_split')


@pytest.mark.skipif(not os.path.exists(os.path.join(SHARED, 'imagenet-r_test.yaml')),
                    reason='the SMoPE YAML lists (../shared/data/imagenet_r_split) are not here')
def test_shipped_split_equals_the_yaml_lists_entry_for_entry():
  shipped = imagenet_r_split.read_shipped()
  listed = imagenet_r_split.read_yaml(SHARED)
  for split in ('train', 'test'):
    assert shipped[split] == listed[split], split


def test_shipped_split_sizes_and_classes():
  shipped = imagenet_r_split.read_shipped()
  assert (len(shipped['train']), len(shipped['test'])) == (24000, 6000)
  assert shipped['test'][0] == ('data/imagenet-r/n01910747/tattoo_75.jpg', shipped['test'][0][1])
  targets = {t for s in shipped.values() for _, t in s}
  assert targets == set(range(200))
  assert not {p for p, _ in shipped['train']} & {p for p, _ in shipped['test']}
  assert os.path.getsize(imagenet_r_split.SHIPPED) < 200_000    # compact: the YAML files are 1.4 MB


class _Source(list):
  pass


def _tfds_like_source(shipped, seed=0):
  """tfds imagenet_r's single split: every image once, as `<wnid>/<file>` names, in its own order."""
  names = [p.split('/', 2)[2] for s in ('train', 'test') for p, _ in shipped[s]]
  order = np.random.default_rng(seed).permutation(len(names))
  return _Source({'file_name': names[i].encode()} for i in order)


def test_coda_split_needs_no_user_file():
  shipped = imagenet_r_split.read_shipped()
  source = _tfds_like_source(shipped)
  train, test, labels = benchmarks.imagenet_r_split(source, None, 'coda', 0, '')
  assert (len(train), len(test)) == (24000, 6000)
  names = [source[int(i)]['file_name'].decode() for i in test[:3]]
  assert names == [p.split('/', 2)[2] for p, _ in shipped['test'][:3]]
  assert labels[test].tolist() == [t for _, t in shipped['test']]   # the lists' class numbering


def test_coda_split_names_images_the_dataset_lacks():
  from cljax.errors import DataError
  with pytest.raises(DataError) as e:
    benchmarks.imagenet_r_split([{'file_name': b'n1/a.jpg'}], None, 'coda', seed=0)
  assert str(e.value) == (
      'the ImageNet-R train list (shipped with cljax (SMoPE dataloaders/splits, MIT licence)) has '
      'n02128757/sculpture_4.jpg, which the prepared tfds imagenet_r (1 images) lacks: re-prepare it '
      'with `python -m cljax.data.prepare imr`')


def test_random_split_has_its_own_seed_recorded():
  # The HiDe family makes one 80/20 split that every seed reuses: config.seed must not move it.
  c42, c40 = config_lib.paper('imr', 'norga'), config_lib.paper('imr', 'norga')
  c40.seed = 40
  for c in (c42, c40):
    c.benchmark.imr_split = 'random_80_20'
  import tensorflow_datasets as tfds

  def fake_imagenet_r(builder, split, decoders=None, **kwargs):
    del builder, split, decoders, kwargs
    return [{'image': b'', 'label': 0, 'file_name': f'n{1000 + i % 200:08d}/img_{i}.jpg'.encode()}
            for i in range(400)]
  with tfds.testing.mock_data(as_data_source_fn=fake_imagenet_r):
    a, b = benchmarks.load(c42), benchmarks.load(c40)
  assert np.array_equal(a.test.labels, b.test.labels) and len(a.test) == 80
  assert a.record == {'imagenet_r_split': {'imr_split': 'random_80_20', 'seed': 0}}
  c42.benchmark.imr_split_seed = 5
  with tfds.testing.mock_data(as_data_source_fn=fake_imagenet_r):
    moved = benchmarks.load(c42)
  assert moved.record['imagenet_r_split']['seed'] == 5
  assert not np.array_equal(moved.test.labels, a.test.labels)
