"""XLA:CPU's matmul back ends on the prompt-stage training step: time and numbers, per back end.

  python scripts/xla_cpu_backends.py [--method norga] [--model b] [--batch 8] [--rounds 4] [--repeats 3]
  python scripts/xla_cpu_backends.py --quick     # ViT-Ti at 64x64, 1 round (a smoke run)

XLA:CPU can lower a dot to its default library (YNNPACK fusions in jax 0.10), to Eigen, to
XNNPACK or to oneDNN, by XLA_FLAGS (`BACKENDS`). A back end may sum in its own order, and so give
float32 results that differ in the last bits. This script measures both sides of that trade for
the step `Experiment` jits for the method's Split ImageNet-R paper config (random weights, as
`benchmark.py`), and whether a flag changed the compiled program at all:

* time: `--rounds` rounds of one fresh process per back end (`--worker`), in a new random order
  each round; a process builds and compiles the step, warms up, then times `--repeats` calls.
  The table gives each back end's median over all rounds and its ratio to the default. Every
  process runs with glibc's huge pages, as `cljax.main` does (`cljax.host_memory`).
* numbers: each process's first (warm-up) step, from the same inputs everywhere, saves its loss
  and its gradients (Adam's first moment after the step); the table gives their differences from the
  default back end's, the gradients' as the largest difference over the largest gradient.
* program: whether the compiled HLO text is that of a back end above it in the table ('as
  default': a flag XLA ignored for this step, so any time difference is the machine's noise)
  or its own. Thunks chosen at run time do not show in that text; equal numbers then say more.

Writes benchmarks/xla_cpu_backends_<device>.md and .json (--out-dir). Nothing of this is used
by cljax: which back end a run uses is XLA's default unless XLA_FLAGS says otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import statistics
import sys
import tempfile

from cljax import host_memory

if __name__ == '__main__':   # before jax starts threads, as benchmark.py (see cljax.host_memory)
  host_memory.reexec_with_huge_pages([sys.executable] + sys.argv)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import step_timing  # pylint: disable=g-import-not-at-top,wrong-import-position

# jax 0.10's XLA:CPU gives dots to YNNPACK first; the other libraries get only what it leaves, so
# they are tried with YNNPACK off (an empty overwrite of its fusion list), as Eigen is.
BACKENDS = {
    'default': '',
    'eigen': '--xla_cpu_experimental_ynn_fusion_type=',
    'xnnpack': '--xla_cpu_experimental_ynn_fusion_type= --xla_cpu_experimental_xnn_fusion_type=dot',
    'onednn': '--xla_cpu_experimental_ynn_fusion_type= --xla_cpu_use_onednn=true',
}


def worker(args) -> None:
  """One back end in this process (XLA_FLAGS set by the parent): the RESULT line with its
  step times and compiled program's hash; the first step's loss and gradients go to args.save
  (.npz)."""
  import benchmark  # pylint: disable=g-import-not-at-top
  exp = benchmark.experiment(args.method, args.model, args.batch, {}, args.image_size)
  stage = next(s for s in exp.stages if s.name == 'prompt')
  call, info = benchmark.cljax_train(exp, stage, args.batch, keep_outputs=True)
  program = hashlib.sha256(info['compiled'].as_text().encode()).hexdigest()
  saved = []

  def step():
    # The first call is median_times' warm-up, from the inputs benchmark.cljax_train makes
    # (the same in every process): its loss and gradients are the ones compared.
    loss = call()
    if not saved:
      save_loss_and_gradients(info['outputs'], args.save)
      saved.append(args.save)
    return loss
  (first, step_s, times), = step_timing.median_times([(step, benchmark.jax_sync)], args.repeats)
  step_timing.emit({'compile_s': info['compile_s'], 'first_s': first, 'step_s': step_s, 'times': times,
                    'program': program}, sys.stdout)


def save_loss_and_gradients(outputs, path: str) -> None:
  """A train step's (params, optimizer state, metrics): its loss and gradients to `path`. The
  optimizer state after one step holds (1 - b1) x the gradient (Adam's first moment): the
  gradients, where the updated params (about lr x sign(g) on a first Adam step) would hide them."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  _, opt_state, metrics = outputs
  leaves = {jax.tree_util.keystr(p): np.asarray(leaf)
            for p, leaf in jax.tree_util.tree_leaves_with_path(opt_state)
            if np.issubdtype(np.asarray(leaf).dtype, np.floating)}
  np.savez(path, loss=np.asarray(metrics['loss']), **leaves)


def time_backend(args, backend: str, save: str):
  """The RESULT of one --worker process for `backend` (huge pages: the worker re-executes
  itself with them, as every entry point of this script does)."""
  env = dict(os.environ, XLA_FLAGS=(os.environ.get('XLA_FLAGS', '') + ' ' + BACKENDS[backend]).strip())
  cmd = [sys.executable, os.path.abspath(__file__), '--worker', '--save', save, '--method', args.method,
         '--model', args.model, '--batch', str(args.batch), '--repeats', str(args.repeats),
         '--image-size', str(args.image_size)]
  try:
    return step_timing.run_worker(cmd, f'the {backend} worker', env)
  except step_timing.WorkerError as e:
    print(f'error: {e}', file=sys.stderr)
    raise SystemExit(1) from None


def differences(a: str, b: str):
  """(|loss a - loss b|, largest |gradient a - gradient b| over the largest |gradient b|)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  with np.load(a) as x, np.load(b) as y:
    keys = [k for k in x.files if k != 'loss']
    diff = max(float(np.max(np.abs(x[k].astype(np.float64) - y[k]), initial=0)) for k in keys)
    scale = max(float(np.max(np.abs(y[k]), initial=0)) for k in keys)
    return abs(float(x['loss']) - float(y['loss'])), diff / scale


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--method', default='norga')
  p.add_argument('--model', default='b', choices=('ti', 'b'))
  p.add_argument('--batch', type=int, default=8)
  p.add_argument('--image-size', type=int, default=224)
  p.add_argument('--rounds', type=int, default=4)
  p.add_argument('--repeats', type=int, default=3)
  p.add_argument('--seed', type=int, default=0, help='of the random order of the back ends in each round')
  p.add_argument('--quick', action='store_true', help='ViT-Ti at 64x64, 1 round, 2 repeats')
  p.add_argument('--out-dir', default=os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'benchmarks'))
  p.add_argument('--tag', default='')
  p.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
  p.add_argument('--save', default='', help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.quick:
    args.model, args.image_size, args.rounds, args.repeats = 'ti', 64, 1, 2
  if args.worker:
    worker(args)
    return None
  import datetime  # pylint: disable=g-import-not-at-top
  import report_files  # pylint: disable=g-import-not-at-top
  order = random.Random(args.seed)
  times = {b: [] for b in BACKENDS}
  compile_s = {b: [] for b in BACKENDS}
  programs = {}
  load_start = os.getloadavg()
  with tempfile.TemporaryDirectory() as tmp:
    saves = {b: os.path.join(tmp, f'{b}.npz') for b in BACKENDS}
    for r in range(args.rounds):
      backends = list(BACKENDS)
      order.shuffle(backends)
      line = []
      for b in backends:
        res = time_backend(args, b, saves[b])
        times[b] += res['times']
        compile_s[b].append(res['compile_s'])
        programs[b] = res['program']
        line.append(f"{b} {res['step_s']:.2f}s")
      print(f'  round {r + 1}/{args.rounds}: ' + ', '.join(line), flush=True)
    diffs = {b: differences(saves[b], saves['default']) for b in BACKENDS}
  load_end = os.getloadavg()
  base = statistics.median(times['default'])
  dev = report_files.device_name()
  load = lambda l: '/'.join(f'{x:.1f}' for x in l)
  lines = [f'## XLA:CPU matmul back ends, {args.method} vit_{args.model}16 prompt-stage train step: {dev}', '',
           f'{datetime.date.today().isoformat()}; batch {args.batch}; image {args.image_size}; {args.rounds} rounds '
           f'of one fresh process per back end in random order, {args.repeats} timed steps each; load average '
           f'{load(load_start)} at the start, {load(load_end)} at the end, on {os.cpu_count()} cores.',
           f'Command: `python scripts/xla_cpu_backends.py {" ".join(sys.argv[1:] if argv is None else argv)}`'.replace('  ', ' '),
           '', '| back end | XLA_FLAGS | median step s | vs default | each round\'s steps s | compile s | '
           'compiled program | loss difference from default | largest gradient difference from default, relative |',
           '|---|---|---|---|---|---|---|---|---|']
  # The first back end (table order) that compiled the same program: flags XLA ignored show here.
  same_program = lambda b: 'as ' + next(a for a in BACKENDS if programs[a] == programs[b]) if any(
      programs[a] == programs[b] for a in list(BACKENDS)[:list(BACKENDS).index(b)]) else 'its own'
  for b, flag in BACKENDS.items():
    med = statistics.median(times[b])
    lines.append(f"| {b} | `{flag or '(none)'}` | {med:.3f} | {base / med:.2f}x | "
                 f"{' '.join(f'{t:.2f}' for t in times[b])} | {statistics.median(compile_s[b]):.1f} | "
                 f"{same_program(b)} | {diffs[b][0]:.1e} | {diffs[b][1]:.1e} |")
  text = '\n'.join(lines)
  print('\n' + text, flush=True)
  report_files.write(args.out_dir, f'xla_cpu_backends_{dev}{args.tag}', text, {
      'method': args.method, 'model': args.model, 'batch': args.batch, 'image_size': args.image_size,
      'rounds': args.rounds, 'repeats': args.repeats, 'flags': BACKENDS, 'times': times,
      'compile_s': compile_s, 'loss_and_gradient_differences': diffs, 'program_sha256': programs,
      'load_average': {'start': load_start, 'end': load_end}}, argv)
  return {'times': times, 'differences': diffs}


if __name__ == '__main__':
  main()
