"""The per-task loop: one trainer for every method.

For each task t (ALGORITHMS.md 2): if the method needs task identity, stage 1 (the task-identity
model) trains, summarises its features and aligns its head; then the method's own stage trains
(prompts and head), summarises the prompted features, aligns the head, and everything seen so
far is evaluated, giving a column of the accuracy matrix. After each stage of each task the run
state goes to an Orbax checkpoint (and, with config.checkpoint_every_steps, the stage being
trained every that many steps), and rerunning the same command resumes where the last
checkpoint left off, with the numbers of an uninterrupted run (a finished run is not retrained).
A NaN/Inf loss stops the run (TrainingDivergedError) before it reaches a checkpoint.

The trainer knows no method by name: it calls the `Method`'s pure functions, through steps that
are jitted once per run (the task index, masks and learning rates are traced arguments, so no
task recompiles them).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from typing import Any, Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np

from cljax import compilation_cache, config as config_lib
from cljax import optim, parallel
from cljax.checkpoints import backbones as backbone_lib
from cljax.continual import (alignment, interrupts, metrics, plots, task_checkpoints, task_identity,
                             workdir_lock)
from cljax.continual.alignment import ClassStats
from cljax.continual.run_log import RunLog, duration
from cljax.data import benchmarks, pipeline
from cljax.errors import (CheckpointError, CljaxError, ConfigError, DataError, RunInterrupted,
                          TrainingDivergedError)
from cljax import methods as methods_lib
from cljax.methods.base import cross_entropy, mask_logits


# A mid-stage checkpoint's data position: phase, epoch, next batch, lr-schedule iteration, and
# the number of batches in the epoch's running sums.
POSITION = ('phase', 'epoch', 'batch', 'iteration', 'count')


@jax.jit
def _all_finite(tree):
  """One compiled reduction per params structure (not one small program per leaf)."""
  return jnp.all(jnp.stack([jnp.isfinite(x).all() for x in jax.tree.leaves(tree)]))


def check_finite(losses, params, stage: str, task: int, epoch: int, epochs: int, n_batches: int):
  """Raise TrainingDivergedError naming the first step whose loss (or the params after the last
  step) is NaN/Inf; returns [] (nothing left to check). One device sync, at checkpoints and
  epoch ends only."""
  if not losses:
    return []
  values = np.array([parallel.to_host(l) for _, l in losses], np.float64)
  bad = np.flatnonzero(~np.isfinite(values))
  what = f'loss ({values[bad[0]]})' if bad.size else 'parameters'
  if not bad.size:
    if bool(parallel.to_host(_all_finite(params))):
      return []
    bad = [len(losses) - 1]
  raise TrainingDivergedError(
      f'training diverged: non-finite {what} in the {stage} stage, task {task + 1}, epoch '
      f'{epoch + 1}/{epochs}, step {losses[bad[0]][0] + 1}/{n_batches}; the workdir keeps the '
      f'last good checkpoint; lower config.{stage}.lr (or check the inputs) and rerun with '
      f'--config.rerun_with_changes=True to continue from it')


def with_matmul_precision(fn, precision: str):
  """``fn`` traced under ``jax.default_matmul_precision(precision)``: every dot of a step
  jitted from it has that precision (config.matmul_precision)."""
  @functools.wraps(fn)
  def traced(*args, **kwargs):
    with jax.default_matmul_precision(precision):
      return fn(*args, **kwargs)
  return traced


def optimizer(cfg):
  """The optax transform of a stage config (config.task_identity or config.prompt)."""
  return optim.transform(cfg.optimizer, cfg.clip_grad, weight_decay=cfg.get('weight_decay', 0.0))


def train_step_fn(method, tx):
  """The pure training step of a method: (params, opt_state, method_state, backbone, images,
  labels, mask, t, context, lr, lr_tree, flags) -> (params, opt_state, metrics). The trainer jits
  it with buffer donation, `cljax.api` without."""
  def train_step(params, opt_state, method_state, backbone, images, labels, mask, t, context, lr,
                 lr_tree, flags=()):
    (loss, aux), grads = jax.value_and_grad(method.loss, has_aux=True)(
        params, method_state, backbone, images, labels, mask, t, context, **dict(flags))
    params, opt_state = optim.apply(tx, grads, opt_state, params, lr_tree, lr)
    return params, opt_state, {'loss': loss, **aux}
  return train_step


def step_context(split, stats, t: int):
  """What a method's loss reads besides the batch: task t's and the seen classes' masks, and
  the stored class means."""
  means, valid = stats.means()
  return {'task_mask': jnp.asarray(split.task_mask(t)), 'seen_mask': jnp.asarray(split.seen_mask(t)),
          'means': jnp.asarray(means), 'means_valid': jnp.asarray(valid)}


@dataclasses.dataclass
class StageSetup:
  """What differs between the task-identity stage and the method's stage."""
  name: str
  method: Any
  cfg: Any                    # config.task_identity or config.prompt
  lr_scale: float             # multiplies cfg.lr
  ca_lr: float                # alignment lr actually used
  ca_samples: int             # n_pc
  stats_method: str


class Experiment:
  """A configured run: data, backbone, method(s) and the jitted steps."""

  def __init__(self, config, workdir: str, load_data: bool = True, verbose: bool = True,
               load_backbone: bool = True):
    self.config = config_lib.validate(config)
    self.workdir = workdir
    self.verbose = verbose
    self.run_log = RunLog(workdir, verbose)
    c = self.config
    self.matmul_precision = config_lib.matmul_precision(c)
    self.mesh = parallel.make_mesh(c.num_devices)
    for key in ('batch_size', 'eval_batch_size'):
      parallel.check_batch_size(c[key], self.mesh, f'config.{key}')
    self.data_sharding = parallel.data_sharding(self.mesh)
    self.replicated = parallel.replicated(self.mesh)
    self.num_classes = config_lib.num_classes(c)
    self.num_tasks = c.benchmark.num_tasks
    self.vit_cfg = self._vit_config()
    from cljax.models.vit import check_prompt_layers  # pylint: disable=g-import-not-at-top
    if c.method != 'sequential_head':
      check_prompt_layers(c.prompt.layers, self.vit_cfg.depth, 'config.prompt.layers')
    if c.method == 'dualprompt':
      check_prompt_layers(c.prompt.g_layers, self.vit_cfg.depth, 'config.prompt.g_layers')
    self.method = methods_lib.build(c, self.vit_cfg, self.num_classes, self.num_tasks)
    for warning in config_lib.protocol_warnings(c) if verbose else ():
      self._log(f'warning: {warning}')
    self.stages = []
    if self.method.uses_task_identity and c.task_identity.enabled:
      tii = task_identity.build(c, self.vit_cfg, self.num_classes)
      scale = config_lib.lr_scale(c, 'task_identity')
      self.stages.append(StageSetup('task_identity', tii, c.task_identity, scale,
                                    c.task_identity.ca_lr * scale, c.batch_size, c.statistics.method))
    self.stages.append(StageSetup('prompt', self.method, c.prompt, config_lib.lr_scale(c),
                                  c.prompt.ca_lr, self.method.alignment_samples_per_class or c.batch_size,
                                  c.statistics.method))
    # The data first: a missing or unprepared dataset is reported before a large backbone loads.
    self.data = None
    if load_data:
      self.data = benchmarks.synthetic(c) if c.dry_run else benchmarks.load(c)
      if self.data.split.num_classes != self.num_classes:
        raise DataError(f'{self.data.description} has {self.data.split.num_classes} classes, '
                        f'config expects {self.num_classes}')
    # Without weights (cost analysis): the backbone's shapes only.
    self.backbone = self._load_backbone() if load_backbone else \
        jax.eval_shape(lambda: self.method.model.backbone.init(
            jax.random.PRNGKey(0), jnp.zeros((1, self.vit_cfg.image_size, self.vit_cfg.image_size, 3))))['params']
    self.split = self.data.split if self.data else None
    self._jitted = {}
    self._test_cache = {}    # task -> its test batches' frozen features (`_test_features`)
    self._stage_features = {}   # stage -> (task, features, labels) (`_frozen_train_features`)
    self._where = 'the start of the run'    # for the line an interrupt prints
    self.prompt_usage = {}      # test task -> [pool] entries its images chose, last evaluation

  # --------------------------------------------------------------------------- setup

  def _vit_config(self):
    c = self.config
    info = backbone_lib.NAMED[c.backbone.name]
    overrides = dict(image_size=c.backbone.image_size, final_norm=not info.fc_norm)
    from cljax.models.vit import vit_config  # pylint: disable=g-import-not-at-top
    if c.model_override:
      full = vit_config(c.model_override, **overrides)
    elif info.arch == 'demo':
      full = backbone_lib.demo_vit_config(**overrides)
    else:
      full = vit_config(info.arch, **overrides)
    if c.backbone.depth > full.depth:
      raise ConfigError(f'config.backbone.depth={c.backbone.depth} exceeds the {full.depth} blocks of '
                        f'{c.model_override or c.backbone.name}; use 1..{full.depth} (0 = all)')
    return dataclasses.replace(full, depth=c.backbone.depth) if c.backbone.depth else full

  def _load_backbone(self):
    c = self.config
    path = config_lib.weights_path(c)
    info = backbone_lib.NAMED[c.backbone.name]
    if c.model_override or (c.dry_run and not os.path.exists(path)):
      if c.dry_run and not c.model_override:
        self._log(f'note: dry run with random backbone weights: {path} does not exist '
                  f'(a real run would stop here; get it from: {info.how_to_get})')
      params = self._jit(lambda k: self.method.model.backbone.init(
          k, jnp.zeros((1, self.vit_cfg.image_size, self.vit_cfg.image_size, 3)))['params'])(
              jax.random.PRNGKey(c.seed))
    else:
      if not os.path.exists(path):
        raise CheckpointError(f'backbone weights {path} do not exist: get {info.file} '
                              f'({info.how_to_get}) and put it there, or set config.backbone.weights')
      params, notes = backbone_lib.load_backbone(path, self.vit_cfg, truncate=bool(c.backbone.depth))
      for n in notes:
        self._log(f'backbone: {n}')
    return jax.device_put(params, self.replicated)

  def _jit(self, fn, **kwargs):
    """jax.jit of ``fn`` at the run's matmul precision."""
    return jax.jit(with_matmul_precision(fn, self.matmul_precision), **kwargs)

  def _log(self, message):
    self.run_log.print(message)

  def stage_template(self, name: str):
    stage = next(s for s in self.stages if s.name == name)
    return jax.eval_shape(stage.method.init, jax.random.PRNGKey(0))

  # --------------------------------------------------------------------------- jitted steps

  def _steps(self, stage: StageSetup):
    if stage.name in self._jitted:
      return self._jitted[stage.name]
    method, cfg = stage.method, stage.cfg
    tx = optimizer(cfg)
    ca_tx = optim.transform(cfg.get('ca_optimizer', 'sgd'), 0.0,
                            weight_decay=cfg.get('ca_weight_decay', 0.0))

    def ca_step(params, opt_state, x, y, seen, lr, lr_tree):
      def loss_fn(p):
        logits = mask_logits(method.model.logits(p, x), seen)
        return cross_entropy(logits, y, jnp.ones_like(y, bool))
      loss, grads = jax.value_and_grad(loss_fn)(params)
      params, opt_state = optim.apply(ca_tx, grads, opt_state, params, lr_tree, lr)
      return params, opt_state, loss

    if self._reuses_features(stage):   # the step's "images" are the frozen features
      on_features = lambda p, s, backbone, feats, *rest: method.head_loss(p, s, feats, *rest)
      method = dataclasses.replace(method, loss=on_features)
    steps = {
        'tx': tx, 'ca_tx': ca_tx,
        'train': self._jit(train_step_fn(method, tx), donate_argnums=(0, 1), static_argnames=('flags',)),
        'ca': self._jit(ca_step, donate_argnums=(0, 1)),
        'features': self._jit(method.features),
        'predict': self._jit(method.predict),
        'sample': self._jit(alignment.sample, static_argnums=(2,)),
    }
    self._jitted[stage.name] = steps
    return steps

  def _reuses_features(self, stage: StageSetup) -> bool:
    return bool(stage.cfg.get('reuse_features', False)) and stage.method.head_loss is not None

  def _frozen_features(self, stage: StageSetup):
    """The jitted (backbone, images) -> pooled features of a frozen-backbone stage (the
    task-identity model): what its head reads, whatever the head's params."""
    key = f'frozen_features/{stage.name}'
    if key not in self._jitted:
      model = stage.method.model
      self._jitted[key] = self._jit(lambda backbone, images: model.features({'backbone': backbone}, images)[0])
    return self._jitted[key]

  def _frozen_train_features(self, stage: StageSetup, t: int):
    """(features [n, D], labels [n]) of task t's training images in index order, test transform,
    computed once per task: with reuse_features, what stage 1 trains on and summarises."""
    if self._stage_features.get(stage.name, (None,))[0] != t:
      features = self._frozen_features(stage)
      self._stage_features[stage.name] = (t,) + self._train_features(
          lambda batch: features(self.backbone, batch.images), t, train_transform=False)
    return self._stage_features[stage.name][1:]

  def _train_features(self, features, t: int, train_transform: bool, per_class: bool = False):
    """(features [n, D] float32, labels [n]) on the host: ``features(batch)`` over task t's
    training images (the statistics pass: its own seed; shuffled only with the train transform,
    as the references' loaders), padding rows dropped.

    ``per_class``: one class at a time, its images shuffled, in batches of batch_size: the
    references' per-class loaders ([N] ``datasets.py`` split_single_class_dataset, RandomSampler;
    ``_compute_mean`` in both engines)."""
    groups = [(self.split.tasks[t], (self.config.seed, 9, t), train_transform)]
    if per_class:
      groups = [([k], (self.config.seed, 9, t, int(k)), True) for k in self.split.tasks[t]]
    feats, labels = [], []
    for classes, seed, shuffle in groups:
      for batch in self._train_batches(self.data.train.indices_of(classes), train_transform, seed,
                                       shuffle=shuffle):
        interrupts.check()
        keep = parallel.to_host(batch.mask)
        feats.append(parallel.to_host(features(batch)).astype(np.float32)[keep])
        labels.append(parallel.to_host(batch.labels)[keep])
    return np.concatenate(feats), np.concatenate(labels)

  # --------------------------------------------------------------------------- state

  def initial_state(self):
    c = self.config
    rng = jax.random.PRNGKey(c.seed)
    state = {'step': np.array(0, np.int32)}
    dim = self.vit_cfg.embed_dim
    for i, stage in enumerate(self.stages):
      state[stage.name] = {
          'params': self._jit(stage.method.init)(jax.random.fold_in(rng, i)),
          'method_state': stage.method.init_state(),
          'stats': ClassStats.empty(self.num_classes, dim, stage.stats_method, c.statistics.n_centroids),
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

  # --------------------------------------------------------------------------- loops

  def _limit(self, iterator, start_batch: int = 0):
    if self.config.dry_run:
      return (b for _, b in zip(range(self.config.dry_run_steps - start_batch), iterator))
    return iterator

  def _batches(self, indices, train: bool, seed, shuffle: bool, batch_size: int):
    it = pipeline.batches(self.data.train if train else self.data.test, indices, batch_size,
                          self.config.backbone.image_size, train=train, seed=seed, shuffle=shuffle,
                          rows=parallel.host_rows(batch_size, self.mesh),
                          workers=self.config.data_workers)
    return pipeline.prefetch(self._limit(it), self.data_sharding)

  def _train_batches(self, indices, train_transform: bool, seed, shuffle, start_batch: int = 0):
    """Training images (train transform) or training images with the test transform (stats);
    ``start_batch`` resumes an epoch (its order is a function of the seed)."""
    it = pipeline.batches(self.data.train, indices, self.config.batch_size,
                          self.config.backbone.image_size, train=train_transform, seed=seed,
                          shuffle=shuffle, start_batch=start_batch,
                          rows=parallel.host_rows(self.config.batch_size, self.mesh),
                          workers=self.config.data_workers)
    return pipeline.prefetch(self._limit(it, start_batch), self.data_sharding)

  def _context(self, stage_state, t: int):
    return step_context(self.split, stage_state['stats'], t)

  def train_stage(self, stage: StageSetup, stage_state, t: int, resume=None, save=None):
    """Train a stage's params on task t; returns the updated stage state.

    Every config.checkpoint_every_steps training steps, ``save(done, progress)`` receives what
    continues the stage: params, optimizer state, method state, the data position and the
    running sums of the epoch's metrics. ``resume=(done, progress)`` continues from one, with
    the same numbers as an uninterrupted run: each epoch's order is a function of the seed, so
    its first batches are skipped, and the lr schedule continues from the saved iteration."""
    c = self.config
    steps = self._steps(stage)
    method = stage.method
    if resume is None:
      params, method_state = method.begin_task(jax.tree.map(jnp.asarray, stage_state['params']),
                                               jax.tree.map(jnp.asarray, stage_state['method_state']), t)
      done, position = 0, None
    else:   # begin_task already applied
      done, progress = resume
      params, method_state = progress['params'], jax.tree.map(jnp.asarray, progress['method_state'])
      position = dict(zip(POSITION, (int(v) for v in progress['position'])))
    indices = self.data.train.indices_of(self.split.tasks[t])
    n_batches = pipeline.num_batches(len(indices), c.batch_size)
    reuse = self._reuses_features(stage)
    if c.dry_run:
      n_batches = min(n_batches, c.dry_run_steps)
    context = self._context(stage_state, t)
    t_arr = jnp.asarray(t, jnp.int32)
    stage_id = 1 + self.stages.index(stage)
    for p_index, phase in enumerate(method.training_phases(t, stage.cfg.epochs)):
      if position and p_index < position['phase']:
        continue
      epochs = min(phase.epochs, 1) if c.dry_run else phase.epochs
      params = jax.device_put(params, self.replicated)
      # The references re-create the optimizer every task. Placed as the step's outputs are, so
      # the second step does not compile the step again for another sharding of the state.
      opt_state = jax.device_put(steps['tx'].init(params), self.replicated)
      if position:
        opt_state = jax.device_put(jax.tree.unflatten(jax.tree.structure(opt_state),
                                                      progress['opt_state']), self.replicated)
      lr_tree = jax.tree.map(jnp.float32, method.lr_multipliers(params, t))
      lr_at = optim.schedule(stage.cfg, stage.cfg.lr * stage.lr_scale, phase.epochs, n_batches, c.schedule)
      if stage.cfg.get('schedule_first_task_only', False) and t > 0:
        lr_at = lambda it, base=stage.cfg.lr * stage.lr_scale: base   # quirk 11.8 (DualPrompt CUB)
      start, iteration = time.time(), position['iteration'] if position else 0
      # img/s over the phase, the part before a resume included (its images and seconds are in
      # the checkpoint); the ETA counts this invocation's epochs only.
      timing = progress.get('timing') if position else None
      eta_start = start
      phase_images, epochs_here = (0, 0) if timing is None else (int(timing[0]), 0)
      if timing is not None:
        start -= float(timing[1])
      tag = f'[{stage.name}{"/" + phase.name if phase.name != "train" else ""}]'
      global_step = self._global_step(stage, t, p_index, n_batches)
      for epoch in range(epochs):
        if position and epoch < position['epoch']:
          continue
        sums, count, first, epoch_start, epoch_images = {}, 0, 0, time.time(), 0
        if position:    # the checkpoint's epoch: its running sums, then its remaining batches
          sums = {k: jnp.asarray(v) for k, v in progress['sums'].items()}
          count, first, position = position['count'], position['batch'], None
        seed = (c.seed, stage_id, t, p_index, epoch)
        losses = []     # (batch, loss) not yet checked for NaN/Inf
        where = dict(stage=stage.name, task=t, epoch=epoch, epochs=epochs, n_batches=n_batches)
        if reuse:
          feats, labels = self._frozen_train_features(stage, t)
          batches = pipeline.prefetch(self._limit(pipeline.feature_batches(
              feats, labels, c.batch_size, seed, shuffle=True, start_batch=first,
              rows=parallel.host_rows(c.batch_size, self.mesh)), first), self.data_sharding)
        else:
          batches = self._train_batches(indices, True, seed, shuffle=True, start_batch=first)
        self._where = f'the {stage.name} stage of task {t + 1} (epoch {epoch + 1}/{epochs})'
        for b, batch in enumerate(batches, start=first):
          interrupts.check()
          lr = lr_at(iteration)
          params, opt_state, m = steps['train'](params, opt_state, method_state, self.backbone,
                                                batch.images, batch.labels, batch.mask, t_arr,
                                                context, jnp.float32(lr), lr_tree, flags=phase.flags)
          iteration += 1
          for k, v in m.items():
            sums[k] = sums.get(k, 0.0) + v
          count += 1
          done += 1
          losses.append((b, m['loss']))
          if save is not None and c.checkpoint_every_steps and done % c.checkpoint_every_steps == 0:
            losses = check_finite(losses, params, **where)   # a checkpoint is only ever of a good state
            done_images = min(len(indices), (b + 1) * c.batch_size) - first * c.batch_size
            save(done, {'params': params, 'opt_state': jax.tree.leaves(opt_state),
                        'method_state': method_state, 'sums': sums,
                        'position': np.array([p_index, epoch, b + 1, iteration, count], np.int64),
                        'timing': np.array([phase_images + done_images, time.time() - start])})
          epoch_images = min(len(indices), (b + 1) * c.batch_size) - first * c.batch_size
          self.run_log.progress(
              f'{tag} task {t + 1}/{self.num_tasks} epoch {epoch + 1}/{epochs}', b + 1, n_batches,
              epoch_start, {k: m[k] for k in ('loss', 'accuracy') if k in m}, images=epoch_images,
              force=bool(c.log_every_steps) and (b + 1) % c.log_every_steps == 0)
        check_finite(losses, params, **where)
        host = {k: float(parallel.to_host(v)) / max(count, 1) for k, v in sums.items()}
        lr = lr_at(iteration - 1)    # the last step's (also when resumed at the epoch's end)
        phase_images, epochs_here = phase_images + epoch_images, epochs_here + 1
        elapsed = time.time() - start
        rate = phase_images / max(elapsed, 1e-9)
        eta = (time.time() - eta_start) / epochs_here * (epochs - epoch - 1)
        self._log(f'  {tag} task {t + 1}/{self.num_tasks} epoch {epoch + 1}/{epochs} lr {lr:.2e} '
                  + ' '.join(f'{k} {v:.4f}' for k, v in sorted(host.items(), key=lambda kv: kv[0] != 'loss'))
                  + f' | {rate:.0f} img/s, eta {eta:.0f}s')
        self._record({'stage': stage.name, 'phase': phase.name, 'task': t, 'epoch': epoch, 'lr': lr,
                      'img_per_s': rate, **host}, f'train/{stage.name}', global_step + iteration)
    params, method_state = method.end_task(params, method_state, t)
    if method.after_training is not None:
      method_state = method.after_training(params, method_state, t, self._pass_runner(stage, indices, t))
    return {**stage_state, 'params': params, 'method_state': method_state}

  def _global_step(self, stage: StageSetup, t: int, phase_index: int, n_batches: int) -> int:
    """Optimizer steps of this stage before task t's phase `phase_index`: a TensorBoard step
    that is monotone over the run and the same after a resume."""
    c, total = self.config, 0
    for s in range(t + 1):
      n = n_batches if s == t else pipeline.num_batches(
          len(self.data.train.indices_of(self.split.tasks[s])), c.batch_size)
      n = min(n, c.dry_run_steps) if c.dry_run else n
      for p_index, phase in enumerate(stage.method.training_phases(s, stage.cfg.epochs)):
        if s == t and p_index == phase_index:
          return total
        total += (min(phase.epochs, 1) if c.dry_run else phase.epochs) * n
    return total

  def _pass_runner(self, stage, indices, t):
    """run_pass(fn, carry): fold a jitted fn over task t's training batches (train transform,
    shuffled, as the references' loaders), for bookkeeping such as SMoPE's usage counts."""
    def run_pass(fn, carry, params, method_state):
      jitted = self._jit(fn)
      for batch in self._train_batches(indices, True, (self.config.seed, 11, t), shuffle=True):
        carry = jitted(params, method_state, self.backbone, batch.images, batch.mask, carry)
      return carry
    return run_pass

  def update_statistics(self, stage: StageSetup, stage_state, t: int):
    """Class statistics of task t's classes from the stage's features (test transform, or the
    train transform for methods that summarise augmented images)."""
    c = self.config
    steps = self._steps(stage)
    t_arr = jnp.asarray(t, jnp.int32)
    if self._reuses_features(stage):   # the very features stage 1 just trained on
      feats, labels = self._frozen_train_features(stage, t)
    else:
      feats, labels = self._train_features(
          lambda batch: steps['features'](stage_state['params'], stage_state['method_state'],
                                          self.backbone, batch.images, t_arr, batch.mask),
          t, stage.method.statistics_train_transform,
          per_class=c.statistics.batches == 'per_class' and not stage.method.statistics_train_transform)
    classes = [k for k in self.split.tasks[t] if (labels == k).any()]
    stats = alignment.update_statistics(stage_state['stats'], feats, labels, classes,
                                        c.statistics.n_centroids, c.seed)
    return {**stage_state, 'stats': stats}

  def align(self, stage: StageSetup, stage_state, t: int):
    """Classifier alignment by Gaussian replay over the classes of tasks 0..t (t > 0)."""
    c = self.config
    cfg = stage.cfg
    steps = self._steps(stage)
    params = jax.device_put(stage_state['params'], self.replicated)
    lr_tree = jax.tree.map(jnp.float32, {k: jax.tree.map(lambda _: 1.0 if k == 'classifier' else 0.0, v)
                                         for k, v in params.items()})
    opt_state = steps['ca_tx'].init(params)
    seen = self.split.seen_mask(t)
    crct_num = sum(len(self.split.tasks[s]) for s in range(t))
    epochs = cfg.ca_epochs
    if c.dry_run:
      epochs, crct_num = min(epochs, 1), min(crct_num, c.dry_run_steps)
    if cfg.get('ca_schedule', 'cosine_epoch') == 'coswm':
      # [S]: the first iteration at ca_lr, then a cosine from ca_lr/10 to 1e-6 over every iteration.
      lr_at = lambda it, e: optim.coswm_lr(stage.ca_lr / 10, it, crct_num * cfg.ca_epochs, first=stage.ca_lr)
    else:
      lr_at = lambda it, e: optim.cosine_annealing_lr(stage.ca_lr, e, cfg.ca_epochs)
    stats = jax.device_put(stage_state['stats'], self.replicated)
    key = jax.random.fold_in(jax.random.PRNGKey(c.seed), 1000 * t + self.stages.index(stage))
    seen_dev = jnp.asarray(seen)
    iteration, start = 0, time.time()
    for epoch in range(epochs):
      interrupts.check()
      epoch_lr = lr_at(iteration, epoch)
      x, y, valid = steps['sample'](jax.random.fold_in(key, epoch), stats, stage.ca_samples)
      valid = parallel.to_host(valid) & seen[parallel.to_host(y)]
      rows = np.flatnonzero(valid)
      rows = rows[np.random.default_rng([c.seed, 7, t, epoch, self.stages.index(stage)]).permutation(len(rows))]
      losses = []
      for it in range(crct_num):
        chunk = rows[it * stage.ca_samples:(it + 1) * stage.ca_samples]
        if len(chunk) < stage.ca_samples:
          break
        lr = lr_at(iteration, epoch)
        params, opt_state, loss = steps['ca'](params, opt_state, x[chunk], y[chunk], seen_dev,
                                              jnp.float32(lr), lr_tree)
        iteration += 1
        losses.append(loss)
      mean_loss = float(np.mean([parallel.to_host(l) for l in losses])) if losses else float('nan')
      if losses and not np.isfinite(mean_loss):
        raise TrainingDivergedError(
            f'training diverged: non-finite alignment loss ({mean_loss}) in the {stage.name} stage, '
            f'task {t + 1}, alignment epoch {epoch + 1}; the workdir keeps the last good checkpoint; '
            f'lower config.{stage.name}.ca_lr and rerun with --config.rerun_with_changes=True to '
            f'continue from it')
      self.run_log.progress(f'[{stage.name}] task {t + 1} alignment epoch', epoch + 1, epochs, start,
                            {'loss': mean_loss})
      # The scalar step counts alignment epochs over the run (cfg.ca_epochs per task after the first).
      self._record({'stage': stage.name, 'task': t, 'epoch': epoch, 'event': 'alignment', 'lr': epoch_lr,
                    **({'loss': mean_loss} if losses else {})}, f'align/{stage.name}', (t - 1) * epochs + epoch + 1)
      if epoch == epochs - 1 or (epoch + 1) % 10 == 0:
        self._log(f'  [{stage.name}] task {t + 1} alignment epoch {epoch + 1}/{epochs} loss {mean_loss:.4f}')
    return {**stage_state, 'params': params}

  def _eval_step(self, stage_name: str, per_example: bool = True):
    """One jitted step: (correct, task-identity correct, count, correct without the batchwise
    vote) of a test batch; the last equals the first for methods without a vote, or when
    per_example is off (the deployed path alone, as the compute report counts it)."""
    key = f'eval/{stage_name}/{per_example}'
    if key in self._jitted:
      return self._jitted[key]
    method = next(s for s in self.stages if s.name == stage_name).method
    tii = next((s.method for s in self.stages if s.name == 'task_identity'), None)
    mask_test = self.config.mask_test_logits or method.mask_test_logits

    def step(params, method_state, tii_params, backbone, images, labels, mask, seen, class_to_task,
             tii_features=None):
      ids = jnp.zeros_like(labels)
      if tii is not None:
        if tii_features is None:    # the whole test-time path (benchmarks, compute report)
          tii_logits, _ = tii.predict(tii_params, {}, backbone, images, ids, mask)
        else:                       # the run's cached frozen features (exact, `_test_features`)
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

    self._jitted[key] = self._jit(step)
    return self._jitted[key]

  def evaluate(self, state, t: int, stage_name: str = 'prompt', per_example: bool = False):
    """Accuracy (%) and task-identity accuracy (%) on the test sets of tasks 0..t (and, with
    per_example, the accuracy without the batchwise vote).

    With stage_name='task_identity' the stage-1 model alone is scored: the fraction of test
    images whose predicted task is right (its "TII accuracy")."""
    c = self.config
    step = self._eval_step(stage_name, per_example)
    class_to_task = jnp.asarray(self.split.class_to_task)
    seen = jnp.asarray(self.split.seen_mask(t))
    tii_params = state['task_identity']['params'] if 'task_identity' in state else None
    params = state[stage_name]['params']
    method_state = state[stage_name]['method_state']
    acc, task_acc, acc_own = np.zeros(t + 1), np.zeros(t + 1), np.zeros(t + 1)
    self.prompt_usage = {}
    # A dry run checks the evaluation on the current task (the same steps serve every task).
    for i in ([t] if c.dry_run else range(t + 1)):
      cached = self._test_features(i) if tii_params is not None else None
      if stage_name == 'task_identity':    # the stage-1 head alone needs no image
        batches = (pipeline.Batch(None, labels, mask) for labels, mask, _ in cached)
      else:
        batches = self._batches(self.data.test.indices_of(self.split.tasks[i]), False, (0,), False,
                                c.eval_batch_size)
      sums = []
      for b, batch in enumerate(batches):
        interrupts.check()
        sums.append(step(params, method_state, tii_params, self.backbone, batch.images,
                         batch.labels, batch.mask, seen, class_to_task,
                         None if cached is None else cached[b][2]))
      correct, task_correct, total, own = (sum(int(parallel.to_host(x[k])) for x in sums) for k in range(4))
      if sums and len(sums[0]) > 4:    # pool entries chosen by task i's test images
        self.prompt_usage[i] = np.sum([parallel.to_host(x[4]) for x in sums], axis=0)
      acc[i] = 100.0 * correct / max(total, 1)
      task_acc[i] = 100.0 * task_correct / max(total, 1)
      acc_own[i] = 100.0 * own / max(total, 1)
    return (acc, task_acc, acc_own) if per_example else (acc, task_acc)

  def _test_features(self, i: int):
    """[(labels, mask, frozen features)] per test batch of task i, computed once per run.

    The task-identity model reads the frozen backbone's features of the test images; neither
    the backbone nor the test transform changes during a run, so every evaluation after the
    first reuses them (exact: the same jitted computation on the same batches) instead of
    running the backbone again: the stage-1 evaluations then cost a head, and each prompt-stage
    evaluation one prompted forward instead of two."""
    if i not in self._test_cache:
      features = self._frozen_features(next(s for s in self.stages if s.name == 'task_identity'))
      indices = self.data.test.indices_of(self.split.tasks[i])
      self._test_cache[i] = [(batch.labels, batch.mask, features(self.backbone, batch.images))
                             for batch in self._batches(indices, False, (0,), False,
                                                        self.config.eval_batch_size)]
    return self._test_cache[i]

  # --------------------------------------------------------------------------- run

  def _record(self, entry: Dict[str, Any], scalars_prefix: Optional[str] = None,
              step: Optional[int] = None) -> None:
    self.run_log.record(entry, scalars_prefix, step)

  def run(self, joined: Optional[str] = None) -> Dict[str, Any]:
    """Train and evaluate every task; ``joined`` says how the processes of a multi-process run
    joined (`cljax.parallel.initialize_distributed`), for the log."""
    lock = workdir_lock.WorkdirLock(self.workdir)

    def claim():   # on several processes: decided by process 0, agreed by all
      lock.acquire()
      try:
        check_workdir(self.config, self.workdir, claim=True)
      except CljaxError:
        lock.release()
        raise
    parallel.agree(claim, 'workdir')
    if joined:
      self._log(f'several processes: {joined}')
    ckpt = task_checkpoints.RunCheckpoints(self.workdir, int(self.mesh.devices.size))
    stopped = []
    try:
      return self._run(ckpt)
    except KeyboardInterrupt:
      interrupts.ignore()     # closing completes the checkpoint being written
      if ckpt.last is None:
        raise RunInterrupted(f'interrupted in {self._where}, before the first checkpoint: the '
                             f'same command starts the run again') from None
      raise RunInterrupted(f'interrupted in {self._where}; nothing is lost: the workdir keeps '
                           f'{ckpt.describe_last()}, and the same command resumes from it') from None
    except Exception:
      stopped = parallel.stopped_processes()   # [] on a single process
      raise
    finally:   # also on an error: a mid-stage checkpoint being written is completed, unless
      if not stopped:   # another process died: it cannot take part, and the write is dropped
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
      self._log(f'resuming {self.workdir}: task {task + 1} {stage} stage already done')
    self._log(f'{self.data.description}: {self.num_tasks} tasks, {self.num_classes} classes; '
              f'method {c.method}; backbone {c.backbone.name} ({self.vit_cfg.embed_dim}d x '
              f'{self.vit_cfg.depth}); {self.mesh.devices.size} device(s)')
    self._log('class order (classes of each task): ' + ' | '.join(
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
        self._where = task_checkpoints.describe(step)
        resume = ckpt.restore_mid_stage(step)
        if not trained:   # what a killed run wrote after the checkpoint continued from goes
          ckpt.forget_later_records(
              step * task_checkpoints.MID_STAGE_SCALE + resume[0] if resume else done_step)
          trained = True
        if resume is not None:
          self._log(f'resuming {self.workdir}: {task_checkpoints.describe(step)} after {resume[0]} '
                    f'training steps')
        s = self.train_stage(stage, state[stage.name], t, resume,
                             save=lambda done, progress, step=step: ckpt.save_mid_stage(step, done, progress))
        state = {**state, stage.name: s}
        if self.method.uses_statistics or stage.name == 'task_identity':
          state[stage.name] = self.update_statistics(stage, state[stage.name], t)
        if stage.name == 'task_identity':
          before = self.evaluate(state, t, 'task_identity')[1]
          if t > 0:
            state[stage.name] = self.align(stage, state[stage.name], t)
          after = self.evaluate(state, t, 'task_identity')[1]
          state['stage1_task_identity_accuracy'][:, t] = [before.mean(), after.mean()]
          self._log(f'task {t + 1} task-identity model: accuracy of predicted task '
                    f'{before.mean():.2f}% before alignment, {after.mean():.2f}% after')
          self._record({'task': t, 'event': 'task_identity_model',
                        'task_identity_accuracy_before_alignment': float(before.mean()),
                        'task_identity_accuracy_after_alignment': float(after.mean())},
                       'eval/task_identity_model', t + 1)
        else:
          if self.method.uses_statistics and t > 0:
            acc_before, _ = self.evaluate(state, t)
            state['accuracy_before_alignment'][: t + 1, t] = acc_before
            state[stage.name] = self.align(stage, state[stage.name], t)
          acc, task_acc, acc_own = self.evaluate(state, t, per_example=True)
          state['accuracy'][: t + 1, t] = acc
          if 'accuracy_per_example' in state:
            state['accuracy_per_example'][: t + 1, t] = acc_own
          for i, counts in self.prompt_usage.items():
            state['prompt_usage'][t, i] = counts
          state['task_identity_accuracy'][: t + 1, t] = task_acc
          if not (self.method.uses_statistics and t > 0):
            state['accuracy_before_alignment'][: t + 1, t] = acc
          self._report(state, t)
          self._plot(state, t, last_task)
          elapsed = time.time() - run_start
          self._log(f'task {t + 1}/{self.num_tasks} done, {duration(elapsed)} so far; eta '
                    f'{duration(elapsed / (t + 1 - first_task) * (last_task - t - 1))}')
        state['step'] = np.array(step, np.int32)
        self._record({'stage': stage.name, 'task': t, 'event': 'stage_done',
                      'seconds': round(time.time() - stage_start, 2)})
        # A dry run checks checkpointing on the first and last task only: the rest is the same
        # code, and writes would dominate its time.
        if not c.dry_run or t in (0, last_task - 1):
          ckpt.save(step, state, state[stage.name]['params'])
        else:
          ckpt.clear_mid_stage()
        self._write_results(state, time.time() - run_start)
    if not trained and os.path.exists(os.path.join(self.workdir, 'results.json')):
      with open(os.path.join(self.workdir, 'results.json')) as f:   # a finished run: as it was
        return json.load(f)
    return self._write_results(state, time.time() - run_start)

  def _write_results(self, state, seconds):
    """results.json after every stage: what a user reads while a run goes on."""
    results = self._results(state, seconds)
    if parallel.is_main():
      tmp = os.path.join(self.workdir, 'results.json.tmp')
      with open(tmp, 'w') as f:
        json.dump(results, f, indent=2)
      os.replace(tmp, os.path.join(self.workdir, 'results.json'))   # never a half-written file
    return results

  def _report(self, state, t: int):
    """The matrix and one line of the figures the method has (no task identity for a method
    that chooses no prompt, no before-alignment figure for one that does not align)."""
    acc = state['accuracy']
    definition = self.method.metric_definition
    summary = metrics.summary(acc, t, state['task_identity_accuracy'], definition)
    self._log(metrics.format_matrix(acc, t, f'after task {t + 1}: accuracy (%), rows = test task, columns = after task'))
    entry = {'task': t, 'event': 'evaluation', **summary}
    if not self.method.chooses_prompts:    # no per-example choice: its accuracy would mislead
      del entry['task_identity_accuracy']
    if self.method.uses_statistics:
      entry['average_accuracy_before_alignment'] = metrics.average_accuracy(state['accuracy_before_alignment'], t)
    self._log(f'after task {t + 1}: ' + metrics.summary_line(entry, definition))
    if 'accuracy_per_example' in state:
      entry['average_accuracy_per_example'] = metrics.summary(state['accuracy_per_example'], t)['average_accuracy']
      self._log(f'after task {t + 1}: without the batchwise prompt vote (each image its own prompt): '
                f'average accuracy {entry["average_accuracy_per_example"]:.2f}')
    if 'prompt_usage' in state:
      used = state['prompt_usage'][t, : t + 1].sum(0)
      self._log(f'after task {t + 1}: pool entries chosen by the test images: '
                f'{int((used > 0).sum())} of {used.size} ('
                + ', '.join(f'{e}: {100 * used[e] / used.sum():.0f}%' for e in np.flatnonzero(used)) + ')')
    self._record(entry, 'eval', t + 1)

  def _plot(self, state, t: int, last_task: int) -> None:
    """PNG plots after each evaluated task (a dry run: first and last only, they cost ~1 s)."""
    if not parallel.is_main() or (self.config.dry_run and t not in (0, last_task - 1)):
      return
    plots.write_all(self.workdir, state, t, expert_layers=self.config.prompt.layers,
                    chosen_task=self.method.chooses_prompts)
    if 'prompt_usage' in state:
      plots.prompt_usage(state['prompt_usage'][t], t, os.path.join(self.workdir, 'plots', 'prompt_usage.png'),
                         f'{self.config.method}: pool entries chosen by each task\'s test images, after task {t + 1}')

  def _results(self, state, seconds: float) -> Dict[str, Any]:
    acc = np.asarray(state['accuracy'])
    done = int(state['step']) // 2
    k = max(done, 1)    # a run stopped early (stop_after_task) is scored on its completed tasks
    seen = lambda name: np.asarray(state[name])[:k, :k]
    definition = self.method.metric_definition
    results = {
        'config': config_lib.to_json(self.config),
        'benchmark': self.data.description if self.data else '',
        # FA, CA, FM by the definition of the method's reference; FM by every definition.
        **metrics.scores(seen('accuracy'), definition),
        'accuracy_matrix': acc.tolist(),
        'class_order': [list(map(int, classes)) for classes in self.split.tasks] if self.split else [],
        **(self.data.record if self.data else {}),
    }
    # Only the figures the method has (ALGORITHMS.md 6): a task/prompt chosen per test image, a
    # head aligned by Gaussian replay, a stage-1 task-identity model, a keyed pool.
    if self.method.chooses_prompts:
      results['task_identity_accuracy'] = metrics.average_accuracy(seen('task_identity_accuracy'), k - 1)
      results['task_identity_matrix'] = np.asarray(state['task_identity_accuracy']).tolist()
    if self.method.uses_statistics:
      results['final_average_accuracy_before_alignment'] = metrics.final_average_accuracy(seen('accuracy_before_alignment'))
      results['accuracy_matrix_before_alignment'] = np.asarray(state['accuracy_before_alignment']).tolist()
    if 'task_identity' in state:
      results['stage1_task_identity_accuracy'] = np.asarray(state['stage1_task_identity_accuracy']).tolist()
    if 'prompt_usage' in state:
      usage = np.asarray(state['prompt_usage'])[k - 1, :k]
      results['prompt_usage'] = {
          'what': f'test images of each task (rows, tasks 1..{k}) choosing each pool entry (columns), '
                  f'after task {k}; top-{self.config.prompt.top_k} choices, so a row sums to '
                  f'top_k x images',
          'counts': usage.astype(int).tolist(),
          'entries_used': int((usage.sum(0) > 0).sum()), 'pool_size': int(usage.shape[1])}
    return {
        **results,
        'tasks_completed': done,
        'seconds_this_invocation': round(seconds, 1),
        'devices': int(self.mesh.devices.size),
        'matmul_precision': self.matmul_precision,
        **({} if 'accuracy_per_example' not in state else {
            # With a batchwise vote at test, the figures without it (ALGORITHMS.md D1).
            'final_average_accuracy_per_example': metrics.final_average_accuracy(seen('accuracy_per_example')),
            'cumulative_average_accuracy_per_example':
                metrics.cumulative_average_accuracy(seen('accuracy_per_example')),
            'forgetting_per_example': metrics.forgetting(seen('accuracy_per_example'), variant=definition),
            'accuracy_matrix_per_example': np.asarray(state['accuracy_per_example']).tolist()}),
    }


# config.json's record of the changes a rerun made with config.rerun_with_changes.
HISTORY = '_history'
# Keys that do not change a run's numbers: a rerun may change them.
RERUN_MAY_CHANGE = ('log_every_steps', 'stop_after_task', 'checkpoint_every_steps',
                    'distributed_timeout_s', 'rerun_with_changes', 'compilation_cache',
                    'data_workers', HISTORY)


def check_workdir(config, workdir: str, claim: bool = False) -> None:
  """Refuse a ``workdir`` holding another config's run; with ``claim``, write config.json into
  it (only once everything is validated: a config that fails does not claim a workdir)."""
  if not workdir:
    raise ConfigError('no workdir given: pass --workdir=<folder for checkpoints and results>')
  if '://' in workdir:
    raise ConfigError(f'workdir {workdir} is a URL, and cljax writes its workdir (results, logs, '
                      f'ledger) as files: mount the bucket (e.g. gcsfuse) or use a filesystem every '
                      f'host sees, and pass its path')
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ConfigError(f'workdir {workdir} is a file, not a folder; pass another --workdir')
  path = os.path.join(workdir, 'config.json')
  current = config_lib.to_json(config)
  if os.path.exists(path):
    try:
      with open(path) as f:
        saved = json.load(f)
    except ValueError as e:
      raise CheckpointError(f'{path} is damaged ({str(e).splitlines()[0]}); delete {workdir} to start '
                            f'over, or use another --workdir') from e
    differ = config_lib.differences(saved, current, ignore=RERUN_MAY_CHANGE)
    if differ and not config.rerun_with_changes:
      raise ConfigError(f'{workdir} holds a run of a different config ({"; ".join(differ[:4])}); '
                        f'use another --workdir, delete that one to start over, or continue its '
                        f'remaining stages with the new values: --config.rerun_with_changes=True')
    if differ and claim:    # the stages not yet completed run with the new values
      history = saved.get(HISTORY, []) + [{'time': round(time.time(), 1), 'changed': differ}]
      _write_json(path, {**current, HISTORY: history})
  elif claim:
    try:
      os.makedirs(workdir, exist_ok=True)
    except OSError as e:
      raise ConfigError(f'cannot create workdir {workdir} ({e.strerror}); pass another --workdir') from e
    _write_json(path, current)


def _write_json(path: str, value) -> None:
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(value, f, indent=2, sort_keys=True)
  os.replace(tmp, path)    # a kill leaves no half-written file


def run(config, workdir: str, joined: Optional[str] = None) -> Dict[str, Any]:
  """Run ``config`` in ``workdir`` (resuming what it holds); ``joined``: see Experiment.run."""
  # The config and the workdir (another config's run, or a live run) are checked before
  # anything is loaded or compiled.
  config = config_lib.validate(config)
  compilation_cache.enable(config.compilation_cache, workdir)
  if config.dry_run:    # at a batch that fits the machine, checked as such (cljax/dry_run.py)
    from cljax import dry_run  # pylint: disable=g-import-not-at-top
    return dry_run.run(config, workdir)
  parallel.agree(lambda: (check_workdir(config, workdir),
                          workdir_lock.WorkdirLock(workdir).check()), 'workdir')
  return Experiment(config, workdir).run(joined)
