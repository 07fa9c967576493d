"""`validate`: a finished config checked before anything is compiled, with one-line messages that
name the key and the fix; the numeric ranges of every hyper-parameter, the command line's
overrides (misspelt keys get suggestions), and the warnings for valid settings that leave the
references' protocol.
"""

from __future__ import annotations

import math

import ml_collections

from cljax.errors import ConfigError, one_of

from cljax.config.schema import BACKBONE_ALIASES, BENCHMARKS, IMR_SPLITS, MATMUL_PRECISIONS, METHODS, OPTIMIZERS, SCHEDULES, STATISTICS, STATISTICS_BATCHES, base, num_classes


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


