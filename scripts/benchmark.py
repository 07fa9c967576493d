"""Throughput of cljax's jitted steps against a PyTorch eager implementation, MFU, projections.

  python scripts/benchmark.py                 # default: every method at ViT-Ti/16, NoRGa at
                                              # ViT-B/16; batch 8 on CPU, 128 on GPU
  python scripts/benchmark.py --quick         # ViT-Ti at 64x64, NoRGa only, 2 repeats (CI smoke run)
  python scripts/benchmark.py --dtype bfloat16 --torch-compile --models b --methods all   # GPU
  python scripts/benchmark.py --models ti --methods norga --variant dtype=bfloat16 --variant attention=fused
  python scripts/benchmark.py --models b --methods norga,hideprompt,smope --rounds 2 \
      --reference-repo ~/MoE_PromptCL --reference-python ~/moe-env/bin/python \
      --reference-repo ~/SMoPE --reference-python ~/smope-env/bin/python   # the original code
  python scripts/benchmark.py --models b --methods norga --oracle-processes --rounds 3   # the oracle alone

What is timed. cljax: the very steps `Experiment` jits for a run (`_steps(stage)['train']`,
`_eval_step('prompt')`, the alignment step `_steps(stage)['ca']`), built from the method's paper
config for Split ImageNet-R with the backbone swapped for the benchmarked size and random
weights (no files needed), lowered and compiled once (compile time reported apart), then run on
device-resident random inputs: a step's time is the median over `--repeats` calls after one
warm-up call. PyTorch: `cljax_testing.torch_oracle`'s models (timm-layout blocks, the references'
attention and gate formulas, their prompt gather), eager fp32, frozen backbone with
requires_grad False, Adam(W) over the trainable params, grad-norm clipping where the config
clips, the same loss terms, batch and input; eval under torch.no_grad. Both run in this process,
one after the other, on the same threads.

Rows. `train`: the method's training step (forward, backward, optimizer update); `tii train`:
the task-identity (stage-1) training step of HiDe-Prompt/NoRGa; `eval`: the whole test-time path
(stage-1 forward to predict the task, then the prompted forward; keyed methods: query forward
then prompted forward; SMoPE: its own forward).

MFU = FLOPs per step (XLA's cost analysis of the same lowered step, as
`scripts/compute_report.py`) / step time / peak, where the peak is a matmul measured in this
process at the compute dtype (the device's achievable dense peak, not the datasheet).

Projection: for each benchmark config, the images each step type processes over a whole run
(epochs x training images, class-statistics and evaluation passes, alignment iterations) times
the measured time per image gives the projected wall time on this device; forward-only passes
are charged at the closest timed step (an upper bound).

The original code (`--reference-repo PATH`, repeatable, each with its `--reference-python`,
the Python that has that repository's requirements): for each method of the plan at ViT-B/16
that the checkout defines (MoE_PromptCL: NoRGa, HiDe-Prompt; HiDe-Prompt's own repository:
HiDe-Prompt; SMoPE: SMoPE, CODA-Prompt), the original's own training and evaluation steps
(scripts/reference_step.py says how they are driven) against cljax's, `--rounds` rounds of two
fresh processes, the original's then cljax's (`--cljax-worker`): never torch and XLA in one
process, as torch's spinning OpenMP threads slow XLA's. Their rows, `[original code, fresh
processes]`, join the same table, which is then written as reference_<device>.md/.json with
the repositories' commits and the machine's load. Without a checkout (CI) one line says that
these rows are skipped; a path that is not such a checkout is one `error:` line, exit 2.

The oracle in fresh processes (`--oracle-processes`): the in-process rows time torch and XLA in
one process, where each framework's idle threads slow the other's turn, so their ratio moves
between runs. This flag adds rows `[oracle, fresh processes]`: the same oracle steps timed alone
(`--oracle-worker`), in the same rounds as the original's processes and cljax's.

Writes benchmarks/performance_<device>.md and .json (--out-dir).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time

from cljax import host_memory

if __name__ == '__main__':   # before jax or torch start threads (see cljax.host_memory)
  host_memory.reexec_with_huge_pages([sys.executable] + sys.argv)

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from cljax import config as config_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from cljax.continual import step_inputs, trainer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference_step  # pylint: disable=g-import-not-at-top,wrong-import-position
import report_files  # pylint: disable=g-import-not-at-top,wrong-import-position
import step_timing  # pylint: disable=g-import-not-at-top,wrong-import-position

ALL_METHODS = ('l2p', 'dualprompt', 'sprompt', 'coda', 'hideprompt', 'norga', 'smope')
NAMES = {'l2p': 'L2P', 'dualprompt': 'DualPrompt', 'sprompt': 'S-Prompt', 'coda': 'CODA-Prompt',
         'hideprompt': 'HiDe-Prompt', 'norga': 'NoRGa', 'smope': 'SMoPE'}
MODELS = {'ti': 'vit_ti16', 'b': 'vit_b16'}
# Training / test images of the benchmarks we project (torchvision/tfds sizes; ImageNet-R: the
# CODA split, ALGORITHMS.md D3).
DATASET_SIZES = {'cifar100': (50000, 10000), 'imr': (24000, 6000), 'cub': (5994, 5794)}


# ----------------------------------------------------------------------------- timing

median_times = step_timing.median_times


def median_time(call, repeats: int, sync):
  """(first call s, median s) of one call."""
  return median_times([(call, sync)], repeats)[0][:2]


def jax_sync(out):
  jax.block_until_ready(out)


def matmul_peak(dtype, on_gpu: bool, repeats: int = 10) -> float:
  """Measured dense matmul FLOP/s at this dtype (the achievable peak MFU is measured against)."""
  m, k, n = (8192, 8192, 8192) if on_gpu else (2048, 2048, 2048)
  a = jax.random.normal(jax.random.PRNGKey(0), (m, k), jnp.float32).astype(dtype)
  b = jax.random.normal(jax.random.PRNGKey(1), (k, n), jnp.float32).astype(dtype)
  f = jax.jit(lambda a, b: a @ b)
  jax_sync(f(a, b))
  best = float('inf')
  for _ in range(repeats):   # the best run: a peak, not a typical figure
    t0 = time.perf_counter()
    jax_sync(f(a, b))
    best = min(best, time.perf_counter() - t0)
  return 2 * m * k * n / best


def flops_of(lowered) -> float:
  cost = lowered.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float(cost['flops'])


# ----------------------------------------------------------------------------- cljax side

def experiment(method: str, model: str, batch: int, overrides, image_size: int = 224):
  """The trainer's Experiment for the paper config of (Split ImageNet-R, method), resized."""
  c = config_lib.paper('imr', method, 'sup21k')
  c.model_override = MODELS[model]
  c.backbone.image_size = image_size
  c.dry_run = True      # random backbone weights: no file is read
  c.batch_size = c.eval_batch_size = batch
  c.num_devices = 1
  for key, value in overrides.items():
    c[key] = value
  return trainer.Experiment(c, '', load_data=False, verbose=False)


def cljax_train(exp, stage, batch, keep_outputs: bool = False):
  """(call, info) of the stage's compiled train step on random inputs. With keep_outputs, info
  also holds the compiled step ('compiled') and, after each call, that call's outputs
  ('outputs': params, optimizer state, metrics), for scripts that inspect them."""
  step = exp.stage_steps(stage)['train']
  args, flags = step_inputs.train_args(exp, stage, batch, t=1, concrete=True)
  lowered = step.lower(*args, flags=flags)
  t0 = time.perf_counter()
  compiled = lowered.compile()
  compile_s = time.perf_counter() - t0
  info = {'compile_s': compile_s, 'flops': flops_of(lowered)}
  carry = list(args)

  def call():
    # params and optimizer state are donated, as in the trainer: feed the outputs back.
    carry[0], carry[1], metrics = compiled(*carry)
    if keep_outputs:
      info['outputs'] = (carry[0], carry[1], metrics)
    return metrics['loss']
  if keep_outputs:
    info['compiled'] = compiled
  return call, info


def cljax_eval(exp, batch):
  """(call, info) of the compiled evaluation step on random inputs."""
  step = exp.eval_step('prompt', per_example=False)
  args = step_inputs.eval_args(exp, batch, concrete=True)
  lowered = step.lower(*args)
  t0 = time.perf_counter()
  compiled = lowered.compile()
  compile_s = time.perf_counter() - t0
  return (lambda: compiled(*args)), {'compile_s': compile_s, 'flops': flops_of(lowered)}


def step_kinds(exp):
  """[(stage name, 'train' | 'eval')]: the steps timed for an experiment, in table order."""
  return [(s.name, 'train') for s in exp.stages] + [('prompt', 'eval')]


def step_label(stage_name: str, kind: str) -> str:
  return ('tii ' if stage_name == 'task_identity' else '') + kind


def cljax_step(exp, stage_name: str, kind: str, batch: int):
  """(call, info) of one compiled step of exp (cljax_train or cljax_eval)."""
  if kind == 'train':
    return cljax_train(exp, next(s for s in exp.stages if s.name == stage_name), batch)
  return cljax_eval(exp, batch)


def time_cljax_alignment(exp, stage, repeats):
  """One classifier-alignment step (Gaussian replay of ca_samples features), for projections."""
  steps = exp.stage_steps(stage)
  params = jax.jit(stage.method.init)(jax.random.PRNGKey(0))
  opt = steps['ca_tx'].init(params)
  lr_tree = jax.tree.map(lambda _: jnp.float32(1.0), params)
  n = stage.ca_samples
  x = jax.random.normal(jax.random.PRNGKey(1), (n, exp.vit_cfg.embed_dim), jnp.float32)
  y = jnp.asarray(np.arange(n) % exp.num_classes, jnp.int32)
  seen = jnp.ones(exp.num_classes, bool)
  carry = [params, opt]

  def call():
    carry[0], carry[1], loss = steps['ca'](carry[0], carry[1], x, y, seen, jnp.float32(1e-3), lr_tree)
    return loss
  _, step_s = median_time(call, repeats, jax_sync)
  return step_s


# ----------------------------------------------------------------------------- PyTorch side

class TorchSide:
  """The method's reference structure in eager PyTorch (cljax_testing.torch_oracle), for one config."""

  def __init__(self, exp, batch: int, compile_mode: bool, amp: bool = False):
    import torch  # pylint: disable=g-import-not-at-top
    from cljax_testing import torch_oracle as O  # pylint: disable=g-import-not-at-top
    from cljax.checkpoints import backbones  # pylint: disable=g-import-not-at-top
    self.torch, self.F = torch, torch.nn.functional
    c, vit = exp.config, exp.vit_cfg
    self.c, self.method, self.batch = c, c.method, batch
    self.num_classes, self.num_tasks = exp.num_classes, exp.num_tasks
    p = c.prompt
    kw = dict(dim=vit.embed_dim, depth=vit.depth, heads=vit.num_heads, patch=vit.patch_size,
              image=vit.image_size, num_classes=exp.num_classes, final_norm=vit.final_norm,
              fc_norm=not vit.final_norm)
    torch.manual_seed(0)
    m = self.method
    if m in ('hideprompt', 'norga'):
      self.model = O.PromptedViT(prompt_layers=tuple(p.layers), pool=p.pool_size or exp.num_tasks,
                                 length=p.length, gate=p.gate, gate_act=p.activation,
                                 prompt_key=p.prompt_key, kv_layout=p.kv_layout, **kw)
      self.tii = O.PromptedViT(mlp_hidden=tuple(c.task_identity.mlp_hidden), **kw)
    elif m in ('l2p', 'dualprompt', 'sprompt'):
      self.model = O.KeyedPromptedViT(
          top_k=p.top_k, batchwise=p.batchwise_prompt, g_layers=tuple(p.g_layers) if m == 'dualprompt' else (),
          g_length=p.g_length, force_task_entry=m != 'l2p', prompt_layers=tuple(p.layers),
          pool=p.pool_size, length=p.length, prefix=m != 'l2p', **kw)
    elif m == 'coda':
      self.model = O.CodaViT(components=p.pool_size, length=p.length, num_tasks=exp.num_tasks,
                             prompt_layers=tuple(p.layers), **kw)
    elif m == 'smope':
      self.model = O.SmopeViT(expert_layers=tuple(p.layers), experts=p.length // 2,
                              top_k=p.experts_top_k, eps=p.noise_eps, **kw)
      self.noise = torch.zeros(len(p.layers), vit.num_heads, p.length // 2)
    else:
      raise ValueError(m)
    # The GPU when there is one (the script runs unchanged on either).
    self.device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    self.models = [self.model] + ([self.tii] if hasattr(self, 'tii') else [])
    for model in self.models:
      model.to(self.device)
    if m == 'smope':
      self.noise = self.noise.to(self.device)
    for model in self.models:   # the references' --freeze: the backbone takes no gradient
      for name, param in model.named_parameters():
        param.requires_grad = not name.startswith(backbones.BACKBONE_PREFIXES)
    dev = self.device
    self.x = torch.rand(batch, 3, vit.image_size, vit.image_size, device=dev)
    self.y = torch.arange(batch, device=dev) % exp.num_classes
    self.means = torch.randn(exp.num_classes, vit.embed_dim, device=dev)   # stored class means (contrastive)
    self.class_to_task = torch.arange(exp.num_classes, device=dev) * exp.num_tasks // exp.num_classes
    self.task_mask = torch.ones(exp.num_classes, dtype=torch.bool, device=dev)
    self.compile = compile_mode
    self.amp = amp     # bf16 autocast (torch's mixed precision), for the torch.compile comparison

  def _autocast(self):
    import contextlib  # pylint: disable=g-import-not-at-top
    if not self.amp:
      return contextlib.nullcontext()
    return self.torch.autocast(self.device.type, dtype=self.torch.bfloat16)

  def _optimizer(self, model, cfg):
    params = [q for q in model.parameters() if q.requires_grad]
    opt_cls = self.torch.optim.AdamW if cfg.optimizer == 'adamw' else self.torch.optim.Adam
    return params, opt_cls(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
                           weight_decay=cfg.get('weight_decay', 0.0))

  def _masked_ce(self, logits):
    return self.F.cross_entropy(logits.masked_fill(~self.task_mask, float('-inf')), self.y)

  def _prompt_loss(self):
    torch, m, p = self.torch, self.method, self.c.prompt
    if m in ('hideprompt', 'norga'):
      pre, logits = self.model(self.x, torch.full((self.batch,), 1, device=self.device))
      loss = self._masked_ce(logits)
      if p.reg > 0:   # contrastive term against the stored class means (ALGORITHMS.md 2.3)
        feats = torch.cat([self.means, pre])
        loss = loss + p.reg * self.F.cross_entropy(feats @ feats.t() / 0.8, torch.arange(len(feats), device=self.device))
      return loss
    if m in ('l2p', 'dualprompt', 'sprompt'):
      logits, _, sim = self.model(self.x, task=1)
      return self._masked_ce(logits) - p.pull_coeff * sim
    if m == 'coda':
      return self._masked_ce(self.model(self.x, 1))
    logits, scores = self.model(self.x, self.noise)
    return self._masked_ce(logits) + self.model.router_loss(scores, p.mu_router)

  def _tii_loss(self):
    return self._masked_ce(self.tii(self.x)[1])

  def _train_call(self, model, loss_fn, cfg):
    torch = self.torch
    model.train()
    params, opt = self._optimizer(model, cfg)
    clip = cfg.clip_grad

    def step():
      opt.zero_grad(set_to_none=True)
      with self._autocast():
        loss = loss_fn()
      loss.backward()
      if clip > 0:
        torch.nn.utils.clip_grad_norm_(params, clip)
      opt.step()
      return loss.detach()
    return torch.compile(step) if self.compile else step

  def train_call(self, stage_name):
    if stage_name == 'task_identity':
      return self._train_call(self.tii, self._tii_loss, self.c.task_identity)
    return self._train_call(self.model, self._prompt_loss, self.c.prompt)

  def eval_call(self):
    torch, m = self.torch, self.method
    for model in self.models:
      model.eval()

    def step():
      with torch.no_grad(), self._autocast():
        if m in ('hideprompt', 'norga'):
          task = self.class_to_task[self.tii(self.x)[1].argmax(-1)]
          logits = self.model(self.x, task)[1]
        elif m in ('l2p', 'dualprompt', 'sprompt'):
          logits = self.model(self.x)[0]
        elif m == 'coda':
          logits = self.model(self.x, 1)
        else:
          logits = self.model(self.x, self.noise)[0]
        return logits.argmax(-1)
    return torch.compile(step) if self.compile else step


def torch_sync(out):
  # .cpu() waits for the device (a no-op copy on CPU), so a GPU step is timed whole.
  return out.cpu() if hasattr(out, 'cpu') else out


# ----------------------------------------------------------------------------- input pipeline

def host_pipeline_rate(batch: int, image_size: int = 224, source_size=(375, 500), n_batches: int = 6) -> float:
  """img/s of cljax's host input pipeline (pipeline.batches: grain, threads in this process, the references'
  ImageNet-R training transform) on decoded uint8 images of a typical ImageNet-R size; JPEG
  decoding is not included, so a real run's pipeline is slower than this."""
  from cljax.data import benchmarks as data_lib, pipeline  # pylint: disable=g-import-not-at-top
  n = batch * n_batches
  images = np.random.default_rng(0).integers(0, 256, (n,) + tuple(source_size) + (3,), dtype=np.uint8)
  member = data_lib.Member(images.__getitem__, np.zeros(n, np.int64), 'default')
  dataset = data_lib.Dataset([member], [0])
  it = pipeline.batches(dataset, np.arange(n), batch, image_size, train=True, seed=(0,), shuffle=True)
  next(it)     # thread pool and transforms warm
  t0 = time.perf_counter()
  count = sum(len(b.labels) for b in it)
  return count / (time.perf_counter() - t0)


# ----------------------------------------------------------------------------- the originals

class ReferenceRunError(Exception):
  """A reference comparison that cannot run; main prints it as one `error:` line, exit 2."""


def cljax_worker(args, batch: int, overrides) -> None:
  """--cljax-worker: times cljax's steps for the plan alone in this process (no torch in
  it) and prints the RESULT line that fresh_process_rows reads."""
  out = []
  for model, method in plan(args):
    exp = experiment(method, model, batch, overrides, args.image_size)
    steps = {}
    for stage_name, kind in step_kinds(exp):
      call, info = cljax_step(exp, stage_name, kind, batch)
      (first, step_s, times), = median_times([(call, jax_sync)], args.repeats)
      steps[step_label(stage_name, kind)] = {'first_s': first, 'step_s': step_s, 'times': times, **info}
    out.append({'model': MODELS[model], 'method': method, 'steps': steps})
  step_timing.emit({'jax': jax.__version__, 'plans': out}, sys.stdout)


def oracle_worker(args, batch: int, overrides) -> None:
  """--oracle-worker: times the lean PyTorch oracle's steps (TorchSide) for the plan alone in
  this process and prints the RESULT line that fresh_process_rows reads. jax only builds the
  config and the random backbone here; no XLA step runs while torch is timed."""
  import torch  # pylint: disable=g-import-not-at-top
  out = []
  for model, method in plan(args):
    exp = experiment(method, model, batch, overrides, args.image_size)
    side = TorchSide(exp, batch, False)
    steps = {}
    for stage_name, kind in step_kinds(exp):
      call = side.train_call(stage_name) if kind == 'train' else side.eval_call()
      (first, step_s, times), = median_times([(call, torch_sync)], args.repeats)
      steps[step_label(stage_name, kind)] = {'first_s': first, 'step_s': step_s, 'times': times}
    out.append({'model': MODELS[model], 'method': method, 'steps': steps})
  step_timing.emit({'torch': torch.__version__, 'threads': torch.get_num_threads(), 'plans': out}, sys.stdout)


def reference_repos(args):
  """[(path, name, methods, python)] of --reference-repo / --reference-python.
  Raises ReferenceRunError for a path that is not a recognised checkout or a missing python."""
  pythons = args.reference_python or [sys.executable]
  if len(pythons) not in (1, len(args.reference_repo)):
    raise ReferenceRunError('--reference-python: give one, or one per --reference-repo')
  out = []
  for i, path in enumerate(args.reference_repo):
    try:
      name, methods = reference_step.recognise(path)
    except reference_step.UserError as e:
      raise ReferenceRunError(str(e)) from None
    python = pythons[i if len(pythons) > 1 else 0]
    if not os.access(python, os.X_OK):
      raise ReferenceRunError(f'--reference-python {python}: not an executable')
    out.append((os.path.abspath(path), name, methods, python))
  return out


def fresh_process_rows(args, batch: int, repos):
  """Rows of PyTorch steps timed in fresh processes that take turns with cljax's.

  Two kinds of PyTorch process, each against cljax's steps (this script, --cljax-worker):
  * the original code: for each method of the plan at ViT-B (the originals' backbone) that a
    repository in `repos` defines, scripts/reference_step.py with that repository's Python;
  * the lean oracle (--oracle-processes): for every (model, method) of the plan, this script's
    --oracle-worker (cljax_testing.torch_oracle, as the in-process rows).
  `--rounds` rounds of fresh processes, one after the other (original, oracle, cljax). Never one
  process for torch and XLA: torch's OpenMP threads spin after each call and slow XLA's. A
  step's time is the median of all its timed calls over the rounds (each process warms up
  first). The PyTorch processes run with the environment as the user started this command
  (without cljax's huge pages, `host_memory.as_started`)."""
  here = os.path.abspath(__file__)
  ref_script = os.path.join(os.path.dirname(here), 'reference_step.py')
  # The original's process sees nothing of cljax's: no PYTHONPATH that may point at this tree,
  # and its allocator runs as the user's shell started it (cljax's huge pages are cljax's).
  torch_env = host_memory.as_started(os.environ)
  ref_env = {k: v for k, v in torch_env.items() if k != 'PYTHONPATH'}
  common = ['--batch', str(batch), '--repeats', str(args.repeats)]
  ours = ['--image-size', str(args.image_size)]   # the originals run at their own 224
  rows = []
  for model, method in plan(args):
    owner = next(((p, n, py) for p, n, ms, py in repos if method in ms), None) if model == 'b' else None
    sides = {}   # kind -> (command, what, env)
    if owner is not None:
      path, name, python = owner
      sides['original'] = ([python, ref_script, '--repo', path, '--method', method] + common,
                           f'{name} {method} (reference_step.py)', ref_env)
    if args.oracle_processes:
      sides['oracle'] = ([sys.executable, here, '--oracle-worker', '--methods', method, '--models', model] + common + ours,
                         f'oracle {method} (--oracle-worker)', torch_env)
    if not sides:
      continue
    times = {kind: {} for kind in list(sides) + ['cljax']}
    last = {}
    for r in range(args.rounds):
      for kind, (cmd, what, env) in sides.items():
        res = step_timing.run_worker(cmd, what, env)
        last[kind] = res if kind == 'original' else dict(res['plans'][0], **{k: v for k, v in res.items() if k != 'plans'})
      last['cljax'] = step_timing.run_worker([sys.executable, here, '--cljax-worker', '--methods', method, '--models', model]
                              + common + ours + ['--dtype', args.dtype, '--attention', args.attention],
                              f'cljax {method} (--cljax-worker)')['plans'][0]
      for kind, res in last.items():
        for step, t in res['steps'].items():
          times[kind].setdefault(step, []).extend(t['times'])
      print(f'  round {r + 1}/{args.rounds} {MODELS[model]} {method}: ' + '; '.join(
          f"{step} " + ', '.join(f"{kind} {last[kind]['steps'][step]['step_s']:.2f}s"
                                 for kind in last if step in last[kind]['steps'])
          for step in last['cljax']['steps']), flush=True)
    cl = last['cljax']
    for kind in sides:
      res = last[kind]
      for step in res['steps']:
        if step not in cl['steps']:
          continue
        info = cl['steps'][step]
        torch_s, cl_s = statistics.median(times[kind][step]), statistics.median(times['cljax'][step])
        row = {'model': MODELS[model], 'method': method, 'step': step, 'fresh': kind,
               'batch': batch, 'dtype': args.dtype, 'step_s': cl_s, 'img_s': batch / cl_s,
               'compile_s': info['compile_s'], 'flops': info['flops'], 'gflops_step': info['flops'] / 1e9,
               'torch_step_s': torch_s, 'torch_img_s': batch / torch_s, 'ratio': torch_s / cl_s,
               'variants': {}, 'cljax_times': times['cljax'][step], 'torch_times': times[kind][step],
               'torch_first_s': res['steps'][step]['first_s'], 'cljax_first_s': info['first_s'],
               'rounds': args.rounds}
        if kind == 'original':
          row.update({'reference': True, 'repository': owner[1], 'path': owner[0], 'commit': res['commit'],
                      'original_env': {k: res[k] for k in ('torch', 'timm', 'torchvision', 'threads')}})
        else:
          row['oracle_env'] = {'torch': res['torch'], 'threads': res['threads']}
        rows.append(row)
  return rows


FRESH_LABELS = {'original': 'original code, fresh processes', 'oracle': 'oracle, fresh processes'}


def fresh_note(args, rows, load_start, load_end) -> str:
  """The paragraph under the table that says what the fresh-process rows are."""
  seen, oracle = {}, None
  for r in rows:
    if r.get('fresh') == 'original':
      seen.setdefault(r['repository'], r)
    elif r.get('fresh') == 'oracle':
      oracle = r
  envs = '; '.join(f"{name} commit {r['commit']} (torch {r['original_env']['torch']}, timm {r['original_env']['timm']}, "
                   f"torchvision {r['original_env']['torchvision']}, {r['original_env']['threads']} threads)"
                   for name, r in seen.items())
  load = lambda l: '/'.join(f'{x:.1f}' for x in l)
  kinds = (['original'] if seen else []) + (['oracle'] if oracle else [])
  text = ''
  if seen:
    text += ("Rows marked `[original code, fresh processes]`: the PyTorch column is the original repository's own "
             'code, driven by `scripts/reference_step.py` in a process of its own (its parser with the flags of its '
             'Split ImageNet-R Sup-21K script, its trainer\'s models, freezing and optimizer, random weights; a step '
             "is its engine's `train_one_epoch` / `evaluate` over one batch, or the SMoPE learner's `update_model` / "
             f"`validation`). Repositories: {envs}. ")
  if oracle:
    text += ('Rows marked `[oracle, fresh processes]`: the PyTorch column is the lean oracle of the in-process rows '
             f"(`cljax_testing/torch_oracle.py`, eager fp32, torch {oracle['oracle_env']['torch']}, "
             f"{oracle['oracle_env']['threads']} threads), timed alone in a process of its own "
             '(`benchmark.py --oracle-worker`). ')
  return text + (
      'The cljax column is `benchmark.py --cljax-worker` in another process. '
      f'{args.rounds} rounds of ({", ".join(kinds)}, cljax) processes, one after the other; each time is the median '
      f'of all {args.rounds} x {args.repeats} timed steps, each process warming up first; compile s is cljax\'s '
      'in its worker; the PyTorch processes run without cljax\'s huge pages, as the user started the command. '
      f'Load average (1/5/15 min) {load(load_start)} at the start, {load(load_end)} at the end, on '
      f'{os.cpu_count()} cores: a load above the core count means other processes shared the CPU.')


# ----------------------------------------------------------------------------- projection

def stage_images(c, stage_name, num_tasks, n_train, n_test, classes_per_task, method):
  """Images (or alignment iterations) per step type over a whole run of config c."""
  per_task_train, per_task_test = n_train / num_tasks, n_test / num_tasks
  cfg = c.task_identity if stage_name == 'task_identity' else c.prompt
  out = {'train': 0.0, 'forward': 0.0, 'ca_iters': 0.0}
  for t in range(num_tasks):
    out['train'] += cfg.epochs * per_task_train
    seen_test = (t + 1) * per_task_test
    if stage_name == 'task_identity':
      out['forward'] += per_task_train + 2 * seen_test     # statistics, eval before/after alignment
    else:
      uses_stats = method.uses_statistics
      out['forward'] += (per_task_train if uses_stats else 0) + (2 if uses_stats and t else 1) * seen_test
      if method.after_training is not None:
        out['forward'] += per_task_train                   # SMoPE's usage-count pass
    if t > 0 and (stage_name == 'task_identity' or method.uses_statistics):
      out['ca_iters'] += cfg.ca_epochs * t * classes_per_task   # one step per earlier class
  return out


def projection(method, rates, dataset):
  """Projected hours of a full run of the paper config of (dataset, method) from measured rates."""
  c = config_lib.paper(dataset, method, 'sup21k')
  num_tasks = c.benchmark.num_tasks
  n_train, n_test = DATASET_SIZES[dataset]
  classes = config_lib.num_classes(c)
  from cljax import methods as methods_lib  # pylint: disable=g-import-not-at-top
  from cljax.models.vit import vit_config  # pylint: disable=g-import-not-at-top
  m = methods_lib.build(c, vit_config('vit_b16'), classes, num_tasks)
  stages = (['task_identity'] if m.uses_task_identity else []) + ['prompt']
  total, parts = 0.0, {}
  for s in stages:
    n = stage_images(c, s, num_tasks, n_train, n_test, classes // num_tasks, m)
    r = rates[s]
    # Forward-only passes at the eval rate (prompt stage) or the training rate (stage 1): an upper bound.
    fwd_rate = r['forward'] if r.get('forward') else r['train']
    sec = n['train'] / r['train'] + n['forward'] / fwd_rate + n['ca_iters'] * r.get('ca_s', 0.0)
    parts[s] = {'images_trained': n['train'], 'images_forward': n['forward'],
                'alignment_iterations': n['ca_iters'], 'seconds': sec}
    total += sec
  return c.batch_size, total, parts


# ----------------------------------------------------------------------------- main

def parse(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--methods', default='', help='comma list or "all" (default: all at ViT-Ti; '
                 '--b-methods at ViT-B)')
  p.add_argument('--b-methods', default='norga', help='methods timed at ViT-B/16 when '
                 '--methods is not given ("all" for every one)')
  p.add_argument('--models', default='ti,b', help='comma list of ti, b')
  p.add_argument('--batch', type=int, default=0, help='0: 8 on CPU, 128 on GPU')
  p.add_argument('--repeats', type=int, default=3)
  p.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16'),
                 help="cljax compute dtype (config.dtype); PyTorch stays eager fp32")
  p.add_argument('--attention', default='explicit', choices=('explicit', 'fused'), help='config.attention')
  p.add_argument('--variant', action='append', default=[],
                 help='also time cljax with these config overrides, interleaved with the base, '
                      'e.g. --variant dtype=bfloat16 --variant attention=fused (a,b: both)')
  p.add_argument('--torch-compile', action='store_true', help='also time torch.compile of the steps')
  p.add_argument('--torch-amp', action='store_true', help='torch.compile under bf16 autocast (AMP)')
  p.add_argument('--no-torch', action='store_true', help='time cljax alone')
  p.add_argument('--quick', action='store_true', help='ViT-Ti at 64x64, NoRGa, 2 repeats: a smoke run')
  p.add_argument('--image-size', type=int, default=224, help='input resolution of the timed models')
  p.add_argument('--out-dir', default=os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'benchmarks'))
  p.add_argument('--tag', default='', help='suffix of the output file names')
  p.add_argument('--reference-repo', action='append', default=[], metavar='PATH',
                 help='a checkout of MoE_PromptCL, HiDe-Prompt or SMoPE (repeatable): also time the '
                      "original code's steps for the ViT-B methods of the plan it defines, against cljax's, "
                      'in alternating fresh processes; writes reference_<device>.md/.json')
  p.add_argument('--reference-python', action='append', default=[], metavar='PYTHON',
                 help="the Python with the original's requirements (one, or one per --reference-repo; "
                      'default: this one)')
  p.add_argument('--oracle-processes', action='store_true',
                 help='also time the lean PyTorch oracle against cljax in alternating fresh processes '
                      '(rows [oracle, fresh processes]); the in-process rows share one process')
  p.add_argument('--rounds', type=int, default=2,
                 help='rounds of fresh processes (original, oracle, cljax) for those rows')
  p.add_argument('--cljax-worker', action='store_true', help=argparse.SUPPRESS)    # fresh_process_rows' children
  p.add_argument('--oracle-worker', action='store_true', help=argparse.SUPPRESS)
  return p.parse_args(argv)


def plan(args):
  """[(model, method)] to time."""
  if args.quick:
    return [('ti', 'norga')]
  models = [m for m in args.models.split(',') if m]
  pick = lambda s: list(ALL_METHODS) if s == 'all' else [m for m in s.split(',') if m]
  out = []
  for model in models:
    methods = pick(args.methods) if args.methods else (list(ALL_METHODS) if model == 'ti' else pick(args.b_methods))
    out += [(model, m) for m in methods]
  return out


def fmt(x, digits=1):
  return '-' if x is None else f'{x:.{digits}f}'


def main(argv=None):
  args = parse(argv)
  if args.quick:
    args.repeats, args.image_size = 2, 64
  on_gpu = jax.devices()[0].platform == 'gpu'
  base = {'dtype': args.dtype, 'attention': args.attention}
  variant_overrides = {v: dict(kv.split('=', 1) for kv in v.split(',')) for v in args.variant}
  batch = args.batch or (128 if on_gpu else 8)
  if args.cljax_worker:
    cljax_worker(args, batch, base)
    return []
  if args.oracle_worker:
    oracle_worker(args, batch, base)
    return []
  try:
    repos = reference_repos(args)
    if repos and not any(m == 'b' and any(meth in ms for _, _, ms, _ in repos) for m, meth in plan(args)):
      raise ReferenceRunError('--reference-repo: no method of the plan at ViT-B/16 is defined there (' +
                              '; '.join(f'{n}: {", ".join(ms)}' for _, n, ms, _ in repos) +
                              '); e.g. --models b --methods ' + ','.join(m for _, _, ms, _ in repos for m in ms))
    if repos and args.image_size != 224:
      raise ReferenceRunError(f'--reference-repo: the original code runs at 224x224, not --image-size '
                              f'{args.image_size}; drop --image-size (and --quick) to time it')
  except ReferenceRunError as e:
    print(f'error: {e}', file=sys.stderr)
    raise SystemExit(2) from None
  load_start = os.getloadavg()
  dev = report_files.device_name()
  print(f'device {dev} ({jax.devices()[0].device_kind}), jax {jax.__version__}, batch {batch}, '
        f'cljax dtype {args.dtype}, repeats {args.repeats}', flush=True)
  if not repos:
    print('reference rows skipped: no --reference-repo given', flush=True)
  peak = matmul_peak(jnp.dtype(args.dtype), on_gpu)
  print(f'measured matmul peak: {peak / 1e9:.0f} GFLOP/s ({args.dtype})', flush=True)
  torch_version = None
  if not args.no_torch:
    import torch  # pylint: disable=g-import-not-at-top
    torch_version = torch.__version__
  rows, rates_by = [], {}
  for model, method in plan(args):
    exp = experiment(method, model, batch, base, args.image_size)
    variants = {label: experiment(method, model, batch, {**base, **o}, args.image_size)
                for label, o in variant_overrides.items()}
    torch_side = None if args.no_torch else TorchSide(exp, batch, False)
    torch_comp = (TorchSide(exp, batch, True, amp=args.torch_amp)
                  if args.torch_compile and not args.no_torch else None)
    rates = {}
    for stage_name, kind in step_kinds(exp):
      build = lambda e: cljax_step(e, stage_name, kind, batch)
      tcall = (lambda side: side.train_call(stage_name)) if kind == 'train' else (lambda side: side.eval_call())
      jcall, r = build(exp)
      calls = [(jcall, jax_sync)]
      calls += [(tcall(side), torch_sync) for side in (torch_side, torch_comp) if side is not None]
      calls += [(build(v)[0], jax_sync) for v in variants.values()]
      timed = median_times(calls, args.repeats)
      r['first_s'], r['step_s'] = timed[0][:2]
      row = {'model': MODELS[model], 'method': method, 'step': step_label(stage_name, kind),
             'batch': batch, 'dtype': args.dtype, **r,
             'img_s': batch / r['step_s'], 'gflops_step': r['flops'] / 1e9,
             'mfu': r['flops'] / r['step_s'] / peak}
      if torch_side is not None:
        ts = timed[1][1]
        row['torch_step_s'], row['torch_img_s'] = ts, batch / ts
        row['ratio'] = row['img_s'] / row['torch_img_s']
      if torch_comp is not None:
        first, ts = timed[2][:2]
        row['torch_compile_first_s'], row['torch_compile_img_s'] = first, batch / ts
      n_torch = sum(side is not None for side in (torch_side, torch_comp))
      row['variants'] = {label: batch / timed[1 + n_torch + i][1] for i, label in enumerate(variants)}
      rows.append(row)
      rate_key = 'train' if kind == 'train' else 'forward'
      rates.setdefault(stage_name, {})[rate_key] = row['img_s']
      print(f"{row['model']} {method} {row['step']}: cljax {row['img_s']:.2f} img/s "
            f"(compile {r['compile_s']:.1f}s, {row['gflops_step']:.0f} GFLOP/step, MFU {100 * row['mfu']:.1f}%)"
            + (f", torch {row['torch_img_s']:.2f} img/s, ratio {row['ratio']:.2f}x" if 'ratio' in row else '')
            + (f", torch.compile {row['torch_compile_img_s']:.2f} img/s" if 'torch_compile_img_s' in row else '')
            + ''.join(f', [{k}] {v:.2f} img/s' for k, v in row['variants'].items()),
            flush=True)
    for stage in exp.stages:
      rates[stage.name]['ca_s'] = time_cljax_alignment(exp, stage, args.repeats)
    rates_by[(model, method)] = rates

  if repos or args.oracle_processes:
    print('fresh-process rows: ' + ' and '.join((['the original code'] if repos else []) +
                                                  (['the oracle'] if args.oracle_processes else [])) +
          f' vs cljax, {args.rounds} rounds', flush=True)
    try:
      rows += fresh_process_rows(args, batch, repos)
    except step_timing.WorkerError as e:
      print(f'error: {e}', file=sys.stderr)
      raise SystemExit(2) from None
    for r in rows:
      if r.get('fresh'):
        print(f"{r['model']} {r['method']} {r['step']} [{FRESH_LABELS[r['fresh']]}]: cljax {r['img_s']:.2f} img/s, "
              f"PyTorch {r['torch_img_s']:.2f} img/s, ratio {r['ratio']:.2f}x", flush=True)
  load_end = os.getloadavg()
  # The peak again at the end, the better of the two: a busy moment must not lower it.
  peak = max(peak, matmul_peak(jnp.dtype(args.dtype), on_gpu))
  for row in rows:
    row['mfu'] = row['flops'] / row['step_s'] / peak
  # ---- tables
  lines = [f'## cljax vs PyTorch eager fp32: {dev}',
           '',
           f'{datetime.date.today().isoformat()}; {jax.devices()[0].device_kind}; {platform.processor() or platform.machine()}, '
           f'{os.cpu_count()} cores; jax {jax.__version__}' + (f', torch {torch_version}' if torch_version else '') +
           f'; batch {batch}; cljax dtype {args.dtype}; image {args.image_size}; median of {args.repeats} steps after a warm-up; '
           f'measured matmul peak {peak / 1e9:.0f} GFLOP/s ({args.dtype}).',
           f'Command: `python scripts/benchmark.py {" ".join(sys.argv[1:] if argv is None else argv)}`'.replace('  ', ' '),
           '',
           '| model | method | step | cljax img/s | PyTorch img/s | ratio | ' +
           (f'torch.compile{" AMP" if args.torch_amp else ""} img/s | ' if args.torch_compile else '') +
           'cljax compile s | GFLOP/step | MFU |' + ''.join(f' cljax [{k}] img/s (vs base) |' for k in variant_overrides),
           '|---|---|---|---|---|---|' + ('---|' if args.torch_compile else '') + '---|---|---|' + '---|' * len(variant_overrides)]
  for r in rows:
    step = f"{r['step']} [{FRESH_LABELS[r['fresh']]}]" if r.get('fresh') else r['step']
    lines.append(f"| {r['model']} | {NAMES[r['method']]} | {step} | {r['img_s']:.2f} | "
                 f"{fmt(r.get('torch_img_s'), 2)} | {fmt(r.get('ratio'), 2)}{'x' if 'ratio' in r else ''} | " +
                 (f"{fmt(r.get('torch_compile_img_s'), 2)} | " if args.torch_compile else '') +
                 f"{r['compile_s']:.1f} | {r['gflops_step']:.0f} | {100 * r['mfu']:.1f}% |" +
                 (''.join(f" {v:.2f} ({v / r['img_s']:.2f}x) |" for v in r['variants'].values())
                  if not r.get('fresh') else ' - |' * len(variant_overrides)))
  if any(r.get('fresh') for r in rows):
    lines += ['', fresh_note(args, rows, load_start, load_end)]
  pipe = host_pipeline_rate(batch, args.image_size)
  print(f'host input pipeline (decoded images, train transform, {os.cpu_count()} cores): {pipe:.0f} img/s', flush=True)
  proj_rows = []
  for (model, method), rates in rates_by.items():
    if model != 'b':
      continue
    for dataset in ('imr', 'cifar100', 'cub'):
      try:
        paper_batch, sec, parts = projection(method, rates, dataset)
      except config_lib.ConfigError:
        continue
      proj_rows.append((method, dataset, paper_batch, sec, parts))
  if proj_rows:
    lines += ['', f'### Projected wall time of a full run (ViT-B/16, {dev}, cljax {args.dtype}, measured at batch {batch})', '',
              '| method | benchmark | images trained (stage 1 + prompt) | forward-only images | alignment steps | '
              'projected hours (steps) | hours the host pipeline needs for those images |',
              '|---|---|---|---|---|---|---|']
    for method, dataset, paper_batch, sec, parts in proj_rows:
      tr = ' + '.join(f"{p['images_trained'] / 1e6:.2f}M" for p in parts.values())
      fw = sum(p['images_forward'] for p in parts.values())
      ca = sum(p['alignment_iterations'] for p in parts.values())
      images = sum(p['images_trained'] + p['images_forward'] for p in parts.values())
      lines.append(f'| {NAMES[method]} | {dataset} | {tr} | {fw / 1e3:.0f}k | {ca:.0f} | {sec / 3600:.2f} | '
                   f'{images / pipe / 3600:.2f} |')
    lines += ['', 'Projection = images per step type x measured seconds per image (forward-only passes '
              'charged at the eval or training rate, an upper bound). The host pipeline column: the same '
              f'images through cljax\'s input pipeline at its measured {pipe:.0f} img/s on this host '
              '(decoded 375x500 images, ImageNet-R train transform, no JPEG decoding); a run takes '
              'at least the larger of the two, as the pipeline overlaps the steps (prefetch thread).']
  text = '\n'.join(lines)
  print('\n' + text, flush=True)
  name = f'{"reference" if repos else "performance"}_{dev}{"_" + args.dtype if args.dtype != "float32" else ""}{args.tag}'
  report_files.write(args.out_dir, name, text, {
      'device_kind': jax.devices()[0].device_kind, 'batch': batch, 'dtype': args.dtype,
      'repeats': args.repeats, 'peak_flops': peak, 'torch_in_process': torch_version, 'rows': rows,
      'load_average': {'start': load_start, 'end': load_end}, 'host_pipeline_img_s': pipe,
      'projection': [{'method': m, 'benchmark': d, 'paper_batch': b, 'seconds': s, 'stages': p}
                     for m, d, b, s, p in proj_rows]}, argv)
  return rows


if __name__ == '__main__':
  main()
