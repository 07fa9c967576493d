"""One stage of one task: its training loop (epochs, phases, mid-stage checkpoints, resume) and
its classifier alignment by Gaussian replay (ALGORITHMS.md 2.2-2.5).

``exp`` is the run's `cljax.continual.trainer.Experiment`: its config, data, mesh, backbone and
jitted steps. A stage's state is {'params', 'method_state', 'stats'}; each function returns the
updated one. A NaN/Inf loss raises TrainingDivergedError before it reaches a checkpoint.
"""

from __future__ import annotations

import contextlib
import itertools
import time

import jax
import jax.numpy as jnp
import numpy as np

from cljax import optim, parallel
from cljax.continual import alignment, class_statistics, interrupts, streams
from cljax.continual import steps as steps_lib
from cljax.continual.steps import StageSetup
from cljax.data import pipeline
from cljax.errors import TrainingDivergedError


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


def train_stage(exp, stage: StageSetup, stage_state, t: int, resume=None, save=None):
  """Train a stage's params on task t; returns the updated stage state.

  Every config.checkpoint_every_steps training steps, ``save(done, progress)`` receives what
  continues the stage: params, optimizer state, method state, the data position and the
  running sums of the epoch's metrics. ``resume=(done, progress)`` continues from one, with
  the same numbers as an uninterrupted run: each epoch's order is a function of the seed, so
  its first batches are skipped, and the lr schedule continues from the saved iteration."""
  c = exp.config
  steps = steps_lib.stage_steps(exp, stage)
  method = stage.method
  if resume is None:
    params, method_state = method.begin_task(jax.tree.map(jnp.asarray, stage_state['params']),
                                             jax.tree.map(jnp.asarray, stage_state['method_state']), t)
    done, position = 0, None
  else:   # begin_task already applied
    done, progress = resume
    params, method_state = progress['params'], jax.tree.map(jnp.asarray, progress['method_state'])
    position = dict(zip(POSITION, (int(v) for v in progress['position'])))
  indices = exp.data.train.indices_of(exp.split.tasks[t])
  n_batches = pipeline.num_batches(len(indices), c.batch_size)
  reuse = steps_lib.reuses_features(stage)
  if c.dry_run:
    n_batches = min(n_batches, c.dry_run_steps)
  context = steps_lib.step_context(exp.split, stage_state['stats'], t)
  t_arr = jnp.asarray(t, jnp.int32)
  stage_id = 1 + exp.stages.index(stage)
  for p_index, phase in enumerate(method.training_phases(t, stage.cfg.epochs)):
    if position and p_index < position['phase']:
      continue
    epochs = min(phase.epochs, 1) if c.dry_run else phase.epochs
    params = jax.device_put(params, exp.replicated)
    # The references re-create the optimizer every task. Placed as the step's outputs are, so
    # the second step does not compile the step again for another sharding of the state.
    opt_state = jax.device_put(steps['tx'].init(params), exp.replicated)
    if position:
      opt_state = jax.device_put(jax.tree.unflatten(jax.tree.structure(opt_state),
                                                    progress['opt_state']), exp.replicated)
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
    global_step = steps_before(exp, stage, t, p_index, n_batches)
    # One stream for the phase's epochs: its loader (config.data_workers' processes) starts once.
    stream = None if reuse else streams.train_epochs(
        exp, indices, [(c.seed, stage_id, t, p_index, e) for e in range(epochs)],
        (position['epoch'], position['batch']) if position else (0, 0))
    with contextlib.closing(stream) if stream is not None else contextlib.nullcontext():
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
          feats, labels = class_statistics.frozen_train_features(exp, stage, t)
          batches = streams.placed(exp, pipeline.feature_batches(
              feats, labels, c.batch_size, seed, shuffle=True, start_batch=first,
              rows=parallel.host_rows(c.batch_size, exp.mesh)), first)
        else:
          batches = itertools.islice(stream, n_batches - first)   # this epoch's
        exp.where = f'the {stage.name} stage of task {t + 1} (epoch {epoch + 1}/{epochs})'
        for b, batch in enumerate(batches, start=first):
          interrupts.check()
          lr = lr_at(iteration)
          params, opt_state, m = steps['train'](params, opt_state, method_state, exp.backbone,
                                                batch.images, batch.labels, batch.mask, t_arr,
                                                context, np.float32(lr), lr_tree, flags=phase.flags)
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
          exp.run_log.progress(
              f'{tag} task {t + 1}/{exp.num_tasks} epoch {epoch + 1}/{epochs}', b + 1, n_batches,
              epoch_start, {k: m[k] for k in ('loss', 'accuracy') if k in m}, images=epoch_images,
              force=bool(c.log_every_steps) and (b + 1) % c.log_every_steps == 0)
        check_finite(losses, params, **where)
        host = {k: float(parallel.to_host(v)) / max(count, 1) for k, v in sums.items()}
        lr = lr_at(iteration - 1)    # the last step's (also when resumed at the epoch's end)
        phase_images, epochs_here = phase_images + epoch_images, epochs_here + 1
        elapsed = time.time() - start
        rate = phase_images / max(elapsed, 1e-9)
        eta = (time.time() - eta_start) / epochs_here * (epochs - epoch - 1)
        exp.log(f'  {tag} task {t + 1}/{exp.num_tasks} epoch {epoch + 1}/{epochs} lr {lr:.2e} '
                  + ' '.join(f'{k} {v:.4f}' for k, v in sorted(host.items(), key=lambda kv: kv[0] != 'loss'))
                  + f' | {rate:.0f} img/s, eta {eta:.0f}s')
        exp.record({'stage': stage.name, 'phase': phase.name, 'task': t, 'epoch': epoch, 'lr': lr,
                      'img_per_s': rate, **host}, f'train/{stage.name}', global_step + iteration)
  params, method_state = method.end_task(params, method_state, t)
  if method.after_training is not None:
    method_state = method.after_training(params, method_state, t, pass_runner(exp, stage, indices, t))
  return {**stage_state, 'params': params, 'method_state': method_state}


def steps_before(exp, stage: StageSetup, t: int, phase_index: int, n_batches: int) -> int:
  """Optimizer steps of this stage before task t's phase `phase_index`: a TensorBoard step
  that is monotone over the run and the same after a resume."""
  c, total = exp.config, 0
  for s in range(t + 1):
    n = n_batches if s == t else pipeline.num_batches(
        len(exp.data.train.indices_of(exp.split.tasks[s])), c.batch_size)
    n = min(n, c.dry_run_steps) if c.dry_run else n
    for p_index, phase in enumerate(stage.method.training_phases(s, stage.cfg.epochs)):
      if s == t and p_index == phase_index:
        return total
      total += (min(phase.epochs, 1) if c.dry_run else phase.epochs) * n
  return total


def pass_runner(exp, stage, indices, t):
  """run_pass(fn, carry): fold a jitted fn over task t's training batches (train transform,
  shuffled, as the references' loaders), for bookkeeping such as SMoPE's usage counts. ``fn``
  is jitted once per run (a method passes the same function at every task)."""
  def run_pass(fn, carry, params, method_state):
    key = ('pass', stage.name, fn)
    if key not in exp.jitted:
      exp.jitted[key] = exp.jit(fn)
    jitted = exp.jitted[key]
    for batch in streams.train_batches(exp, indices, True, (exp.config.seed, 11, t), shuffle=True):
      carry = jitted(params, method_state, exp.backbone, batch.images, batch.mask, carry)
    return carry
  return run_pass


def align(exp, stage: StageSetup, stage_state, t: int):
  """Classifier alignment by Gaussian replay over the classes of tasks 0..t (t > 0)."""
  c = exp.config
  cfg = stage.cfg
  steps = steps_lib.stage_steps(exp, stage)
  params = jax.device_put(stage_state['params'], exp.replicated)
  lr_tree = jax.tree.map(jnp.float32, {k: jax.tree.map(lambda _: 1.0 if k == 'classifier' else 0.0, v)
                                       for k, v in params.items()})
  opt_state = steps['ca_tx'].init(params)
  seen = exp.split.seen_mask(t)
  crct_num = sum(len(exp.split.tasks[s]) for s in range(t))
  epochs = cfg.ca_epochs
  if c.dry_run:
    epochs, crct_num = min(epochs, 1), min(crct_num, c.dry_run_steps)
  if cfg.get('ca_schedule', 'cosine_epoch') == 'coswm':
    # [S]: the first iteration at ca_lr, then a cosine from ca_lr/10 to 1e-6 over every iteration.
    lr_at = lambda it, e: optim.coswm_lr(stage.ca_lr / 10, it, crct_num * cfg.ca_epochs, first=stage.ca_lr)
  else:
    lr_at = lambda it, e: optim.cosine_annealing_lr(stage.ca_lr, e, cfg.ca_epochs)
  stats = jax.device_put(stage_state['stats'], exp.replicated)
  key = jax.random.fold_in(jax.random.PRNGKey(c.seed), 1000 * t + exp.stages.index(stage))
  seen_dev = jnp.asarray(seen)
  iteration, start = 0, time.time()
  for epoch in range(epochs):
    interrupts.check()
    epoch_lr = lr_at(iteration, epoch)
    x, y, valid = steps['sample'](jax.random.fold_in(key, epoch), stats, stage.ca_samples)
    rows = alignment.epoch_rows(parallel.to_host(valid), parallel.to_host(y), seen,
                                (c.seed, 7, t, epoch, exp.stages.index(stage)))
    losses = []
    for chunk in alignment.iteration_rows(rows, stage.ca_samples, crct_num):
      lr = lr_at(iteration, epoch)
      x_chunk, y_chunk = steps['rows'](x, y, chunk)
      params, opt_state, loss = steps['ca'](params, opt_state, x_chunk, y_chunk, seen_dev,
                                            np.float32(lr), lr_tree)
      iteration += 1
      losses.append(loss)
    mean_loss = float(np.mean([parallel.to_host(l) for l in losses])) if losses else float('nan')
    if losses and not np.isfinite(mean_loss):
      raise TrainingDivergedError(
          f'training diverged: non-finite alignment loss ({mean_loss}) in the {stage.name} stage, '
          f'task {t + 1}, alignment epoch {epoch + 1}; the workdir keeps the last good checkpoint; '
          f'lower config.{stage.name}.ca_lr and rerun with --config.rerun_with_changes=True to '
          f'continue from it')
    exp.run_log.progress(f'[{stage.name}] task {t + 1} alignment epoch', epoch + 1, epochs, start,
                          {'loss': mean_loss})
    # The scalar step counts alignment epochs over the run (cfg.ca_epochs per task after the first).
    exp.record({'stage': stage.name, 'task': t, 'epoch': epoch, 'event': 'alignment', 'lr': epoch_lr,
                  **({'loss': mean_loss} if losses else {})}, f'align/{stage.name}', (t - 1) * epochs + epoch + 1)
    if epoch == epochs - 1 or (epoch + 1) % 10 == 0:
      exp.log(f'  [{stage.name}] task {t + 1} alignment epoch {epoch + 1}/{epochs} loss {mean_loss:.4f}')
  return {**stage_state, 'params': params}
