"""Times an original repository's own training and evaluation steps, in a process of its own.

  python scripts/reference_step.py --repo PATH --method norga [--batch 8] [--repeats 3]

Run by `scripts/benchmark.py --reference-repo PATH`, with the Python that has the original's
requirements installed (`--reference-python`); this process imports the checkout (its model
classes, its timm, its engines) and nothing of cljax. It prints one `RESULT {json}` line:
{'steps': {step: {'first_s', 'step_s', 'times'}}, 'torch', 'timm', 'commit', ...}, seconds.

Repositories (recognised by their files, `recognise`):
  MoE_PromptCL  NoRGa and HiDe-Prompt (its engines/, trainers/, vits/).
  HiDe-Prompt   HiDe-Prompt's own repository: the same layout and files for HiDe-Prompt, driven
                the same way (not run here: the benchmark tables name what was run).
  SMoPE         SMoPE (learner OnePrompt) and CODA-Prompt (learner CODAPrompt).

How a step is driven, without a data set, weights or a GPU:
  * The arguments come from the original's own parser (its main.py / run.py) given the flags of
    its own Split ImageNet-R, Sup-21K scripts (`FLAGS`), with the batch, the CPU and random
    weights (no pretrained download) swapped in.
  * MoE_PromptCL: its trainer's `train(args)` builds the models, freezes the backbone, scales
    the learning rate and builds the optimizer and criterion; its data loader builder and its
    `train_and_evaluate` are replaced in the trainer's namespace, the first by a fake one-batch
    loader, the second by a function that keeps the objects `train` hands it. One training step
    is the engine's own `train_one_epoch` over a one-batch loader at task 1 (class means of
    task 0 stored for the contrastive term); the evaluation step is the engine's `evaluate`
    over one batch (stage-1 original_model forward for the task, then the prompted forward).
  * SMoPE: its `Trainer` builds the learner from its own config (the dataset class it reads
    is replaced by an empty one); the learner is moved to task 1 the way `Trainer.train` does
    (task id, output dims, prompt task count); a training step is the learner's
    `update_model`, an evaluation step its `validation` over one batch.
  * Without CUDA (`_cpu_only`): the originals call `torch.cuda.synchronize()` after each step
    and `.cuda()` on a few tensors unconditionally; in this process the first does nothing and
    `Tensor.cuda` returns a copy on the CPU, so their code runs unchanged on a CPU.
Inputs: uniform random 224x224 images, labels of the current task. Times: `step_timing`.

Errors: a path that is not one of these repositories, or a method it does not define, exits 2
with one `error:` line.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import step_timing  # pylint: disable=g-import-not-at-top,wrong-import-position

NUM_CLASSES, NUM_TASKS = 200, 10   # Split ImageNet-R: 10 tasks of 20 classes

# Files that identify each repository, and the methods it defines with the file each needs.
REPOSITORIES = {
    'MoE_PromptCL': {'norga': 'engines/norga_prompt_engine.py',
                     'hideprompt': 'engines/hide_promtp_wtp_and_tap_engine.py'},
    'SMoPE': {'smope': 'learners/prompt.py', 'coda': 'learners/prompt.py'},
}
MARKERS = {'MoE_PromptCL': 'main.py', 'SMoPE': 'trainer.py'}

# The flags of the originals' own Split ImageNet-R Sup-21K scripts (facts, not code):
# MoE_PromptCL scripts/imr_Sup21k_{NoRGa,HiDe}.sh (stage 1 = --train_inference_task_only);
# SMoPE experiments/imagenet-r_all.sh, 10 tasks (its OnePrompt learner, the SMoPE class:
# the script's VAPTPrompt name is not defined in the repository); CODA-Prompt's own ImageNet-R
# prompt_param (100 components, length 8, ortho 0).
_MOE_COMMON = ['--model', 'vit_base_patch16_224', '--original_model', 'vit_base_patch16_224',
               '--ca_storage_efficient_method', 'covariance', '--ca_lr', '0.005', '--crct_epochs', '30',
               '--shuffle', 'True']
_MOE_STAGE1 = ['--train_inference_task_only', '--lr', '0.0005', '--epochs', '20']
_MOE_STAGE2 = ['--epochs', '150', '--prompt_momentum', '0.01', '--length', '20', '--reg', '0.5',
               '--sched', 'cosine', '--larger_prompt_lr', '--reset']
FLAGS = {
    'norga': ('imr_norgaprompt', _MOE_COMMON + _MOE_STAGE1, _MOE_COMMON + _MOE_STAGE2 + ['--gate_act', 'sigmoid']),
    'hideprompt': ('imr_hideprompt_5e', _MOE_COMMON + _MOE_STAGE1, _MOE_COMMON + _MOE_STAGE2),
    'smope': ('configs/imnet-r_prompt_smope.yaml',
              ['--learner_type', 'prompt', '--learner_name', 'OnePrompt',
               '--prompt_param', '50', '5', '5e-5', '1e-4', '0.5', '--crct_epochs', '50', '--ca_batch_size_ratio', '6']),
    'coda': ('configs/imnet-r_prompt_smope.yaml',
             ['--learner_type', 'prompt', '--learner_name', 'CODAPrompt', '--prompt_param', '100', '8', '0.0']),
}
# MoE_PromptCL: (trainer of the prompt stage, its engine, trainer of stage 1, its engine).
MOE_MODULES = {
    'norga': ('trainers.norgaprompt_trainer', 'engines.norga_prompt_engine',
              'trainers.norgaprompt_tii_trainer', 'engines.norga_tii_engine'),
    'hideprompt': ('trainers.hideprompt_trainer', 'engines.hide_promtp_wtp_and_tap_engine',
                   'trainers.tii_trainer', 'engines.hide_tii_engine'),
}


class UserError(Exception):
  """A path or method this script cannot time; main prints it as one `error:` line."""


def recognise(path: str) -> tuple[str, list[str]]:
  """(repository name, [methods it defines]) of a checkout. Raises UserError if it is none."""
  if not os.path.isdir(path):
    raise UserError(f'--reference-repo {path}: no such directory')
  for name, methods in REPOSITORIES.items():
    if os.path.isfile(os.path.join(path, MARKERS[name])):
      found = [m for m, f in methods.items() if os.path.isfile(os.path.join(path, f))]
      if found == ['hideprompt']:
        name = 'HiDe-Prompt'   # HiDe-Prompt's own repository: MoE_PromptCL's layout, without NoRGa
      if found:
        return name, found
  raise UserError(f'--reference-repo {path}: not a MoE_PromptCL, HiDe-Prompt or SMoPE checkout '
                  f'(none of {", ".join(sorted({f for m in REPOSITORIES.values() for f in m.values()}))} found)')


def commit_of(path: str) -> str:
  """The checkout's git commit, or 'unknown' (not a git work tree)."""
  try:
    out = subprocess.run(['git', '-C', path, 'rev-parse', 'HEAD'], capture_output=True, text=True, timeout=30)
  except OSError:
    return 'unknown'
  return out.stdout.strip() if out.returncode == 0 else 'unknown'


# ----------------------------------------------------------------------------- inputs

def _batch(torch, batch: int, task: int):
  """Random images in [0, 1) and labels of `task`'s classes (the class_mask below)."""
  g = torch.Generator().manual_seed(0)
  per = NUM_CLASSES // NUM_TASKS
  x = torch.rand(batch, 3, 224, 224, generator=g)
  y = task * per + torch.arange(batch) % per
  return x, y


def _class_split():
  """(class_mask, target_task_map) of Split ImageNet-R in class order."""
  per = NUM_CLASSES // NUM_TASKS
  mask = [list(range(t * per, (t + 1) * per)) for t in range(NUM_TASKS)]
  return mask, {c: t for t, cs in enumerate(mask) for c in cs}


# ----------------------------------------------------------------------------- MoE_PromptCL

def _moe_args(config: str, flags, batch: int, out_dir: str):
  """Namespace from MoE_PromptCL's own parser (main.get_args reads sys.argv)."""
  import main as ref_main  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  import utils as ref_utils  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  saved = sys.argv
  sys.argv = ['main.py', config, *flags, '--batch-size', str(batch), '--device', 'cpu',
              '--output_dir', out_dir, '--data-path', out_dir]
  try:
    args = ref_main.get_args()
  finally:
    sys.argv = saved
  ref_utils.init_distributed_mode(args)
  args.pretrained = False          # random weights: nothing is downloaded
  args.nb_classes = NUM_CLASSES    # what its data loader builder sets from the data set
  return args


def _moe_build(trainer_name: str, args, loaders, class_mask, target_task_map):
  """The positional arguments that the trainer's `train(args)` hands to `train_and_evaluate`."""
  import importlib  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  trainer = importlib.import_module(trainer_name)
  kept = {}
  trainer.build_continual_dataloader = lambda _args: (loaders, loaders, class_mask, target_task_map)
  trainer.train_and_evaluate = lambda *a, **k: kept.update(args=a)
  trainer.train(args)
  return kept['args']


def moe_promptcl_steps(method: str, batch: int, out_dir: str):
  """{step: call} of MoE_PromptCL's stage-1 training, prompt training and evaluation steps."""
  import importlib  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  import torch  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  config, flags1, flags2 = FLAGS[method]
  trainer2, engine2, trainer1, engine1 = MOE_MODULES[method]
  class_mask, target_task_map = _class_split()
  task = 1
  x, y = _batch(torch, batch, task)
  loader = [(x, y)]
  loaders = [{'train': loader, 'val': loader} for _ in range(NUM_TASKS)]

  # Stage 1 (task identity): model, criterion, ..., optimizer as its trainer builds them.
  args1 = _moe_args(config, flags1, batch, out_dir)
  model1, _, criterion1, _, _, optimizer1, _, device, _, _, _ = _moe_build(
      trainer1, args1, loaders, class_mask, target_task_map)
  eng1 = importlib.import_module(engine1)

  def tii_train():
    return eng1.train_one_epoch(model=model1, criterion=criterion1, data_loader=loader, optimizer=optimizer1,
                                device=device, epoch=0, max_norm=args1.clip_grad, set_training_mode=True,
                                task_id=task, class_mask=class_mask, args=args1)

  # Stage 2 (prompts): original_model is the stage-1 model class, frozen.
  args2 = _moe_args(config, flags2, batch, out_dir)
  model, _, original_model, criterion, _, _, optimizer, _, device, _, _, _ = _moe_build(
      trainer2, args2, loaders, class_mask, target_task_map)
  eng2 = importlib.import_module(engine2)
  # The class means of task 0, as train_and_evaluate stores them before task 1 (the engine's
  # contrastive term reads this module global).
  eng2.cls_mean = {c: torch.randn(model.num_features) for c in class_mask[0]}

  def train():
    return eng2.train_one_epoch(model=model, original_model=original_model, criterion=criterion,
                                data_loader=loader, optimizer=optimizer, device=device, epoch=0,
                                max_norm=args2.clip_grad, set_training_mode=True, task_id=task,
                                class_mask=class_mask, target_task_map=target_task_map, args=args2)

  def evaluate():
    return eng2.evaluate(model=model, original_model=original_model, data_loader=loader, device=device,
                         i=0, task_id=task, class_mask=class_mask, target_task_map=target_task_map, args=args2)

  return {'tii train': tii_train, 'train': train, 'eval': evaluate}


# ----------------------------------------------------------------------------- SMoPE

class _NoData:
  """Stands in for the dataset class the SMoPE Trainer constructs: no file is read."""

  def __init__(self, *args, **kwargs):
    del args, kwargs


def smope_steps(repo: str, method: str, batch: int, out_dir: str):
  """{step: call} of the SMoPE repository's learner: training and evaluation steps."""
  import torch  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  import dataloaders  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  import run as ref_run  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  import trainer as ref_trainer  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  config, flags = FLAGS[method]
  args = ref_run.get_args(['--config', os.path.join(repo, config), *flags, '--gpuid', '-1',
                           '--pretrained_weight', 'none', '--log_dir', out_dir])
  args.batch_size = batch
  dataloaders.iIMAGENET_R = _NoData
  learner = ref_trainer.Trainer(args, 0, ['acc', 'time', 'fr'], ['global', 'pt'], 0).learner
  task = 1
  per = NUM_CLASSES // NUM_TASKS
  # Task 0 learnt, task 1 starting: the state Trainer.train and learn_batch leave.
  learner.add_valid_output_dim(per)
  learner.last_valid_out_dim, learner.task_count = learner.valid_out_dim, task
  learner.model.task_id = task
  learner.add_valid_output_dim(per)
  learner.model.prompt.process_task_count()
  learner.init_optimizer()
  learner.data_weighting(None)
  x, y = _batch(torch, batch, task)
  tasks = torch.full((batch,), task)

  def train():
    learner.model.train()
    return learner.update_model(x, y)[0]

  def evaluate():
    return learner.validation([(x, y, tasks)], verbal=False)

  return {'train': train, 'eval': evaluate}


# ----------------------------------------------------------------------------- main

def time_steps(repo: str, method: str, batch: int, repeats: int) -> dict:
  """{step: {'first_s', 'step_s', 'times'}} of the original's steps for `method` (seconds)."""
  name, methods = recognise(repo)
  if method not in methods:
    raise UserError(f'{name} at {repo} does not define {method} (it defines {", ".join(methods)})')
  repo = os.path.abspath(repo)
  sys.path.insert(0, repo)
  os.chdir(repo)   # the originals open their files relative to their root
  with tempfile.TemporaryDirectory() as out_dir, contextlib.redirect_stdout(open(os.devnull, 'w')):
    import torch  # pylint: disable=g-import-not-at-top,import-outside-toplevel
    _shim_torchvision(torch)
    _cpu_only(torch)
    torch.manual_seed(0)
    if name in ('MoE_PromptCL', 'HiDe-Prompt'):
      calls = moe_promptcl_steps(method, batch, out_dir)
    else:
      calls = smope_steps(repo, method, batch, out_dir)
    timed = step_timing.median_times([(c, lambda out: out) for c in calls.values()], repeats)
  return {step: {'first_s': f, 'step_s': s, 'times': t} for step, (f, s, t) in zip(calls, timed)}


def _shim_torchvision(torch) -> None:
  """Lets torchvision's Python part import when its C++ ops library does not load (a CUDA
  build of torchvision beside a CPU build of torch): it registers fake kernels for nms and
  qnms unconditionally, which needs their schemas. The originals use torchvision only for
  data transforms, never these ops."""
  try:
    import torchvision  # pylint: disable=g-import-not-at-top,import-outside-toplevel,unused-import
    return
  except RuntimeError:
    for mod in [m for m in sys.modules if m == 'torchvision' or m.startswith('torchvision.')]:
      del sys.modules[mod]
  lib = torch.library.Library('torchvision', 'DEF')   # pylint: disable=protected-access
  for op in ('nms', 'qnms'):
    lib.define(op + '(Tensor dets, Tensor scores, float iou_threshold) -> Tensor')
  _shim_torchvision.lib = lib   # the schemas live as long as the Library object
  import torchvision  # pylint: disable=g-import-not-at-top,import-outside-toplevel,unused-import,redefined-outer-name


def _cpu_only(torch) -> None:
  """On a machine without CUDA, makes the originals' unconditional CUDA calls no-ops: the
  synchronize after each step (MoE_PromptCL's engines) and `.cuda()` on tensors (SMoPE)."""
  if torch.cuda.is_available():
    return
  torch.cuda.synchronize = lambda *a, **k: None
  # A copy, as .cuda() of a CPU tensor is: SMoPE adds in place to `zeros(requires_grad=True).cuda()`,
  # which must not be the leaf itself.
  torch.Tensor.cuda = lambda self, *a, **k: self.to('cpu', copy=True)


def versions() -> dict:
  out = {}
  for mod in ('torch', 'timm', 'torchvision'):
    m = sys.modules.get(mod)
    out[mod] = getattr(m, '__version__', None) if m else None
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--repo', required=True, help='checkout of MoE_PromptCL, HiDe-Prompt or SMoPE')
  p.add_argument('--method', required=True, help='norga, hideprompt (MoE_PromptCL); smope, coda (SMoPE)')
  p.add_argument('--batch', type=int, default=8)
  p.add_argument('--repeats', type=int, default=3)
  args = p.parse_args(argv)
  args.repo = os.path.abspath(args.repo)   # the timing chdirs into it
  real_stdout = sys.stdout
  try:
    steps = time_steps(args.repo, args.method, args.batch, args.repeats)
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  step_timing.emit({'method': args.method, 'repository': recognise(args.repo)[0], 'batch': args.batch,
                    'repeats': args.repeats, 'commit': commit_of(args.repo), 'threads': _threads(),
                    'steps': steps, **versions()}, real_stdout)
  return 0


def _threads():
  import torch  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  return torch.get_num_threads()


if __name__ == '__main__':
  sys.exit(main())
