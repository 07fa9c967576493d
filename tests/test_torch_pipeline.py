"""scripts/torch_pipeline.py (the PyTorch side of the end-to-end comparison) against the trainer:
from the same initial weights and batches its training steps give the trainer's losses, and a
two-task run (with cljax's alignment draws) gives the trainer's accuracy matrix.

Small: the demo's backbone cut to its first 3 blocks, one epoch per stage."""

import os

import numpy as np
import pytest

torch = pytest.importorskip('torch')

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position

from cljax.continual import trainer  # pylint: disable=wrong-import-position
from cljax.continual.steps import step_context  # pylint: disable=wrong-import-position
from cljax.data import pipeline  # pylint: disable=wrong-import-position
from cljax.errors import ConfigError  # pylint: disable=wrong-import-position
from cljax_testing.helpers import demo_config, load_script  # pylint: disable=wrong-import-position

def small_config(data_dir, method='norga'):
  return demo_config(data_dir, method, epochs=(1, 1), ca_epochs=(2, 2))


@pytest.fixture(scope='module')
def tp():
  return load_script('torch_pipeline')


@pytest.fixture(scope='module', autouse=True)
def one_torch_thread():
  """These tests check numbers, not speed: one intra-op thread keeps torch's many small ops from
  waiting on a busy second core (OpenMP barriers on a shared machine cost milliseconds each)."""
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(threads)


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('tfds'))


def cljax_losses(exp, stage, params, method_state, stats, t, batches):
  """The trainer's jitted step over batches from (params, method_state) at task t."""
  steps = exp.stage_steps(stage)
  params, method_state = stage.method.begin_task(params, method_state, t)
  opt_state = steps['tx'].init(params)
  lr_tree = jax.tree.map(jnp.float32, stage.method.lr_multipliers(params, t))
  context = step_context(exp.split, stats, t)
  lr = jnp.float32(stage.cfg.lr * stage.lr_scale)
  losses = []
  for b in batches:
    params, opt_state, m = steps['train'](params, opt_state, method_state, exp.backbone, b.images,
                                          b.labels, b.mask, jnp.asarray(t, jnp.int32), context, lr, lr_tree)
    losses.append(float(m['loss']))
  return losses, params


def test_training_steps_give_the_trainers_losses(tp, data_dir, tmp_path):
  """Three steps of each stage on task 0, and of the prompt stage on task 3 (previous entry copied
  in, prompt momentum over distinct earlier entries, the contrastive term against stored means,
  NoRGa's frozen gate): the losses agree to 1e-4, so the updates (Adam, clipping, lr multipliers)
  agree too."""
  c = small_config(data_dir)
  c.task_identity.reuse_features = False   # stage 1 from images here; the run below reuses features
  pipe = tp.TorchPipeline(c, str(tmp_path), verbose=False)
  exp, c = pipe.exp, pipe.config
  initial = exp.initial_state()
  rng = np.random.default_rng(0)
  for t, names in ((0, ('task_identity', 'prompt')), (2, ('prompt',))):
    indices = exp.data.train.indices_of(exp.split.tasks[t])
    for name in names:
      stage = pipe.stages[name]
      stats = initial[name]['stats']
      if t > 0:   # stored means of the earlier tasks' classes, for the contrastive term
        mean = np.array(stats.mean)
        valid = np.array(stats.valid)
        for k in sum(exp.split.tasks[:t], ()):
          mean[k], valid[k] = rng.normal(size=mean[k].shape).astype(np.float32), True
        stats = stats.replace(mean=mean, valid=valid)
      pipe.stats[name] = stats
      seed = (c.seed, 1 + list(pipe.stages).index(name), t, 0, 0)
      batches = [pipeline.host_input(b) for b in pipeline.batches(
          exp.data.train, indices, c.batch_size, c.backbone.image_size, train=True, seed=seed,
          shuffle=True)][:3]
      params = jax.tree.map(jnp.array, initial[name]['params'])   # a copy: the step donates it
      ours, params = cljax_losses(exp, stage, params,
                                  initial[name]['method_state'], stats, t, batches)
      pipe.set_params(name, initial[name]['params'])   # both sides from the initial weights
      pipe.begin_task(name, t)
      opt, trainable = pipe.optimizer(name, t)
      context = pipe.context(name, t)
      theirs = [pipe.train_step(name, opt, trainable, tp.TorchBatch(b), t, context,
                                stage.cfg.lr * stage.lr_scale)['loss'] for b in batches]
      np.testing.assert_allclose(theirs, ours, rtol=1e-4, err_msg=f'{name}, task {t + 1}')
      assert len(set(np.round(ours, 4))) == 3, ours     # the params really moved between steps
      if name == 'prompt' and t > 0:   # NoRGa's gate scalars stayed frozen
        act_scale = pipe.models[name].e_prompt.act_scale.detach().numpy()
        np.testing.assert_array_equal(act_scale, np.asarray(params['prompts']['e_prompt']['act_scale']))
        np.testing.assert_array_equal(act_scale, np.asarray(initial[name]['params']['prompts']['e_prompt']['act_scale']))


def test_two_task_run_gives_the_trainers_accuracy_matrix(tp, data_dir, tmp_path):
  """Both pipelines whole (HiDe-Prompt: the linear gate, where the step test has NoRGa's), two
  tasks, the alignment drawing cljax's samples: every accuracy agrees within one test image per
  task (float rounding may flip a borderline prediction)."""
  c = small_config(data_dir, 'hideprompt')
  assert c.task_identity.reuse_features   # as the demo: both sides train stage 1 on features
  c.stop_after_task = 2
  ours = trainer.Experiment(c, str(tmp_path / 'cljax'), verbose=False).run()
  pipe = tp.TorchPipeline(c, str(tmp_path / 'torch'), alignment_noise='jax', verbose=False)
  theirs = pipe.run()
  assert theirs['tasks_completed'] == 2
  assert os.path.exists(tmp_path / 'torch' / tp.RESULTS)
  per_image = 100.0 / min(len(pipe.data.test.indices_of(k)) for k in pipe.split.tasks[:2])
  for key in ('accuracy_matrix', 'accuracy_matrix_before_alignment', 'task_identity_matrix',
              'stage1_task_identity_accuracy'):
    a, b = np.asarray(theirs[key]), np.asarray(ours[key])
    assert np.abs(a - b).max() <= per_image + 1e-4, (key, a, b)
  assert np.asarray(ours['accuracy_matrix'])[0, 1] > 0     # task 2 was evaluated on task 1 too
  phases = theirs['phase_seconds']
  assert sum(v for k, v in phases.items() if k != 'setup') <= theirs['seconds_this_invocation'] + 0.1
  assert sum(phases.values()) <= theirs['seconds_total'] + 0.1


def test_other_methods_are_refused(tp, data_dir, tmp_path):
  with pytest.raises(ConfigError, match='mirrors the HiDe/NoRGa two-stage pipeline only'):
    tp.TorchPipeline(small_config(data_dir, 'l2p'), str(tmp_path), verbose=False)
