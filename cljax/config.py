"""Experiment configs: one schema, shared pieces, the references' hyper-parameters as data.

A run file in ``configs/`` is a few lines: ``get_config()`` calls `paper` (a benchmark x method
x backbone cell of the references' tables) or builds on `base`. Everything a run can set is in
`base`; `validate` checks a finished config before anything is compiled, with one-line messages
that name the key and the fix.
"""

from __future__ import annotations

import math
import os
from typing import Any, Dict

import ml_collections

from cljax.errors import ConfigError, one_of

BENCHMARKS = {
    # name: (number of classes, default tasks, transform family)
    'cifar100': (100, 10, 'cifar'),
    'imr': (200, 10, 'default'),
    'cub': (200, 10, 'default'),
    'five_datasets': (50, 5, 'default'),
    'split_digits': (10, 5, 'demo'),
}
METHODS = ('hideprompt', 'norga', 'l2p', 'dualprompt', 'sprompt', 'coda', 'smope', 'sequential_head')
SCHEDULES = ('constant', 'step', 'cosine', 'smope_cosine', 'coswm')
STATISTICS = ('covariance', 'variance', 'multi-centroid')
STATISTICS_BATCHES = ('per_class', 'task')
OPTIMIZERS = ('adam', 'sgd', 'adamw')
IMR_SPLITS = ('coda', 'random_80_20')

# Paper names of backbones -> cljax names (ALGORITHMS.md D4).
BACKBONE_ALIASES = {
    'sup1k': 'vit_b16_augreg2_in21k_ft_in1k', 'sup21k_augreg': 'vit_b16_augreg_in21k',
    'sup21k': 'vit_b16_in21k', 'ibot21k': 'ibot_in21k', 'ibot1k': 'ibot_in1k',
    'dino': 'dino_in1k', 'dino1k': 'dino_in1k', 'mocov3': 'mocov3_in1k', 'moco': 'mocov3_in1k',
}


def base() -> ml_collections.ConfigDict:
  """Every key a run can set, with the HiDe/NoRGa references' defaults."""
  c = ml_collections.ConfigDict()
  c.seed = 42
  c.method = 'norga'
  c.benchmark = ml_collections.ConfigDict(dict(
      name='cifar100',
      num_tasks=10,
      data_dir='',              # tfds data_dir ('' = tfds default, ~/tensorflow_datasets)
      shuffle_classes=True,     # random.shuffle(class list) with Python's random seeded by seed
      imr_split='coda',         # ImageNet-R split (ALGORITHMS.md D3): coda | random_80_20
      imr_split_file='',        # a folder with CODA/SMoPE yaml lists ('' = the lists cljax ships)
      imr_split_seed=0,         # imr_split=random_80_20: the split's own seed (every run seed reuses it)
      notmnist_dir='',          # folder with notMNIST Train/ and Test/ (5-Datasets)
      test_fraction=0.3,        # split_digits: stratified test share
      # Reference quirk 11.4: 5-Datasets members after CIFAR-10 keep CIFAR's transforms.
      five_datasets_transform_carry_over=True,
      transforms='hide',        # hide ([N]/[H] transforms) | smope ([S]: SMoPE, CODA-Prompt)
  ))
  c.backbone = ml_collections.ConfigDict(dict(
      name='vit_b16_in21k',
      weights='',               # path of the pretrained file ('' = <weights_dir>/<reference file name>)
      weights_dir='checkpoints',
      image_size=224,
      depth=0,                  # > 0 keeps only the first `depth` blocks (tests, debugging)
  ))
  c.batch_size = 128
  c.eval_batch_size = 128
  c.task_identity = ml_collections.ConfigDict(dict(
      enabled=True,
      epochs=20, lr=5e-4, schedule='step', optimizer='adam', clip_grad=1.0,
      mlp_hidden=(2,),
      ca_lr=0.005, ca_epochs=30,          # stage-1 alignment lr is scaled by batch/256
      # Deviation switch (off = the references): the frozen features of each training image are
      # computed once per task with the test transform and every epoch trains the MLP head on
      # them (no augmentation in stage 1); its class statistics reuse them. One backbone pass
      # per image instead of epochs + 1.
      reuse_features=False,
  ))
  c.prompt = ml_collections.ConfigDict(dict(
      layers=(0, 1, 2, 3, 4),
      length=5,
      pool_size=0,              # 0 = one entry per task
      gate='norga',             # linear (HiDe-Prompt) | norga
      activation='tanh',
      kv_layout='reference',    # reference quirk 11.1 | correct
      prompt_key=False,         # 5-Datasets configs carry an (unused) e_prompt.prompt_key
      batchwise_prompt=False,   # test-time majority vote of the batch (5-Datasets; quirk 11.8)
      epochs=50, lr=0.03, schedule='step', optimizer='adam', clip_grad=1.0,
      larger_prompt_lr=True,    # head at 0.1 x lr
      reg=0.1,                  # contrastive regulariser against stored class means
      momentum=0.01,            # prompt momentum
      ca_lr=0.005, ca_epochs=30,          # stage-2 alignment lr is NOT batch-scaled
      # --- optimiser details of the other code bases
      scale_lr_by_batch=True,   # lr x batch/256 ([N]/[H]); [S] uses the lr as given
      prompt_lr_scale=1.0,      # [S]: prompt params at 5 x lr, head at lr
      weight_decay=0.0,
      iter_step=0, freeze_iters=0, warmup_epochs=0,   # [S] coswm schedule
      schedule_first_task_only=False,    # quirk 11.8: the DP engine keeps task 0's scheduler
      ca_optimizer='sgd', ca_weight_decay=0.0,
      ca_schedule='cosine_epoch',        # cosine_epoch ([N]) | coswm ([S], per iteration)
      ca_samples_ratio=5.0,     # alignment samples per class = ratio x batch size
      # --- key-matched pools (L2P, DualPrompt, S-Prompt)
      top_k=1, pull_coeff=0.0, use_prompt_mask=True, shared_prompt_pool=True,
      g_layers=(0, 1), g_length=5,         # DualPrompt's G-prompt
      # --- CODA-Prompt
      ortho_mu=0.0,
      # --- SMoPE (length = 2 x experts per layer and head)
      experts_top_k=5, noise_eps=0.4, mu_router=1e-5, mu_router_old=1e-5,
      smope_eval_counts='reference',   # quirk 11.9: reference (counts reset) | saved
  ))
  c.statistics = ml_collections.ConfigDict(dict(
      method='covariance', n_centroids=10,
      # How the prompted features of the class statistics are batched (test transform; HiDe
      # family): per_class = the references' per-class loaders (each class alone, shuffled, in
      # batches of batch_size; under kv_layout='reference' a feature depends on its batch);
      # task = the task's images in index order, classes mixed (cljax before issue 16).
      batches='per_class',
  ))
  c.schedule = ml_collections.ConfigDict(dict(decay_epochs=30, decay_rate=0.1, min_lr=1e-5))
  # Reference quirk 11.6: test logits over all classes (future-class rows unmasked).
  c.mask_test_logits = False
  c.num_devices = 0             # 0 = every local device
  c.dtype = 'float32'
  # Matmul precision of every jitted step: auto = highest for float32 (true fp32 dots, as PyTorch
  # computes fp32 on every backend; XLA's default is bf16 passes on TPU and TF32 on recent
  # NVIDIA GPUs) and default for bfloat16 | default | high | highest.
  c.matmul_precision = 'auto'
  # explicit: attention as written in the references; fused: jax.nn.dot_product_attention in the
  # layers where it is exact (no prefix or a linear-gate prefix), for cuDNN flash attention on GPU.
  c.attention = 'explicit'
  c.dry_run = False             # every task and stage for dry_run_steps on synthetic inputs
  c.dry_run_steps = 1
  # The dry run's batch (cljax/dry_run.py): 0 = the real batch on an accelerator that holds it,
  # else 2 per device; the dry run reports what the real batch would need either way.
  c.dry_run_batch_size = 0
  c.log_every_steps = 50
  # Input pipeline (grain): 0 = decode and transform in threads of the training process; N > 0 =
  # N worker processes (JPEG decoding included). The batches are the same for any value.
  c.data_workers = 0
  c.model_override = ''         # e.g. 'vit_ti16' for tiny CI runs of a paper config
  c.stop_after_task = 0         # > 0: stop cleanly after this many tasks (rerun to continue)
  # > 0: also checkpoint every this many training steps inside a stage (params, optimizer state,
  # data position), so a killed run loses at most that many steps; 0 = at stage ends only.
  c.checkpoint_every_steps = 0
  # Several processes (cljax.parallel): how long to wait for every process to join, and for a
  # silent process before the others stop.
  c.distributed_timeout_s = 120
  # XLA's persistent compilation cache (cljax/compilation_cache.py): auto = .jax_cache beside the
  # workdir, off, or a folder. Reruns, resumes and other seeds then skip recompiling.
  c.compilation_cache = 'auto'
  # True: a rerun may change any value; the stages not yet completed run with the new ones and
  # config.json's '_history' records what changed (e.g. a lower lr after a divergence).
  c.rerun_with_changes = False
  return c


# ----------------------------------------------------------------------------- the references' cells

# [N] scripts, ALGORITHMS.md 9.1: (dataset, backbone) -> hyper-parameters.
# tii: (lr, schedule, ca_lr hide, ca_lr norga); prompt: (epochs, schedule, length, reg, momentum,
# larger_prompt_lr, clip); ca: (hide ca_lr, hide crct_epochs, norga ca_lr, norga crct_epochs); gate act.
_TABLE = {
    ('cifar100', 'sup21k'): ((5e-4, 'constant', .005, .005), (50, 'step', 5, 0.1, 0.01, True, 1.), (.005, 30, .05, 80), 'sigmoid'),
    ('cifar100', 'ibot21k'): ((5e-4, 'step', .005, .05), (20, 'step', 5, 0.1, 0.1, True, 1.), (.005, 30, .005, 80), 'tanh'),
    ('cifar100', 'ibot1k'): ((5e-4, 'step', .005, .05), (20, 'step', 5, 0.1, 0.1, True, 1.), (.005, 30, .005, 80), 'tanh'),
    ('cifar100', 'dino'): ((5e-4, 'step', .005, .05), (20, 'step', 5, 0.1, 0.1, True, 1.), (.005, 30, .005, 80), 'tanh'),
    ('cifar100', 'mocov3'): ((5e-4, 'step', .005, .05), (20, 'step', 5, 0.1, 0.1, True, 1.), (.005, 30, .005, 80), 'gelu'),
    ('imr', 'sup21k'): ((5e-4, 'step', .005, .005), (150, 'cosine', 20, 0.5, 0.01, True, 1.), (.005, 30, .005, 30), 'sigmoid'),
    ('imr', 'ibot21k'): ((5e-4, 'step', .005, .005), (50, 'constant', 20, 0.5, 0.01, True, 1.), (.005, 30, .005, 30), 'tanh'),
    ('imr', 'ibot1k'): ((5e-4, 'step', .005, .005), (50, 'constant', 20, 0.5, 0.01, True, 1.), (.005, 30, .005, 80), 'sigmoid'),
    ('imr', 'dino'): ((5e-4, 'step', .005, .005), (50, 'constant', 20, 0.5, 0.01, True, 1.), (.005, 30, .005, 30), 'tanh'),
    ('imr', 'mocov3'): ((5e-4, 'step', .005, .005), (50, 'constant', 20, 0.5, 0.01, True, 1.), (.005, 30, .005, 30), 'gelu'),
    ('cub', 'sup21k'): ((1e-2, 'step', .005, .05), (50, 'step', 20, 0.01, 0.01, False, 1.), (.005, 30, .05, 80), 'sigmoid'),
    ('cub', 'ibot21k'): ((5e-4, 'step', .005, .05), (50, 'step', 20, 0.01, 0.01, False, 1.), (.005, 30, .05, 80), 'tanh'),
    ('five_datasets', 'sup21k'): ((1e-3, 'constant', .005, .005), (20, 'constant', 40, 0.1, 0.01, True, 2.), (.005, 30, .005, 30), 'tanh'),
    ('five_datasets', 'ibot21k'): ((1e-3, 'constant', .005, .005), (20, 'constant', 40, 0.1, 0.01, True, 2.), (.005, 30, .005, 30), 'sigmoid'),
}


def paper(dataset: str, method: str, backbone: str = 'sup21k') -> ml_collections.ConfigDict:
  """The references' configuration of one (benchmark, method, backbone) cell."""
  backbone = backbone or 'sup21k'
  if method in BASELINES:
    return baseline(dataset, method, backbone)
  if method == 'smope':
    return smope(dataset)
  if (dataset, backbone) not in _TABLE:
    cells = sorted({f'{d}/{b}' for d, b in _TABLE})
    raise ConfigError(f'the references have no {method} run of {dataset} with backbone '
                      f'{backbone!r}; available: {", ".join(cells)}')
  if method not in ('hideprompt', 'norga'):
    raise one_of('paper method', method, ('hideprompt', 'norga'))
  (tii_lr, tii_sched, tii_ca_h, tii_ca_n), prompt, ca, act = _TABLE[(dataset, backbone)]
  epochs, sched, length, reg, momentum, larger, clip = prompt
  c = base()
  c.method = method
  c.benchmark.name = dataset
  c.benchmark.num_tasks = BENCHMARKS[dataset][1]
  c.backbone.name = BACKBONE_ALIASES[backbone]
  norga = method == 'norga'
  # CUB Sup-21K: HiDe's stage 1 uses the step schedule, NoRGa's the constant one.
  if (dataset, backbone) == ('cub', 'sup21k') and norga:
    tii_sched = 'constant'
  c.task_identity.update(lr=tii_lr, schedule=tii_sched, ca_lr=tii_ca_n if norga else tii_ca_h)
  c.prompt.update(epochs=epochs, schedule=sched, length=length, reg=reg, momentum=momentum,
                  larger_prompt_lr=larger, clip_grad=clip,
                  ca_lr=ca[2] if norga else ca[0], ca_epochs=ca[3] if norga else ca[1],
                  gate='norga' if norga else 'linear', activation=act if norga else 'identity')
  if dataset == 'five_datasets':
    c.task_identity.mlp_hidden = (4, 4)
    c.prompt.prompt_key = True
    c.prompt.batchwise_prompt = True
  return c


# ----------------------------------------------------------------------------- validation

def _check(cond, message):
  if not cond:
    raise ConfigError(message)


def validate(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Check a finished config; raise ConfigError with a one-line message naming key and fix."""
  from cljax.checkpoints.backbones import NAMED  # pylint: disable=g-import-not-at-top
  from cljax.models.prefix import ACTIVATIONS  # pylint: disable=g-import-not-at-top
  from cljax.models.prompts import KV_LAYOUTS  # pylint: disable=g-import-not-at-top
  check_schema(c, base())
  if c.method not in METHODS:
    raise one_of('method (config.method)', c.method, METHODS)
  b = c.benchmark
  if b.name not in BENCHMARKS:
    raise one_of('benchmark (config.benchmark.name)', b.name, BENCHMARKS)
  num_classes = BENCHMARKS[b.name][0]
  _check(b.num_tasks >= 1, f'config.benchmark.num_tasks must be >= 1, got {b.num_tasks}')
  if b.name == 'five_datasets':
    _check(b.num_tasks == 5, 'config.benchmark.num_tasks must be 5 for five_datasets (one task per dataset)')
  else:
    _check(num_classes % b.num_tasks == 0,
           f'{num_classes} classes of {b.name} do not divide into {b.num_tasks} tasks '
           f'(config.benchmark.num_tasks); use a divisor of {num_classes}')
  if b.imr_split not in IMR_SPLITS:
    raise one_of('ImageNet-R split (config.benchmark.imr_split)', b.imr_split, IMR_SPLITS)
  if c.backbone.name not in NAMED:
    raise one_of('backbone (config.backbone.name)', c.backbone.name, list(NAMED) + list(BACKBONE_ALIASES))
  for stage in ('task_identity', 'prompt'):
    s = c[stage]
    if s.schedule not in SCHEDULES:
      raise one_of(f'schedule (config.{stage}.schedule)', s.schedule, SCHEDULES)
    if s.optimizer not in OPTIMIZERS:
      raise one_of(f'optimizer (config.{stage}.optimizer)', s.optimizer, OPTIMIZERS)
    _check(s.epochs >= 0, f'config.{stage}.epochs must be >= 0')
    _check(s.lr > 0, f'config.{stage}.lr must be > 0, got {s.lr}')
  p = c.prompt
  if p.gate not in ('linear', 'norga'):
    raise one_of('gate (config.prompt.gate)', p.gate, ('linear', 'norga'))
  if p.activation not in ACTIVATIONS:
    raise one_of('gate activation (config.prompt.activation)', p.activation, ACTIVATIONS)
  if p.kv_layout not in KV_LAYOUTS:
    raise one_of('kv_layout (config.prompt.kv_layout)', p.kv_layout, KV_LAYOUTS)
  expected_gate = {'hideprompt': 'linear', 'norga': 'norga'}.get(c.method)
  if expected_gate and p.gate != expected_gate:
    raise ConfigError(f'method {c.method} uses gate {expected_gate!r}, but config.prompt.gate is '
                      f'{p.gate!r}; set method={"norga" if p.gate == "norga" else "hideprompt"} instead')
  _check(p.length >= 1, f'config.prompt.length must be >= 1, got {p.length}')
  _check(p.pool_size == 0 or p.pool_size >= b.num_tasks,
         f'config.prompt.pool_size {p.pool_size} is smaller than the {b.num_tasks} tasks; use 0 (one per task)')
  _check(0.0 <= p.momentum < 1.0, f'config.prompt.momentum must be in [0, 1), got {p.momentum}')
  if c.method in ('l2p', 'dualprompt', 'sprompt'):
    pool = p.pool_size or b.num_tasks
    _check(1 <= p.top_k <= pool, f'config.prompt.top_k={p.top_k} must be in 1..{pool} (the pool size)')
  if c.method == 'coda':
    _check(p.pool_size > 0 and p.pool_size % b.num_tasks == 0,
           f'config.prompt.pool_size={p.pool_size} (CODA components) must be a positive multiple of '
           f'the {b.num_tasks} tasks')
    _check(p.length % 2 == 0, f'config.prompt.length={p.length} must be even (half keys, half values)')
  if c.method == 'smope':
    _check(p.length % 2 == 0 and p.length >= 2,
           f'config.prompt.length={p.length} must be even: SMoPE has length/2 experts per head')
    _check(1 <= p.experts_top_k <= p.length // 2,
           f'config.prompt.experts_top_k={p.experts_top_k} must be in 1..{p.length // 2} (the experts)')
    if p.smope_eval_counts not in ('reference', 'saved'):
      raise one_of('config.prompt.smope_eval_counts', p.smope_eval_counts, ('reference', 'saved'))
  if c.prompt.ca_schedule not in ('cosine_epoch', 'coswm'):
    raise one_of('alignment schedule (config.prompt.ca_schedule)', c.prompt.ca_schedule, ('cosine_epoch', 'coswm'))
  if c.benchmark.transforms not in ('hide', 'smope'):
    raise one_of('transforms (config.benchmark.transforms)', c.benchmark.transforms, ('hide', 'smope'))
  if c.statistics.batches not in STATISTICS_BATCHES:
    raise one_of('statistics batching (config.statistics.batches)', c.statistics.batches, STATISTICS_BATCHES)
  if c.statistics.method not in STATISTICS:
    raise one_of('statistics method (config.statistics.method)', c.statistics.method, STATISTICS)
  _check(c.batch_size >= 1 and c.eval_batch_size >= 1, 'config.batch_size and eval_batch_size must be >= 1')
  _check(c.dtype in ('float32', 'bfloat16'), f'config.dtype must be float32 or bfloat16, got {c.dtype!r}')
  _check(c.matmul_precision in MATMUL_PRECISIONS,
         f'config.matmul_precision must be one of {", ".join(MATMUL_PRECISIONS)}, got {c.matmul_precision!r}')
  _check(c.attention in ('explicit', 'fused'), f'config.attention must be explicit or fused, got {c.attention!r}')
  _check(c.dry_run_steps >= 1, 'config.dry_run_steps must be >= 1')
  _check(c.seed >= 0, f'config.seed must be >= 0 (numpy seeds are non-negative), got {c.seed}')
  _check(c.num_devices >= 0, f'config.num_devices must be >= 0 (0 = every device), got {c.num_devices}')
  _check(0 <= c.stop_after_task <= b.num_tasks,
         f'config.stop_after_task={c.stop_after_task} must be in 0..{b.num_tasks} (0 = run every task)')
  _check(c.checkpoint_every_steps >= 0,
         f'config.checkpoint_every_steps must be >= 0 (0 = checkpoint at stage ends only), '
         f'got {c.checkpoint_every_steps}')
  _check(bool(c.compilation_cache), "config.compilation_cache is empty; use 'auto', 'off' or a folder")
  _check(c.distributed_timeout_s >= 1,
         f'config.distributed_timeout_s must be >= 1 (seconds), got {c.distributed_timeout_s}')
  _check(c.backbone.depth >= 0, f'config.backbone.depth must be >= 0 (0 = every block), got {c.backbone.depth}')
  for key in ('prompt.layers', 'prompt.g_layers', 'task_identity.mlp_hidden'):
    group, name = key.split('.')
    _check(all(isinstance(v, int) and not isinstance(v, bool) for v in c[group][name]),
           f'config.{key} must be a tuple of integers, got {tuple(c[group][name])!r}')
  for stage in ('task_identity', 'prompt'):
    _check(c[stage].ca_epochs >= 0, f'config.{stage}.ca_epochs must be >= 0, got {c[stage].ca_epochs}')
  _check(all(h >= 1 for h in c.task_identity.mlp_hidden),
         f'config.task_identity.mlp_hidden={tuple(c.task_identity.mlp_hidden)} must hold positive widths')
  _check(c.statistics.n_centroids >= 1, f'config.statistics.n_centroids must be >= 1, got {c.statistics.n_centroids}')
  check_numbers(c)
  for key in ('prompt.layers', 'prompt.g_layers'):
    group, name = key.split('.')
    layers = list(c[group][name])
    twice = sorted({l for l in layers if layers.count(l) > 1})
    _check(not twice, f'config.{key}={tuple(layers)} lists block(s) {", ".join(map(str, twice))} '
                      f'more than once; list each block once')
  return c


# Methods whose prefix gather has the key/value reshape quirk (11.1): their test accuracy depends
# on how the test set is cut into batches when kv_layout='reference'.
_KV_QUIRK_METHODS = ('hideprompt', 'norga', 'dualprompt', 'sprompt')


def protocol_warnings(c) -> list:
  """Valid settings that leave the references' protocol, one line each (the run prints them).

  * kv_layout='reference' with config.eval_batch_size != config.batch_size: the references
    ([N] ``datasets.py``: every test loader has ``batch_size=args.batch_size``) evaluate in
    batches of the training batch size, and under the key/value reshape quirk (the prompt gather of
    ``vits/norga_prompt_vision_transformer.py``) a test image's prefix is its neighbours' predicted prompts, so the accuracy moves with the eval batch.
  """
  out = []
  if (c.method in _KV_QUIRK_METHODS and c.prompt.kv_layout == 'reference'
      and c.eval_batch_size != c.batch_size):
    out.append(f'config.eval_batch_size={c.eval_batch_size} differs from config.batch_size='
               f'{c.batch_size}, the references\' evaluation batch: with '
               f'config.prompt.kv_layout=\'reference\' a test image\'s prefix depends on its batch, '
               f'so accuracies will not match the reference code; set config.eval_batch_size='
               f'{c.batch_size} (or kv_layout=\'correct\')')
  return out


# Every numeric hyper-parameter of `base()` and the values it may take: (low, low included,
# high, high included, what it means when the bound is missed). None = unbounded. Checked by
# `check_numbers`; the keys `validate` checks with messages of their own are not repeated.
_POSITIVE, _NON_NEGATIVE, _AT_LEAST_ONE = (0, False, None, False), (0, True, None, False), (1, True, None, False)
NUMBER_RANGES = {
    'benchmark.test_fraction': (0, False, 1, False),
    'benchmark.imr_split_seed': _NON_NEGATIVE,
    'backbone.image_size': _AT_LEAST_ONE,
    'task_identity.epochs': _AT_LEAST_ONE,
    'task_identity.clip_grad': _NON_NEGATIVE,
    'task_identity.ca_lr': _POSITIVE,
    'prompt.length': _AT_LEAST_ONE,
    'prompt.pool_size': _NON_NEGATIVE,
    'prompt.epochs': _AT_LEAST_ONE,
    'prompt.clip_grad': _NON_NEGATIVE,
    'prompt.reg': _NON_NEGATIVE,
    'prompt.ca_lr': _POSITIVE,
    'prompt.prompt_lr_scale': _POSITIVE,
    'prompt.weight_decay': _NON_NEGATIVE,
    'prompt.iter_step': _NON_NEGATIVE,
    'prompt.freeze_iters': _NON_NEGATIVE,
    'prompt.warmup_epochs': _NON_NEGATIVE,
    'prompt.ca_weight_decay': _NON_NEGATIVE,
    'prompt.ca_samples_ratio': _POSITIVE,
    'prompt.top_k': _AT_LEAST_ONE,
    'prompt.pull_coeff': _NON_NEGATIVE,
    'prompt.g_length': _AT_LEAST_ONE,
    'prompt.ortho_mu': _NON_NEGATIVE,
    'prompt.experts_top_k': _AT_LEAST_ONE,
    'prompt.noise_eps': _NON_NEGATIVE,
    'prompt.mu_router': _NON_NEGATIVE,
    'prompt.mu_router_old': _NON_NEGATIVE,
    'schedule.decay_epochs': _AT_LEAST_ONE,
    'schedule.decay_rate': (0, False, 1, True),
    'schedule.min_lr': _NON_NEGATIVE,
    'log_every_steps': _NON_NEGATIVE,
    'data_workers': _NON_NEGATIVE,
    'dry_run_batch_size': _NON_NEGATIVE,
}
# Alignment epochs of the stages that align their head (the rest never read them).
_ALIGNS = {'task_identity': METHODS[:2], 'prompt': ('hideprompt', 'norga', 'coda', 'smope')}


def _range_text(low, low_in, high, high_in) -> str:
  if high is None:
    return f'{">=" if low_in else ">"} {low}'
  return f'in {"[" if low_in else "("}{low}, {high}{"]" if high_in else ")"}'


def check_numbers(c) -> None:
  """Every number of the config is finite and in its range (`NUMBER_RANGES`), so a value that
  would train nothing (epochs=0) or diverge (a negative lr) stops the run before it starts.

  Raises ConfigError: 'config.<key> must be <range>, got <value>'."""
  def leaves(node, prefix=''):
    for key in node.keys():
      value = node[key]
      if isinstance(value, ml_collections.ConfigDict):
        yield from leaves(value, f'{prefix}{key}.')
      else:
        yield f'{prefix}{key}', value
  for key, value in leaves(c):
    if isinstance(value, float) and not math.isfinite(value):
      raise ConfigError(f'config.{key} must be a finite number, got {value}')
  for key, (low, low_in, high, high_in) in NUMBER_RANGES.items():
    group, _, name = key.rpartition('.')
    value = (c[group] if group else c)[name]
    ok = (value >= low if low_in else value > low) and (
        high is None or (value <= high if high_in else value < high))
    _check(ok, f'config.{key} must be {_range_text(low, low_in, high, high_in)}, got {value}')
  for stage, methods in _ALIGNS.items():
    if c.method in methods and (stage == 'prompt' or c.task_identity.enabled):
      _check(c[stage].ca_epochs >= 1,
             f'config.{stage}.ca_epochs must be >= 1: {c.method} aligns this stage\'s head '
             f'(0 would leave it unaligned), got {c[stage].ca_epochs}')
  if c.method == 'smope':
    _check(c.prompt.warmup_epochs < c.prompt.epochs,
           f'config.prompt.warmup_epochs={c.prompt.warmup_epochs} must be below config.prompt.epochs='
           f'{c.prompt.epochs}')


def tuple_keys() -> list:
  """Dotted paths of the keys of `base()` whose value is a tuple (prompt.layers, ...)."""
  out = []
  def walk(node, prefix):
    for key in node.keys():
      if isinstance(node[key], ml_collections.ConfigDict):
        walk(node[key], f'{prefix}{key}.')
      elif isinstance(node[key], tuple):
        out.append(f'{prefix}{key}')
  walk(base(), '')
  return out


def check_overrides(argv) -> None:
  """Command-line overrides of tuple keys must be written as tuples: ml_collections reads
  ``--config.prompt.layers=5`` (or ``=(5)``) as ``(5,)``, silently one block.

  Raises ConfigError naming the key and the tuple spelling."""
  keys = set(tuple_keys())
  for arg in argv[1:]:
    if not arg.startswith('--config.') or '=' not in arg:
      continue
    key, value = arg[len('--config.'):].split('=', 1)
    text = value.strip()
    if key in keys and not (',' in text or text.startswith('[') or text.replace(' ', '') == '()'):
      inner = text.strip('()') or '0'
      raise ConfigError(f'config.{key} is a tuple, got the single value {text!r} (in {arg}); write '
                        f'--config.{key}="({inner},)" for one entry, or list them: "(0, 1, 2)"')


def _kind(value) -> str:
  """The schema type of a config value: int and float are both numbers where a float is expected."""
  if isinstance(value, bool):
    return 'bool'
  if isinstance(value, int):
    return 'int'
  if isinstance(value, float):
    return 'float'
  if isinstance(value, (tuple, list)):
    return 'sequence'
  return type(value).__name__


def _initials(name: str) -> str:
  return ''.join(word[0] for word in name.split('_') if word)


def suggest_keys(prefix: str, key: str, limit: int = 3) -> list:
  """The key paths of `base()` a misspelt ``prefix + key`` ('config.prompt.' + 'lenght') most
  likely meant, best first: a close spelling in the same group, the same name or a close one in
  any group, or an abbreviation either way ('lerning_rate' -> lr, 'wd' -> weight_decay). Ties
  with the best are all given (at most ``limit``); [] when nothing is close."""
  import difflib  # pylint: disable=g-import-not-at-top
  group = prefix[len('config.'):]
  scored = []

  def walk(node, path):
    for name in node.keys():
      full = f'{path}{name}'
      ratio = difflib.SequenceMatcher(None, key, name).ratio()
      if name == key:
        ratio = 1.0
      elif min(len(key), len(name)) >= 2 and (_initials(key) == name or _initials(name) == key):
        ratio = max(ratio, 0.9)
      if path == group:
        ratio += 0.05           # where it was typed wins a tie
      if ratio >= 0.6:
        scored.append((-round(ratio, 2), 0 if full.startswith('prompt.') else 1, full))
      if isinstance(node[name], ml_collections.ConfigDict):
        walk(node[name], f'{full}.')
  walk(base(), '')
  scored.sort()
  return [f'config.{full}' for s, _, full in scored if s == scored[0][0]][:limit] if scored else []


def _unknown_key(prefix: str, key: str, schema) -> ConfigError:
  close = suggest_keys(prefix, key)
  hint = (f'did you mean {" or ".join(close)}?' if close
          else f'valid keys: {", ".join(sorted(schema.keys()))}')
  return ConfigError(f'unknown config key {prefix}{key}; {hint}')


def check_key_path(path: str) -> None:
  """A dotted override path such as 'prompt.length' names a key of `base()`."""
  node, prefix = base(), 'config.'
  for key in path.split('.'):
    if not isinstance(node, ml_collections.ConfigDict):
      raise ConfigError(f'{prefix[:-1]} has no sub-keys (cannot set {prefix}{key})')
    if key not in node:
      raise _unknown_key(prefix, key, node)
    node, prefix = node[key], f'{prefix}{key}.'


def check_schema(c, schema, prefix: str = 'config.') -> None:
  """Every key of ``c`` exists in ``schema`` (`base()`) with a value of the same kind: a
  misspelt key in a config file would otherwise be silently ignored."""
  for key in c.keys():
    if key not in schema:
      raise _unknown_key(prefix, key, schema)
    value, expected = c[key], schema[key]
    if isinstance(expected, ml_collections.ConfigDict):
      if not isinstance(value, ml_collections.ConfigDict):
        raise ConfigError(f'{prefix}{key} must be a group of keys, got {value!r}')
      check_schema(value, expected, f'{prefix}{key}.')
      continue
    got, want = _kind(value), _kind(expected)
    if got != want and not (want == 'float' and got == 'int'):
      words = {'int': 'an integer', 'float': 'a number', 'bool': 'True or False', 'str': 'a string',
               'sequence': 'a tuple'}
      raise ConfigError(f'{prefix}{key} must be {words.get(want, want)}, got {value!r}')


def num_classes(c) -> int:
  return BENCHMARKS[c.benchmark.name][0]


def lr_scale(c, stage: str = 'prompt') -> float:
  """[N]/[H] scale lr by batch/256 (world size excluded: unscale_lr=True); [S] does not."""
  if stage == 'prompt' and not c.prompt.scale_lr_by_batch:
    return 1.0
  return c.batch_size / 256.0


def weights_path(c) -> str:
  from cljax.checkpoints.backbones import ASSETS, NAMED  # pylint: disable=g-import-not-at-top
  if c.backbone.weights:
    return c.backbone.weights
  info = NAMED[c.backbone.name]
  directory = ASSETS if c.backbone.name == 'demo_fmnist' else c.backbone.weights_dir
  return os.path.join(directory, info.file)


def to_dict(c) -> Dict[str, Any]:
  return c.to_dict()


MATMUL_PRECISIONS = ('auto', 'default', 'high', 'highest')


def matmul_precision(c) -> str:
  """The precision config.matmul_precision selects: 'auto' is highest for float32 and default
  for bfloat16."""
  if c.matmul_precision == 'auto':
    return 'highest' if c.dtype == 'float32' else 'default'
  return c.matmul_precision


def to_json(c) -> Dict[str, Any]:
  """A JSON-able dict of the config (tuples become lists)."""
  import json  # pylint: disable=g-import-not-at-top
  return json.loads(c.to_json())


def from_json(d: Dict[str, Any]) -> ml_collections.ConfigDict:
  """The inverse of to_json: base() updated with the saved values (lists back to tuples)."""
  c = base()

  def fill(target, values, prefix):
    for k, v in values.items():
      if k.startswith('_'):     # a record kept beside the config (config.json's '_history')
        continue
      if k not in target:
        raise ConfigError(f'saved config has unknown key {prefix}{k}')
      if isinstance(v, dict):
        fill(target[k], v, f'{prefix}{k}.')
      else:
        target[k] = tuple(v) if isinstance(target[k], tuple) else v
  fill(c, d, '')
  return c


def differences(a: Dict[str, Any], b: Dict[str, Any], ignore=(), prefix='') -> list:
  """'key: x != y' for every leaf that differs between two to_json dicts."""
  out = []
  for k in sorted(set(a) | set(b)):
    if k in ignore:
      continue
    x, y = a.get(k), b.get(k)
    if isinstance(x, dict) and isinstance(y, dict):
      out += differences(x, y, ignore, f'{prefix}{k}.')
    elif x != y:
      out.append(f'{prefix}{k}: {x!r} != {y!r}')
  return out


def demo(method: str = 'norga') -> ml_collections.ConfigDict:
  """Split-Digits with the demo backbone, scaled from the references' CIFAR-100 NoRGa cell."""
  c = base()
  c.method = method
  c.seed = 42
  c.benchmark.name = 'split_digits'
  c.benchmark.num_tasks = 5
  c.backbone.name = 'demo_fmnist'
  c.backbone.image_size = 28
  c.batch_size = 32
  # The references evaluate in batches of args.batch_size; under kv_layout='reference' a test
  # image's prefix depends on its batch neighbours, so the eval batch is part of the protocol.
  c.eval_batch_size = 32
  # The references' CIFAR-100 NoRGa cell, scaled to ~250 training images per task: more epochs
  # and larger learning rates (lr is still multiplied by batch/256), head at the prompt lr (as
  # the references' CUB configs), 20 alignment epochs.
  c.task_identity.update(epochs=20, lr=0.02, schedule='constant', mlp_hidden=(2,), ca_lr=0.05, ca_epochs=20)
  # Exact here: the demo's transform has no augmentation, so stage 1's features are the same in
  # every epoch and computing them once changes no number (tests/test_trainer.py).
  c.task_identity.reuse_features = True
  c.prompt.update(layers=(0, 1, 2), length=4, epochs=10, lr=0.1, schedule='constant', reg=0.1,
                  momentum=0.01, larger_prompt_lr=False, ca_lr=0.05, ca_epochs=20,
                  gate='norga' if method == 'norga' else 'linear',
                  activation='tanh' if method == 'norga' else 'identity')
  if method in BASELINES:
    demo_baseline(c, method)
  if method == 'smope':
    c.task_identity.enabled = False
    c.mask_test_logits = True
    c.statistics.update(method='multi-centroid', n_centroids=1)
    c.benchmark.transforms = 'smope'
    c.prompt.update(layers=(0, 1, 2, 3), length=16, experts_top_k=3, noise_eps=0.4, mu_router=1e-4,
                    mu_router_old=1e-4, gate='linear', activation='identity', optimizer='adamw',
                    lr=0.01, schedule='coswm', freeze_iters=0, scale_lr_by_batch=False,
                    prompt_lr_scale=5.0, clip_grad=0.0, reg=0.0, momentum=0.0, ca_lr=1e-3,
                    ca_optimizer='adamw', ca_weight_decay=5e-4, ca_schedule='coswm',
                    ca_samples_ratio=1.0)
  c.log_every_steps = 0
  return c


def demo_baseline(c, method: str) -> None:
  """Baselines at demo size: their reference structure, the demo's epochs and learning rates."""
  c.task_identity.enabled = False
  p = c.prompt
  p.update(gate='linear', activation='identity', reg=0.0, momentum=0.0)
  if method == 'coda':
    p.update(layers=(0, 1, 2), pool_size=10, length=4, lr=0.01, schedule='smope_cosine',
             scale_lr_by_batch=False, prompt_lr_scale=5.0, clip_grad=0.0, ca_lr=1e-3,
             ca_optimizer='adamw', ca_weight_decay=5e-4, ca_schedule='coswm', ca_samples_ratio=1.0)
    c.statistics.update(method='multi-centroid', n_centroids=1)
    c.benchmark.transforms = 'smope'
    return
  p.update(pull_coeff=0.1 if method == 'l2p' else 1.0)
  if method == 'l2p':
    p.update(layers=(0,), pool_size=10, length=4, top_k=3, batchwise_prompt=True,
             use_prompt_mask=False, shared_prompt_pool=False)
  elif method == 'dualprompt':
    p.update(layers=(2,), g_layers=(0, 1), g_length=4, pool_size=5, length=4, top_k=1,
             use_prompt_mask=True, shared_prompt_pool=True)
  else:
    p.update(layers=(0, 1, 2), pool_size=5, length=4, top_k=1, use_prompt_mask=True,
             shared_prompt_pool=True)



# ----------------------------------------------------------------------------- baselines

BASELINES = ('l2p', 'dualprompt', 'sprompt', 'coda')
# [N] scripts (ALGORITHMS.md 9.2): epochs per dataset; 5-Datasets by backbone.
_BASELINE_EPOCHS = {
    'l2p': {'cifar100': 10, 'imr': 50, 'cub': 50, 'five_datasets': {'sup21k': 40, 'ibot21k': 20}},
    'dualprompt': {'cifar100': 20, 'imr': 50, 'cub': 50, 'five_datasets': {'sup21k': 40, 'ibot21k': 20}},
    'sprompt': {'cifar100': 20, 'imr': 50, 'cub': 50, 'five_datasets': {'sup21k': 40, 'ibot21k': 20}},
}
# [S] per-dataset alignment sample ratio and alignment epochs (used for CODA as for SMoPE).
_S_ALIGNMENT = {'cifar100': (1.0, 50), 'imr': (6.0, 50), 'cub': (1.0, 50), 'five_datasets': (1.0, 50)}


def baseline(dataset: str, method: str, backbone: str = 'sup21k') -> ml_collections.ConfigDict:
  """L2P / DualPrompt / S-Prompt as [N] scripts them; CODA-Prompt with [C]'s hyper-parameters
  inside [S]'s framework (ALGORITHMS.md 3, 4, 9.2)."""
  scripted = {'sup21k', 'ibot21k'} | ({'ibot1k', 'dino', 'mocov3'} if dataset in ('cifar100', 'imr') else set())
  if backbone not in scripted or dataset not in BENCHMARKS or dataset == 'split_digits':
    raise ConfigError(f'the references have no {method} run of {dataset} with backbone {backbone!r}; '
                      f'available backbones for {dataset}: {", ".join(sorted(scripted))}')
  c = base()
  c.method = method
  c.benchmark.name = dataset
  c.benchmark.num_tasks = BENCHMARKS[dataset][1]
  c.backbone.name = BACKBONE_ALIASES[backbone]
  c.task_identity.enabled = False
  five = dataset == 'five_datasets'
  p = c.prompt
  if method == 'coda':
    # [C] configs: Adam lr 1e-3, cosine, batch 128, 20 epochs (CIFAR; 5-Datasets likewise) or 50
    # (ImageNet-R; CUB likewise); 100 components of length 8, no orthogonality penalty; [S]'s
    # framework: prompts at 5 x lr, no batch scaling, Gaussian-replay alignment of the head.
    ratio, ca_epochs = _S_ALIGNMENT[dataset]
    p.update(layers=(0, 1, 2, 3, 4), pool_size=100, length=8, ortho_mu=0.0, gate='linear',
             activation='identity', optimizer='adam', lr=1e-3, schedule='smope_cosine',
             epochs=20 if dataset in ('cifar100', 'five_datasets') else 50,
             scale_lr_by_batch=False, prompt_lr_scale=5.0, clip_grad=0.0, reg=0.0, momentum=0.0,
             larger_prompt_lr=False, ca_lr=1e-4, ca_epochs=ca_epochs, ca_optimizer='adamw',
             ca_weight_decay=5e-4, ca_schedule='coswm', ca_samples_ratio=ratio)
    c.statistics.update(method='multi-centroid', n_centroids=1)
    c.benchmark.transforms = 'smope'
    return c
  epochs = _BASELINE_EPOCHS[method][dataset]
  if isinstance(epochs, dict):
    epochs = epochs[backbone]
  p.update(optimizer='adam', lr=0.005, clip_grad=1.0, schedule='constant', epochs=epochs, reg=0.0,
           momentum=0.0, larger_prompt_lr=False, gate='linear', activation='identity')
  if dataset == 'cub':      # step schedule, effective on task 0 only (quirk 11.8)
    p.update(schedule='step', schedule_first_task_only=True)
  if method == 'l2p':
    p.update(layers=(0,), pool_size=20 if five else 30, length=10 if five else 5, top_k=4 if five else 5,
             pull_coeff=0.5 if five else 0.1, batchwise_prompt=True, use_prompt_mask=False,
             shared_prompt_pool=False)
  elif method == 'dualprompt':
    p.update(layers=(2, 3, 4), g_layers=(0, 1), g_length=10 if five else 5, pool_size=5 if five else 10,
             length=40 if five else 20, top_k=1, pull_coeff=0.5 if five else 1.0, batchwise_prompt=five,
             use_prompt_mask=True, shared_prompt_pool=True)
  elif method == 'sprompt':
    p.update(layers=(0, 1, 2, 3, 4), pool_size=5 if five else 10, length=40 if five else 20, top_k=1,
             pull_coeff=0.5 if five else 1.0, batchwise_prompt=dataset in ('cifar100', 'five_datasets'),
             use_prompt_mask=True, shared_prompt_pool=True)
  return c



# ----------------------------------------------------------------------------- SMoPE

# [S] configs/experiments (ALGORITHMS.md 9.3): batch, lr, schedule (freeze iters, warm-up epochs,
# epochs) or cosine, iter_step, mu_router, mu_router_old, eps, alignment epochs and sample ratio.
_SMOPE = {
    ('cifar100', 10): (128, 5e-3, ('coswm', 80, 0, 20), 40, 1e-5, 1e-5, 0.4, 50, 1.0),
    ('cub', 10): (128, 5e-3, ('smope_cosine', 0, 0, 20), 0, 1e-5, 5e-5, 0.4, 50, 1.0),
    ('imr', 5): (64, 2.5e-3, ('coswm', 80, 0, 20), 80, 1e-4, 1e-5, 0.7, 60, 2.0),
    ('imr', 10): (64, 2.5e-3, ('coswm', 40, 0, 20), 40, 5e-5, 1e-4, 0.5, 50, 6.0),
    ('imr', 20): (64, 2.5e-3, ('coswm', 20, 0, 20), 20, 1e-4, 5e-5, 0.3, 50, 4.0),
}


def smope(dataset: str, num_tasks: int = 10) -> ml_collections.ConfigDict:
  """SMoPE as [S] runs it: seeds 0..4 (default 0), its transforms and backbones (Sup-1K =
  AugReg2 in21k->in1k; CUB: AugReg in21k), prompt experts in layers 0-5 (D10: OnePrompt also
  for the 10/20-task ImageNet-R runs)."""
  if (dataset, num_tasks) not in _SMOPE:
    cells = ', '.join(f'{d}/{t} tasks' for d, t in _SMOPE)
    raise ConfigError(f'the references have no SMoPE run of {dataset} with {num_tasks} tasks; available: {cells}')
  batch, lr, (sched, freeze, warmup, epochs), iter_step, mu_r, mu_old, eps, ca_epochs, ratio = _SMOPE[(dataset, num_tasks)]
  c = base()
  c.method = 'smope'
  c.seed = 0
  c.benchmark.name = dataset
  c.benchmark.num_tasks = num_tasks
  c.benchmark.transforms = 'smope'
  c.backbone.name = 'vit_b16_augreg_in21k' if dataset == 'cub' else 'vit_b16_augreg2_in21k_ft_in1k'
  c.batch_size = c.eval_batch_size = batch
  c.task_identity.enabled = False
  c.mask_test_logits = True
  c.prompt.update(layers=(0, 1, 2, 3, 4, 5), length=50, experts_top_k=5, mu_router=mu_r,
                  mu_router_old=mu_old, noise_eps=eps, gate='linear', activation='identity',
                  optimizer='adamw', weight_decay=0.0, lr=lr, schedule=sched, epochs=epochs,
                  iter_step=iter_step, freeze_iters=freeze, warmup_epochs=warmup,
                  scale_lr_by_batch=False, prompt_lr_scale=5.0, clip_grad=0.0, reg=0.0,
                  momentum=0.0, larger_prompt_lr=False, ca_lr=1e-4, ca_epochs=ca_epochs,
                  ca_optimizer='adamw', ca_weight_decay=5e-4, ca_schedule='coswm',
                  ca_samples_ratio=ratio)
  c.statistics.update(method='multi-centroid', n_centroids=1)
  return c
