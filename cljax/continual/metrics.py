"""Continual-learning metrics from the accuracy matrix, exactly as the references compute them.

``acc[i, t]`` = top-1 accuracy (%) on task i's test set after training task t (i <= t; the
rest is 0). ALGORITHMS.md section 6.
"""

from __future__ import annotations

from typing import Dict

import numpy as np


def average_accuracy(acc: np.ndarray, t: int) -> float:
  """Mean over tasks 0..t of acc[i, t] (unweighted over tasks)."""
  return float(np.mean(acc[: t + 1, t]))


def final_average_accuracy(acc: np.ndarray) -> float:
  """FA: the average accuracy after the last task."""
  return average_accuracy(acc, acc.shape[1] - 1)


def cumulative_average_accuracy(acc: np.ndarray, t: int = None) -> float:
  """CA: the mean over k <= t of the average accuracy after task k ([N]'s CAA)."""
  t = acc.shape[1] - 1 if t is None else t
  return float(np.mean([average_accuracy(acc, k) for k in range(t + 1)]))


def forgetting(acc: np.ndarray, t: int = None, variant: str = 'hide') -> float:
  """FM after task t: mean over i < t of (best earlier accuracy on i) - acc[i, t].

  ``hide`` ([N]/[H]): the best is the max over the whole row (columns > t are 0, so k <= t,
  t included). ``smope`` ([S]): the max over k < t only (so FM can be negative).
  """
  t = acc.shape[1] - 1 if t is None else t
  if t == 0:
    return 0.0
  if variant == 'hide':
    best = acc[:t].max(axis=1)
  elif variant == 'smope':
    best = acc[:t, :t].max(axis=1)
  else:
    raise ValueError(f'unknown forgetting variant {variant!r}')
  return float(np.mean(best - acc[:t, t]))


def summary(acc: np.ndarray, t: int, task_id_acc: np.ndarray = None) -> Dict[str, float]:
  """FA/CA/FM (and task-identity accuracy) after task t, in percent."""
  out = {'average_accuracy': average_accuracy(acc, t),
         'cumulative_average_accuracy': cumulative_average_accuracy(acc, t),
         'forgetting': forgetting(acc, t)}
  if task_id_acc is not None:
    out['task_identity_accuracy'] = average_accuracy(task_id_acc, t)
  return out


def format_matrix(acc: np.ndarray, t: int, title: str = 'accuracy (%)') -> str:
  """The accuracy matrix up to task t as a text table: rows = test task, columns = after task."""
  head = ' ' * 8 + ''.join(f'{f"T{k + 1}":>8}' for k in range(t + 1))
  rows = [f'{f"task {i + 1}":<8}' + ''.join(
      f'{acc[i, k]:8.2f}' if i <= k else ' ' * 8 for k in range(t + 1)) for i in range(t + 1)]
  return '\n'.join([title, head] + rows)
