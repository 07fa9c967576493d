"""Everything a run can set (`base`, with the names each key may take) and the small functions
that read a config: class count, learning-rate scale, weights path, matmul precision, and its
JSON record (config.json, results.json) with the differences between two of them.
"""

from __future__ import annotations

import os
from typing import Any, Dict

import ml_collections

from cljax.errors import ConfigError


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
