"""Class statistics, Gaussian replay, the contrastive regulariser and the optimisers, checked
against known values and PyTorch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from cljax import optim
from cljax.continual import alignment
from cljax.methods import base
from cljax.methods.hide import momentum_pool


def gaussian_features(rng, means, n, scale=0.5):
  feats = np.concatenate([m + scale * rng.standard_normal((n, len(m))) for m in means])
  labels = np.repeat(np.arange(len(means)), n)
  return feats, labels


@pytest.mark.parametrize('method', ['covariance', 'variance', 'multi-centroid'])
def test_statistics_recover_known_means(method):
  rng = np.random.default_rng(0)
  means = np.array([[3.0, 0.0, -1.0, 2.0], [-2.0, 1.0, 0.5, 0.0]])
  feats, labels = gaussian_features(rng, means, 4000)
  stats = alignment.ClassStats.empty(3, 4, method, n_centroids=2)
  stats = alignment.update_statistics(stats, feats, labels, [0, 1], n_centroids=2, seed=0)
  assert stats.valid[:2].any(1).all() and not stats.valid[2].any()
  if method == 'multi-centroid':
    # Cluster means average back to the class mean (weighted by cluster sizes ~ equal here).
    np.testing.assert_allclose(stats.mean[:2].mean(1), means, atol=0.1)
  else:
    np.testing.assert_allclose(stats.mean[:2, 0], means, atol=0.05)
  if method == 'covariance':
    cov = stats.scale[0] @ stats.scale[0].T
    expected = np.cov(feats[labels == 0].T, ddof=1) + 1e-4 * np.eye(4)
    np.testing.assert_allclose(cov, expected, rtol=1e-5, atol=1e-6)


def test_covariance_matches_torch_cov():
  feats = np.random.default_rng(1).standard_normal((30, 6)).astype(np.float32)
  stats = alignment.update_statistics(alignment.ClassStats.empty(1, 6, 'covariance'), feats,
                                      np.zeros(30, int), [0], 1, 0)
  ref = torch.cov(torch.from_numpy(feats).T) + 1e-4 * torch.eye(6)
  np.testing.assert_allclose(stats.scale[0] @ stats.scale[0].T, ref.numpy(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize('method', ['covariance', 'variance'])
def test_replay_samples_follow_the_stored_gaussians(method):
  rng = np.random.default_rng(0)
  means = np.array([[3.0, 0.0, -1.0], [-2.0, 1.0, 0.5]])
  feats, labels = gaussian_features(rng, means, 3000, scale=np.array([0.5, 1.0, 2.0]))
  stats = alignment.update_statistics(alignment.ClassStats.empty(2, 3, method), feats, labels,
                                      [0, 1], 1, 0)
  x, y, valid = alignment.sample(jax.random.PRNGKey(0), stats, 20000)
  x, y = np.asarray(x), np.asarray(y)
  for c in range(2):
    # Sampling error of a mean of 20k draws is std/141: 4 sigma bounds below.
    np.testing.assert_allclose(x[y == c].mean(0), stats.mean[c, 0], atol=4 * 2.0 / 141)
    np.testing.assert_allclose(x[y == c].std(0), [0.5, 1.0, 2.0], rtol=0.05)
  assert np.asarray(valid).all()


def test_alignment_batches_cover_seen_classes_only():
  stats = alignment.ClassStats.empty(4, 2, 'variance')
  stats = stats.replace(mean=np.arange(8, dtype=np.float32).reshape(4, 1, 2),
                        scale=np.ones((4, 1, 2), np.float32), valid=np.ones((4, 1), bool))
  seen = np.array([True, True, True, False])
  got = list(alignment.alignment_batches(jax.random.PRNGKey(0), stats, seen, 10, 2, 10, (0,)))
  assert len(got) == 2 and all(b[0].shape == (10, 2) for b in got)
  labels = np.concatenate([np.asarray(b[1]) for b in got])
  assert set(labels.tolist()) <= {0, 1, 2}
  # 30 seen samples: a 4th slice of 10 runs out and ends the epoch, as the references' slices do.
  assert len(list(alignment.alignment_batches(jax.random.PRNGKey(0), stats, seen, 10, 5, 10, (0,)))) == 3
  assert [len(r) for r in alignment.iteration_rows(np.arange(25), 10, 5)] == [10, 10]


def test_contrastive_regulariser_matches_reference_formula():
  rng = np.random.default_rng(0)
  means, feats = rng.standard_normal((5, 8)), rng.standard_normal((4, 8))
  m = torch.cat([torch.from_numpy(means[:3]), torch.from_numpy(feats[:3])]).float()
  ref = torch.nn.functional.cross_entropy(m @ m.T / 0.8, torch.arange(6)).item()
  # Means 3, 4 are not yet valid and example 3 is padding: both must drop out.
  ours = base.contrastive_regulariser(jnp.asarray(feats, jnp.float32), jnp.array([1, 1, 1, 0], bool),
                                           jnp.asarray(means, jnp.float32), jnp.array([1, 1, 1, 0, 0], bool))
  assert float(ours) == pytest.approx(ref, rel=1e-5)


def test_schedules_follow_the_references():
  # step: 50 epochs, decay every 30: epochs 0-30 at lr, 31-49 at 0.1 lr (stepped after the epoch).
  lrs = [optim.epoch_lr(0.015, e, 'step', 50) for e in range(50)]
  assert lrs[30] == 0.015 and lrs[31] == pytest.approx(0.0015) and lrs[49] == pytest.approx(0.0015)
  # cosine: timm CosineLRScheduler(t_initial=epochs, lr_min=1e-5), epoch e uses the value at e-1.
  assert optim.epoch_lr(0.015, 0, 'cosine', 150) == 0.015
  assert optim.epoch_lr(0.015, 76, 'cosine', 150) == pytest.approx(1e-5 + 0.5 * (0.015 - 1e-5) * (1 + np.cos(np.pi * 75 / 150)))
  assert optim.epoch_lr(0.015, 7, 'constant', 150) == 0.015
  # alignment: torch CosineAnnealingLR(T_max), eta_min 0.
  sched = torch.optim.lr_scheduler.CosineAnnealingLR(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.05), T_max=30)
  for e in range(30):
    assert optim.cosine_annealing_lr(0.05, e, 30) == pytest.approx(sched.get_last_lr()[0])
    sched.optimizer.step()
    sched.step()


@pytest.mark.parametrize('name', ['adam', 'sgd'])
def test_optimiser_matches_torch_with_groups_frozen_leaf_and_clipping(name):
  rng = np.random.default_rng(0)
  init = {'prompt': rng.standard_normal((3, 4)).astype(np.float32),
          'act_scale': np.ones((2,), np.float32), 'head': rng.standard_normal((4,)).astype(np.float32)}
  grads_seq = [{k: rng.standard_normal(v.shape).astype(np.float32) * 3 for k, v in init.items()} for _ in range(4)]
  lrs = {'prompt': 1.0, 'act_scale': 0.0, 'head': 0.1}   # head at 0.1 x lr, act_scale frozen
  base_lr, clip = 0.03, 1.0
  # torch: frozen act_scale has requires_grad False, so it is in no group and not clipped.
  tp = {k: torch.tensor(v, requires_grad=(k != 'act_scale')) for k, v in init.items()}
  groups = [{'params': [tp['prompt']], 'lr': base_lr}, {'params': [tp['head']], 'lr': 0.1 * base_lr}]
  opt = torch.optim.Adam(groups, betas=(0.9, 0.999), eps=1e-8) if name == 'adam' else \
      torch.optim.SGD(groups, momentum=0.9)
  tx = optim.transform(name, clip=clip if name == 'adam' else 0.0)
  params = jax.tree.map(jnp.asarray, init)
  state = tx.init(params)
  for g in grads_seq:
    for k in ('prompt', 'head'):
      tp[k].grad = torch.tensor(g[k])
    if name == 'adam':
      torch.nn.utils.clip_grad_norm_([tp['prompt'], tp['head']], clip)
    opt.step()
    params, state = optim.apply(tx, jax.tree.map(jnp.asarray, g), state, params, lrs, base_lr)
  for k in init:
    np.testing.assert_allclose(np.asarray(params[k]), tp[k].detach().numpy(), rtol=1e-5, atol=1e-6)
  assert np.array_equal(np.asarray(params['act_scale']), init['act_scale'])


def test_prompt_momentum_mixture():
  pool = jnp.asarray(np.random.default_rng(0).standard_normal((2, 2, 4, 3, 1, 2)), jnp.float32)
  mixed = momentum_pool(pool, jnp.int32(2), 0.01)
  expected = 0.99 * pool[:, :, 2] + 0.01 * pool[:, :, :2].mean(2)
  np.testing.assert_allclose(mixed[:, :, 2], expected, rtol=1e-6)
  np.testing.assert_array_equal(mixed[:, :, 3], pool[:, :, 3])
  np.testing.assert_array_equal(momentum_pool(pool, jnp.int32(0), 0.01), pool)   # task 0: none
  # The gradient reaches entry t scaled by (1 - m) and no earlier entry.
  g = jax.grad(lambda p: momentum_pool(p, jnp.int32(2), 0.01)[:, :, 2].sum())(pool)
  np.testing.assert_allclose(g[:, :, 2], 0.99)
  assert float(jnp.abs(g[:, :, :2]).max()) == 0.0
