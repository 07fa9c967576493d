"""The trainer's jitted steps compile once per run: the task index, masks and learning rates
are traced, so a new task reuses the compiled step (SMoPE's dense warm-up phase is its one
extra, static, variant)."""

import jax
import pytest

from cljax import config as config_lib
from cljax.continual import step_inputs, trainer


@pytest.mark.parametrize('method', ['norga', 'smope'])
def test_train_and_eval_steps_compile_once_across_tasks(method):
  c = config_lib.demo(method)
  c.dry_run = True
  c.batch_size = c.eval_batch_size = 4
  exp = trainer.Experiment(c, '', load_data=False, verbose=False)
  for stage in exp.stages:
    step = exp._steps(stage)['train']
    for t in range(3):
      for phase in stage.method.training_phases(t, 2):
        args, _ = step_inputs.train_args(exp, stage, 4, t, concrete=True)
        jax.block_until_ready(step(*args, flags=phase.flags))
    phases = {p.flags for t in range(3) for p in stage.method.training_phases(t, 2)}
    assert step._cache_size() == len(phases), (stage.name, phases)
  evaluate = exp._eval_step('prompt')
  for seed in range(2):
    jax.block_until_ready(evaluate(*step_inputs.eval_args(exp, 4, concrete=True, seed=seed)))
  assert evaluate._cache_size() == 1
