"""Class-incremental splits: which classes each task owns, in the references' order.

HiDe family ([N]/[H], ALGORITHMS.md 7.1): labels keep their dataset ids; with shuffling, the
class list 0..C-1 is shuffled by Python's ``random`` seeded with the run's seed (its first
consumer), and task t owns ``order[t*k:(t+1)*k]``, k = ceil(C/T). The head covers all C classes.
5-Datasets: the five member datasets are shuffled the same way and task i's labels are offset
by 10*i.
"""

from __future__ import annotations

import dataclasses
import math
import random
from typing import List, Sequence, Tuple

import numpy as np

FIVE_DATASETS = ('svhn', 'mnist', 'cifar10', 'notmnist', 'fashion_mnist')


@dataclasses.dataclass(frozen=True)
class Split:
  """The classes of every task. ``tasks[t]`` lists the class ids (head indices) of task t."""
  tasks: Tuple[Tuple[int, ...], ...]
  num_classes: int

  @property
  def num_tasks(self) -> int:
    return len(self.tasks)

  @property
  def class_to_task(self) -> np.ndarray:
    out = np.full(self.num_classes, -1, np.int32)
    for t, classes in enumerate(self.tasks):
      out[list(classes)] = t
    return out

  def task_mask(self, t: int) -> np.ndarray:
    """bool [C]: the classes of task t (training masks every other logit)."""
    mask = np.zeros(self.num_classes, bool)
    mask[list(self.tasks[t])] = True
    return mask

  def seen_mask(self, t: int) -> np.ndarray:
    """bool [C]: the classes of tasks 0..t."""
    return np.any([self.task_mask(s) for s in range(t + 1)], axis=0)


def class_incremental(num_classes: int, num_tasks: int, seed: int, shuffle: bool = True) -> Split:
  labels = list(range(num_classes))
  if shuffle:
    random.Random(seed).shuffle(labels)   # == random.seed(seed); random.shuffle(labels)
  per_task = math.ceil(num_classes / num_tasks)
  tasks = tuple(tuple(labels[t * per_task:(t + 1) * per_task]) for t in range(num_tasks))
  return Split(tasks, num_classes)


def five_datasets_order(seed: int, shuffle: bool = True) -> List[str]:
  """The member order: the reference lists SVHN, MNIST, CIFAR10, NotMNIST, FashionMNIST and
  shuffles that list with Python's random (seed 42 -> notMNIST, MNIST, CIFAR10, FMNIST, SVHN)."""
  order = list(FIVE_DATASETS)
  if shuffle:
    random.Random(seed).shuffle(order)
  return order


def offset_split(class_counts: Sequence[int]) -> Split:
  """Tasks made of whole datasets, labels offset by the classes before them (5-Datasets)."""
  tasks, start = [], 0
  for n in class_counts:
    tasks.append(tuple(range(start, start + n)))
    start += n
  return Split(tuple(tasks), start)
