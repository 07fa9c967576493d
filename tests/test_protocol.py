"""The references' data protocol and metrics, checked on exact numbers."""

import random

import numpy as np
import pytest

from cljax import config as config_lib
from cljax.continual import benchmark as split_lib
from cljax.continual import metrics
from cljax.data import benchmarks

# ALGORITHMS.md 7.1: CIFAR-100 class order of the HiDe family with seed 42.
CIFAR100_SEED42 = [
    42, 41, 91, 9, 65, 50, 1, 70, 15, 78, 73, 10, 55, 56, 72, 45, 48, 92, 76, 37,
    30, 21, 32, 96, 80, 49, 83, 26, 87, 33, 8, 47, 59, 63, 74, 44, 98, 52, 85, 12,
    36, 23, 39, 40, 18, 66, 61, 60, 7, 34, 99, 46, 2, 51, 16, 38, 58, 68, 22, 62,
    24, 5, 6, 67, 82, 19, 79, 43, 90, 20, 0, 95, 57, 93, 53, 89, 25, 71, 84, 77,
    64, 29, 27, 88, 97, 4, 54, 75, 11, 69, 86, 13, 17, 28, 31, 35, 94, 3, 14, 81]


def test_cifar100_seed42_order_and_masks():
  split = split_lib.class_incremental(100, 10, seed=42)
  assert [c for task in split.tasks for c in task] == CIFAR100_SEED42
  assert split.tasks[0] == (42, 41, 91, 9, 65, 50, 1, 70, 15, 78)
  mask = split.task_mask(1)
  assert mask.sum() == 10 and mask[[73, 10, 55]].all() and not mask[42]
  assert split.seen_mask(1).sum() == 20
  assert split.class_to_task[81] == 9 and split.class_to_task[42] == 0


@pytest.mark.parametrize('num_classes,num_tasks', [(200, 10), (100, 10), (10, 5), (200, 20)])
def test_order_is_pythons_seeded_shuffle(num_classes, num_tasks):
  for seed in (40, 42, 44):
    random.seed(seed)
    labels = list(range(num_classes))
    random.shuffle(labels)
    split = split_lib.class_incremental(num_classes, num_tasks, seed)
    k = num_classes // num_tasks
    assert split.tasks == tuple(tuple(labels[t * k:(t + 1) * k]) for t in range(num_tasks))


def test_unshuffled_order():
  assert split_lib.class_incremental(10, 5, seed=1, shuffle=False).tasks == ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9))


def test_five_datasets_order_seed42_and_offsets():
  assert split_lib.five_datasets_order(42) == ['notmnist', 'mnist', 'cifar10', 'fashion_mnist', 'svhn']
  split = split_lib.offset_split([10] * 5)
  assert split.tasks[3] == tuple(range(30, 40)) and split.num_classes == 50


def test_five_datasets_transform_carry_over(monkeypatch):
  """Quirk 11.4: members after CIFAR-10 in the shuffled order keep the CIFAR transforms."""
  families = {}

  def fake_member(name, split, family, data_dir='', manual_dir=''):
    families[name] = family
    return benchmarks.Member(lambda j: np.zeros((28, 28, 1), np.uint8), np.zeros(3, np.int64), family)
  monkeypatch.setattr(benchmarks, 'member_from_tfds', fake_member)
  c = config_lib.paper('five_datasets', 'norga')
  c.benchmark.notmnist_dir = '/somewhere'
  data = benchmarks.load(c)
  assert families == {'not_mnist_local': 'default', 'mnist': 'default', 'cifar10': 'cifar',
                      'fashion_mnist': 'cifar', 'svhn_cropped': 'cifar'}
  assert data.train.labels.tolist() == [0, 0, 0, 10, 10, 10, 20, 20, 20, 30, 30, 30, 40, 40, 40]
  c.benchmark.five_datasets_transform_carry_over = False
  benchmarks.load(c)
  assert families['svhn_cropped'] == 'default' and families['fashion_mnist'] == 'default'


def test_split_digits_protocol(tmp_path):
  c = config_lib.demo()
  c.benchmark.data_dir = str(tmp_path)
  data = benchmarks.load(c)
  assert data.split.tasks == ((7, 3), (2, 8), (5, 6), (9, 4), (0, 1))
  assert len(data.train) == 1257 and len(data.test) == 540          # 70/30 of 1,797
  counts = np.bincount(data.test.labels)
  assert counts.min() >= 52 and counts.max() <= 55                   # stratified
  assert data.train.image(0).shape == (8, 8, 1)


def test_imagenet_r_random_split_sizes():
  class FakeSource(list):
    pass
  names = [f'n{c:08d}/img{i}.jpg' for c in range(200) for i in range(150)]
  source = FakeSource({'file_name': n.encode()} for n in names)
  train, test, labels = benchmarks.imagenet_r_split(source, None, 'random_80_20', seed=42)
  assert len(train) == 24000 and len(test) == 6000 and not set(train) & set(test)
  assert labels[0] == 0 and labels[-1] == 199
  again = benchmarks.imagenet_r_split(source, None, 'random_80_20', seed=42)
  assert np.array_equal(again[0], train)


def test_imagenet_r_coda_split_reads_a_given_folder(tmp_path):
  # The lists ship with cljax (tests/test_imagenet_r_split.py); a folder given in
  # config.benchmark.imr_split_file must hold both YAML files.
  from cljax.errors import DataError
  with pytest.raises(DataError, match='lacks imagenet-r_train.yaml'):
    benchmarks.imagenet_r_split([{'file_name': b'n1/a.jpg'}], None, 'coda', 0, str(tmp_path))


def test_unprepared_benchmark_message(tmp_path):
  from cljax.errors import DataError
  c = config_lib.paper('cifar100', 'norga')
  c.benchmark.data_dir = str(tmp_path)
  with pytest.raises(DataError, match=r"'cifar100' is not prepared .*python -m cljax.data.prepare cifar100"):
    benchmarks.load(c)


# ----------------------------------------------------------------------------- metrics

ACC = np.array([[90., 85., 80.],
                [0., 70., 60.],
                [0., 0., 75.]])


def test_metrics_hand_computed():
  assert metrics.average_accuracy(ACC, 0) == 90.0
  assert metrics.average_accuracy(ACC, 1) == 77.5
  assert metrics.final_average_accuracy(ACC) == pytest.approx((80 + 60 + 75) / 3)
  assert metrics.cumulative_average_accuracy(ACC) == pytest.approx((90 + 77.5 + 215 / 3) / 3)
  # FM after task 3 ([N]): max over the row minus the last column, averaged over tasks 1..2.
  assert metrics.forgetting(ACC) == pytest.approx(((90 - 80) + (70 - 60)) / 2)
  assert metrics.forgetting(ACC, 1) == pytest.approx(5.0)
  assert metrics.forgetting(ACC, 0) == 0.0


def test_forgetting_variants_differ_when_last_column_is_best():
  acc = np.array([[50., 60.], [0., 70.]])
  assert metrics.forgetting(acc, variant='hide') == 0.0     # max includes the last column
  assert metrics.forgetting(acc, variant='smope') == -10.0  # max over earlier columns only


def test_matrix_table():
  text = metrics.format_matrix(ACC, 1)
  assert 'task 2' in text and '77.5' not in text and '85.00' in text
