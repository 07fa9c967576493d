"""scripts/benchmark.py --quick runs and writes its table (structure only: timings are measured
by the script, never asserted in tests)."""

import json
import os

import pytest

pytest.importorskip('torch')

from cljax_testing.helpers import load_script  # pylint: disable=wrong-import-position


def test_quick_benchmark_writes_its_table(tmp_path, capsys):
  bench = load_script('benchmark')
  rows = bench.main(['--quick', '--oracle-processes', '--rounds', '1', '--out-dir', str(tmp_path), '--tag', '_test'])
  # Without a checkout of an original repository (as in CI) its rows are skipped, said once.
  assert capsys.readouterr().out.count('reference rows skipped: no --reference-repo given') == 1
  # The in-process rows, then the same steps with the oracle and cljax each in a fresh process.
  assert [(r['step'], r.get('fresh')) for r in rows] == [
      ('tii train', None), ('train', None), ('eval', None),
      ('tii train', 'oracle'), ('train', 'oracle'), ('eval', 'oracle')]
  for r in rows:
    assert r['method'] == 'norga' and r['model'] == 'vit_ti16'
    assert r['img_s'] > 0 and r['torch_img_s'] > 0 and r['flops'] > 0 and r['compile_s'] > 0
  # The workers timed the quick run's model at its 64x64 input, as the in-process rows: the same FLOPs.
  assert [r['flops'] for r in rows[3:]] == pytest.approx([r['flops'] for r in rows[:3]])
  for r in rows[3:]:
    assert len(r['torch_times']) == len(r['cljax_times']) == 2 and r['ratio'] == pytest.approx(
        r['torch_step_s'] / r['step_s'])
  name = next(n for n in os.listdir(tmp_path) if n.endswith('_test.md'))
  text = (tmp_path / name).read_text()
  header = next(l for l in text.splitlines() if l.startswith('| model'))
  assert header.split('|')[1:-1] == [' model ', ' method ', ' step ', ' cljax img/s ', ' PyTorch img/s ',
                                     ' ratio ', ' cljax compile s ', ' GFLOP/step ', ' MFU ']
  assert sum(l.startswith('| vit_ti16 | NoRGa |') for l in text.splitlines()) == 6
  assert sum(l.startswith('| vit_ti16 | NoRGa |') and '[oracle, fresh processes]' in l for l in text.splitlines()) == 3
  assert 'Rows marked `[oracle, fresh processes]`' in text
  saved = json.loads((tmp_path / name.replace('.md', '.json')).read_text())
  assert len(saved['rows']) == 6 and saved['batch'] == 8


def test_projection_counts_images_of_a_run():
  bench = load_script('benchmark')
  rates = {'task_identity': {'train': 100.0, 'ca_s': 0.0}, 'prompt': {'train': 10.0, 'forward': 50.0, 'ca_s': 0.0}}
  _, seconds, parts = bench.projection('norga', rates, 'imr')
  # Split ImageNet-R NoRGa (Sup-21K): stage 1 20 epochs, prompts 150 epochs over 24,000 images.
  assert parts['task_identity']['images_trained'] == pytest.approx(20 * 24000)
  assert parts['prompt']['images_trained'] == pytest.approx(150 * 24000)
  assert seconds > 150 * 24000 / 10.0


def test_xla_cpu_backends_quick_run_writes_its_table(tmp_path):
  script = load_script('xla_cpu_backends')
  out = script.main(['--quick', '--out-dir', str(tmp_path), '--tag', '_test'])
  assert set(out['times']) == {'default', 'eigen', 'xnnpack', 'onednn'}
  assert all(len(t) == 2 and min(t) > 0 for t in out['times'].values())   # 1 round x 2 repeats
  assert out['differences']['default'] == (0.0, 0.0)
  text = next(tmp_path.glob('xla_cpu_backends_*_test.md')).read_text()
  rows = [l for l in text.splitlines() if l.startswith('| ') and not l.startswith('| back end')]
  assert [r.split('|')[1].strip() for r in rows] == ['default', 'eigen', 'xnnpack', 'onednn']
  assert '--xla_cpu_use_onednn=true`' in rows[3]
  # Turning YNNPACK off compiles another program; the default row is its own reference.
  assert rows[0].split('|')[7].strip() == 'its own' and rows[1].split('|')[7].strip() == 'its own'
