"""What a researcher reads: progress lines, TensorBoard events, plots, the multi-seed table and
the functional API, on tiny demo runs (1 block, 1 epoch, 2 tasks)."""

import io
import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

from cljax import report
from cljax.continual import plots
from cljax.continual.run_log import RunLog
from cljax_testing.helpers import load_script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEEDS = (42, 40, 44)
TINY = ['--config.backbone.depth=1', '--config.prompt.layers=(0,)', '--config.task_identity.epochs=1',
        '--config.task_identity.ca_epochs=1', '--config.prompt.epochs=1', '--config.prompt.ca_epochs=1',
        '--config.benchmark.num_tasks=2']


@pytest.fixture(scope='module')
def seeds_root(tmp_path_factory):
  """Three seeds of the NoRGa demo through `python -m cljax.seeds` (~40 s on 2 cores)."""
  root = str(tmp_path_factory.mktemp('seeds'))
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  cmd = [sys.executable, '-m', 'cljax.seeds', '--config=configs/demo.py', f'--workdir={root}',
         '--seeds=' + ','.join(map(str, SEEDS)), f'--config.benchmark.data_dir={data_dir}', *TINY]
  out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  return root, out.stdout


def read_scalars(logdir):
  """{tag: {step: value}} from the TFRecord event files (tensorboardX's protobuf)."""
  from tensorboardX.proto import event_pb2
  scalars = {}
  for name in sorted(os.listdir(logdir)):
    data = open(os.path.join(logdir, name), 'rb').read()
    pos = 0
    while pos < len(data):
      (length,) = struct.unpack('<Q', data[pos:pos + 8])
      event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
      pos += 12 + length + 4          # length, its crc, the record, its crc
      for v in event.summary.value:
        scalars.setdefault(v.tag, {})[event.step] = v.simple_value
  return scalars


def test_seeds_give_the_table_of_numpys_mean_and_std(seeds_root, capsys):
  root, stdout = seeds_root
  workdirs = [os.path.join(root, f'seed_{s}') for s in SEEDS]
  results = [json.load(open(os.path.join(d, 'results.json'))) for d in workdirs]
  assert [r['config']['seed'] for r in results] == list(SEEDS)
  cells = []
  for key in ('final_average_accuracy', 'cumulative_average_accuracy', 'forgetting'):
    v = np.array([r[key] for r in results])
    cells.append((v.mean(), v.std(ddof=1)))
  row = '| demo_fmnist | NoRGa | ' + ' | '.join(f'{m:.2f} ± {s:.2f}' for m, s in cells) + ' |'
  table = open(os.path.join(root, 'table.md')).read()
  assert table.splitlines()[:3] == [
      '| Backbone | Method | Split-Digits FA | Split-Digits CA | Split-Digits FM |',
      '|---|---|---|---|---|', row]
  assert row in stdout
  report.main([*workdirs, '--format', 'latex'])
  latex = capsys.readouterr().out.splitlines()
  assert latex[0] == '\\begin{tabular}{llccc}'
  assert latex[2] == 'Backbone & Method & Split-Digits FA & Split-Digits CA & Split-Digits FM \\\\'
  assert latex[4] == 'demo_fmnist & NoRGa & ' + ' & '.join(f'{m:.2f} $\\pm$ {s:.2f}' for m, s in cells) + ' \\\\'
  assert open(os.path.join(root, 'table.tex')).read().splitlines() == latex


def test_tensorboard_scalars_match_results(seeds_root):
  workdir = os.path.join(seeds_root[0], 'seed_42')
  r = json.load(open(os.path.join(workdir, 'results.json')))
  s = read_scalars(os.path.join(workdir, 'tensorboard'))
  close = lambda a, b: abs(a - b) <= 1e-4 * max(1.0, abs(b))    # float32 in the event file
  assert close(s['eval/average_accuracy'][2], r['final_average_accuracy'])
  assert close(s['eval/cumulative_average_accuracy'][2], r['cumulative_average_accuracy'])
  assert close(s['eval/forgetting'][2], r['forgetting'])
  assert close(s['eval/task_identity_accuracy'][2], r['task_identity_accuracy'])
  assert close(s['eval/average_accuracy_before_alignment'][2], r['final_average_accuracy_before_alignment'])
  stage1 = np.array(r['stage1_task_identity_accuracy'])
  for t in range(2):
    assert close(s['eval/task_identity_model/task_identity_accuracy_before_alignment'][t + 1], stage1[0, t])
    assert close(s['eval/task_identity_model/task_identity_accuracy_after_alignment'][t + 1], stage1[1, t])
  # Per-epoch training scalars at the global optimizer step, equal to the metrics.jsonl lines.
  epochs = [json.loads(l) for l in open(os.path.join(workdir, 'metrics.jsonl'))
            if '"phase"' in l and '"prompt"' in l]
  steps = sorted(s['train/prompt/loss'])
  assert len(steps) == len(epochs) == 2 and steps[0] < steps[1]
  for step, line in zip(steps, epochs):
    for key in ('loss', 'ce', 'regulariser', 'accuracy', 'lr', 'img_per_s'):
      assert close(s[f'train/prompt/{key}'][step], line[key]), key
  assert 'train/task_identity/loss' in s and list(s['align/prompt/loss']) == [1]


def test_plots_are_written(seeds_root):
  out = os.path.join(seeds_root[0], 'seed_42', 'plots')
  assert sorted(os.listdir(out)) == ['accuracy_matrix.png', 'accuracy_over_time.png', 'task_identity.png']
  for name in os.listdir(out):
    assert open(os.path.join(out, name), 'rb').read(8) == b'\x89PNG\r\n\x1a\n'


def test_expert_usage_and_no_empty_task_identity_plot(tmp_path):
  """SMoPE: expert usage per layer; no task-identity plot (no task chosen, no stage-1 model)."""
  acc = np.array([[90.0, 80.0], [0.0, 70.0]])
  freq = np.arange(2 * 4 * 8).reshape(2, 4, 8)
  state = {'accuracy': acc, 'task_identity_accuracy': np.zeros((2, 2)),
           'prompt': {'method_state': {'freq': freq}}}
  plots.write_all(str(tmp_path), state, 1, expert_layers=(0, 3), chosen_task=False)
  assert sorted(os.listdir(tmp_path / 'plots')) == ['accuracy_matrix.png', 'accuracy_over_time.png',
                                                    'expert_usage.png']


class _Stream(io.StringIO):
  def __init__(self, tty):
    super().__init__()
    self._tty = tty

  def isatty(self):
    return self._tty


def test_progress_is_live_on_a_tty_and_periodic_elsewhere(tmp_path):
  plain = _Stream(False)
  log = RunLog(str(tmp_path), stream=plain, every_seconds=3600)
  log.progress('[prompt] task 1/5 epoch 1/2', 1, 8, 0.0, {'loss': np.float32(0.5)})   # first: shown
  log.progress('[prompt] task 1/5 epoch 1/2', 2, 8, 0.0, {'loss': 0.4})                # within the hour
  log.progress('[prompt] task 1/5 epoch 1/2', 4, 8, 0.0, {'loss': 0.3}, force=True)
  lines = plain.getvalue().splitlines()
  assert len(lines) == 2 and lines[0].startswith('  [prompt] task 1/5 epoch 1/2 1/8 loss 0.5000')
  assert lines[1].startswith('  [prompt] task 1/5 epoch 1/2 4/8 loss 0.3000') and 'eta' in lines[1]
  tty = _Stream(True)
  log = RunLog(str(tmp_path), stream=tty)
  log.progress('[prompt]', 8, 8, 0.0, {'loss': 0.25}, images=256)
  log.print('epoch summary')
  text = tty.getvalue()
  assert '[' + '#' * 30 + '] 8/8 loss 0.2500' in text and 'img/s' in text
  assert text.endswith('\r\033[2Kepoch summary\n')     # the live line is replaced, not left behind


def test_functional_api_example_trains_and_swaps_the_gate(tmp_path):
  functional_api_example = load_script('functional_api_example')
  out = functional_api_example.main(epochs=2, data_dir=str(tmp_path), depth=3)
  assert out['losses'][1] < out['losses'][0]
  assert out['accuracy'] > 60 and out['accuracy_gelu'] > 60    # 2 classes: chance is 50%


def test_background_plots_draw_the_state_of_their_task_and_return_an_error(tmp_path, monkeypatch):
  """run_outputs.plot hands the plot thread a copy: the run mutating its state afterwards (the
  next task's column) changes no plot. An error in drawing is what close() returns."""
  import threading  # pylint: disable=g-import-not-at-top
  import types  # pylint: disable=g-import-not-at-top
  from cljax.continual import run_outputs  # pylint: disable=g-import-not-at-top
  drawn, go = [], threading.Event()

  def write_all(workdir, state, t, **kw):
    go.wait(10)
    drawn.append((t, state['accuracy'].copy(), kw['chosen_task']))
  monkeypatch.setattr(plots, 'write_all', write_all)
  ns = types.SimpleNamespace
  exp = ns(config=ns(dry_run=False, prompt=ns(layers=(0,)), method='norga'), workdir=str(tmp_path),
           method=ns(chooses_prompts=True), plots=run_outputs.BackgroundPlots())
  state = {'accuracy': np.zeros((2, 2)), 'task_identity_accuracy': np.zeros((2, 2)), 'prompt': {}}
  run_outputs.plot(exp, state, 0, 2)
  state['accuracy'][:, 1] = 50.0
  go.set()
  assert exp.plots.close() is None
  assert len(drawn) == 1 and drawn[0][0] == 0 and drawn[0][1].sum() == 0 and drawn[0][2]
  monkeypatch.setattr(plots, 'write_all', lambda *a, **k: 1 / 0)
  run_outputs.plot(exp, state, 1, 2)
  assert isinstance(exp.plots.close(), ZeroDivisionError)
  assert exp.plots.close() is None
