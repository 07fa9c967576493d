"""Evaluate a cljax run or the reference code's checkpoints on a config's benchmark.

  python -m cljax.evaluate --config=configs/demo.py --workdir=workdirs/demo
  python -m cljax.evaluate --config=configs/demo.py \
      --checkpoint=output/checkpoint/task5_checkpoint.pth \
      --task_identity_checkpoint=tii_output/checkpoint/task5_checkpoint.pth
  python -m cljax.evaluate --config=configs/demo.py --checkpoint=output --task_identity_checkpoint=tii_output
  python -m cljax.evaluate --config=configs/demo.py:smope --checkpoint=.../task-5/class.pth --task=5

A file gives the accuracy row after its task (``task{T}_checkpoint.pth``: T from the name, else
``--task``, counted from 1); a folder (``<output_dir>`` or ``<output_dir>/checkpoint``) gives
every task{T}_checkpoint.pth in it: the accuracy matrix with FA, CA, FM. HiDe-Prompt and NoRGa
need the stage-1 task-identity checkpoint(s) as well (the references' ``trained_original_model``).

The protocol is the reference's (MoE_PromptCL ``engines/norga_prompt_engine.py``
evaluate_till_now; SMoPE ``trainer.py`` evaluate): each test task's images in order, in batches of
the checkpoint's ``args.batch_size`` (the reference's test loaders use the training batch size;
under the key/value reshape quirk a test image's prefix depends on its batch), or of the run's
config.eval_batch_size for a workdir, or of ``--eval_batch_size``. The task-identity model's
argmax among the seen classes names the prompt; HiDe-family logits are not masked (quirk 11.6);
SMoPE's usage counts are zero, as in a reloaded reference learner.

A checkpoint of another method, or whose args disagree with the config (gate activation, prompt
layers, length, pool, classes, MLP), is refused with one line naming both values. Results go to
stdout and, with --output, to a JSON file.
"""

from __future__ import annotations

import json
import os
import re
import sys
from typing import Any, Dict, Optional

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from cljax import cli
from cljax.errors import CheckpointError, CljaxError, ConfigError

_CONFIG = config_flags.DEFINE_config_file('config', None, 'a config file in configs/', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'a cljax workdir to evaluate')
_CHECKPOINT = flags.DEFINE_string('checkpoint', None, 'a reference checkpoint file or folder '
                                  '(stage-2 model; SMoPE/CODA: the learner\'s class.pth)')
_TII = flags.DEFINE_string('task_identity_checkpoint', None,
                           'HiDe/NoRGa: the stage-1 task-identity checkpoint file or folder')
_TASK = flags.DEFINE_integer('task', 0, 'the task a single checkpoint file was saved after (from 1)')
_EVAL_BATCH = flags.DEFINE_integer('eval_batch_size', 0, '0 = the protocol\'s (see above)')
_OUTPUT = flags.DEFINE_string('output', None, 'also write the results as JSON here')

_TASK_FILE = re.compile(r'task(\d+)_checkpoint\.pth$')


# ----------------------------------------------------------------------------- inputs

def task_files(path: str, task: int = 0) -> Dict[int, str]:
  """{task (from 1): file} of a checkpoint file or folder."""
  if os.path.isdir(path):
    folder = os.path.join(path, 'checkpoint') if os.path.isdir(os.path.join(path, 'checkpoint')) else path
    found = {int(m.group(1)): os.path.join(folder, f) for f in sorted(os.listdir(folder))
             for m in [_TASK_FILE.search(f)] if m}
    # The SMoPE repository: <log_dir>/models/repeat-R/task-T/class.pth (trainer.py).
    found.update({int(m.group(1)): os.path.join(folder, f, 'class.pth') for f in sorted(os.listdir(folder))
                  for m in [re.fullmatch(r'task-(\d+)', f)] if m and os.path.exists(os.path.join(folder, f, 'class.pth'))})
    if not found:
      raise CheckpointError(f'{path} holds no task{{T}}_checkpoint.pth files (nor task-T/class.pth)')
    return found
  if not os.path.exists(path):
    raise CheckpointError(f'checkpoint file {path} does not exist')
  m = _TASK_FILE.search(os.path.basename(path)) or re.search(r'task-(\d+)[/\\]class\.pth$', path)
  if task:
    if m and int(m.group(1)) != task:
      raise ConfigError(f'{path} is the checkpoint of task {m.group(1)}, --task={task}')
    return {task: path}
  if m:
    return {int(m.group(1)): path}
  raise ConfigError(f'{path} does not say which task it was saved after: give --task (from 1)')


def _config_names(method: str) -> Dict[str, str]:
  from cljax.checkpoints import reference  # pylint: disable=g-import-not-at-top
  fields = reference.TASK_IDENTITY_FIELDS if method == 'task_identity' else reference.PROMPT_FIELDS
  return {f.arg: f'config.{f.config}' for f in fields}


def load_reference(config, stage_method, num_classes: int, num_tasks: int, path: str, stage: str):
  """(grouped params with backbone, checkpoint) of a reference file for a stage of a run of
  ``config`` (``stage_method``: that stage's `Method`), its method and args checked against the
  config."""
  from cljax.checkpoints import reference  # pylint: disable=g-import-not-at-top
  method = 'task_identity' if stage == 'task_identity' else config.method
  ckpt = reference.read(path)
  reference.check_method(ckpt, method, 'config.method' if stage == 'prompt' else 'the task-identity stage')
  reference.check_args(ckpt, reference.expected_args(config, method, num_classes, num_tasks),
                       _config_names(method))
  params = reference.from_state_dict(method, ckpt.state_dict, reference.method_template(stage_method),
                                     what=path, layers=tuple(config.prompt.layers))
  return params, ckpt


def _load_stage(experiment, path: str, stage: str):
  method = next(s for s in experiment.stages if s.name == stage).method
  return load_reference(experiment.config, method, experiment.num_classes, experiment.num_tasks, path, stage)


# ----------------------------------------------------------------------------- evaluation

def evaluate(config, prompt: Dict[int, Any], task_identity: Optional[Dict[int, Any]] = None,
             eval_batch_size: int = 0, workdir: Optional[str] = None, verbose: bool = True) -> Dict[str, Any]:
  """Accuracy matrix columns for the given tasks.

  ``prompt``/``task_identity``: {task (from 1): reference checkpoint path}; or, with
  ``workdir``, the tasks to read from that cljax run (values ignored). Returns a JSON-able dict:
  ``accuracy`` [T, T] (columns of the evaluated tasks filled), ``task_identity_accuracy``,
  ``tasks``, ``eval_batch_size``, and FA/CA/FM after the last evaluated task (CA and FM only
  when every task up to it was evaluated). Raises CheckpointError/ConfigError."""
  from cljax import config as config_lib  # pylint: disable=g-import-not-at-top
  from cljax.continual import metrics, saved_stages, trainer  # pylint: disable=g-import-not-at-top
  config = config_lib.validate(config)
  # A workdir's checkpoints hold no backbone: the run's frozen one is loaded with the config.
  base = trainer.Experiment(config, workdir='', load_data=False, verbose=False,
                            load_backbone=workdir is not None)
  uses_tii = any(s.name == 'task_identity' for s in base.stages)
  if uses_tii and workdir is None and not task_identity:
    raise ConfigError(f'method {config.method} predicts the task with its stage-1 model: give '
                      f'--task_identity_checkpoint (the reference\'s trained_original_model)')
  batch = eval_batch_size
  loaded = {}
  for t in sorted(prompt):
    if not 1 <= t <= base.num_tasks:
      raise ConfigError(f'task {t} is outside 1..{base.num_tasks} (config.benchmark.num_tasks)')
    if workdir is not None:
      entry = {'prompt': saved_stages.load_params(workdir, t - 1, 'prompt', experiment=base)}
      if uses_tii:
        entry['task_identity'] = saved_stages.load_params(workdir, t - 1, 'task_identity', experiment=base)
      batch = batch or config.eval_batch_size
    else:
      entry = {}
      entry['prompt'], ckpt = _load_stage(base, prompt[t], 'prompt')
      if ckpt.args and not batch and 'batch_size' in ckpt.args:
        batch = int(ckpt.args['batch_size'])
      if uses_tii:
        if t not in task_identity:
          raise CheckpointError(f'no task-identity checkpoint of task {t} (have: '
                                f'{", ".join(map(str, sorted(task_identity)))})')
        entry['task_identity'], _ = _load_stage(base, task_identity[t], 'task_identity')
    loaded[t] = entry
  batch = batch or config.batch_size
  c = config.copy_and_resolve_references()
  c.eval_batch_size = batch
  experiment = trainer.Experiment(c, workdir='', load_data=True, verbose=False, load_backbone=False)
  T = experiment.num_tasks
  acc, task_acc = np.zeros((T, T)), np.zeros((T, T))
  first = None
  for t, entry in sorted(loaded.items()):
    backbone = entry['prompt']['backbone']
    for other in entry.values():
      if not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(other['backbone']), jax.tree.leaves(backbone))):
        raise CheckpointError(f'the checkpoints of task {t} hold different backbones; cljax evaluates '
                              f'both stages on one frozen backbone')
    if first is None or not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(backbone))):
      experiment.backbone = jax.device_put(jax.tree.map(np.asarray, backbone), experiment.replicated)
      experiment.test_cache.clear()
      first = backbone
    state = {}
    for stage in experiment.stages:
      params = {k: v for k, v in entry[stage.name].items() if k != 'backbone'}
      method_state = stage.method.init_state()
      if 'task' in method_state:     # CODA's components, SMoPE's bookkeeping: after task t
        method_state = dict(method_state, task=np.asarray(t - 1, np.int32))
      state[stage.name] = {'params': jax.device_put(params, experiment.replicated), 'method_state': method_state}
    column, ids = experiment.evaluate(state, t - 1)
    acc[: t, t - 1], task_acc[: t, t - 1] = column, ids
    if verbose:
      print(f'after task {t}: ' + ' '.join(f'task {i + 1} {a:.2f}' for i, a in enumerate(column)) +
            f' | average {np.mean(column):.2f}' + (f' | task identity {np.mean(ids):.2f}'
                                                  if experiment.method.chooses_prompts else ''))
  last = max(loaded)
  out = {'tasks': sorted(loaded), 'eval_batch_size': int(batch), 'accuracy': acc.tolist(),
         'task_identity_accuracy_matrix': task_acc.tolist(),
         'final_average_accuracy': metrics.average_accuracy(acc, last - 1),
         'task_identity_accuracy': metrics.average_accuracy(task_acc, last - 1)}
  if sorted(loaded) == list(range(1, last + 1)):
    out['cumulative_average_accuracy'] = metrics.cumulative_average_accuracy(acc, last - 1)
    out['forgetting'] = metrics.forgetting(acc, last - 1)
    if verbose:
      print(metrics.format_matrix(acc, last - 1))
  if verbose:
    line = f'average accuracy after task {last} {out["final_average_accuracy"]:.2f}'
    if 'forgetting' in out:
      line += f' | cumulative {out["cumulative_average_accuracy"]:.2f} | forgetting {out["forgetting"]:.2f}'
    if experiment.method.chooses_prompts:
      line += f' | task identity {out["task_identity_accuracy"]:.2f}'
    print(line + f'  (eval batch {batch})')
  return out


def main(argv):
  from cljax.continual.run_log import quiet_libraries  # pylint: disable=g-import-not-at-top
  quiet_libraries()
  from cljax.continual import saved_stages  # pylint: disable=g-import-not-at-top
  try:
    cli.check_no_arguments(argv)
    config = cli.config_value(_CONFIG)
    if bool(_WORKDIR.value) == bool(_CHECKPOINT.value):
      raise ConfigError('give either --workdir (a cljax run) or --checkpoint (reference files)')
    if _WORKDIR.value:
      saved = saved_stages.run_config(_WORKDIR.value)
      from cljax import config as config_lib  # pylint: disable=g-import-not-at-top
      diff = config_lib.differences(config_lib.to_json(saved), config_lib.to_json(config),
                                    ignore=('checkpoint_every_steps', 'log_every_steps', 'stop_after_task',
                                            'data_workers'))
      if diff:
        raise ConfigError(f'{_WORKDIR.value} was run with another config ({diff[0]}); use its config')
      tasks = _workdir_tasks(_WORKDIR.value)
      results = evaluate(config, {t: None for t in tasks}, eval_batch_size=_EVAL_BATCH.value,
                         workdir=_WORKDIR.value)
    else:
      tii = task_files(_TII.value, _TASK.value) if _TII.value else None
      results = evaluate(config, task_files(_CHECKPOINT.value, _TASK.value), tii,
                         eval_batch_size=_EVAL_BATCH.value)
    if _OUTPUT.value:
      with open(_OUTPUT.value, 'w') as f:
        json.dump(results, f, indent=1)
  except CljaxError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)


def _workdir_tasks(workdir: str):
  """Tasks (from 1) whose prompt stage has a task checkpoint in a cljax workdir."""
  from cljax.continual import task_checkpoints  # pylint: disable=g-import-not-at-top
  directory = task_checkpoints.task_directory(workdir)
  steps = sorted(int(d) for d in os.listdir(directory) if d.isdigit()) if os.path.isdir(directory) else []
  tasks = [task_checkpoints.step_stage(s)[0] + 1 for s in steps if task_checkpoints.step_stage(s)[1] == 'prompt']
  if not tasks:
    raise CheckpointError(f'{workdir} has no finished task to evaluate')
  return tasks


def run():
  app.run(main, flags_parser=cli.parse_flags)


if __name__ == '__main__':
  run()
