"""The references' hyper-parameters as data: `paper` (a benchmark x method x backbone cell of the
NoRGa/HiDe-Prompt tables, the baselines' and SMoPE's own scripts) and `demo` (the offline demo at
Split-Digits size). Each returns a `schema.base` config with that cell's values.
"""

from __future__ import annotations

import ml_collections

from cljax.errors import ConfigError, one_of

from cljax.config.schema import BACKBONE_ALIASES, BENCHMARKS, base



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
