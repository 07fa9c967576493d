"""scripts/benchmark.py --reference-repo: the user errors and the skip line, without any
original repository (those rows are timed by hand; see benchmarks/reference_*.md)."""

import os
import subprocess
import sys

import pytest

from cljax_testing.helpers import load_script

SCRIPTS = os.path.join(os.path.dirname(__file__), '..', 'scripts')
reference_step = load_script('reference_step')


def run_benchmark(*argv):
  return subprocess.run([sys.executable, os.path.join(SCRIPTS, 'benchmark.py'), *argv],
                        capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.parametrize('kind', ['missing', 'not_a_repository'])
def test_a_path_that_is_not_a_repository_is_one_error_line(tmp_path, kind):
  path = tmp_path / 'nope'
  if kind == 'not_a_repository':
    path.mkdir()
    (path / 'main.py').write_text('')   # a marker file alone is not enough
  done = run_benchmark('--models', 'b', '--methods', 'norga', '--reference-repo', str(path),
                       '--out-dir', str(tmp_path))
  assert done.returncode == 2
  lines = done.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: --reference-repo ') and str(path) in lines[0]
  assert 'Traceback' not in done.stdout + done.stderr
  assert not list(tmp_path.glob('*.md'))


def test_recognise_names_the_methods_a_checkout_defines(tmp_path):
  for rel in ('main.py', 'engines/norga_prompt_engine.py'):
    (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / rel).write_text('')
  assert reference_step.recognise(str(tmp_path)) == ('MoE_PromptCL', ['norga'])
  hide = tmp_path / 'hide'
  for rel in ('main.py', 'engines/hide_promtp_wtp_and_tap_engine.py'):
    (hide / rel).parent.mkdir(parents=True, exist_ok=True)
    (hide / rel).write_text('')
  assert reference_step.recognise(str(hide)) == ('HiDe-Prompt', ['hideprompt'])
  with pytest.raises(reference_step.UserError):
    reference_step.recognise(str(tmp_path / 'engines'))


def test_a_plan_with_no_method_of_the_repository_is_one_error_line(tmp_path):
  (tmp_path / 'main.py').write_text('')
  (tmp_path / 'engines').mkdir()
  (tmp_path / 'engines' / 'norga_prompt_engine.py').write_text('')
  done = run_benchmark('--quick', '--reference-repo', str(tmp_path), '--out-dir', str(tmp_path))
  assert done.returncode == 2
  lines = done.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: --reference-repo: no method')
