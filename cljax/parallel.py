"""Data parallelism: jit over a device mesh (ALGORITHMS.md D5).

Parameters are replicated, batches are split along a 'data' axis; XLA inserts the collectives.
The same code runs on one CPU device, on simulated CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=8``) and on multi-host TPU/GPU after
`initialize_distributed` (each host then decodes only its rows of every batch).
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from cljax.errors import ConfigError


def initialize_distributed() -> None:
  """Join a multi-host run when the environment describes one (TPU pods, SLURM, or the
  JAX_COORDINATOR_ADDRESS/JAX_NUM_PROCESSES/JAX_PROCESS_ID variables); no-op otherwise."""
  if os.environ.get('JAX_COORDINATOR_ADDRESS') or os.environ.get('CLJAX_DISTRIBUTED') == '1':
    jax.distributed.initialize()


def make_mesh(num_devices: int = 0) -> Mesh:
  devices = jax.devices()
  if num_devices:
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


def host_rows(batch_size: int):
  """The rows of a global batch that this host loads."""
  per_host = batch_size // jax.process_count()
  start = jax.process_index() * per_host
  return start, start + per_host


def put(array: np.ndarray, sharding: NamedSharding):
  """A global array from this host's rows (the whole array on a single host)."""
  if jax.process_count() == 1:
    return jax.device_put(array, sharding)
  global_shape = (array.shape[0] * jax.process_count(),) + array.shape[1:]
  return jax.make_array_from_process_local_data(sharding, array, global_shape)


def to_host(array) -> np.ndarray:
  """A global array as one numpy array on every host."""
  if jax.process_count() == 1:
    return np.asarray(array)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return np.asarray(multihost_utils.process_allgather(array, tiled=True))
