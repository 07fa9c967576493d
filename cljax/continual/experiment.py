"""The run: `Experiment`, its setup (config, mesh, data, backbone, stages, the jit cache) and its
loop over tasks and stages, with resume from the workdir's checkpoints (ALGORITHMS.md 2).

Per task t: if the method needs task identity, stage 1 (the task-identity model) trains,
summarises its features and aligns its head; then the method's own stage trains, summarises
the prompted features, aligns the head, and every task seen so far is evaluated, giving column t
of the accuracy matrix. After each stage the run state goes to an Orbax checkpoint; a rerun
continues after the last one with the numbers of an uninterrupted run.
"""


from __future__ import annotations

import json
import os
import time
from typing import Any, Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np

from cljax import config as config_lib
from cljax import methods as methods_lib
from cljax import parallel
from cljax.checkpoints import backbones as backbone_lib
from cljax.continual import (alignment, class_statistics, evaluation, interrupts, streams,
                             run_outputs, stage_training, task_checkpoints, workdir_claim,
                             workdir_lock)
from cljax.continual import steps as steps_lib
from cljax.continual.run_log import RunLog, duration
from cljax.data import benchmarks
from cljax.errors import CheckpointError, CljaxError, DataError, RunInterrupted


class Experiment:
  """A configured run: data, backbone, method(s), and the cache of its jitted steps."""

  def __init__(self, config, workdir: str, load_data: bool = True, verbose: bool = True,
               load_backbone: bool = True):
    self.config = c = config_lib.validate(config)
    self.workdir = workdir
    self.verbose = verbose
    self.run_log = RunLog(workdir, verbose)
    self.matmul_precision = config_lib.matmul_precision(c)
    self.mesh = parallel.make_mesh(c.num_devices)
    for key in ('batch_size', 'eval_batch_size'):
      parallel.check_batch_size(c[key], self.mesh, f'config.{key}')
    self.data_sharding = parallel.data_sharding(self.mesh)
    self.replicated = parallel.replicated(self.mesh)
    self.num_classes = config_lib.num_classes(c)
    self.num_tasks = c.benchmark.num_tasks
    self.vit_cfg = backbone_lib.run_vit_config(c)
    from cljax.models.vit import check_prompt_layers  # pylint: disable=g-import-not-at-top
    if c.method != 'sequential_head':
      check_prompt_layers(c.prompt.layers, self.vit_cfg.depth, 'config.prompt.layers')
    if c.method == 'dualprompt':
      check_prompt_layers(c.prompt.g_layers, self.vit_cfg.depth, 'config.prompt.g_layers')
    self.method = methods_lib.build(c, self.vit_cfg, self.num_classes, self.num_tasks)
    for warning in config_lib.protocol_warnings(c) if verbose else ():
      self.log(f'warning: {warning}')
    self.stages = steps_lib.build_stages(c, self.method, self.vit_cfg, self.num_classes)
    # The data first: a missing or unprepared dataset is reported before a large backbone loads.
    self.data = None
    if load_data:
      self.data = benchmarks.synthetic(c) if c.dry_run else benchmarks.load(c)
      if self.data.split.num_classes != self.num_classes:
        raise DataError(f'{self.data.description} has {self.data.split.num_classes} classes, '
                        f'config expects {self.num_classes}')
    # Without weights (cost analysis): the backbone's shapes only.
    self.backbone = self.load_backbone() if load_backbone else \
        jax.eval_shape(lambda: self.method.model.backbone.init(
            jax.random.PRNGKey(0), jnp.zeros((1, self.vit_cfg.image_size, self.vit_cfg.image_size, 3))))['params']
    self.split = self.data.split if self.data else None
    self.jitted = {}            # the jitted steps (`steps.stage_steps`, `evaluation.eval_step`)
    self.test_cache = {}        # task -> its test batches' frozen features (`evaluation.test_features`)
    self.stage_features = {}    # stage -> (task, features, labels) (`class_statistics.frozen_train_features`)
    self.where = 'the start of the run'    # for the line an interrupt prints
    self.prompt_usage = {}      # test task -> [pool] entries its images chose, last evaluation

  # The run's parts, also as methods (for notebooks, scripts and tests): each is a function of
  # its module, with the experiment as first argument.
  stage_steps = steps_lib.stage_steps
  train_stage = stage_training.train_stage
  align = stage_training.align
  train_features = class_statistics.train_features
  update_statistics = class_statistics.update_statistics
  eval_step = evaluation.eval_step
  test_features = evaluation.test_features
  evaluate = evaluation.evaluate
  batches = streams.batches
  results = run_outputs.results

  def load_backbone(self):
    """The backbone's params on the mesh: the weights file of config.backbone, or random weights
    (config.model_override, or a dry run without the file)."""
    c = self.config
    path = config_lib.weights_path(c)
    info = backbone_lib.NAMED[c.backbone.name]
    if c.model_override or (c.dry_run and not os.path.exists(path)):
      if c.dry_run and not c.model_override:
        self.log(f'note: dry run with random backbone weights: {path} does not exist '
                  f'(a real run would stop here; get it from: {info.how_to_get})')
      params = self.jit(lambda k: self.method.model.backbone.init(
          k, jnp.zeros((1, self.vit_cfg.image_size, self.vit_cfg.image_size, 3)))['params'])(
              jax.random.PRNGKey(c.seed))
    else:
      if not os.path.exists(path):
        raise CheckpointError(f'backbone weights {path} do not exist: get {info.file} '
                              f'({info.how_to_get}) and put it there, or set config.backbone.weights')
      params, notes = backbone_lib.load_backbone(path, self.vit_cfg, truncate=bool(c.backbone.depth))
      for n in notes:
        self.log(f'backbone: {n}')
    return jax.device_put(params, self.replicated)

  def jit(self, fn, **kwargs):
    """jax.jit of ``fn`` at the run's matmul precision."""
    return jax.jit(steps_lib.with_matmul_precision(fn, self.matmul_precision), **kwargs)

  def log(self, message):
    self.run_log.print(message)

  def record(self, entry: Dict[str, Any], scalars_prefix: Optional[str] = None,
             step: Optional[int] = None) -> None:
    self.run_log.record(entry, scalars_prefix, step)

  def stage_template(self, name: str):
    stage = next(s for s in self.stages if s.name == name)
    return jax.eval_shape(stage.method.init, jax.random.PRNGKey(0))

  def initial_state(self):
    c = self.config
    rng = jax.random.PRNGKey(c.seed)
    state = {'step': np.array(0, np.int32)}
    dim = self.vit_cfg.embed_dim
    for i, stage in enumerate(self.stages):
      state[stage.name] = {
          'params': self.jit(stage.method.init)(jax.random.fold_in(rng, i)),
          'method_state': stage.method.init_state(),
          'stats': alignment.ClassStats.empty(self.num_classes, dim, stage.stats_method, c.statistics.n_centroids),
      }
    T = self.num_tasks
    state['accuracy'] = np.zeros((T, T), np.float32)
    state['accuracy_before_alignment'] = np.zeros((T, T), np.float32)
    state['task_identity_accuracy'] = np.zeros((T, T), np.float32)
    state['stage1_task_identity_accuracy'] = np.zeros((2, T), np.float32)  # before / after CA
    if self.method.predict_per_example:
      state['accuracy_per_example'] = np.zeros((T, T), np.float32)   # batchwise vote off (D1)
    if self.method.pool_size:   # [after task, test task, pool entry]: test images choosing it
      state['prompt_usage'] = np.zeros((T, T, self.method.pool_size), np.float32)
    return state

  def run(self, joined: Optional[str] = None) -> Dict[str, Any]:
    """Train and evaluate every task; ``joined`` says how the processes of a multi-process run
    joined (`cljax.parallel.initialize_distributed`), for the log."""
    lock = workdir_lock.WorkdirLock(self.workdir)

    def claim():   # on several processes: decided by process 0, agreed by all
      lock.acquire()
      try:
        workdir_claim.check_workdir(self.config, self.workdir, claim=True)
      except CljaxError:
        lock.release()
        raise
    parallel.agree(claim, 'workdir')
    if joined:
      self.log(f'several processes: {joined}')
    ckpt = task_checkpoints.RunCheckpoints(self.workdir, int(self.mesh.devices.size))
    stopped = []
    self.plots = run_outputs.BackgroundPlots()
    try:
      out = self._run(ckpt)
      error = self.plots.close()   # the last task's plots are on disk when the run returns
      if error is not None:
        raise error
      return out
    except KeyboardInterrupt:
      interrupts.ignore()     # closing completes the checkpoint being written
      if ckpt.last is None:
        raise RunInterrupted(f'interrupted in {self.where}, before the first checkpoint: the '
                             f'same command starts the run again') from None
      raise RunInterrupted(f'interrupted in {self.where}; nothing is lost: the workdir keeps '
                           f'{ckpt.describe_last()}, and the same command resumes from it') from None
    except Exception:
      stopped = parallel.stopped_processes()   # [] on a single process
      raise
    finally:
      self.plots.close()   # also on an error: every evaluated task's plots are drawn
      # A mid-stage checkpoint being written is completed, unless another process died: it
      # cannot take part, and the write is dropped.
      if not stopped:
        ckpt.close()
      self.run_log.close()
      lock.release()

  def _run(self, ckpt) -> Dict[str, Any]:
    c = self.config
    state = self.initial_state()
    latest = ckpt.latest_step()
    done_step = 0
    if latest is None:     # the layout a resume must match, before any checkpoint is written
      ckpt.write_ledger(0)
    trained = False     # has this invocation trained a stage?
    if latest is not None:
      state = ckpt.restore(latest, state)
      done_step = int(state['step'])
      task, stage = task_checkpoints.step_stage(done_step)
      self.log(f'resuming {self.workdir}: task {task + 1} {stage} stage already done')
    self.log(f'{self.data.description}: {self.num_tasks} tasks, {self.num_classes} classes; '
              f'method {c.method}; backbone {c.backbone.name} ({self.vit_cfg.embed_dim}d x '
              f'{self.vit_cfg.depth}); {self.mesh.devices.size} device(s)')
    self.log('class order (classes of each task): ' + ' | '.join(
        f'task {t + 1}: ' + ' '.join(map(str, classes)) for t, classes in enumerate(self.split.tasks)))
    run_start = time.time()
    first_task = task_checkpoints.step_stage(done_step + 1)[0] if done_step else 0
    last_task = self.num_tasks
    if c.stop_after_task:
      last_task = min(last_task, c.stop_after_task)
    for t in range(last_task):
      for stage in self.stages:
        step = task_checkpoints.stage_step(t, stage.name)
        if step <= done_step:
          continue
        stage_start = time.time()
        self.where = task_checkpoints.describe(step)
        resume = ckpt.restore_mid_stage(step)
        if not trained:   # what a killed run wrote after the checkpoint continued from goes
          ckpt.forget_later_records(
              step * task_checkpoints.MID_STAGE_SCALE + resume[0] if resume else done_step)
          trained = True
        if resume is not None:
          self.log(f'resuming {self.workdir}: {task_checkpoints.describe(step)} after {resume[0]} '
                    f'training steps')
        s = stage_training.train_stage(self, stage, state[stage.name], t, resume,
                             save=lambda done, progress, step=step: ckpt.save_mid_stage(step, done, progress))
        state = {**state, stage.name: s}
        if self.method.uses_statistics or stage.name == 'task_identity':
          state[stage.name] = class_statistics.update_statistics(self, stage, state[stage.name], t)
        if stage.name == 'task_identity':
          before = evaluation.evaluate(self, state, t, 'task_identity')[1]
          if t > 0:
            state[stage.name] = stage_training.align(self, stage, state[stage.name], t)
          after = evaluation.evaluate(self, state, t, 'task_identity')[1]
          state['stage1_task_identity_accuracy'][:, t] = [before.mean(), after.mean()]
          self.log(f'task {t + 1} task-identity model: accuracy of predicted task '
                    f'{before.mean():.2f}% before alignment, {after.mean():.2f}% after')
          self.record({'task': t, 'event': 'task_identity_model',
                        'task_identity_accuracy_before_alignment': float(before.mean()),
                        'task_identity_accuracy_after_alignment': float(after.mean())},
                       'eval/task_identity_model', t + 1)
        else:
          if self.method.uses_statistics and t > 0:
            acc_before, _ = evaluation.evaluate(self, state, t)
            state['accuracy_before_alignment'][: t + 1, t] = acc_before
            state[stage.name] = stage_training.align(self, stage, state[stage.name], t)
          acc, task_acc, acc_own = evaluation.evaluate(self, state, t, per_example=True)
          state['accuracy'][: t + 1, t] = acc
          if 'accuracy_per_example' in state:
            state['accuracy_per_example'][: t + 1, t] = acc_own
          for i, counts in self.prompt_usage.items():
            state['prompt_usage'][t, i] = counts
          state['task_identity_accuracy'][: t + 1, t] = task_acc
          if not (self.method.uses_statistics and t > 0):
            state['accuracy_before_alignment'][: t + 1, t] = acc
          run_outputs.report(self, state, t)
          run_outputs.plot(self, state, t, last_task)
          elapsed = time.time() - run_start
          self.log(f'task {t + 1}/{self.num_tasks} done, {duration(elapsed)} so far; eta '
                    f'{duration(elapsed / (t + 1 - first_task) * (last_task - t - 1))}')
        state['step'] = np.array(step, np.int32)
        self.record({'stage': stage.name, 'task': t, 'event': 'stage_done',
                      'seconds': round(time.time() - stage_start, 2)})
        # A dry run checks checkpointing on the first and last task only: the rest is the same
        # code, and writes would dominate its time.
        if not c.dry_run or t in (0, last_task - 1):
          ckpt.save(step, state, state[stage.name]['params'])
        else:
          ckpt.clear_mid_stage()
        run_outputs.write_results(self, state, time.time() - run_start)
    if not trained and os.path.exists(os.path.join(self.workdir, 'results.json')):
      with open(os.path.join(self.workdir, 'results.json')) as f:   # a finished run: as it was
        return json.load(f)
    return run_outputs.write_results(self, state, time.time() - run_start)
