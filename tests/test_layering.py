"""The house rules, read from the source with `ast`: imports go one way (models <- methods <-
continual <- entry points) with no circle, the runtime package never needs PyTorch, and no
module outgrows a sitting."""

import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, 'cljax')
# The one reader of PyTorch files (`.pth` backbones and checkpoints), which imports torch when
# asked for one.
TORCH_READER = 'cljax.checkpoints.files'
LONG_ALLOWED = {'cljax.theory.gating_simulation'}
MAX_LINES = 400
# What each layer may import from cljax (besides itself).
ALLOWED = {
    'cljax.models': {'cljax.errors'},
    'cljax.methods': {'cljax.models', 'cljax.optim', 'cljax.errors'},
}


def modules():
  """{module name: path} of every .py file under cljax/."""
  found = {}
  for folder, _, files in os.walk(PACKAGE):
    for name in files:
      if name.endswith('.py'):
        path = os.path.join(folder, name)
        parts = os.path.relpath(path, ROOT)[:-3].split(os.sep)
        found['.'.join(parts[:-1] if parts[-1] == '__init__' else parts)] = path
  return found


def imports(path, name, known):
  """The cljax modules that ``name`` imports anywhere in its file (function-level imports too)."""
  tree = ast.parse(open(path).read(), path)
  package = name if path.endswith('__init__.py') else name.rpartition('.')[0]
  out = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      targets = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ''
      if node.level:
        base = '.'.join(package.split('.')[:len(package.split('.')) - node.level + 1] + ([base] if base else []))
      targets = [f'{base}.{a.name}' if f'{base}.{a.name}' in known else base for a in node.names]
    else:
      continue
    out |= {t for t in targets if t == 'torch' or t.startswith('torch.') or t in known}
  return out


@pytest.fixture(scope='module')
def graph():
  known = modules()
  return {name: imports(path, name, known) for name, path in known.items()}, known


def test_no_import_circles(graph):
  edges, _ = graph
  edges = {k: {m for m in v if m in edges and m != k} for k, v in edges.items()}
  state, stack = {}, []

  def visit(node):
    state[node] = 'open'
    stack.append(node)
    for nxt in sorted(edges[node]):
      if state.get(nxt) == 'open':
        raise AssertionError('import circle: ' + ' -> '.join(stack[stack.index(nxt):] + [nxt]))
      if nxt not in state:
        visit(nxt)
    stack.pop()
    state[node] = 'done'

  for node in sorted(edges):
    if node not in state:
      visit(node)


@pytest.mark.parametrize('layer', sorted(ALLOWED))
def test_lower_layers_import_only_what_is_below_them(graph, layer):
  edges, _ = graph
  for name, targets in edges.items():
    if name == layer or name.startswith(layer + '.'):
      for t in targets - {'torch'}:
        inside = t == layer or t.startswith(layer + '.')
        below = any(t == a or t.startswith(a + '.') for a in ALLOWED[layer])
        assert inside or below, f'{name} imports {t}'


def test_methods_and_models_never_reach_into_the_trainer(graph):
  edges, _ = graph
  for name, targets in edges.items():
    if name.startswith(('cljax.methods', 'cljax.models')):
      assert not any(t.startswith('cljax.continual') for t in targets), (name, targets)


def test_only_the_pth_reader_imports_torch(graph):
  edges, _ = graph
  assert {name for name, targets in edges.items() if 'torch' in targets or any(
      t.startswith('torch.') for t in targets)} == {TORCH_READER}


def test_no_module_is_over_400_lines(graph):
  _, known = graph
  long = {name: n for name, path in known.items()
          if (n := sum(1 for _ in open(path))) > MAX_LINES and name not in LONG_ALLOWED}
  assert not long, long


def test_cljax_runs_without_torch(tmp_path):
  """`import cljax` and a (cut) demo run in a process where importing torch fails."""
  cut = ['--config=configs/demo.py', f'--workdir={tmp_path / "run"}', '--config.stop_after_task=1',
         '--config.backbone.depth=1', '--config.prompt.layers=(0,)', '--config.task_identity.epochs=1',
         '--config.prompt.epochs=1']
  script = ('import runpy, sys\n'
            'sys.modules["torch"] = None    # any `import torch` raises ImportError\n'
            'import cljax, cljax.api, cljax.convert, cljax.report\n'   # cljax.evaluate defines main's flags
            f'sys.argv = ["cljax.main"] + {cut!r}\n'
            'runpy.run_module("cljax.main", run_name="__main__")\n')
  out = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, cwd=ROOT,
                       timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert 'final average accuracy' in out.stdout
  assert os.path.exists(tmp_path / 'run' / 'results.json')
