"""PNG plots of a run, written to <workdir>/plots after every task (matplotlib, no display).

* ``accuracy_matrix.png``: heatmap of acc[i, k] (rows: test task, columns: after training task k)
* ``accuracy_over_time.png``: each task's accuracy as later tasks are learned, and the average
* ``task_identity.png``: accuracy of the task (or prompt) chosen for each test image, per task
* ``expert_usage.png`` (SMoPE): how often each prompt expert was selected, per layer and head
* ``prompt_usage.png`` (L2P, DualPrompt, S-Prompt): the share of each task's test images that
  chose each pool entry
"""

from __future__ import annotations

import os

import numpy as np


def _pyplot():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def accuracy_matrix(acc: np.ndarray, t: int, path: str, title: str = '') -> None:
  plt = _pyplot()
  n = t + 1
  data = np.where(np.triu(np.ones((n, n), bool)), acc[:n, :n], np.nan)
  fig, ax = plt.subplots(figsize=(1.0 + 0.6 * n, 0.8 + 0.55 * n))
  im = ax.imshow(data, vmin=0, vmax=100, cmap='viridis')
  for i in range(n):
    for k in range(i, n):
      ax.text(k, i, f'{acc[i, k]:.1f}', ha='center', va='center', fontsize=7,
              color='white' if acc[i, k] < 60 else 'black')
  ax.set_xticks(range(n), [str(k + 1) for k in range(n)])
  ax.set_yticks(range(n), [str(i + 1) for i in range(n)])
  ax.set_xlabel('after training task')
  ax.set_ylabel('test task')
  ax.set_title(title or 'accuracy (%)')
  fig.colorbar(im, ax=ax, fraction=0.046)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def accuracy_over_time(acc: np.ndarray, t: int, path: str) -> None:
  plt = _pyplot()
  n = t + 1
  fig, ax = plt.subplots(figsize=(7, 3.6))
  for i in range(n):
    ax.plot(range(i + 1, n + 1), acc[i, i:n], marker='o', ms=3, lw=1, label=f'task {i + 1}')
  average = [acc[: k + 1, k].mean() for k in range(n)]
  ax.plot(range(1, n + 1), average, color='black', lw=2.5, label='average')
  ax.set_xlabel('after training task')
  ax.set_ylabel('accuracy (%)')
  ax.set_ylim(0, 100)
  ax.set_xticks(range(1, n + 1))
  ax.grid(alpha=0.3)
  # Outside the axes: inside, it hides the curves of low-accuracy runs.
  ax.legend(fontsize=6, ncol=1 + n // 12, loc='upper left', bbox_to_anchor=(1.01, 1.0))
  ax.set_title('accuracy of each task over time')
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def task_identity(tii, t: int, path: str, stage1=None) -> None:
  """tii [T, T] (None: the method chooses no prompt per example) and stage1 [2, T] (None: no
  task-identity model) as averages over the tasks seen after each task."""
  plt = _pyplot()
  n = t + 1
  fig, ax = plt.subplots(figsize=(6, 3.4))
  if stage1 is not None:
    ax.plot(range(1, n + 1), stage1[0, :n], marker='x', ls='--', label='task-identity model, before alignment')
    ax.plot(range(1, n + 1), stage1[1, :n], marker='s', ms=8, ls=':', label='task-identity model, after alignment')
  if tii is not None:   # drawn last and thin: in HiDe/NoRGa it equals the line above
    ax.plot(range(1, n + 1), [tii[: k + 1, k].mean() for k in range(n)], marker='o', ms=4, lw=1,
            color='black', label='prompt stage: task/prompt chosen at test')
  ax.set_title('task-identity accuracy (mean over the tasks seen so far)', fontsize=10)
  ax.set_xlabel('after training task')
  ax.set_ylabel('task-identity accuracy (%)')
  ax.set_ylim(0, 100)
  ax.set_xticks(range(1, n + 1))
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def expert_usage(freq: np.ndarray, layers, path: str) -> None:
  """freq [L, H, E] selection counts: one heatmap (heads x experts) per prompted layer."""
  plt = _pyplot()
  n = freq.shape[0]
  fig, axes = plt.subplots(1, n, figsize=(2.6 * n, 2.8), squeeze=False)
  top = max(int(freq.max()), 1)
  for j, ax in enumerate(axes[0]):
    im = ax.imshow(freq[j], aspect='auto', cmap='magma', vmin=0, vmax=top)
    ax.set_title(f'layer {layers[j]}', fontsize=8)
    ax.set_xlabel('expert', fontsize=7)
    # Integer ticks (0-based, as config.prompt.layers): imshow's default ticks are fractional.
    ax.set_xticks(range(0, freq.shape[2], max(1, freq.shape[2] // 8)))
    ax.set_yticks(range(freq.shape[1]))
    if j == 0:
      ax.set_ylabel('head', fontsize=7)
    else:
      ax.set_yticklabels([])
    ax.tick_params(labelsize=6)
  fig.colorbar(im, ax=axes[0].tolist(), fraction=0.02)
  fig.suptitle('SMoPE: times each expert was in the top-K (training images, all tasks so far)',
               fontsize=9, y=1.04)
  fig.savefig(path, dpi=110, bbox_inches='tight')
  plt.close(fig)


def prompt_usage(counts: np.ndarray, t: int, path: str, title: str = '') -> None:
  """counts [T, P]: test images of task i (rows 0..t) choosing pool entry p, as a heatmap of
  each row's shares (%), the count in each cell."""
  plt = _pyplot()
  counts = np.asarray(counts)[: t + 1]
  share = 100.0 * counts / np.maximum(counts.sum(1, keepdims=True), 1)
  n, pool = counts.shape
  fig, ax = plt.subplots(figsize=(1.6 + 0.42 * pool, 1.0 + 0.42 * n))
  im = ax.imshow(share, vmin=0, vmax=100, cmap='viridis', aspect='auto')
  for i in range(n):
    for e in range(pool):
      if counts[i, e]:
        ax.text(e, i, f'{int(counts[i, e])}', ha='center', va='center', fontsize=6,
                color='white' if share[i, e] < 60 else 'black')
  ax.set_xticks(range(pool), [str(e) for e in range(pool)], fontsize=6)
  ax.set_yticks(range(n), [str(i + 1) for i in range(n)], fontsize=6)
  ax.set_xlabel('pool entry')
  ax.set_ylabel('test task')
  used = int((counts.sum(0) > 0).sum())
  ax.set_title((title or 'pool entries chosen at test') + f'\n{used} of {pool} entries used', fontsize=8)
  fig.colorbar(im, ax=ax, fraction=0.046, label='% of the task\'s choices')
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write_all(workdir: str, state, t: int, expert_layers=None, chosen_task: bool = True) -> None:
  """Every plot of a run after task t. chosen_task: the method picks a task/prompt per test
  example (HiDe family, keyed pools); without it and without a task-identity model there is no
  task-identity plot."""
  out = os.path.join(workdir, 'plots')
  os.makedirs(out, exist_ok=True)
  acc = np.asarray(state['accuracy'])
  accuracy_matrix(acc, t, os.path.join(out, 'accuracy_matrix.png'))
  accuracy_over_time(acc, t, os.path.join(out, 'accuracy_over_time.png'))
  stage1 = np.asarray(state['stage1_task_identity_accuracy']) if 'task_identity' in state else None
  if chosen_task or stage1 is not None:
    tii = np.asarray(state['task_identity_accuracy']) if chosen_task else None
    task_identity(tii, t, os.path.join(out, 'task_identity.png'), stage1)
  method_state = state['prompt'].get('method_state', {})
  if expert_layers is not None and 'freq' in method_state:
    expert_usage(np.asarray(method_state['freq']), list(expert_layers), os.path.join(out, 'expert_usage.png'))
