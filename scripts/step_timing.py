"""Step timing and the worker-process protocol shared by scripts/benchmark.py and
scripts/reference_step.py.

Standard library only: scripts/reference_step.py imports it in a process that holds the original
repository's code and must hold nothing of cljax's (nor jax).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import time

RESULT_PREFIX = 'RESULT '   # the one stdout line of a worker process that the parent reads


def median_times(calls, repeats: int):
  """calls: [(call, sync)]. Returns [(first call s, median s, [step s])], one per call.

  Each call is warmed up once (its first call: compile, allocation, lazy init), then the calls
  take turns, repeat by repeat, so that a shared machine's load falls on all of them alike and
  their ratio stays meaningful."""
  firsts, times = [], [[] for _ in calls]
  for call, sync in calls:
    t0 = time.perf_counter()
    sync(call())
    firsts.append(time.perf_counter() - t0)
  for _ in range(repeats):
    for i, (call, sync) in enumerate(calls):
      time.sleep(0.05)   # lets the other framework's spinning worker threads go idle first
      t0 = time.perf_counter()
      sync(call())
      times[i].append(time.perf_counter() - t0)
  return [(f, statistics.median(t), t) for f, t in zip(firsts, times)]


def emit(result: dict, stream) -> None:
  """Writes a worker's result (JSON-able) as its RESULT line."""
  stream.write(RESULT_PREFIX + json.dumps(result) + '\n')
  stream.flush()


def parse(stdout: str):
  """The result of a worker's stdout (its last RESULT line), or None when it printed none."""
  lines = [l for l in stdout.splitlines() if l.startswith(RESULT_PREFIX)]
  return json.loads(lines[-1][len(RESULT_PREFIX):]) if lines else None


class WorkerError(Exception):
  """A worker process that failed or printed no RESULT line; the message names it and ends
  with its last stderr line."""


def run_worker(cmd, what: str, env=None):
  """The RESULT of the worker process `cmd` (its stdout's last RESULT line). Raises WorkerError
  with its last stderr line when it exits non-zero or prints none."""
  done = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
  result = parse(done.stdout)
  if done.returncode != 0 or result is None:
    last = (done.stderr.strip().splitlines() or ['(no output)'])[-1]
    raise WorkerError(f'{what} failed (exit {done.returncode}): {last}')
  return result
