"""What a run records and prints (issue 17, items 1, 6, 7): each method's metric definition with
the other beside it, only the figures a method has, the class order, the pool entries keyed
methods choose, and a dry run that fits the machine."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from cljax import config as config_lib
from cljax.continual import dry_run
from cljax.continual import metrics, task_checkpoints, trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Hand-computed: rows = test task, columns = after task.
ACC = np.array([[80.0, 90.0, 70.0],
                [0.0, 60.0, 65.0],
                [0.0, 0.0, 40.0]])


def test_forgetting_by_each_reference_by_hand():
  # HiDe ([N]/[H]): best over columns k <= t: row 0 max 90 -> 20, row 1 max 65 (= now) -> 0.
  assert metrics.forgetting(ACC, variant='hide') == pytest.approx(10.0)
  # SMoPE ([S] summarize_fr): best over k < t: row 0 -> 90 - 70 = 20, row 1 -> 60 - 65 = -5.
  assert metrics.forgetting(ACC, variant='smope') == pytest.approx(7.5)
  assert metrics.forgetting(ACC[:2, :2], variant='smope') == pytest.approx(-10.0)   # 80 - 90
  # FA and CA are one formula in both references: (70+65+40)/3, mean(80, 75, 58.33).
  for definition in ('hide', 'smope'):
    s = metrics.scores(ACC, definition)
    assert s['final_average_accuracy'] == pytest.approx(175 / 3)
    assert s['cumulative_average_accuracy'] == pytest.approx((80 + 75 + 175 / 3) / 3)
    assert (s['forgetting_hide'], s['forgetting_smope']) == (pytest.approx(10.0), pytest.approx(7.5))
    assert s['metric_definition'] == definition
  assert metrics.scores(ACC, 'smope')['forgetting'] == pytest.approx(7.5)


def _experiment(method, tmp_path):
  c = config_lib.demo(method)
  c.batch_size = c.eval_batch_size = 4
  return trainer.Experiment(c, str(tmp_path), load_data=False, verbose=False, load_backbone=False)


def _results(exp, acc):
  state = exp.initial_state()
  T = exp.num_tasks
  state['accuracy'][:] = acc
  state['step'] = np.array(task_checkpoints.stage_step(T - 1, 'prompt'), np.int32)
  return exp.results(state, 0.0)


# Task 1 is best at the end: HiDe's forgetting counts it 0, SMoPE's 90 - 95 = -5.
A5 = np.array([[90.0, 80.0, 85.0, 70.0, 95.0],
               [0.0, 70.0, 60.0, 65.0, 50.0],
               [0.0, 0.0, 80.0, 75.0, 70.0],
               [0.0, 0.0, 0.0, 60.0, 55.0],
               [0.0, 0.0, 0.0, 0.0, 88.0]])


@pytest.mark.parametrize('method,definition', [('smope', 'smope'), ('coda', 'smope'), ('norga', 'hide'),
                                                ('hideprompt', 'hide'), ('l2p', 'hide'),
                                                ('dualprompt', 'hide'), ('sprompt', 'hide'),
                                                ('sequential_head', 'hide')])
def test_each_method_reports_its_references_forgetting(method, definition, tmp_path):
  r = _results(_experiment(method, tmp_path), A5)
  assert r['metric_definition'] == definition
  assert r['forgetting'] == r[f'forgetting_{definition}'] == metrics.forgetting(A5, variant=definition)
  other = 'hide' if definition == 'smope' else 'smope'
  assert r[f'forgetting_{other}'] == metrics.forgetting(A5, variant=other)
  assert (r['forgetting_hide'], r['forgetting_smope']) == (8.75, 7.5)   # (0+20+10+5)/4, (-5+20+10+5)/4
  assert r['metric_definitions'] == metrics.DEFINITIONS[definition]


@pytest.mark.parametrize('method,present,absent', [
    ('sequential_head', (), ('task_identity_accuracy', 'task_identity_matrix', 'stage1_task_identity_accuracy',
                             'final_average_accuracy_before_alignment', 'accuracy_matrix_before_alignment',
                             'prompt_usage')),
    ('smope', ('final_average_accuracy_before_alignment',), ('task_identity_accuracy', 'stage1_task_identity_accuracy', 'prompt_usage')),
    ('l2p', ('task_identity_accuracy', 'prompt_usage'), ('final_average_accuracy_before_alignment', 'stage1_task_identity_accuracy')),
    ('norga', ('task_identity_accuracy', 'final_average_accuracy_before_alignment', 'stage1_task_identity_accuracy'),
     ('prompt_usage',)),
])
def test_results_carry_only_the_fields_a_method_has(method, present, absent, tmp_path):
  r = _results(_experiment(method, tmp_path), A5)
  assert all(k in r for k in present), [k for k in present if k not in r]
  assert not [k for k in absent if k in r]


def test_summary_line_has_only_the_figures_given():
  line = metrics.summary_line({'final_average_accuracy': 35.6, 'cumulative_average_accuracy': 55.6,
                               'forgetting': 27.4}, 'hide')
  assert line == 'final average accuracy 35.60 | cumulative 55.60 | forgetting 27.40 (hide definition)'
  line = metrics.summary_line({'average_accuracy': 1, 'cumulative_average_accuracy': 2, 'forgetting': -3,
                               'task_identity_accuracy': 4, 'average_accuracy_before_alignment': 5})
  assert line == 'average accuracy 1.00 | cumulative 2.00 | forgetting -3.00 | task identity 4.00 | before alignment 5.00'


def _main(tmp_path, method, *extra):
  return subprocess.run([sys.executable, '-m', 'cljax.main', f'--config=configs/demo.py:{method}',
                         f'--workdir={tmp_path}'] + list(extra), capture_output=True, text=True, cwd=ROOT,
                        timeout=900)


def test_head_only_run_prints_no_task_identity_and_records_the_class_order(tmp_path):
  out = _main(tmp_path, 'sequential_head', '--config.stop_after_task=2', '--config.prompt.epochs=1')
  assert out.returncode == 0, out.stderr[-3000:]
  final = out.stdout.strip().splitlines()[-1]
  assert final.startswith('final average accuracy ') and '(hide definition)' in final
  assert 'task identity' not in out.stdout and 'before alignment' not in out.stdout
  # seed 42: Python's random.shuffle of 0..9 (as the references), 2 classes per task.
  assert 'class order (classes of each task): task 1: 7 3 | task 2: 2 8 | task 3: 5 6 | task 4: 9 4 | task 5: 0 1' in out.stdout
  r = json.loads((tmp_path / 'results.json').read_text())
  assert r['class_order'] == [[7, 3], [2, 8], [5, 6], [9, 4], [0, 1]]
  evaluations = [json.loads(l) for l in (tmp_path / 'metrics.jsonl').read_text().splitlines()
                 if '"evaluation"' in l]
  assert evaluations and all('task_identity_accuracy' not in e and
                             'average_accuracy_before_alignment' not in e for e in evaluations)


def test_keyed_method_records_which_pool_entries_each_task_chose(tmp_path):
  out = _main(tmp_path, 'l2p', '--config.stop_after_task=2', '--config.prompt.epochs=1')
  assert out.returncode == 0, out.stderr[-3000:]
  r = json.loads((tmp_path / 'results.json').read_text())
  usage = np.array(r['prompt_usage']['counts'])
  assert usage.shape == (2, 10) and r['prompt_usage']['pool_size'] == 10
  # Every test image chooses top_k = 3 entries (the demo's L2P): rows sum to 3 x the task's images.
  images = [len(np.flatnonzero(np.isin(_digits_test_labels(), task))) for task in r['class_order'][:2]]
  assert usage.sum(1).tolist() == [3 * n for n in images]
  assert r['prompt_usage']['entries_used'] == int((usage.sum(0) > 0).sum())
  assert os.path.exists(tmp_path / 'plots' / 'prompt_usage.png')
  assert f'pool entries chosen by the test images: {r["prompt_usage"]["entries_used"]} of 10' in out.stdout


def _digits_test_labels():
  from cljax.data import offline
  return offline.digits(seed=0, test_fraction=0.3)['test'][1]


# ----------------------------------------------------------------------------- dry run (item 6)

def test_dry_run_estimates_the_real_batch_and_runs_small(monkeypatch, tmp_path):
  c = config_lib.demo('norga')
  c.dry_run = True
  c = config_lib.validate(c)
  monkeypatch.setattr(dry_run, 'device_memory', lambda: (10 ** 6, 'cpu'))    # a 1 MB device
  p = dry_run.plan(c, devices=1)
  assert (p['batch_size'], p['eval_batch_size'], p['real_batch_size']) == (2, 2, 32)
  assert p['fits'] is False and p['estimated_bytes_per_device'] > 10 ** 6
  assert dry_run.describe(p) == (
      f'dry run at batch 2; the real batch 32 would need about {p["estimated_bytes_per_device"] / 1e9:.1f} GB '
      f"per device (XLA's estimate for the prompt stage's training step); cpu has 0.0 GB: it would not fit; "
      f'lower config.batch_size or run on more devices')
  # An accelerator that holds the real batch runs it; a CPU never does (a dry run is a check).
  monkeypatch.setattr(dry_run, 'device_memory', lambda: (10 ** 12, 'gpu'))
  assert dry_run.plan(c, devices=1)['batch_size'] == 32
  monkeypatch.setattr(dry_run, 'device_memory', lambda: (10 ** 12, 'cpu'))
  assert dry_run.plan(c, devices=1)['batch_size'] == 2


def test_step_memory_grows_with_the_batch():
  c = config_lib.validate(config_lib.demo('norga'))
  small, large = dry_run.step_bytes(c, 2), dry_run.step_bytes(c, 64)
  assert large > small > 0


def test_dry_run_visits_every_task_and_evaluates_the_current_one(tmp_path):
  c = config_lib.demo('l2p')
  c.dry_run = True
  results = trainer.run(c, str(tmp_path))
  assert results['dry_run']['batch_size'] == 2 and results['tasks_completed'] == 5
  assert json.loads((tmp_path / 'results.json').read_text())['dry_run']['real_batch_size'] == 32
  evaluated = [json.loads(l)['task'] for l in (tmp_path / 'metrics.jsonl').read_text().splitlines()
               if '"evaluation"' in l]
  # Every task runs (methods keep host-side state per task, e.g. CODA's Gram-Schmidt).
  assert evaluated == [0, 1, 2, 3, 4]
  # Rerunning the same dry run reports it (its config.json holds the dry run's batch).
  again = trainer.run(c, str(tmp_path))
  assert again['tasks_completed'] == 5
