"""Class statistics and classifier alignment by Gaussian replay (HiDe/NoRGa/SMoPE).

After each task the features of its classes are summarised per class (ALGORITHMS.md 2.4):

* ``covariance``: mean and unbiased covariance + 1e-4 I (sampled through its Cholesky factor)
* ``variance``: mean and the diagonal of that covariance
* ``multi-centroid``: KMeans (seeded from the run's seed, D8) into n_centroids clusters, each
  with its mean and population variance; sampled from N(mean, diag(var) + 1e-4 I); clusters of
  zero mean variance are skipped.

Alignment (2.5) then trains the classifier on samples drawn from the stored Gaussians of every
seen class: each epoch draws n_pc samples per class (n_pc // n_centroids per cluster),
shuffles them and runs ``crct_num`` (= #classes of earlier tasks) iterations of n_pc samples.

Statistics live in fixed-size arrays over all C classes (a ``valid`` mask marks the ones
computed), so the jitted steps see the same shapes at every task.
"""

from __future__ import annotations

from typing import Any, Iterator, Tuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

Array = Any


@flax.struct.dataclass
class ClassStats:
  mean: Array    # [C, K, D]
  scale: Array   # covariance: Cholesky [C, D, D]; variance / multi-centroid: std [C, K, D]
  valid: Array   # [C, K] bool
  method: str = flax.struct.field(pytree_node=False, default='covariance')

  @classmethod
  def empty(cls, num_classes: int, dim: int, method: str, n_centroids: int = 1):
    k = n_centroids if method == 'multi-centroid' else 1
    scale_shape = (num_classes, dim, dim) if method == 'covariance' else (num_classes, k, dim)
    return cls(np.zeros((num_classes, k, dim), np.float32), np.zeros(scale_shape, np.float32),
               np.zeros((num_classes, k), bool), method)

  def means(self) -> Tuple[Array, Array]:
    """Every stored mean [C*K, D] and its validity [C*K] (the regulariser's U)."""
    c, k, d = self.mean.shape
    return self.mean.reshape(c * k, d), self.valid.reshape(c * k)


def class_statistics(features: np.ndarray, method: str, n_centroids: int, seed: int):
  """(means [K, D], scale, valid [K]) of one class's features [n, D] (float64 internally)."""
  f = np.asarray(features, np.float64)
  dim = f.shape[1]
  if method in ('covariance', 'variance'):
    mean = f.mean(0)
    cov = (np.cov(f.T, ddof=1) if len(f) > 1 else np.zeros((dim, dim))) + 1e-4 * np.eye(dim)
    if method == 'covariance':
      scale = np.linalg.cholesky(cov)
    else:
      scale = np.sqrt(np.diag(cov))[None]
    return mean[None].astype(np.float32), scale.astype(np.float32), np.ones(1, bool)
  if method == 'multi-centroid':
    from sklearn.cluster import KMeans  # pylint: disable=g-import-not-at-top
    k = min(n_centroids, len(f))
    labels = KMeans(n_clusters=k, n_init='auto', random_state=seed).fit(f).labels_
    means = np.zeros((n_centroids, dim))
    std = np.zeros((n_centroids, dim))
    valid = np.zeros(n_centroids, bool)
    for j in range(k):
      cluster = f[labels == j]
      var = cluster.var(0)
      means[j] = cluster.mean(0)
      std[j] = np.sqrt(var + 1e-4)
      valid[j] = var.mean() != 0     # the references skip clusters without spread
    return means.astype(np.float32), std.astype(np.float32), valid
  raise ValueError(f'unknown statistics method {method!r}')


def update_statistics(stats: ClassStats, features: np.ndarray, labels: np.ndarray, classes,
                      n_centroids: int, seed: int) -> ClassStats:
  """Stats with the given classes (re)computed from features [n, D] with labels [n]."""
  from threadpoolctl import threadpool_limits  # pylint: disable=g-import-not-at-top
  mean, scale, valid = (np.array(x) for x in (stats.mean, stats.scale, stats.valid))
  # One BLAS thread: with XLA's threads alive, a multi-threaded OpenBLAS is ~10x slower here.
  with threadpool_limits(1):
    for c in classes:
      m, s, v = class_statistics(features[labels == c], stats.method, n_centroids, seed + int(c))
      mean[c], scale[c], valid[c] = m, s, v
  return stats.replace(mean=mean, scale=scale, valid=valid)


def sample(key, stats: ClassStats, per_class: int):
  """Gaussian samples of every class: x [C*K*n, D], labels [C*K*n], row validity [C*K*n]."""
  c, k, d = stats.mean.shape
  n = per_class // k if stats.method == 'multi-centroid' else per_class
  z = jax.random.normal(key, (c, k, n, d), jnp.float32)
  if stats.method == 'covariance':
    x = stats.mean[:, :, None, :] + jnp.einsum('ckni,cdi->cknd', z, stats.scale)
  else:
    x = stats.mean[:, :, None, :] + z * stats.scale[:, :, None, :]
  labels = jnp.broadcast_to(jnp.arange(c)[:, None, None], (c, k, n))
  valid = jnp.broadcast_to(stats.valid[:, :, None], (c, k, n))
  return x.reshape(-1, d), labels.reshape(-1), valid.reshape(-1)


def epoch_rows(valid, labels, seen: np.ndarray, shuffle_seed) -> np.ndarray:
  """The rows of one alignment epoch's draw that it replays, in replay order: the valid samples
  of seen classes, shuffled by ``shuffle_seed``. valid, labels: the draw's [n] (host or
  device); seen: [C] bool."""
  valid = np.asarray(valid) & np.asarray(seen)[np.asarray(labels)]
  rows = np.flatnonzero(valid)
  return rows[np.random.default_rng(list(shuffle_seed)).permutation(len(rows))]


def iteration_rows(rows: np.ndarray, batch_size: int, num_iterations: int) -> Iterator[np.ndarray]:
  """Each of an epoch's (at most) num_iterations iterations' rows, batch_size each: the
  references' slices simply run out, so a short last slice ends the epoch."""
  for it in range(num_iterations):
    chunk = rows[it * batch_size:(it + 1) * batch_size]
    if len(chunk) < batch_size:
      return
    yield chunk


def alignment_batches(key, stats: ClassStats, seen: np.ndarray, per_class: int, num_iterations: int,
                      batch_size: int, shuffle_seed) -> Iterator[Tuple[Array, Array]]:
  """One alignment epoch, eagerly (the trainer's loop jits each part): draw, keep seen classes,
  shuffle, yield num_iterations batches (x, labels)."""
  x, labels, valid = sample(key, stats, per_class)
  for chunk in iteration_rows(epoch_rows(valid, labels, seen, shuffle_seed), batch_size, num_iterations):
    yield x[chunk], labels[chunk]