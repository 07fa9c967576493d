"""Evaluation after each task: accuracy and task-identity accuracy on the test sets of every task
seen so far (a column of the accuracy matrix), the pool entries keyed methods chose, and the
cache of the frozen backbone's test features that the task-identity model reads.
``exp`` is the run's `cljax.continual.trainer.Experiment`.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from cljax import parallel
from cljax.continual import interrupts, streams
from cljax.continual import steps as steps_lib
from cljax.data import pipeline
from cljax.methods import task_identity
from cljax.methods.base import mask_logits


def eval_step(exp, stage_name: str, per_example: bool = True):
  """One jitted step: (correct, task-identity correct, count, correct without the batchwise
  vote) of a test batch; the last equals the first for methods without a vote, or when
  per_example is off (the deployed path alone, as the compute report counts it)."""
  key = f'eval/{stage_name}/{per_example}'
  if key in exp.jitted:
    return exp.jitted[key]
  method = next(s for s in exp.stages if s.name == stage_name).method
  tii = next((s.method for s in exp.stages if s.name == 'task_identity'), None)
  mask_test = exp.config.mask_test_logits or method.mask_test_logits

  def step(params, method_state, tii_params, backbone, images, labels, mask, seen, class_to_task,
           tii_features=None):
    ids = jnp.zeros_like(labels)
    if tii is not None:
      if tii_features is None:    # the whole test-time path (benchmarks, compute report)
        tii_logits, _ = tii.predict(tii_params, {}, backbone, images, ids, mask)
      else:                       # the run's cached frozen features (exact, `test_features`)
        tii_logits = tii.model.logits({'backbone': backbone, **tii_params}, tii_features)
      ids = task_identity.predict_task(tii_logits, seen, class_to_task)
    task = class_to_task[labels]
    if stage_name == 'task_identity':
      zero = jnp.zeros((), jnp.int32)
      return zero, ((ids == task) & mask).sum(), mask.sum(), zero

    def correct(predict):
      logits, used = predict(params, method_state, backbone, images, ids, mask)
      if mask_test:     # off in the HiDe family (quirk 11.6): future-class rows compete
        logits = mask_logits(logits, seen)
      return ((jnp.argmax(logits, -1) == labels) & mask).sum(), used

    ok, used = correct(method.predict)
    ok_own = correct(method.predict_per_example)[0] if per_example and method.predict_per_example else ok
    # Selected pool ids that equal the true task, counted over top-k as the references do.
    hits = (used == task) if used.ndim == 1 else (used == task[:, None]).sum(-1)
    if not (per_example and method.pool_size):
      return ok, jnp.where(mask, hits, 0).sum(), mask.sum(), ok_own
    chosen = used.reshape(used.shape[0], -1)    # how many real images chose each pool entry
    weight = jnp.broadcast_to(mask[:, None], chosen.shape).astype(jnp.int32)
    usage = jnp.zeros(method.pool_size, jnp.int32).at[chosen.reshape(-1)].add(weight.reshape(-1))
    return ok, jnp.where(mask, hits, 0).sum(), mask.sum(), ok_own, usage

  exp.jitted[key] = exp.jit(step)
  return exp.jitted[key]


def evaluate(exp, state, t: int, stage_name: str = 'prompt', per_example: bool = False):
  """Accuracy (%) and task-identity accuracy (%) on the test sets of tasks 0..t (and, with
  per_example, the accuracy without the batchwise vote).

  With stage_name='task_identity' the stage-1 model alone is scored: the fraction of test
  images whose predicted task is right (its "TII accuracy")."""
  c = exp.config
  step = eval_step(exp, stage_name, per_example)
  class_to_task = jnp.asarray(exp.split.class_to_task)
  seen = jnp.asarray(exp.split.seen_mask(t))
  tii_params = state['task_identity']['params'] if 'task_identity' in state else None
  params = state[stage_name]['params']
  method_state = state[stage_name]['method_state']
  acc, task_acc, acc_own = np.zeros(t + 1), np.zeros(t + 1), np.zeros(t + 1)
  exp.prompt_usage = {}
  # A dry run checks the evaluation on the current task (the same steps serve every task).
  for i in ([t] if c.dry_run else range(t + 1)):
    cached = test_features(exp, i) if tii_params is not None else None
    if stage_name == 'task_identity':    # the stage-1 head alone needs no image
      batches = (pipeline.Batch(None, labels, mask) for labels, mask, _ in cached)
    else:
      batches = streams.batches(exp, exp.data.test.indices_of(exp.split.tasks[i]), False, (0,), False,
                              c.eval_batch_size)
    sums = []
    for b, batch in enumerate(batches):
      interrupts.check()
      sums.append(step(params, method_state, tii_params, exp.backbone, batch.images,
                       batch.labels, batch.mask, seen, class_to_task,
                       None if cached is None else cached[b][2]))
    correct, task_correct, total, own = (sum(int(parallel.to_host(x[k])) for x in sums) for k in range(4))
    if sums and len(sums[0]) > 4:    # pool entries chosen by task i's test images
      exp.prompt_usage[i] = np.sum([parallel.to_host(x[4]) for x in sums], axis=0)
    acc[i] = 100.0 * correct / max(total, 1)
    task_acc[i] = 100.0 * task_correct / max(total, 1)
    acc_own[i] = 100.0 * own / max(total, 1)
  return (acc, task_acc, acc_own) if per_example else (acc, task_acc)


def test_features(exp, i: int):
  """[(labels, mask, frozen features)] per test batch of task i, computed once per run.

  The task-identity model reads the frozen backbone's features of the test images; neither
  the backbone nor the test transform changes during a run, so every evaluation after the
  first reuses them (exact: the same jitted computation on the same batches) instead of
  running the backbone again: the stage-1 evaluations then cost a head, and each prompt-stage
  evaluation one prompted forward instead of two."""
  if i not in exp.test_cache:
    features = steps_lib.frozen_features(exp, next(s for s in exp.stages if s.name == 'task_identity'))
    indices = exp.data.test.indices_of(exp.split.tasks[i])
    exp.test_cache[i] = [(batch.labels, batch.mask, features(exp.backbone, batch.images))
                           for batch in streams.batches(exp, indices, False, (0,), False,
                                                      exp.config.eval_batch_size)]
  return exp.test_cache[i]
