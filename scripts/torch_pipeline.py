"""The HiDe-Prompt / NoRGa two-stage pipeline with PyTorch eager fp32 doing every model computation:
the other side of the end-to-end comparison (scripts/end_to_end.py).

  python scripts/torch_pipeline.py --config=configs/demo.py --workdir=/tmp/torch_demo
  python scripts/torch_pipeline.py --config=configs/demo.py:hideprompt --workdir=/tmp/t \
      --config.stop_after_task=1 --config.prompt.epochs=2

`TorchPipeline.run` mirrors `cljax.continual.experiment.Experiment._run` step for step: per task,
stage 1 (the task-identity model: frozen backbone + residual MLP head, task-masked CE, Adam,
clipping) trains, summarises its features, is scored before and after its alignment; then stage 2
(the prompt pool + head: the previous entry copied in, prompt momentum, the contrastive
regulariser against the stored class means, lr multipliers with NoRGa's gate scalars frozen after
task 0) trains, summarises, is evaluated before alignment, aligned and evaluated with the
stage-1-predicted task choosing the prompt. Only the model compute differs: everything on the
host is cljax's own code, called with the arguments the trainer passes (the data and its split,
`pipeline.batches` with the trainer's seeds, so the same images in the same order,
`alignment.update_statistics`, the lr schedules of `cljax.optim`, the lr multipliers of the
method, the alignment shuffles, `cljax.continual.metrics`), and the initial weights are the
trainer's (`Experiment.initial_state()` and the demo backbone, through `torch_names`).

Differences, by design: the alignment's Gaussian draws come from torch's generator, not
jax.random (``--alignment_noise=jax`` draws cljax's very samples instead); padded rows of a last
batch are dropped (torch runs the real rows, as the references' smaller last batch, where cljax
pads and masks: the same numbers); PyTorch clips by max_norm / (norm + 1e-6), optax by
max_norm / norm; no checkpoints, plots or TensorBoard are written. Results go to
<workdir>/torch_results.json with the keys of cljax's results.json plus the timings.

torch is a test-time oracle: this script and `cljax_testing.torch_oracle` are the only places that
import it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from typing import Any, Dict, Iterator, List, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from flax import traverse_util

from cljax import config as config_lib
from cljax import optim
from cljax.checkpoints import backbones, torch_names
from cljax.continual import alignment, metrics, trainer
from cljax.data import pipeline
from cljax.errors import ConfigError, TrainingDivergedError
from cljax_testing.torch_oracle import PromptedViT

METHODS = ('norga', 'hideprompt')
PHASES = ('setup', 'stage1_train', 'stage2_train', 'statistics', 'alignment', 'evaluation')
RESULTS = 'torch_results.json'


def check_config(c) -> None:
  """Refuse what this pipeline does not mirror, before anything is loaded."""
  if c.method not in METHODS:
    raise ConfigError(f'scripts/torch_pipeline.py mirrors the HiDe/NoRGa two-stage pipeline only; '
                      f'config.method={c.method!r} is not one of {", ".join(METHODS)}')
  if not c.task_identity.enabled:
    raise ConfigError('scripts/torch_pipeline.py needs the task-identity stage: set '
                      'config.task_identity.enabled=True')
  if c.dry_run:
    raise ConfigError('scripts/torch_pipeline.py does not mirror dry runs: drop config.dry_run')
  if c.dtype != 'float32':
    raise ConfigError(f'the PyTorch side runs eager fp32; config.dtype={c.dtype!r} would compare '
                      f'different arithmetic: use float32')


# ----------------------------------------------------------------------------- batches

class TorchBatch:
  """The real rows of a cljax batch as torch tensors (images NCHW; features [n, D] as they are)."""

  def __init__(self, batch: pipeline.Batch):
    batch = pipeline.host_input(batch)    # uint8 pixels -> the model's float input
    keep = batch.mask
    images = batch.images[keep]
    self.images = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2) if images.ndim == 4 else images))
    self.labels = torch.from_numpy(batch.labels[keep].astype(np.int64))
    self.size = int(keep.sum())


def prefetch(iterator: Iterator[pipeline.Batch], size: int = 2) -> Iterator[TorchBatch]:
  """Decode and convert the next batches in a background thread, as the trainer's
  `pipeline.prefetch` does for its devices."""
  return pipeline.in_background(iterator, TorchBatch, size)


# ----------------------------------------------------------------------------- model pieces

def momentum_pool(prompt: torch.Tensor, t: int, momentum: float) -> torch.Tensor:
  """HiDe's training pool: entry t becomes (1-m) P_t + m sg(mean_{s<t} P_s) (t > 0)."""
  if momentum <= 0 or t == 0:
    return prompt
  mean = prompt[:, :, :t].detach().mean(2)
  pool = prompt.clone()
  pool[:, :, t] = (1 - momentum) * prompt[:, :, t] + momentum * mean
  return pool


def contrastive_regulariser(features, means, temperature: float = 0.8):
  """mean_i CE(M M^T / T, i) with M = [stored means; batch features] (HiDe/NoRGa)."""
  m = torch.cat([means, features], 0)
  return F.cross_entropy(m @ m.t() / temperature, torch.arange(len(m)))


def masked(logits, class_mask: torch.Tensor):
  """Logits of classes outside class_mask set to -inf (the references' index_fill)."""
  return logits.masked_fill(~class_mask, float('-inf'))


def group_keys(params) -> Dict[str, List[str]]:
  """{group: [torch state-dict keys]} of a grouped cljax param tree."""
  return {group: [torch_names.torch_key(path) for path in traverse_util.flatten_dict(dict(tree))]
          for group, tree in params.items()}


def multipliers(tree) -> Dict[str, float]:
  """{torch key: lr multiplier} from a method's lr_multipliers tree."""
  out = {}
  for group in tree.values():
    for path, value in traverse_util.flatten_dict(dict(group)).items():
      out[torch_names.torch_key(path)] = float(value)
  return out


def make_optimizer(name: str, groups, weight_decay: float = 0.0):
  """torch's counterpart of `cljax.optim.transform` (lr set per step, per group)."""
  if name == 'adam':
    return torch.optim.Adam(groups, lr=0.0, betas=(0.9, 0.999), eps=1e-8)
  if name == 'adamw':
    return torch.optim.AdamW(groups, lr=0.0, betas=(0.9, 0.999), eps=1e-8, weight_decay=weight_decay)
  if name == 'sgd':
    return torch.optim.SGD(groups, lr=0.0, momentum=0.9, weight_decay=weight_decay)
  raise ConfigError(f'unknown optimizer {name!r}')


# ----------------------------------------------------------------------------- the pipeline

class TorchPipeline:
  """A config's HiDe/NoRGa run with torch models, cljax's host side and initial weights."""

  def __init__(self, config, workdir: str, alignment_noise: str = 'torch', verbose: bool = True):
    self.start = self.run_start = time.perf_counter()
    self.seconds = {k: 0.0 for k in PHASES}
    self.stage_seconds: Dict[str, float] = {}
    self.verbose = verbose
    config = config_lib.validate(config)
    check_config(config)
    if alignment_noise not in ('torch', 'jax'):
      raise ConfigError(f'alignment_noise must be torch or jax, got {alignment_noise!r}')
    self.alignment_noise = alignment_noise
    self.workdir = workdir
    with self.timed('setup'):
      # The trainer's own setup: data, split, backbone, methods, initial state (jax, CPU).
      self.exp = trainer.Experiment(config, workdir, verbose=False)
      self.config = c = self.exp.config
      self.split, self.data = self.exp.split, self.exp.data
      initial = self.exp.initial_state()
      self.stages = {s.name: s for s in self.exp.stages}
      self.models, self.keys, self.stats, self.template = {}, {}, {}, {}
      for name, stage in self.stages.items():
        params = initial[name]['params']
        self.keys[name] = group_keys(params)
        self.models[name] = self._build(name)
        self.set_params(name, params)
        self.stats[name] = initial[name]['stats']
        self.template[name] = params     # the shapes the method's lr_multipliers read
      T = self.exp.num_tasks
      self.acc = np.zeros((T, T), np.float32)
      self.acc_before = np.zeros((T, T), np.float32)
      self.task_acc = np.zeros((T, T), np.float32)
      self.stage1_task_acc = np.zeros((2, T), np.float32)
      self.batchwise = bool(c.prompt.batchwise_prompt)
      self.acc_own = np.zeros((T, T), np.float32) if self.batchwise else None
      self.class_to_task = torch.from_numpy(self.split.class_to_task.astype(np.int64))
      self.tasks_done = 0
      self._stage1_features = (None,)   # (task, features, labels) with reuse_features
      self._test_cache: Dict[int, List[torch.Tensor]] = {}

  # --------------------------------------------------------------------------- setup

  def _build(self, name: str) -> PromptedViT:
    c, vit = self.config, self.exp.vit_cfg
    kw = dict(dim=vit.embed_dim, depth=vit.depth, heads=vit.num_heads, patch=vit.patch_size,
              image=vit.image_size, in_chans=vit.in_channels, num_classes=self.exp.num_classes,
              final_norm=vit.final_norm, fc_norm=not vit.final_norm)
    if name == 'task_identity':
      return PromptedViT(mlp_hidden=tuple(c.task_identity.mlp_hidden), **kw)
    p = c.prompt
    return PromptedViT(prompt_layers=tuple(p.layers), pool=p.pool_size or self.exp.num_tasks,
                       length=p.length, gate=p.gate, gate_act=p.activation,
                       prompt_key=p.prompt_key, kv_layout=p.kv_layout, **kw)

  def set_params(self, name: str, params):
    """Load the backbone and a stage's cljax params (grouped) into its torch model."""
    state = torch_names.to_state_dict({'backbone': self.exp.backbone, **params})
    self.models[name].load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()},
                                      strict=True)
    for key, p in self.models[name].named_parameters():   # the references' --freeze
      p.requires_grad = not key.startswith(backbones.BACKBONE_PREFIXES)

  @contextlib.contextmanager
  def timed(self, phase: str):
    t0 = time.perf_counter()
    try:
      yield
    finally:
      self.seconds[phase] += time.perf_counter() - t0

  def log(self, message: str):
    if self.verbose:
      print(message, flush=True)

  def _batches(self, dataset, indices, batch_size: int, train: bool, seed, shuffle: bool):
    return prefetch(pipeline.batches(dataset, indices, batch_size, self.config.backbone.image_size,
                                     train=train, seed=seed, shuffle=shuffle))

  def _params(self, name: str, keys) -> List[torch.nn.Parameter]:
    named = dict(self.models[name].named_parameters())
    return [named[k] for k in keys]

  # --------------------------------------------------------------------------- training

  def begin_task(self, name: str, t: int):
    """The method's begin_task: entry t starts from entry t-1 (shared_prompt_pool)."""
    if name == 'prompt' and t > 0:
      prompt = self.models[name].e_prompt.prompt
      if t < prompt.shape[2]:
        with torch.no_grad():
          prompt[:, :, t] = prompt[:, :, t - 1]

  def end_task(self, name: str, t: int):
    """The method's end_task: entry t is overwritten by its momentum mixture."""
    if name == 'prompt' and t > 0 and self.config.prompt.momentum > 0:
      prompt = self.models[name].e_prompt.prompt
      with torch.no_grad():
        prompt.copy_(momentum_pool(prompt, t, float(self.config.prompt.momentum)))

  def optimizer(self, name: str, t: int):
    """The stage's optimizer over its trainable params, one group per lr multiplier; frozen
    params (multiplier 0) take no gradient, so clipping leaves them out as cljax does."""
    stage = self.stages[name]
    mults = multipliers(stage.method.lr_multipliers(self.template[name], t))
    named = dict(self.models[name].named_parameters())
    groups: Dict[float, list] = {}
    for key, m in mults.items():
      named[key].requires_grad = m > 0
      if m > 0:
        groups.setdefault(m, []).append(named[key])
    trainable = [p for ps in groups.values() for p in ps]
    opt = make_optimizer(stage.cfg.optimizer, [{'params': ps, 'mult': m} for m, ps in groups.items()],
                         stage.cfg.get('weight_decay', 0.0))
    return opt, trainable

  def context(self, name: str, t: int) -> Dict[str, torch.Tensor]:
    """What the loss reads besides the batch (cf. cljax.continual.steps.step_context)."""
    means, valid = self.stats[name].means()
    return {'task_mask': torch.from_numpy(self.split.task_mask(t)),
            'means': torch.from_numpy(np.asarray(means)[np.asarray(valid)])}

  def loss(self, name: str, batch: TorchBatch, t: int, context) -> Tuple[torch.Tensor, Dict[str, Any]]:
    """The method's loss on a batch of real rows: (total, metrics)."""
    model = self.models[name]
    if name == 'task_identity':   # with reuse_features the batch holds the frozen features
      pre = batch.images if batch.images.dim() == 2 else model.features(batch.images)
    else:
      pool = momentum_pool(model.e_prompt.prompt, t, float(self.config.prompt.momentum))
      pre = model.features(batch.images, torch.full((batch.size,), t, dtype=torch.long), prompt=pool)
    logits = masked(model.classify(pre), context['task_mask'])
    ce = F.cross_entropy(logits, batch.labels)
    total, out = ce, {'ce': ce}
    reg = float(self.config.prompt.reg)
    if name == 'prompt' and reg > 0:
      ctr = contrastive_regulariser(pre, context['means'])
      total = total + reg * ctr
      out['regulariser'] = ctr
    out['accuracy'] = 100.0 * (logits.argmax(-1) == batch.labels).float().mean()
    return total, {'loss': total, **out}

  def train_step(self, name: str, opt, trainable, batch: TorchBatch, t: int, context, lr: float):
    """One optimizer step: loss, backward, clip, update at lr x the group's multiplier."""
    opt.zero_grad(set_to_none=True)
    loss, m = self.loss(name, batch, t, context)
    loss.backward()
    clip = self.stages[name].cfg.clip_grad
    if clip and clip > 0:
      torch.nn.utils.clip_grad_norm_(trainable, clip)
    for group in opt.param_groups:
      group['lr'] = lr * group['mult']
    opt.step()
    return {k: float(v.detach()) for k, v in m.items()}

  def train_stage(self, name: str, t: int):
    c, stage = self.config, self.stages[name]
    model = self.models[name]
    model.train()
    self.begin_task(name, t)
    indices = self.data.train.indices_of(self.split.tasks[t])
    n_batches = pipeline.num_batches(len(indices), c.batch_size)
    context = self.context(name, t)
    stage_id = 1 + list(self.stages).index(name)
    phases = stage.method.training_phases(t, stage.cfg.epochs)
    if len(phases) != 1:
      raise ConfigError(f'{name}: {len(phases)} training phases; this pipeline mirrors one')
    epochs = phases[0].epochs
    opt, trainable = self.optimizer(name, t)   # re-created every task, as the references
    lr_at = optim.schedule(stage.cfg, stage.cfg.lr * stage.lr_scale, epochs, n_batches, c.schedule)
    if stage.cfg.get('schedule_first_task_only', False) and t > 0:
      lr_at = lambda it, base=stage.cfg.lr * stage.lr_scale: base
    iteration, start, images = 0, time.time(), 0
    tag = f'[{name}]'
    for epoch in range(epochs):
      sums, count = {}, 0
      seed = (c.seed, stage_id, t, 0, epoch)
      if self.reuses_features(name):   # as the trainer: the features computed once, same order
        feats, labels = self.frozen_train_features(name, t)
        batches = prefetch(pipeline.feature_batches(feats, labels, c.batch_size, seed, shuffle=True))
      else:
        batches = self._batches(self.data.train, indices, c.batch_size, True, seed, True)
      for batch in batches:
        m = self.train_step(name, opt, trainable, batch, t, context, lr_at(iteration))
        iteration += 1
        count += 1
        images += batch.size
        for k, v in m.items():
          sums[k] = sums.get(k, 0.0) + v
      host = {k: v / max(count, 1) for k, v in sums.items()}
      if not all(math.isfinite(v) for v in host.values()):
        raise TrainingDivergedError(f'training diverged: non-finite loss in the {name} stage, task '
                                    f'{t + 1}, epoch {epoch + 1}/{epochs}')
      elapsed = time.time() - start
      self.log(f'  {tag} task {t + 1}/{self.exp.num_tasks} epoch {epoch + 1}/{epochs} '
               f'lr {lr_at(iteration - 1):.2e} '
               + ' '.join(f'{k} {v:.4f}' for k, v in sorted(host.items(), key=lambda kv: kv[0] != 'loss'))
               + f' | {images / max(elapsed, 1e-9):.0f} img/s')
    self.end_task(name, t)

  # --------------------------------------------------------------------------- statistics

  def features(self, name: str, images: torch.Tensor, t: int) -> torch.Tensor:
    model = self.models[name]
    if name == 'task_identity':
      return model.features(images)
    return model.features(images, torch.full((len(images),), t, dtype=torch.long))

  def reuses_features(self, name: str) -> bool:
    return name == 'task_identity' and bool(self.config.task_identity.get('reuse_features', False))

  def frozen_train_features(self, name: str, t: int):
    """As Experiment._frozen_train_features: task t's training images' frozen features (test
    transform, index order), computed once per task when stage 1 reuses them."""
    if self._stage1_features[0] != t:
      self._stage1_features = (t,) + self._train_features(name, t, False)
    return self._stage1_features[1:]

  def _train_features(self, name: str, t: int, train_tf: bool, per_class: bool = False):
    """As Experiment._train_features (per_class: each class alone, shuffled, as the
    references' per-class loaders)."""
    c = self.config
    self.models[name].eval()
    groups = [(self.split.tasks[t], (c.seed, 9, t), train_tf)]
    if per_class:
      groups = [([k], (c.seed, 9, t, int(k)), True) for k in self.split.tasks[t]]
    feats, labels = [], []
    with torch.no_grad():
      for classes, seed, shuffle in groups:
        indices = self.data.train.indices_of(classes)
        for batch in self._batches(self.data.train, indices, c.batch_size, train_tf, seed, shuffle):
          feats.append(self.features(name, batch.images, t).numpy().astype(np.float32))
          labels.append(batch.labels.numpy())
    return np.concatenate(feats), np.concatenate(labels)

  def test_features(self, i: int) -> List[torch.Tensor]:
    """As Experiment._test_features: the frozen features of test set i's batches, computed once
    per run (exact) and read by every later evaluation's stage-1 head."""
    if i not in self._test_cache:
      tii = self.models['task_identity']
      tii.eval()
      indices = self.data.test.indices_of(self.split.tasks[i])
      with torch.no_grad():
        self._test_cache[i] = [tii.features(b.images) for b in self._batches(
            self.data.test, indices, self.config.eval_batch_size, False, (0,), False)]
    return self._test_cache[i]

  def update_statistics(self, name: str, t: int):
    """Class statistics of task t's classes (test transform), by cljax's own numpy code."""
    c = self.config
    self.models[name].eval()
    if self.reuses_features(name):
      feats, labels = self.frozen_train_features(name, t)
    else:
      train_tf = self.stages[name].method.statistics_train_transform
      feats, labels = self._train_features(name, t, train_tf,
                                           per_class=c.statistics.batches == 'per_class' and not train_tf)
    classes = [k for k in self.split.tasks[t] if (labels == k).any()]
    self.stats[name] = alignment.update_statistics(self.stats[name], feats, labels, classes,
                                                   c.statistics.n_centroids, c.seed)

  # --------------------------------------------------------------------------- alignment

  def sample(self, name: str, per_class: int, t: int, epoch: int):
    """Gaussian samples of every class (cf. alignment.sample): x [C*K*n, D] (torch), labels and
    validity (numpy). The normal draws come from torch's generator, or with
    alignment_noise='jax' from the very jax.random key the trainer uses."""
    stats = self.stats[name]
    mean, scale = torch.from_numpy(np.asarray(stats.mean)), torch.from_numpy(np.asarray(stats.scale))
    c, k, d = mean.shape
    n = per_class // k if stats.method == 'multi-centroid' else per_class
    stage_index = list(self.stages).index(name)
    if self.alignment_noise == 'jax':
      import jax  # pylint: disable=g-import-not-at-top
      key = jax.random.fold_in(jax.random.PRNGKey(self.config.seed), 1000 * t + stage_index)
      z = torch.from_numpy(np.array(jax.random.normal(jax.random.fold_in(key, epoch), (c, k, n, d))))
    else:
      seed = int(np.random.SeedSequence([self.config.seed, 1000 * t + stage_index, epoch]).generate_state(1)[0])
      z = torch.randn((c, k, n, d), generator=torch.Generator().manual_seed(seed))
    if stats.method == 'covariance':
      x = mean[:, :, None, :] + torch.einsum('ckni,cdi->cknd', z, scale)
    else:
      x = mean[:, :, None, :] + z * scale[:, :, None, :]
    labels = np.broadcast_to(np.arange(c)[:, None, None], (c, k, n)).reshape(-1)
    valid = np.broadcast_to(np.asarray(stats.valid)[:, :, None], (c, k, n)).reshape(-1)
    return x.reshape(-1, d), labels, valid

  def align(self, name: str, t: int):
    """Classifier alignment by Gaussian replay over the classes of tasks 0..t (t > 0)."""
    c, stage = self.config, self.stages[name]
    cfg = stage.cfg
    model = self.models[name]
    model.train()
    head = self._params(name, self.keys[name]['classifier'])
    for p in head:
      p.requires_grad = True
    opt = make_optimizer(cfg.get('ca_optimizer', 'sgd'), [{'params': head, 'mult': 1.0}],
                         cfg.get('ca_weight_decay', 0.0))
    seen_np = self.split.seen_mask(t)
    seen = torch.from_numpy(seen_np)
    crct_num = sum(len(self.split.tasks[s]) for s in range(t))
    epochs = cfg.ca_epochs
    if cfg.get('ca_schedule', 'cosine_epoch') == 'coswm':
      lr_at = lambda it, e: optim.coswm_lr(stage.ca_lr / 10, it, crct_num * cfg.ca_epochs, first=stage.ca_lr)
    else:
      lr_at = lambda it, e: optim.cosine_annealing_lr(stage.ca_lr, e, cfg.ca_epochs)
    stage_index = list(self.stages).index(name)
    iteration = 0
    n_pc = stage.ca_samples
    for epoch in range(epochs):
      x, y, valid = self.sample(name, n_pc, t, epoch)
      rows = np.flatnonzero(valid & seen_np[y])
      rows = rows[np.random.default_rng([c.seed, 7, t, epoch, stage_index]).permutation(len(rows))]
      labels = torch.from_numpy(y.astype(np.int64))
      losses = []
      for it in range(crct_num):
        chunk = rows[it * n_pc:(it + 1) * n_pc]
        if len(chunk) < n_pc:
          break
        chunk_t = torch.from_numpy(chunk)
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(masked(model.classify(x[chunk_t]), seen), labels[chunk_t])
        loss.backward()
        for group in opt.param_groups:
          group['lr'] = lr_at(iteration, epoch)
        opt.step()
        iteration += 1
        losses.append(float(loss.detach()))
      mean_loss = float(np.mean(losses)) if losses else float('nan')
      if losses and not math.isfinite(mean_loss):
        raise TrainingDivergedError(f'training diverged: non-finite alignment loss in the {name} '
                                    f'stage, task {t + 1}, alignment epoch {epoch + 1}')
      if epoch == epochs - 1 or (epoch + 1) % 10 == 0:
        self.log(f'  [{name}] task {t + 1} alignment epoch {epoch + 1}/{epochs} loss {mean_loss:.4f}')

  # --------------------------------------------------------------------------- evaluation

  def evaluate(self, t: int, name: str = 'prompt', per_example: bool = False):
    """Accuracy (%) and task-identity accuracy (%) on the test sets of tasks 0..t, as
    Experiment.evaluate: the stage-1 model predicts each image's task, whose prompt stage 2 uses."""
    c = self.config
    seen = torch.from_numpy(self.split.seen_mask(t))
    tii, model = self.models['task_identity'], self.models[name]
    tii.eval()
    model.eval()
    mask_test = c.mask_test_logits or self.stages[name].method.mask_test_logits
    pool_size = c.prompt.pool_size or self.exp.num_tasks
    acc, task_acc, acc_own = np.zeros(t + 1), np.zeros(t + 1), np.zeros(t + 1)
    with torch.no_grad():
      for i in range(t + 1):
        indices = self.data.test.indices_of(self.split.tasks[i])
        correct = task_correct = own = total = 0
        cached = self.test_features(i)
        if name == 'task_identity':   # the stage-1 head on the cached features: no image needed
          labels = torch.from_numpy(self.data.test.labels[indices].astype(np.int64))
          ids = self.class_to_task[masked(tii.classify(torch.cat(cached)), seen).argmax(-1)]
          task_acc[i] = 100.0 * int((ids == self.class_to_task[labels]).sum()) / max(len(indices), 1)
          continue
        for b, batch in enumerate(self._batches(self.data.test, indices, c.eval_batch_size, False, (0,), False)):
          ids = self.class_to_task[masked(tii.classify(cached[b]), seen).argmax(-1)]
          task = self.class_to_task[batch.labels]
          total += batch.size

          def score(prompt_ids):
            logits = model(batch.images, prompt_ids)[1]
            if mask_test:
              logits = masked(logits, seen)
            return int((logits.argmax(-1) == batch.labels).sum())
          used = ids
          if self.batchwise:   # the batch's most frequent id, ties to the smallest
            used = torch.full_like(ids, int(torch.bincount(ids, minlength=pool_size).argmax()))
          ok = score(used)
          correct += ok
          own += score(ids) if per_example and self.batchwise else ok
          task_correct += int((used == task).sum())
        acc[i] = 100.0 * correct / max(total, 1)
        task_acc[i] = 100.0 * task_correct / max(total, 1)
        acc_own[i] = 100.0 * own / max(total, 1)
    return (acc, task_acc, acc_own) if per_example else (acc, task_acc)

  # --------------------------------------------------------------------------- run

  def run(self) -> Dict[str, Any]:
    """Every task and stage in the trainer's order; returns (and writes) the results."""
    c = self.config
    T = self.exp.num_tasks
    last_task = min(T, c.stop_after_task) if c.stop_after_task else T
    self.run_start = time.perf_counter()
    self.log(f'{self.data.description}: {T} tasks, {self.exp.num_classes} classes; method {c.method}; '
             f'PyTorch {torch.__version__} eager fp32, {torch.get_num_threads()} threads')
    for t in range(last_task):
      for name in self.stages:
        stage_start = time.perf_counter()
        with self.timed('stage1_train' if name == 'task_identity' else 'stage2_train'):
          self.train_stage(name, t)
        with self.timed('statistics'):
          self.update_statistics(name, t)
        if name == 'task_identity':
          with self.timed('evaluation'):
            before = self.evaluate(t, name)[1]
          if t > 0:
            with self.timed('alignment'):
              self.align(name, t)
          with self.timed('evaluation'):
            after = self.evaluate(t, name)[1]
          self.stage1_task_acc[:, t] = [before.mean(), after.mean()]
          self.log(f'task {t + 1} task-identity model: accuracy of predicted task '
                   f'{before.mean():.2f}% before alignment, {after.mean():.2f}% after')
        else:
          if t > 0:
            with self.timed('evaluation'):
              self.acc_before[: t + 1, t] = self.evaluate(t)[0]
            with self.timed('alignment'):
              self.align(name, t)
          with self.timed('evaluation'):
            acc, task_acc, acc_own = self.evaluate(t, per_example=True)
          self.acc[: t + 1, t] = acc
          self.task_acc[: t + 1, t] = task_acc
          if self.acc_own is not None:
            self.acc_own[: t + 1, t] = acc_own
          if t == 0:
            self.acc_before[: t + 1, t] = acc
          self.tasks_done = t + 1
          self._report(t)
        self.stage_seconds[name] = self.stage_seconds.get(name, 0.0) + time.perf_counter() - stage_start
      self.write_results()
    return self.write_results()

  def _report(self, t: int):
    s = metrics.summary(self.acc, t, self.task_acc)
    before = metrics.summary(self.acc_before, t)
    self.log(metrics.format_matrix(self.acc, t, f'after task {t + 1}: accuracy (%), rows = test task, '
                                                f'columns = after task'))
    self.log(f'after task {t + 1}: average accuracy {s["average_accuracy"]:.2f} | cumulative '
             f'{s["cumulative_average_accuracy"]:.2f} | forgetting {s["forgetting"]:.2f} | task identity '
             f'{s["task_identity_accuracy"]:.2f} | before alignment {before["average_accuracy"]:.2f} '
             f'| {time.perf_counter() - self.start:.0f}s so far')

  def results(self) -> Dict[str, Any]:
    """The keys of cljax's results.json (scored on the completed tasks), plus timings."""
    k = max(self.tasks_done, 1)
    seen = lambda a: a[:k, :k]
    out = {
        'config': config_lib.to_json(self.config),
        'benchmark': self.data.description,
        'final_average_accuracy': metrics.final_average_accuracy(seen(self.acc)),
        'cumulative_average_accuracy': metrics.cumulative_average_accuracy(seen(self.acc)),
        'forgetting': metrics.forgetting(seen(self.acc)),
        'task_identity_accuracy': metrics.average_accuracy(seen(self.task_acc), k - 1),
        'final_average_accuracy_before_alignment': metrics.final_average_accuracy(seen(self.acc_before)),
        'accuracy_matrix': self.acc.tolist(),
        'accuracy_matrix_before_alignment': self.acc_before.tolist(),
        'task_identity_matrix': self.task_acc.tolist(),
        'stage1_task_identity_accuracy': self.stage1_task_acc.tolist(),
        'tasks_completed': self.tasks_done,
        # As the trainer's: the task loop (setup excluded); seconds_total from the pipeline's start.
        'seconds_this_invocation': round(time.perf_counter() - self.run_start, 1),
        'seconds_total': round(time.perf_counter() - self.start, 1),
        'phase_seconds': {k: round(v, 2) for k, v in self.seconds.items()},
        'stage_seconds': {k: round(v, 2) for k, v in self.stage_seconds.items()},
        'torch': torch.__version__,
        'torch_threads': torch.get_num_threads(),
        'alignment_noise': self.alignment_noise,
    }
    if self.acc_own is not None:
      out['final_average_accuracy_per_example'] = metrics.final_average_accuracy(seen(self.acc_own))
      out['accuracy_matrix_per_example'] = self.acc_own.tolist()
    return out

  def write_results(self) -> Dict[str, Any]:
    out = self.results()
    if self.workdir:
      os.makedirs(self.workdir, exist_ok=True)
      tmp = os.path.join(self.workdir, RESULTS + '.tmp')
      with open(tmp, 'w') as f:
        json.dump(out, f, indent=2)
      os.replace(tmp, os.path.join(self.workdir, RESULTS))
    return out


# ----------------------------------------------------------------------------- command line

def main(argv):
  from cljax import cli  # pylint: disable=g-import-not-at-top
  from cljax.continual.run_log import quiet_libraries  # pylint: disable=g-import-not-at-top
  from cljax.errors import CljaxError  # pylint: disable=g-import-not-at-top
  quiet_libraries()
  try:
    cli.check_no_arguments(argv)
    config = cli.config_value(_CONFIG)
    if not _WORKDIR.value:
      raise ConfigError('no workdir given: pass --workdir=<folder for torch_results.json>')
    results = TorchPipeline(config, _WORKDIR.value, _NOISE.value).run()
  except CljaxError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  p = results['phase_seconds']
  print(f'final average accuracy {results["final_average_accuracy"]:.2f} | cumulative '
        f'{results["cumulative_average_accuracy"]:.2f} | forgetting {results["forgetting"]:.2f} | '
        f'task identity {results["task_identity_accuracy"]:.2f}  ({_WORKDIR.value}/{RESULTS})')
  print(f'seconds: {results["seconds_total"]:.1f} from setup to results, of which '
        + ', '.join(f'{k} {v:.1f}' for k, v in p.items()))


if __name__ == '__main__':
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  from cljax import cli as _cli  # pylint: disable=g-import-not-at-top
  _CONFIG = config_flags.DEFINE_config_file('config', None, 'a config file in configs/', lock_config=True)
  _WORKDIR = flags.DEFINE_string('workdir', None, 'where torch_results.json goes')
  _NOISE = flags.DEFINE_enum('alignment_noise', 'torch', ['torch', 'jax'],
                             "alignment's Gaussian draws: torch's generator, or cljax's jax.random key")
  app.run(main, flags_parser=_cli.parse_flags)
