"""The trainer's jitted steps compile once per run: the task index, masks and learning rates
are traced, so a new task reuses the compiled step (SMoPE's dense warm-up phase is its one
extra, static, variant)."""

import collections
import contextlib
import logging

import jax
import numpy as np
import pytest

from cljax import config as config_lib
from cljax.continual import step_inputs, trainer


@contextlib.contextmanager
def compilations():
  """Counter of the jitted functions (e.g. 'jit(sample)') lowered for compilation
  inside the block: jax logs each new compilation at DEBUG level (a cache hit logs nothing), so
  this counts what the block compiled, whatever other tests compiled before in the process."""
  names = collections.Counter()

  class Handler(logging.Handler):
    def emit(self, record):
      if str(record.msg).startswith('Compiling '):
        names[str(record.args[0])] += 1

  logger = logging.getLogger('jax._src.interpreters.pxla')
  handler, level = Handler(logging.DEBUG), logger.level
  logger.addHandler(handler)
  logger.setLevel(logging.DEBUG)
  try:
    yield names
  finally:
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.mark.parametrize('method', ['norga', 'smope'])
def test_train_and_eval_steps_compile_once_across_tasks(method):
  c = config_lib.demo(method)
  c.dry_run = True
  c.batch_size = c.eval_batch_size = 4
  exp = trainer.Experiment(c, '', load_data=False, verbose=False)
  for stage in exp.stages:
    step = exp.stage_steps(stage)['train']
    for t in range(3):
      for phase in stage.method.training_phases(t, 2):
        args, _ = step_inputs.train_args(exp, stage, 4, t, concrete=True)
        jax.block_until_ready(step(*args, flags=phase.flags))
    phases = {p.flags for t in range(3) for p in stage.method.training_phases(t, 2)}
    assert step._cache_size() == len(phases), (stage.name, phases)
  evaluate = exp.eval_step('prompt')
  for seed in range(2):
    jax.block_until_ready(evaluate(*step_inputs.eval_args(exp, 4, concrete=True, seed=seed)))
  assert evaluate._cache_size() == 1


def dry_run_experiment(tmp_path, **prompt):
  c = config_lib.demo('norga')
  c.dry_run = True
  c.batch_size = c.eval_batch_size = 8
  c.prompt.update(**prompt)
  return trainer.Experiment(c, str(tmp_path), verbose=False)


@pytest.mark.parametrize('reuse_features', [False, True])
def test_a_run_compiles_each_step_once(tmp_path, reuse_features):
  # Through the trainer's own loop: a freshly initialised optimizer state placed otherwise than
  # the step's outputs once made every stage compile its training step twice.
  exp = dry_run_experiment(tmp_path)
  exp.config.task_identity.reuse_features = reuse_features
  exp.config.stop_after_task = 3
  with compilations() as compiled:
    exp.run()
  for stage in exp.stages:
    for name in ('train', 'ca'):
      assert exp.jitted[stage.name][name]._cache_size() == 1, (stage.name, name)
  assert compiled['jit(train_step)'] == len(exp.stages) and compiled['jit(ca_step)'] == len(exp.stages), compiled
  # At most one `alignment.sample` per stage, counted during this run only.
  assert compiled['jit(sample)'] <= len(exp.stages), compiled
  # Each stage jits `alignment.sample` at the run's matmul precision: one compilation each.
  for stage in exp.stages:
    assert exp.jitted[stage.name]['sample']._cache_size() == 1, stage.name
  evals = [k for k in exp.jitted if k.startswith(('eval/', 'frozen_features/'))]
  assert len(evals) >= 3
  for key in evals:
    assert exp.jitted[key]._cache_size() == 1, key


def test_cached_test_features_give_the_same_evaluation(tmp_path):
  # The run evaluates from the frozen test features it keeps (Experiment._test_features); the
  # whole test-time path (what benchmarks time) must give the same numbers.
  exp = dry_run_experiment(tmp_path)
  state = exp.initial_state()
  seen = jax.numpy.asarray(exp.split.seen_mask(2))
  class_to_task = jax.numpy.asarray(exp.split.class_to_task)
  for per_example in (False, True):
    step = exp.eval_step('prompt', per_example)
    for i in range(3):
      cached = exp.test_features(i)
      batches = exp.batches(exp.data.test.indices_of(exp.split.tasks[i]), False, (0,), False,
                             exp.config.eval_batch_size)
      for b, batch in enumerate(batches):
        args = (state['prompt']['params'], state['prompt']['method_state'],
                state['task_identity']['params'], exp.backbone, batch.images, batch.labels,
                batch.mask, seen, class_to_task)
        whole = [int(x) for x in step(*args)]
        assert whole == [int(x) for x in step(*args, cached[b][2])], (i, b)
  assert len(exp.test_cache) == 3
