"""Continual-learning metrics from the accuracy matrix, exactly as the references compute them.

``acc[i, t]`` = top-1 accuracy (%) on task i's test set after training task t (i <= t; the
rest is 0). ALGORITHMS.md section 6.
"""

from __future__ import annotations

from typing import Dict

import numpy as np

# The two references' metric code (ALGORITHMS.md 6). FA and CA are the same formulas in both;
# forgetting differs in whether column t is among the "best earlier" accuracies.
DEFINITIONS = {
    'hide': {
        'source': '[N]/[H] evaluate_till_now (HiDe-Prompt, NoRGa, L2P, DualPrompt, S-Prompt)',
        'final_average_accuracy': 'mean over tasks i of acc[i, T-1]',
        'cumulative_average_accuracy': 'mean over k of (mean over i <= k of acc[i, k])',
        'forgetting': 'mean over i < T-1 of (max over k <= T-1 of acc[i, k]) - acc[i, T-1]',
    },
    'smope': {
        'source': '[S] trainer.py summarize_acc/summarize_fr (SMoPE, CODA-Prompt)',
        'final_average_accuracy': 'mean over tasks i of acc[i, T-1]',
        'cumulative_average_accuracy': 'mean over k of (mean over i <= k of acc[i, k])',
        'forgetting': 'mean over i < T-1 of (max over k < T-1 of acc[i, k]) - acc[i, T-1] (can be negative)',
    },
}


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


def summary(acc: np.ndarray, t: int, task_id_acc: np.ndarray = None,
            definition: str = 'hide') -> Dict[str, float]:
  """FA/CA/FM (and task-identity accuracy) after task t, in percent; FM by ``definition``
  (`DEFINITIONS`: the reference whose numbers the method's paper reports)."""
  out = {'average_accuracy': average_accuracy(acc, t),
         'cumulative_average_accuracy': cumulative_average_accuracy(acc, t),
         'forgetting': forgetting(acc, t, definition)}
  if task_id_acc is not None:
    out['task_identity_accuracy'] = average_accuracy(task_id_acc, t)
  return out


def scores(acc: np.ndarray, definition: str) -> Dict[str, object]:
  """FA, CA and FM of a whole matrix (tasks 0..T-1) by the method's ``definition``, the
  definition's name and text, and FM by every definition (what results.json carries).

  Raises ValueError for an unknown definition."""
  if definition not in DEFINITIONS:
    raise ValueError(f'unknown metric definition {definition!r}; valid: {", ".join(DEFINITIONS)}')
  return {'final_average_accuracy': final_average_accuracy(acc),
          'cumulative_average_accuracy': cumulative_average_accuracy(acc),
          'forgetting': forgetting(acc, variant=definition),
          'metric_definition': definition,
          'metric_definitions': DEFINITIONS[definition],
          **{f'forgetting_{name}': forgetting(acc, variant=name) for name in DEFINITIONS}}


def summary_line(figures: Dict[str, float], definition: str = '') -> str:
  """One line of the figures a run has, for the log and the final printed line: ``figures`` is
  an evaluation entry (average_accuracy, ...) or results.json (final_average_accuracy, ...);
  task identity and the before-alignment accuracy appear only when present."""
  final = 'final_average_accuracy' in figures
  parts = [f'{"final " if final else ""}average accuracy '
           f'{figures["final_average_accuracy" if final else "average_accuracy"]:.2f}',
           f'cumulative {figures["cumulative_average_accuracy"]:.2f}',
           f'forgetting {figures["forgetting"]:.2f}' + (f' ({definition} definition)' if definition else '')]
  if 'task_identity_accuracy' in figures:
    parts.append(f'task identity {figures["task_identity_accuracy"]:.2f}')
  before = figures.get('final_average_accuracy_before_alignment', figures.get('average_accuracy_before_alignment'))
  if before is not None:
    parts.append(f'before alignment {before:.2f}')
  return ' | '.join(parts)


def format_matrix(acc: np.ndarray, t: int, title: str = 'accuracy (%)') -> str:
  """The accuracy matrix up to task t as a text table: rows = test task, columns = after task."""
  head = ' ' * 8 + ''.join(f'{f"T{k + 1}":>8}' for k in range(t + 1))
  rows = [f'{f"task {i + 1}":<8}' + ''.join(
      f'{acc[i, k]:8.2f}' if i <= k else ' ' * 8 for k in range(t + 1)) for i in range(t + 1)]
  return '\n'.join([title, head] + rows)
