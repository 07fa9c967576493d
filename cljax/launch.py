"""Starting a multi-process run, before JAX is imported: which run the environment describes,
and a small supervisor around each process.

JAX's coordination client aborts its process with a C++ stack trace when it cannot join the
run in time, or when the coordination service (inside process 0) dies. So each process of a
multi-process run is started as a child of a supervisor (`supervise`, no JAX in it) that
passes its output through, holds back those aborts, and prints one `error:` line in their
place: which process could not join or stopped, and that the same command resumes. The child
dies with its supervisor (a `kill -9` of the launched process stops its training too).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
from typing import Dict, List, Mapping, Optional

from cljax.errors import ConfigError

SUPERVISED = 'CLJAX_SUPERVISED'        # set in the child: its status file

# The explicit description of a multi-process run, read in this order before any auto-detection.
EXPLICIT = ('JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID')
# What JAX's SLURM detection reads (jax/_src/clusters/slurm_cluster.py).
SLURM = ('SLURM_JOB_ID', 'SLURM_STEP_NODELIST', 'SLURM_NTASKS', 'SLURM_PROCID', 'SLURM_LOCALID')
@dataclasses.dataclass(frozen=True)
class Launch:
  """How this process joins a run: ``how`` for the run log, ``kwargs`` for jax.distributed."""
  how: str
  kwargs: Dict[str, object]


def describe_launch(environ: Mapping[str, str] = os.environ) -> Optional[Launch]:
  """How the environment describes a multi-process run; None for a single process.

  Order: the three EXPLICIT variables; then the clusters that ``jax.distributed.initialize()``
  detects by itself: SLURM ``srun`` steps, Open MPI ``mpirun``, Cloud TPU slices that name
  their workers (TPU_WORKER_HOSTNAMES, as GKE sets it), and CLJAX_DISTRIBUTED=1 for any other
  cluster JAX detects (Kubernetes with the ``kubernetes`` package; a TPU VM without
  TPU_WORKER_HOSTNAMES is detected later, by `cljax.parallel.initialize_distributed`).

  Raises ConfigError (one line naming the missing variable) for a half-described run: some but
  not all of the explicit variables, values that are not process counts/ids, or a SLURM job of
  several tasks whose step variables JAX's detection needs are missing (``python`` started
  without ``srun`` inside a multi-task allocation would train alone on the shared workdir)."""
  given = [k for k in EXPLICIT if environ.get(k)]
  if given:
    missing = [k for k in EXPLICIT if k not in given]
    if missing:
      raise ConfigError(f'{", ".join(given)} set but {" and ".join(missing)} not: a multi-process run '
                        f'needs all three of {", ".join(EXPLICIT)} in every process (or none of them)')
    address, n, pid = (environ[k] for k in EXPLICIT)
    if ':' not in address or not address.rsplit(':', 1)[1].isdigit():
      raise ConfigError(f'JAX_COORDINATOR_ADDRESS={address!r} is not HOST:PORT (process 0\'s host '
                        f'and a free port, e.g. 10.0.0.2:8476)')
    if not n.isdigit() or int(n) < 1:
      raise ConfigError(f'JAX_NUM_PROCESSES={n!r} is not a number of processes >= 1')
    if not pid.isdigit() or int(pid) >= int(n):
      raise ConfigError(f'JAX_PROCESS_ID={pid!r} is not a process id in 0..{int(n) - 1} '
                        f'(JAX_NUM_PROCESSES={n})')
    if int(n) == 1:
      return None
    return Launch(f'{n} processes from JAX_COORDINATOR_ADDRESS/JAX_NUM_PROCESSES/JAX_PROCESS_ID '
                  f'(coordinator {address})',
                  dict(coordinator_address=address, num_processes=int(n), process_id=int(pid)))
  if environ.get('SLURM_JOB_ID'):
    tasks = environ.get('SLURM_STEP_NUM_TASKS') or environ.get('SLURM_NTASKS')
    if tasks and tasks.isdigit() and int(tasks) > 1:
      missing = [k for k in SLURM if not environ.get(k)]
      if missing:
        raise ConfigError(
            f'SLURM job {environ["SLURM_JOB_ID"]} has {tasks} tasks but {", ".join(missing)} '
            f'{"is" if len(missing) == 1 else "are"} not set, so the processes cannot find each '
            f'other: start them with `srun python -m cljax.main ...`, or set {", ".join(EXPLICIT)}')
      return Launch(f'{tasks} processes of SLURM job {environ["SLURM_JOB_ID"]} (srun)', {})
  if environ.get('OMPI_MCA_orte_hnp_uri') and environ.get('OMPI_COMM_WORLD_SIZE', '1') != '1':
    return Launch(f'{environ["OMPI_COMM_WORLD_SIZE"]} processes of Open MPI (mpirun)', {})
  hosts = environ.get('TPU_WORKER_HOSTNAMES', '')
  if len([h for h in hosts.split(',') if h]) > 1:
    return Launch(f'{len(hosts.split(","))} hosts of a Cloud TPU slice (TPU_WORKER_HOSTNAMES)', {})
  if environ.get('CLJAX_DISTRIBUTED') == '1':   # a cluster JAX detects that cljax does not name
    return Launch('the cluster that jax.distributed.initialize() detects (CLJAX_DISTRIBUTED=1)', {})
  return None


# ----------------------------------------------------------------------------- the supervisor

# What JAX's C++ side prints around a failure: the lines of an abort, and glog warnings/errors
# of its coordination client with their continuation lines. Held back from the terminal (kept
# in a log file named in the error line).
_FATAL = re.compile(r'^(F\d{4} |\*\*\* Check failure|terminate called|Fatal Python error|'
                    r'Current thread|Thread 0x|Extension modules:|\s+@\s+0x)')
_GLOG = re.compile(r'^[EW]\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+ \S+\.(cc|h):\d+\]')
_CONTINUED = re.compile(r'^(Additional GRPC error|:UNKNOWN:|RPC: |Barrier result|\s)')


def mark(**status) -> None:
  """In a supervised process: tell the supervisor how far it got (``phase`` joining/joined,
  process id and count, coordinator, timeout)."""
  path = os.environ.get(SUPERVISED)
  if path:
    with open(path, 'w') as f:
      json.dump(status, f)


def needs_supervisor(environ: Mapping[str, str] = os.environ) -> bool:
  """A multi-process run whose process is not yet supervised (ConfigError: see describe_launch)."""
  return SUPERVISED not in environ and describe_launch(environ) is not None


def supervise(command: List[str]) -> int:
  """Run ``command`` (this process's own, e.g. `python -m cljax.main ...`) as a child and
  return the exit status to leave with; SIGINT/SIGTERM are passed on to it."""
  fd, status_path = tempfile.mkstemp(prefix='cljax-status-', suffix='.json')
  os.close(fd)
  env = dict(os.environ, **{SUPERVISED: status_path})
  # Its own process group: a Ctrl-C reaches the supervisor alone, which passes it on once.
  child = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, preexec_fn=_die_with_parent,
                           process_group=0, errors='replace', text=True, bufsize=1)
  for sig in (signal.SIGINT, signal.SIGTERM):
    signal.signal(sig, lambda s, _: child.send_signal(s))
  held, logged = [], []     # an abort's lines; JAX's other C++ log lines
  for line in child.stderr:
    if held or _FATAL.match(line):
      held.append(line)
    elif _GLOG.match(line) or (logged and logged[-1] is not None and _CONTINUED.match(line)):
      logged.append(line)
    else:
      logged.append(None)      # a line of cljax's own between JAX's log lines
      sys.stderr.write(line)
      sys.stderr.flush()
  code = child.wait()
  try:
    with open(status_path) as f:
      status = json.load(f)
  except (OSError, ValueError):
    status = {}
  finally:
    os.unlink(status_path)
  jax_log = [l for l in logged if l is not None] + held
  if jax_log:
    fd, log_path = tempfile.mkstemp(prefix='cljax-jax-', suffix='.log')
    with os.fdopen(fd, 'w') as f:
      f.writelines(jax_log)
  if code in (0, 2) or not (held or code < 0):
    return code     # done, or the child said it all (its own `error:` line or traceback)
  line = _abort_line(status, ''.join(held), code)
  print(f'error: {line}' + (f' (JAX\'s log: {log_path})' if jax_log else ''), file=sys.stderr)
  return 2


def cannot_join(process, processes, coordinator, timeout) -> str:
  """The line for a process that could not join the run."""
  return (f'process {process} of {processes} could not join the run at {coordinator} within '
          f'{timeout} s: start every process with the same command, check that process 0 runs and '
          f'that its host and port are reachable from this host (config.distributed_timeout_s sets '
          f'the wait)')


def stopped(who, processes, me, detail: str = '') -> str:
  """The line for a run stopped because process(es) ``who`` did."""
  detail = f'; {detail}' if detail else ''
  return (f'process {who} of {processes} stopped (this is process {me}{detail}): start the same '
          f'command on every host again to resume from the last checkpoint')


def _abort_line(status: Dict, text: str, code: int) -> str:
  me, n = status.get('process', '?'), status.get('processes', '?')
  if code < 0 and not text:
    return f'process {me} of {n} was stopped by signal {-code}'
  if status.get('phase') != 'joined':
    return cannot_join(me, n, status.get('coordinator', '?'), status.get('timeout', '?'))
  if me != 0 and re.search(r'coordination service|leader task', text):
    who = '0 (the coordinator)'
  else:
    who = ', '.join(sorted(set(re.findall(r'Task (\d+) heartbeat timeout', text))))
  if not who:
    return (f'JAX\'s coordination service stopped process {me} of {n} (no process is known to have '
            f'died: see JAX\'s log); start the same command on every host again to resume from the '
            f'last checkpoint')
  return stopped(who, n, me)


def _die_with_parent() -> None:
  """In the child, before exec: SIGKILL when the supervisor dies (Linux), so that killing the
  launched process stops the training it runs."""
  try:
    import ctypes  # pylint: disable=g-import-not-at-top
    ctypes.CDLL('libc.so.6', use_errno=True).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG
  except (OSError, AttributeError):
    pass
