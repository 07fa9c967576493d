"""End-to-end wall time of the demo: cljax's trainer against the same pipeline in PyTorch.

  python scripts/end_to_end.py                          # configs/demo.py, once each
  python scripts/end_to_end.py --repeats 3 --config.prompt.epochs=2   # overrides go to both

Runs, one after the other and each in a fresh process with a fresh workdir (under --root, or a
temporary folder), `python -m cljax.main --config=... --workdir=...` and
`python scripts/torch_pipeline.py --config=... --workdir=...` with the same config and overrides,
and times each from process start to exit (imports, data, backbone, compilation, checkpoints
and all). With --repeats N the two alternate N times and medians are reported, so a shared
machine's load falls on both alike; the load average before each run is recorded beside it.
Both run on the CPU (JAX_PLATFORMS=cpu) with each framework's default threads.

What the two wall times contain beyond the shared host work: cljax compiles its steps (XLA) and
writes Orbax checkpoints, plots and TensorBoard events after every stage; the PyTorch side runs
eager (nothing to compile) and writes only its results. Both import jax and build the trainer's
`Experiment` (the PyTorch side for the data, the backbone and the initial weights).

Writes benchmarks/end_to_end_<device>.md and .json (--out-dir).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import report_files  # pylint: disable=g-import-not-at-top,wrong-import-position

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIDES = ('cljax', 'torch')
NAMES = {'cljax': 'cljax (JAX/XLA, jit)', 'torch': 'PyTorch eager fp32'}
METRICS = (('final_average_accuracy', 'FA'), ('cumulative_average_accuracy', 'CA'),
           ('forgetting', 'FM'), ('task_identity_accuracy', 'TII'))


def parse(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--config', default='configs/demo.py', help='config file[:argument], for both sides')
  p.add_argument('--repeats', type=int, default=1, help='runs of each side (alternating); medians reported')
  p.add_argument('--root', default='', help='folder for the workdirs (default: a temporary one, removed)')
  p.add_argument('--out-dir', default=os.path.join(ROOT, 'benchmarks'))
  p.add_argument('--tag', default='', help='suffix of the output file names')
  p.add_argument('--timeout', type=float, default=3600, help='seconds allowed per run')
  args, extra = p.parse_known_args(argv)
  bad = [a for a in extra if not a.startswith('--config.')]
  if bad:
    p.error(f'unrecognized arguments: {" ".join(bad)} (only --config.<key>=<value> overrides pass through)')
  if args.repeats < 1:
    p.error('--repeats must be >= 1')
  args.overrides = extra
  return args


def command(side: str, config: str, workdir: str, overrides):
  entry = ['-m', 'cljax.main'] if side == 'cljax' else [os.path.join(ROOT, 'scripts', 'torch_pipeline.py')]
  return [sys.executable, *entry, f'--config={config}', f'--workdir={workdir}', *overrides]


TRAIN_PHASE = {'task_identity': 'stage1_train', 'prompt': 'stage2_train'}


def cljax_seconds(workdir: str):
  """(seconds per stage, seconds per phase) of a trainer run, from the timestamps of its
  metrics.jsonl: a stage starts `seconds` before its stage_done line; its training ends at its
  task's last epoch line (the first task's includes compiling the step); the rest of the stage
  is statistics, evaluation, alignment and the checkpoint."""
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    entries = [json.loads(line) for line in f]
  stages = {}
  phases = {'stage1_train': 0.0, 'stage2_train': 0.0, 'statistics_evaluation_alignment_checkpoint': 0.0}
  for done in (e for e in entries if e.get('event') == 'stage_done'):
    start = done['time'] - done['seconds']
    epochs = [e['time'] for e in entries if 'phase' in e and e.get('stage') == done['stage']
              and e.get('task') == done['task']]
    train = max(epochs) - start if epochs else 0.0
    stages[done['stage']] = stages.get(done['stage'], 0.0) + done['seconds']
    phases[TRAIN_PHASE[done['stage']]] += train
    phases['statistics_evaluation_alignment_checkpoint'] += done['seconds'] - train
  return ({k: round(v, 2) for k, v in stages.items()}, {k: round(v, 2) for k, v in phases.items()})


def busy_cpu_seconds() -> float:
  """CPU seconds every process of the machine has used since boot (/proc/stat; 0 elsewhere)."""
  try:
    with open('/proc/stat') as f:
      fields = [int(x) for x in f.readline().split()[1:]]
  except OSError:
    return 0.0
  idle = fields[3] + (fields[4] if len(fields) > 4 else 0)    # idle + iowait
  return (sum(fields[:8]) - idle) / os.sysconf('SC_CLK_TCK')


def children_cpu_seconds() -> float:
  usage = resource.getrusage(resource.RUSAGE_CHILDREN)
  return usage.ru_utime + usage.ru_stime


def run_once(side: str, args, workdir: str):
  """Run one side in a fresh process; returns its timing and results."""
  cmd = command(side, args.config, workdir, args.overrides)
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             PYTHONPATH=os.pathsep.join([ROOT] + [p for p in [os.environ.get('PYTHONPATH')] if p]))
  os.makedirs(os.path.dirname(workdir), exist_ok=True)
  log_path = workdir + '.log'
  print(f'[{side}] {" ".join(cmd)}', flush=True)
  busy, own = busy_cpu_seconds(), children_cpu_seconds()
  start = time.perf_counter()
  with open(log_path, 'w') as log:
    try:
      proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            timeout=args.timeout, check=False)
    except subprocess.TimeoutExpired as e:
      raise SystemExit(f'error: the {side} run took over {args.timeout:.0f} s (--timeout); log: {log_path}') from e
  wall = time.perf_counter() - start
  own = children_cpu_seconds() - own
  # The cores other processes kept busy meanwhile (a shared machine slows either side).
  others = max(0.0, (busy_cpu_seconds() - busy - own) / wall) if busy else float('nan')
  with open(log_path) as f:
    tail = f.read().splitlines()[-12:]
  if proc.returncode:
    print('\n'.join(tail), file=sys.stderr)
    raise SystemExit(f'error: the {side} run failed (exit status {proc.returncode}); log: {log_path}')
  name = 'results.json' if side == 'cljax' else 'torch_results.json'
  with open(os.path.join(workdir, name)) as f:
    results = json.load(f)
  row = {'wall_s': round(wall, 2), 'cpu_s': round(own, 1), 'other_cores_busy': round(others, 2),
         'in_run_s': results['seconds_this_invocation'],
         'before_loop_s': round(wall - results['seconds_this_invocation'], 2),
         **{key: results[key] for key, _ in METRICS},
         'tasks_completed': results['tasks_completed'],
         'accuracy_matrix': results['accuracy_matrix']}
  if side == 'cljax':
    row['stage_seconds'], row['phase_seconds'] = cljax_seconds(workdir)
  else:
    row['stage_seconds'] = results['stage_seconds']
    row['phase_seconds'] = results['phase_seconds']
    row['torch_threads'] = results['torch_threads']
  print(f'[{side}] {wall:.1f} s wall, {own:.0f} CPU s, other processes {others:.2f} cores; '
        + ', '.join(f'{short} {row[key]:.2f}' for key, short in METRICS), flush=True)
  return row


def median_row(rows):
  """Medians of the numbers of several runs (accuracies too: they differ only through float
  rounding from run to run, if at all)."""
  out = {}
  for key, value in rows[0].items():
    if isinstance(value, (int, float)) and not isinstance(value, bool):
      out[key] = statistics.median(r[key] for r in rows)
    elif isinstance(value, dict):
      out[key] = {k: round(statistics.median(r[key][k] for r in rows), 2) for k in value}
  return out


def report(args, runs, dev: str) -> str:
  med = {side: median_row(runs[side]) for side in SIDES}
  ratio = med['torch']['wall_s'] / med['cljax']['wall_s']
  shown_cmd = ' '.join(['python scripts/end_to_end.py', f'--config={args.config}'] +
                       ([f'--repeats {args.repeats}'] if args.repeats > 1 else []) + args.overrides)
  lines = [f'## End to end: the demo in cljax vs the same pipeline in PyTorch ({dev})', '',
           f'{datetime.date.today().isoformat()}; {platform.processor() or platform.machine()}, '
           f'{os.cpu_count()} cores; jax {report_files.version("jax")}, jaxlib {report_files.version("jaxlib")}, '
           f'torch {report_files.version("torch")}; config `{args.config}`'
           + (f' with {" ".join(args.overrides)}' if args.overrides else '') +
           f'; {"median of " + str(args.repeats) + " runs each, alternating" if args.repeats > 1 else "one run each"}.',
           f'Command: `{shown_cmd}`', '',
           '| | ' + ' | '.join(NAMES[s] for s in SIDES) + ' |',
           '|---|---|---|']

  def row(label, get, digits=1):
    lines.append(f'| {label} | ' + ' | '.join(f'{get(med[s]):.{digits}f}' for s in SIDES) + ' |')
  row('**wall seconds, process start to exit**', lambda m: m['wall_s'])
  row('before the task loop (imports, data, backbone, initial weights)', lambda m: m['before_loop_s'])
  row('stage-1 training, all tasks (cljax: with compiling its step)', lambda m: m['phase_seconds']['stage1_train'])
  row('stage-2 training, all tasks (cljax: with compiling its step)', lambda m: m['phase_seconds']['stage2_train'])
  row('statistics, evaluation, alignment (cljax: with their compilation and the checkpoints)',
      lambda m: m['in_run_s'] - m['phase_seconds']['stage1_train'] - m['phase_seconds']['stage2_train'])
  row('CPU seconds of the process', lambda m: m['cpu_s'], 0)
  row('cores other processes kept busy meanwhile', lambda m: m['other_cores_busy'], 2)
  for key, short in METRICS:
    row(f'{short} (%)', lambda m, key=key: m[key], 2)
  p = med['torch']['phase_seconds']
  lines += ['', f'**Ratio (PyTorch wall time / cljax wall time): {ratio:.2f}x** '
            f'({"cljax faster" if ratio > 1 else "PyTorch faster"}).', '',
            'PyTorch run by phase (seconds): ' + ', '.join(f'{k} {v:.1f}' for k, v in p.items()) + '.',
            '', 'cljax\'s training seconds come from the timestamps of its metrics.jsonl (a stage starts '
            'where its stage_done line says; its training ends at its last epoch line). The PyTorch '
            'side (`scripts/torch_pipeline.py`) mirrors the trainer step for step with cljax\'s host '
            'code (data, batches and their seeds, class statistics, lr schedules, metrics) and initial '
            'weights; its alignment draws its Gaussian samples from torch\'s generator, so its '
            'accuracies differ from cljax\'s by training noise, not by design. cljax\'s time includes '
            'XLA compilation and the Orbax checkpoints, plots and TensorBoard events written after '
            'every stage; the PyTorch side compiles nothing and writes only its results.']
  return '\n'.join(lines), med, ratio


def main(argv=None):
  args = parse(argv)
  dev = report_files.device_name()
  root = args.root or tempfile.mkdtemp(prefix='cljax_end_to_end_')
  runs = {side: [] for side in SIDES}
  try:
    for r in range(args.repeats):
      for side in SIDES:
        workdir = os.path.join(root, f'{side}_{r}_{int(time.time())}')
        runs[side].append(run_once(side, args, workdir))
  finally:
    if not args.root:
      shutil.rmtree(root, ignore_errors=True)
  text, med, ratio = report(args, runs, dev)
  print('\n' + text, flush=True)
  report_files.write(args.out_dir, f'end_to_end_{dev}{args.tag}', text, {
      'config': args.config, 'overrides': args.overrides, 'repeats': args.repeats,
      'ratio_torch_over_cljax': ratio, 'median': med, 'runs': runs}, argv)
  return med, ratio


if __name__ == '__main__':
  main()
