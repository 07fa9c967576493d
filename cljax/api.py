"""A notebook-sized, functional view of cljax: pure functions on pytrees.

  from cljax import api, config as config_lib
  setup = api.build(config_lib.demo('norga'))           # model + method (+ data), no weights yet
  backbone = api.load_backbone(setup)                   # the frozen ViT's params (a pytree)
  params, method_state = api.init(setup, jax.random.PRNGKey(0))
  opt_state = api.init_optimizer(setup, params)
  step = api.train_step(setup, backbone, task=0)        # (params, opt_state, batch) -> same + metrics
  for batch in api.batches(setup, task=0):
    params, opt_state, metrics = step(params, opt_state, batch)
  gelu = api.with_activation(setup, 'gelu')             # same params pytree, another NoRGa gate

Everything here is built from the pieces the trainer uses (`cljax.continual.trainer.Experiment`
builds the method and loads the backbone, `steps.train_step_fn` is the training step),
so a notebook experiment is the same model as a full run. The trainer adds what a paper run
needs on top: stage 1, schedules, class statistics and alignment, checkpoints, evaluation.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Iterator, Optional

import jax
import jax.numpy as jnp
import numpy as np

from cljax import config as config_lib
from cljax import methods as methods_lib
from cljax.data import pipeline
from cljax.errors import ConfigError
from cljax.methods.base import Method


@dataclasses.dataclass(frozen=True)
class Setup:
  """A configured model and method; ``data`` is the benchmark (None if not loaded)."""
  config: Any
  method: Method
  vit: Any                 # ViTConfig of the backbone
  num_classes: int
  num_tasks: int
  data: Any
  experiment: Any          # the trainer's Experiment it came from (loads weights, batches)


def build(config, data: bool = True) -> Setup:
  """Validate a config and build its model and method (and load its benchmark if `data`)."""
  from cljax.continual.trainer import Experiment  # pylint: disable=g-import-not-at-top
  exp = Experiment(config, workdir='', load_data=data, verbose=False, load_backbone=False)
  return Setup(exp.config, exp.method, exp.vit_cfg, exp.num_classes, exp.num_tasks, exp.data, exp)


def load_backbone(setup: Setup):
  """The pretrained backbone's params for setup.config (the demo backbone ships in cljax/assets)."""
  return setup.experiment.load_backbone()


def init(setup: Setup, rng):
  """(params, method_state): the method's trainable params (prompts, classifier) and its
  non-trainable bookkeeping."""
  return setup.method.init(rng), setup.method.init_state()


def init_optimizer(setup: Setup, params):
  """The optimizer state for params, as config.prompt asks (Adam, SGD, AdamW; clipping)."""
  from cljax.continual.steps import optimizer  # pylint: disable=g-import-not-at-top
  return optimizer(setup.config.prompt).init(params)


def context(setup: Setup, task: int, stats=None) -> Dict[str, Any]:
  """What the loss sees besides the batch: task and seen-class masks, stored class means (none
  unless `stats`, a `ClassStats`, is given)."""
  from cljax.continual.alignment import ClassStats  # pylint: disable=g-import-not-at-top
  from cljax.continual.steps import step_context  # pylint: disable=g-import-not-at-top
  c = setup.config
  if stats is None:
    stats = ClassStats.empty(setup.num_classes, setup.vit.embed_dim, c.statistics.method,
                             c.statistics.n_centroids)
  return step_context(_split(setup), stats, task)


def _split(setup: Setup):
  if setup.data is not None:
    return setup.data.split
  from cljax.continual import benchmark  # pylint: disable=g-import-not-at-top
  c = setup.config
  return benchmark.class_incremental(setup.num_classes, setup.num_tasks, c.seed, c.benchmark.shuffle_classes)


def loss_fn(setup: Setup):
  """The method's loss as a pure function:
  (params, method_state, backbone, images, labels, mask, task, context) -> (loss, metrics)."""
  return setup.method.loss


def train_step(setup: Setup, backbone, task: int = 0, method_state=None, lr: Optional[float] = None,
               ctx: Optional[Dict[str, Any]] = None):
  """A jitted pure step ``(params, opt_state, batch) -> (params, opt_state, metrics)`` for `task`.

  batch: a dict (or `pipeline.Batch`) with images [B, H, W, 3], labels [B] and mask [B]. The lr
  is constant (default: config.prompt.lr with the config's batch scaling); per-group
  multipliers (frozen NoRGa scalars after task 0, head at 0.1 x lr, ...) come from the method.
  """
  from cljax.continual.steps import optimizer, train_step_fn  # pylint: disable=g-import-not-at-top
  method, c = setup.method, setup.config
  lr = c.prompt.lr * config_lib.lr_scale(c) if lr is None else lr
  method_state = method.init_state() if method_state is None else method_state
  ctx = context(setup, task) if ctx is None else ctx
  t = jnp.asarray(task, jnp.int32)
  # The trainer's own step, jitted without buffer donation: a notebook may keep old params.
  step = jax.jit(train_step_fn(method, optimizer(c.prompt)))

  def train(params, opt_state, batch):
    images, labels, mask = _unpack(batch)
    # numpy scalars: a jnp scalar is a device transfer per call (~1 ms on a CPU).
    lr_tree = jax.tree.map(np.float32, method.lr_multipliers(params, task))
    # Backbone and bookkeeping travel as arguments, not as constants folded into the program.
    return step(params, opt_state, method_state, backbone, images, labels, mask, t, ctx,
                np.float32(lr), lr_tree)
  return train


def _arrays(tree):
  """jax arrays for numpy leaves (e.g. `load_checkpoint`'s or `reference.load`'s params)."""
  return jax.tree.map(jnp.asarray, tree)


def predict(setup: Setup, params, method_state, backbone, images, task_ids):
  """Logits [B, C] of images when example i uses the prompt of task task_ids[i] (test mode:
  keyed methods match keys, SMoPE uses its test-time offsets; ids are ignored there)."""
  # jax.jit caches compilations per function, so wrapping the same predict again is free.
  logits, _ = jax.jit(setup.method.predict)(_arrays(params), _arrays(method_state), _arrays(backbone),
                                            jnp.asarray(images), jnp.asarray(task_ids, jnp.int32),
                                            jnp.ones(len(images), bool))
  return logits


def training_logits(setup: Setup, params, method_state, backbone, images, task: int, mask=None,
                    **flags):
  """(logits [B, C], aux) of the forward the loss differentiates at ``task`` (0-based), before
  the task mask (``context(setup, task)['task_mask']``): HiDe/NoRGa use the task's entry of the
  momentum-mixed pool (prompt mask + momentum), DualPrompt/S-Prompt their forced entries, CODA
  freezes earlier components, SMoPE adds its adaptive noise (``dense=True``: the task-0 warm-up).
  ``mask`` [B]: real examples (default all). Reference: the training forward of each method
  (MoE_PromptCL ``engines/norga_prompt_engine.py`` and ``engines/dp_engine.py``
  train_one_epoch; SMoPE ``learners/prompt.py`` update_model, ``models/zoo.py``)."""
  fn = setup.method.train_forward
  if fn is None:
    raise ConfigError(f'method {setup.method.name} has no training forward')
  mask = jnp.ones(len(images), bool) if mask is None else jnp.asarray(mask, bool)
  jitted = jax.jit(fn, static_argnames=tuple(flags))
  return jitted(_arrays(params), _arrays(method_state), _arrays(backbone), jnp.asarray(images),
                mask, jnp.asarray(task, jnp.int32), **flags)


def smope_training_logits(setup: Setup, params, method_state, backbone, images, task: int, dense: bool = False):
  """SMoPE's noisy training forward: `training_logits` of a SMoPE setup; aux['router'][layer]
  holds the expert scores, the selected experts and the score range."""
  if setup.method.name != 'smope':
    raise ConfigError(f'smope_training_logits needs config.method=smope, not {setup.method.name}')
  return training_logits(setup, params, method_state, backbone, images, task, dense=dense)


def task_identity_method(setup: Setup):
  """The stage-1 task-identity `Method` of a HiDe/NoRGa setup."""
  stage = next((s for s in setup.experiment.stages if s.name == 'task_identity'), None)
  if stage is None:
    raise ConfigError(f'method {setup.method.name} has no task-identity model '
                      f'(config.task_identity.enabled with hideprompt or norga)')
  return stage.method


def predict_task(setup: Setup, tii_params, backbone, images, task: int):
  """(task ids [B], logits [B, C]) of the stage-1 model after ``task`` (0-based): the argmax
  among the classes of tasks 0..task names the task ([N] evaluate: target_task_map)."""
  from cljax.methods.task_identity import predict_task as to_task  # pylint: disable=g-import-not-at-top
  tii = task_identity_method(setup)
  logits, _ = jax.jit(tii.predict)(_arrays(tii_params), {}, _arrays(backbone), jnp.asarray(images),
                                   jnp.zeros(len(images), jnp.int32), jnp.ones(len(images), bool))
  split = _split(setup)
  ids = to_task(logits, jnp.asarray(split.seen_mask(task)), jnp.asarray(split.class_to_task))
  return ids, logits


def load_checkpoint(setup: Setup, path: str, stage: str = 'prompt'):
  """(params, backbone) as jax arrays from a reference checkpoint of the setup's method (its
  repository's layout, `cljax.checkpoints.reference`) or, with stage='task_identity', of the
  HiDe/NoRGa stage-1 model; a checkpoint of another method, or whose args disagree with the
  config, raises CheckpointError naming both values."""
  from cljax.evaluate import load_reference  # pylint: disable=g-import-not-at-top
  method = task_identity_method(setup) if stage == 'task_identity' else setup.method
  params, _ = load_reference(setup.config, method, setup.num_classes, setup.num_tasks, path, stage)
  backbone = params.pop('backbone')
  return _arrays(params), _arrays(backbone)


def accuracy(setup: Setup, params, method_state, backbone, task: int, batch_size: int = 0) -> float:
  """Test accuracy (%) on `task`'s classes among all classes, every image using its own task's
  prompt (the trainer instead predicts the prompt with its task-identity model)."""
  correct = total = 0
  for batch in batches(setup, task, train=False, batch_size=batch_size):
    images, labels, mask = _unpack(batch)
    logits = predict(setup, params, method_state, backbone, images, np.full(len(labels), task))
    correct += int(((np.argmax(np.asarray(logits), -1) == labels) & mask).sum())
    total += int(mask.sum())
  return 100.0 * correct / max(total, 1)


def batches(setup: Setup, task: int, train: bool = True, batch_size: int = 0, seed: int = 0,
            shuffle: Optional[bool] = None) -> Iterator[Dict[str, np.ndarray]]:
  """Numpy batches {'images' float32 [B, H, W, 3] (the model's input: ToTensor + Normalize done),
  'labels' [B], 'mask' [B]} of task's train (augmented, shuffled) or test images; the last batch
  is padded (mask False)."""
  if setup.data is None:
    raise ConfigError('this Setup has no data: build it with api.build(config, data=True)')
  data = setup.data.train if train else setup.data.test
  indices = data.indices_of(setup.data.split.tasks[task])
  size = batch_size or (setup.config.batch_size if train else setup.config.eval_batch_size)
  for b in pipeline.batches(data, indices, size, setup.config.backbone.image_size, train=train,
                            seed=(seed, task), shuffle=train if shuffle is None else shuffle,
                            workers=setup.config.data_workers):
    b = pipeline.host_input(b)
    yield {'images': b.images, 'labels': b.labels, 'mask': b.mask}


def _unpack(batch):
  if isinstance(batch, dict):
    return batch['images'], batch['labels'], batch['mask']
  return batch.images, batch.labels, batch.mask


def with_config(setup: Setup, **overrides) -> Setup:
  """The same setup with config.prompt keys replaced and the method rebuilt (data, backbone and
  the Experiment's weights loader are shared)."""
  c = config_lib.validate(_updated(setup.config, overrides))
  method = methods_lib.build(c, setup.vit, setup.num_classes, setup.num_tasks)
  return dataclasses.replace(setup, config=c, method=method)


def with_activation(setup: Setup, activation: str) -> Setup:
  """Swap NoRGa's gate activation (config.prompt.activation): the params pytree is unchanged
  (tau and alpha are the same scalars), so trained params carry over."""
  if setup.config.prompt.gate != 'norga':
    raise ConfigError(f'method {setup.config.method} has gate {setup.config.prompt.gate!r}; the '
                      f'gate activation only exists in NoRGa (config.method=norga)')
  return with_config(setup, activation=activation)


def _updated(config, prompt_overrides):
  c = config.copy_and_resolve_references()
  for k, v in prompt_overrides.items():
    if k not in c.prompt:
      raise ConfigError(f'unknown key config.prompt.{k}')
    c.prompt[k] = v
  return c
