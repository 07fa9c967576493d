"""The three protocol details of issue 16: the evaluation batch, per-class statistics batches,
timm's trunc_normal for heads and the task-identity MLP."""

import jax
import numpy as np
import pytest

from cljax import config as config_lib
from cljax.continual import class_statistics, trainer
from cljax.models.heads import Classifier


def test_heads_and_mlp_use_timms_trunc_normal():
  params = Classifier(100, (2,)).init(jax.random.PRNGKey(0), np.zeros((1, 384), np.float32))['params']
  for kernel in (params['head']['kernel'], params['mlp']['net_0_0']['kernel'], params['mlp']['net_1_0']['kernel']):
    # timm: N(0, 0.02) cut at +-2 absolute -> std 0.02; flax's default cut at 2 std gives 0.0176.
    assert np.std(np.asarray(kernel)) == pytest.approx(0.02, rel=0.02)
  assert not np.any(params['head']['bias'])


def test_eval_batch_warning_under_the_reference_kv_layout():
  c = config_lib.demo('norga')
  assert c.eval_batch_size == c.batch_size == 32 and config_lib.protocol_warnings(c) == []
  c.eval_batch_size = 64
  assert config_lib.protocol_warnings(c) == [
      "config.eval_batch_size=64 differs from config.batch_size=32, the references' evaluation "
      "batch: with config.prompt.kv_layout='reference' a test image's prefix depends on its batch, "
      "so accuracies will not match the reference code; set config.eval_batch_size=32 (or "
      "kv_layout='correct')"]
  c.prompt.kv_layout = 'correct'
  assert config_lib.protocol_warnings(c) == []
  smope = config_lib.demo('smope')      # no per-example prefix gather: batch-independent
  smope.eval_batch_size = 64
  assert config_lib.protocol_warnings(smope) == []
  for name in ('cifar100', 'imr', 'cub', 'five_datasets'):
    for method in ('norga', 'hideprompt', 'dualprompt', 'sprompt'):
      assert config_lib.protocol_warnings(config_lib.paper(name, method)) == [], (name, method)


def test_bad_statistics_batching_is_one_line():
  c = config_lib.demo('norga')
  c.statistics.batches = 'mixed'
  with pytest.raises(Exception, match=r"statistics batching \(config.statistics.batches\)"):
    config_lib.validate(c)


@pytest.fixture(scope='module')
def experiment():
  return trainer.Experiment(config_lib.demo('norga'), '', verbose=False, load_backbone=False)


def _composition(experiment, per_class):
  """Per real row: (label, classes in its batch, real rows in its batch)."""
  def features(batch):
    labels, mask = np.asarray(batch.labels), np.asarray(batch.mask)
    real = labels[mask]
    return np.stack([labels, np.full(len(labels), len(set(real.tolist()))), np.full(len(labels), len(real))], 1)
  return experiment.train_features(features, 1, train_transform=False, per_class=per_class)


def test_per_class_statistics_batches_are_single_class_and_shuffled(experiment):
  feats, labels = _composition(experiment, per_class=True)
  classes = list(experiment.split.tasks[1])
  assert np.all(feats[:, 1] == 1)                  # one class per batch
  assert np.all(feats[:, 2] <= 32)
  assert [int(k) for k in labels[np.r_[True, labels[1:] != labels[:-1]]]] == [int(k) for k in classes]
  indices = experiment.data.train.indices_of([classes[0]])
  assert len(indices) == int((labels == classes[0]).sum())
  mixed, mixed_labels = _composition(experiment, per_class=False)
  assert np.any(mixed[:, 1] == 2)                  # today's behaviour: classes share batches
  assert sorted(mixed_labels.tolist()) == sorted(labels.tolist())


@pytest.mark.parametrize('method,batches,expected', [('norga', 'per_class', True), ('norga', 'task', False),
                                                     ('smope', 'per_class', False)])
def test_update_statistics_picks_the_batching(method, batches, expected, monkeypatch):
  c = config_lib.demo(method)
  c.statistics.batches = batches
  exp = trainer.Experiment(c, '', verbose=False, load_backbone=False, load_data=False)
  seen = {}

  def fake(features, t, train_transform, per_class=False):
    seen['per_class'] = per_class
    return np.zeros((2, exp.vit_cfg.embed_dim), np.float32), np.array([exp.split_classes[0]] * 2)
  exp.split_classes = [0]
  monkeypatch.setattr(class_statistics, 'train_features', lambda _exp, *a, **k: fake(*a, **k))
  monkeypatch.setattr(class_statistics.steps_lib, 'stage_steps', lambda _exp, stage: {'features': None})
  monkeypatch.setattr(class_statistics.alignment, 'update_statistics', lambda stats, *a, **k: stats)

  class Split:
    tasks = [[0, 1]]
  exp.split = Split()
  stage = next(s for s in exp.stages if s.name == 'prompt')
  exp.update_statistics(stage, {'params': None, 'method_state': None, 'stats': None}, 0)
  assert seen['per_class'] is expected
