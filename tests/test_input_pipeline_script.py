"""scripts/input_pipeline.py --quick: cljax's pipeline and torchvision's DataLoader on the same
synthesised JPEGs, a row per transform and worker count, and the 16-core projection."""

import importlib.util
import os
import subprocess
import sys

import pytest

pytest.importorskip('torch')
if importlib.util.find_spec('torchvision') is None:   # its import may fail: the script copes
  pytest.skip('torchvision is not installed', allow_module_level=True)

SCRIPT = os.path.join(os.path.dirname(__file__), '..', 'scripts', 'input_pipeline.py')


def test_quick_run_writes_the_table(tmp_path):
  out = tmp_path / 'table.md'
  subprocess.run([sys.executable, SCRIPT, '--quick', f'--out={out}'], check=True, timeout=300,
                 capture_output=True)
  text = out.read_text()
  rows = [line.split('|')[1:-1] for line in text.splitlines() if line.startswith('| train') or
          line.startswith('| test')]
  cells = {(r[0].strip(), r[1].strip()) for r in rows if len(r) == 9}
  assert cells == {(s, w) for s in ('train', 'test') for w in ('0', '1', '2')}, text
  assert sum(len(r) == 7 for r in rows) == 2, text       # the projection: train and test
  for r in rows:
    assert all(float(c.strip().rstrip('x')) > 0 for c in r[2:]), r
