"""What a run writes after each task: the log lines of the accuracy matrix and its summary, the
metrics.jsonl/TensorBoard record, the PNG plots, and results.json (only the figures the method
has, ALGORITHMS.md 6; FA, CA and FM by the definition of the method's reference repository).
``exp`` is the run's `cljax.continual.trainer.Experiment`.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
from typing import Any, Dict, Optional

import numpy as np

from cljax import config as config_lib
from cljax import parallel
from cljax.continual import metrics, plots


def write_results(exp, state, seconds):
  """results.json after every stage: what a user reads while a run goes on."""
  out = results(exp, state, seconds)
  if parallel.is_main():
    tmp = os.path.join(exp.workdir, 'results.json.tmp')
    with open(tmp, 'w') as f:
      json.dump(out, f, indent=2)
    os.replace(tmp, os.path.join(exp.workdir, 'results.json'))   # never a half-written file
  return out


def report(exp, state, t: int):
  """The matrix and one line of the figures the method has (no task identity for a method
  that chooses no prompt, no before-alignment figure for one that does not align)."""
  acc = state['accuracy']
  definition = exp.method.metric_definition
  summary = metrics.summary(acc, t, state['task_identity_accuracy'], definition)
  exp.log(metrics.format_matrix(acc, t, f'after task {t + 1}: accuracy (%), rows = test task, columns = after task'))
  entry = {'task': t, 'event': 'evaluation', **summary}
  if not exp.method.chooses_prompts:    # no per-example choice: its accuracy would mislead
    del entry['task_identity_accuracy']
  if exp.method.uses_statistics:
    entry['average_accuracy_before_alignment'] = metrics.average_accuracy(state['accuracy_before_alignment'], t)
  exp.log(f'after task {t + 1}: ' + metrics.summary_line(entry, definition))
  if 'accuracy_per_example' in state:
    entry['average_accuracy_per_example'] = metrics.summary(state['accuracy_per_example'], t)['average_accuracy']
    exp.log(f'after task {t + 1}: without the batchwise prompt vote (each image its own prompt): '
              f'average accuracy {entry["average_accuracy_per_example"]:.2f}')
  if 'prompt_usage' in state:
    used = state['prompt_usage'][t, : t + 1].sum(0)
    exp.log(f'after task {t + 1}: pool entries chosen by the test images: '
              f'{int((used > 0).sum())} of {used.size} ('
              + ', '.join(f'{e}: {100 * used[e] / used.sum():.0f}%' for e in np.flatnonzero(used)) + ')')
  exp.record(entry, 'eval', t + 1)


class BackgroundPlots:
  """Draws a run's plots in one background thread, in submission order: matplotlib takes
  0.6-1.3 s a task on a 2-core CPU (cProfile of the demo), which the next task's training now
  overlaps. One thread, so pyplot's global state is only ever touched by it."""

  def __init__(self):
    self._pool: Optional[concurrent.futures.ThreadPoolExecutor] = None
    self._pending = []

  def submit(self, fn, *args, **kwargs) -> None:
    if self._pool is None:
      self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix='cljax-plots')
    self._pending.append(self._pool.submit(fn, *args, **kwargs))

  def close(self) -> Optional[BaseException]:
    """Wait for every submitted plot; the first error raised in drawing one (None if none)."""
    error = None
    for future in self._pending:
      error = error or future.exception()
    self._pending = []
    if self._pool is not None:
      self._pool.shutdown(wait=True)
      self._pool = None
    return error


def plot(exp, state, t: int, last_task: int) -> None:
  """PNG plots after each evaluated task (a dry run: first and last only, they cost ~1 s), drawn
  by ``exp.plots`` (`BackgroundPlots`) from a copy of what they show: the run goes on mutating
  its state."""
  if not parallel.is_main() or (exp.config.dry_run and t not in (0, last_task - 1)):
    return
  # The run writes its matrices (top-level numpy arrays) in place; the rest it replaces.
  snapshot = {k: v.copy() if isinstance(v, np.ndarray) else v for k, v in state.items()}
  exp.plots.submit(plots.write_all, exp.workdir, snapshot, t, expert_layers=exp.config.prompt.layers,
                   chosen_task=exp.method.chooses_prompts)
  if 'prompt_usage' in state:
    exp.plots.submit(plots.prompt_usage, snapshot['prompt_usage'][t], t,
                     os.path.join(exp.workdir, 'plots', 'prompt_usage.png'),
                     f'{exp.config.method}: pool entries chosen by each task\'s test images, after task {t + 1}')


def results(exp, state, seconds: float) -> Dict[str, Any]:
  acc = np.asarray(state['accuracy'])
  done = int(state['step']) // 2
  k = max(done, 1)    # a run stopped early (stop_after_task) is scored on its completed tasks
  seen = lambda name: np.asarray(state[name])[:k, :k]
  definition = exp.method.metric_definition
  out = {
      'config': config_lib.to_json(exp.config),
      'benchmark': exp.data.description if exp.data else '',
      # FA, CA, FM by the definition of the method's reference; FM by every definition.
      **metrics.scores(seen('accuracy'), definition),
      'accuracy_matrix': acc.tolist(),
      'class_order': [list(map(int, classes)) for classes in exp.split.tasks] if exp.split else [],
      **(exp.data.record if exp.data else {}),
  }
  # Only the figures the method has (ALGORITHMS.md 6): a task/prompt chosen per test image, a
  # head aligned by Gaussian replay, a stage-1 task-identity model, a keyed pool.
  if exp.method.chooses_prompts:
    out['task_identity_accuracy'] = metrics.average_accuracy(seen('task_identity_accuracy'), k - 1)
    out['task_identity_matrix'] = np.asarray(state['task_identity_accuracy']).tolist()
  if exp.method.uses_statistics:
    out['final_average_accuracy_before_alignment'] = metrics.final_average_accuracy(seen('accuracy_before_alignment'))
    out['accuracy_matrix_before_alignment'] = np.asarray(state['accuracy_before_alignment']).tolist()
  if 'task_identity' in state:
    out['stage1_task_identity_accuracy'] = np.asarray(state['stage1_task_identity_accuracy']).tolist()
  if 'prompt_usage' in state:
    usage = np.asarray(state['prompt_usage'])[k - 1, :k]
    out['prompt_usage'] = {
        'what': f'test images of each task (rows, tasks 1..{k}) choosing each pool entry (columns), '
                f'after task {k}; top-{exp.config.prompt.top_k} choices, so a row sums to '
                f'top_k x images',
        'counts': usage.astype(int).tolist(),
        'entries_used': int((usage.sum(0) > 0).sum()), 'pool_size': int(usage.shape[1])}
  return {
      **out,
      'tasks_completed': done,
      'seconds_this_invocation': round(seconds, 1),
      'devices': int(exp.mesh.devices.size),
      'matmul_precision': exp.matmul_precision,
      **({} if 'accuracy_per_example' not in state else {
          # With a batchwise vote at test, the figures without it (ALGORITHMS.md D1).
          'final_average_accuracy_per_example': metrics.final_average_accuracy(seen('accuracy_per_example')),
          'cumulative_average_accuracy_per_example':
              metrics.cumulative_average_accuracy(seen('accuracy_per_example')),
          'forgetting_per_example': metrics.forgetting(seen('accuracy_per_example'), variant=definition),
          'accuracy_matrix_per_example': np.asarray(state['accuracy_per_example']).tolist()}),
  }
