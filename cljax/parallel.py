"""Data parallelism over one or several processes (ALGORITHMS.md D5).

Parameters are replicated, batches are split along a 'data' axis of a device mesh; XLA inserts
the collectives. The same code runs on one CPU device, on simulated CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=8``) and on several processes (TPU pod
slices, multi-node GPUs, or local CPU processes) after `initialize_distributed`: every process
then runs the same program, decodes only its rows of every global batch (`host_rows`), and
process 0 alone writes files (`is_main`), with `agree` and `barrier` where order matters.
"""

from __future__ import annotations

import json
import os
from typing import Callable, Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from cljax.errors import CljaxError, ConfigError
from cljax import launch as launch_lib

DEFAULT_TIMEOUT_S = 120


class DistributedError(CljaxError, RuntimeError):
  """A multi-process run cannot start or cannot go on (a process missing, dead or refusing)."""


def _on_tpu_vm() -> bool:
  """A Cloud TPU VM of a multi-host slice: JAX reads the slice from the metadata server."""
  try:
    from jax._src import cloud_tpu_init  # pylint: disable=g-import-not-at-top
    return bool(cloud_tpu_init.running_in_cloud_tpu_vm) and os.environ.get('TPU_SKIP_MDS_QUERY') is None
  except ImportError:
    return False


def initialize_distributed(timeout_s: int = DEFAULT_TIMEOUT_S) -> Optional[str]:
  """Join the multi-process run the environment describes (`cljax.launch.describe_launch`; on a Cloud TPU
  VM JAX's own detection of the slice); returns how it joined, for the run log, or None for a
  single process.

  Must run before anything touches a device. On CPU, gloo carries the cross-process
  collectives unless JAX_CPU_COLLECTIVES_IMPLEMENTATION says otherwise. Raises ConfigError for
  a half-described environment and DistributedError when the processes do not all join within
  ``timeout_s`` seconds (a process never started, a coordinator that cannot be reached)."""
  launch = launch_lib.describe_launch()
  if launch is None and _on_tpu_vm():
    launch = launch_lib.Launch('the hosts of this Cloud TPU slice (JAX\'s detection)', {})
  if launch is None:
    return None
  if not os.environ.get('JAX_CPU_COLLECTIVES_IMPLEMENTATION'):
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  where = launch.kwargs.get('coordinator_address') or 'the detected coordinator'
  pid = launch.kwargs.get('process_id')
  launch_lib.mark(phase='joining', process='?' if pid is None else pid,
       processes=launch.kwargs.get('num_processes', '?'), coordinator=where, timeout=timeout_s)
  try:
    jax.distributed.initialize(**launch.kwargs, initialization_timeout=int(timeout_s),
                               heartbeat_timeout_seconds=max(10, int(timeout_s)))
  except Exception as e:  # pylint: disable=broad-except
    raise DistributedError(launch_lib.cannot_join('?' if pid is None else pid,
                                                  launch.kwargs.get('num_processes', '?'), where,
                                                  timeout_s)) from e
  launch_lib.mark(phase='joined', process=jax.process_index(), processes=jax.process_count(), coordinator=where)
  _start_heartbeat()
  return f'{launch.how}; this is process {jax.process_index()} of {jax.process_count()}'


# ----------------------------------------------------------------------------- a process that dies

# Every process stamps the coordination service's key-value store every HEARTBEAT_S seconds;
# when a collective fails, the stamps say which process stopped. JAX's own heartbeat would stop
# the others too, but only after its timeout and with a C++ abort.
HEARTBEAT_S = 1.0
_STALE_S = 5.0
_FAILED = []     # the processes found stopped, once a collective has failed


def _client():
  from jax._src import distributed  # pylint: disable=g-import-not-at-top
  return distributed.global_state.client


def _start_heartbeat() -> None:
  import threading  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top
  client, key = _client(), f'cljax/heartbeat/{jax.process_index()}'

  def beat():
    while True:
      try:
        client.key_value_set(key, repr(time.time()), allow_overwrite=True)
      except Exception:  # pylint: disable=broad-except
        return       # the coordinator is gone: the next collective fails and says so
      time.sleep(HEARTBEAT_S)
  threading.Thread(target=beat, daemon=True, name='cljax-heartbeat').start()


def stopped_processes() -> list:
  """The processes of a multi-process run that stopped beating (process 0 when its
  coordination service cannot be reached); [] on a single process or when all are alive.
  Waits up to a few seconds so that a process killed just now is seen as stopped."""
  import time  # pylint: disable=g-import-not-at-top
  if jax.process_count() == 1 or _client() is None:
    return []
  if _FAILED:
    return list(_FAILED)
  deadline = time.time() + _STALE_S + 2 * HEARTBEAT_S
  me = jax.process_index()
  while True:
    stamps = {}
    for p in range(jax.process_count()):
      try:
        stamps[p] = float(_client().key_value_try_get(f'cljax/heartbeat/{p}'))
      except Exception:  # pylint: disable=broad-except
        stamps[p] = None    # never stamped, or the store is gone
    if stamps[me] is None and me != 0:     # the coordinator (on process 0) cannot be reached
      stale = [0]
    else:
      stale = [p for p, t in stamps.items() if p != me and (t is None or time.time() - t > _STALE_S)]
    if stale or time.time() > deadline:
      _FAILED[:] = stale
      return stale
    time.sleep(HEARTBEAT_S)


def describe_stop(error: BaseException) -> Optional[str]:
  """The one line for an error that came from another process stopping (None if every
  process is alive: the error is this process's own)."""
  stopped = stopped_processes()
  if not stopped:
    return None
  first = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
  return launch_lib.stopped(', '.join(map(str, stopped)), jax.process_count(), jax.process_index(),
                            first)


# ----------------------------------------------------------------------------- the mesh


def make_mesh(num_devices: int = 0) -> Mesh:
  """A 1-D 'data' mesh over every device (or the first ``num_devices`` of one process), ordered
  by process so that each process owns a contiguous block of every batch (`host_rows`)."""
  devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
  if num_devices:
    if jax.process_count() > 1 and num_devices != len(devices):
      raise ConfigError(f'config.num_devices={num_devices} with {jax.process_count()} processes: '
                        f'a multi-process run uses every device ({len(devices)}); use 0')
    if num_devices > len(devices):
      raise ConfigError(f'config.num_devices={num_devices} but only {len(devices)} device(s) are '
                        f'visible; use 0 for all of them')
    devices = devices[:num_devices]
  return Mesh(np.array(devices), ('data',))


def data_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P('data'))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def check_batch_size(batch_size: int, mesh: Mesh, what: str = 'config.batch_size') -> None:
  n = mesh.devices.size
  if batch_size % n:
    raise ConfigError(f'{what}={batch_size} is not divisible by the {n} devices; use a multiple of {n}')


def host_rows(batch_size: int, mesh: Optional[Mesh] = None):
  """(start, end): the rows of a global batch that this process loads, those its devices hold
  in the mesh (every row on a single process)."""
  if jax.process_count() == 1:
    return 0, batch_size
  devices = list((mesh.devices if mesh is not None else make_mesh().devices).flat)
  mine = [i for i, d in enumerate(devices) if d.process_index == jax.process_index()]
  per_device = batch_size // len(devices)
  return mine[0] * per_device, (mine[-1] + 1) * per_device


def put(array: np.ndarray, sharding: NamedSharding):
  """A global array from this host's rows (the whole array on a single host)."""
  if jax.process_count() == 1:
    return jax.device_put(array, sharding)
  global_shape = (array.shape[0] * sharding.mesh.devices.size // len(
      [d for d in sharding.mesh.devices.flat if d.process_index == jax.process_index()]),) + array.shape[1:]
  return jax.make_array_from_process_local_data(sharding, array, global_shape)


def to_host(array) -> np.ndarray:
  """A global array as one numpy array on every host: a replicated one from this host's copy,
  a sharded one gathered from every process."""
  if not isinstance(array, jax.Array) or array.is_fully_addressable:
    return np.asarray(array)
  if array.is_fully_replicated:
    return np.asarray(array.addressable_data(0))
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return np.asarray(multihost_utils.process_allgather(array, tiled=True))


def tree_to_host(tree):
  """`to_host` of every leaf, as copies (the jitted steps donate their buffers, which a view
  would alias)."""
  return jax.tree.map(lambda x: np.array(to_host(x), copy=True), tree)


# ----------------------------------------------------------------------------- coordination


def is_main() -> bool:
  """Process 0: the one that writes logs, results, plots and ledgers."""
  return jax.process_index() == 0


def barrier(name: str) -> None:
  """Every process waits here until all have arrived (a no-op on a single process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


_MESSAGE_BYTES = 4096


def agree(decide: Callable[[], object], name: str):
  """Process 0 runs ``decide()`` and every process gets its value (JSON-able: None, numbers,
  strings, lists, dicts), or its CljaxError raised with the same message (marked ``agreed``),
  so that no process trains while another has refused. ``name`` labels the exchange."""
  if jax.process_count() == 1:
    return decide()
  message = b''
  if is_main():
    try:
      message = json.dumps({'value': decide()}).encode()
    except CljaxError as e:
      message = json.dumps({'error': type(e).__name__, 'message': str(e)}).encode()
    if len(message) > _MESSAGE_BYTES:
      message = json.dumps({'error': 'CljaxError', 'message': f'{name}: answer too long'}).encode()
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  buffer = np.zeros(_MESSAGE_BYTES, np.uint8)
  buffer[:len(message)] = np.frombuffer(message, np.uint8)
  shared = json.loads(bytes(np.asarray(multihost_utils.broadcast_one_to_all(buffer))).rstrip(b'\0'))
  if 'error' in shared:
    from cljax import errors  # pylint: disable=g-import-not-at-top
    cls = getattr(errors, shared['error'], None)
    cls = cls if isinstance(cls, type) and issubclass(cls, CljaxError) else (
        DistributedError if shared['error'] == 'DistributedError' else CljaxError)
    error = cls(shared['message'])
    error.agreed = True
    raise error
  return shared['value']
