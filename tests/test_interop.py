"""Reference checkpoints of all seven methods (and the task-identity model), both ways.

PyTorch -> cljax: the oracle's model, saved in the layout of the repository that defines the
method, loads into cljax and gives the oracle's logits. cljax -> PyTorch: cljax's params,
exported, load strictly into a fresh oracle model and give the same logits; the export is the
original file bit for bit, and reading it back gives cljax's params bit for bit.
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from cljax import config as config_lib
from cljax import convert
from cljax import methods as methods_lib
from cljax_testing import torch_oracle
from cljax.checkpoints import files, reference
from cljax.methods import task_identity
from cljax.models.vit import ViTConfig
from cljax_testing.torch_oracle import rel_err

CFG = ViTConfig(embed_dim=64, depth=3, num_heads=4, patch_size=8, image_size=32)
IMAGES = np.random.RandomState(0).rand(6, 32, 32, 3).astype(np.float32)
X = torch.from_numpy(IMAGES).permute(0, 3, 1, 2)
IDS = np.array([0, 2, 4, 1, 3, 0])
FWD = 1e-5
METHODS = ('norga', 'hideprompt', 'l2p', 'dualprompt', 'sprompt', 'coda', 'smope', 'task_identity')


def setup(name):
  """(config, cljax Method, oracle model, oracle -> logits fn, cljax method state)."""
  c = config_lib.demo('norga' if name == 'task_identity' else name)
  kw = dict(dim=64, depth=3, heads=4, patch=8, image=32, num_classes=10)
  torch.manual_seed(0)
  state = {}
  if name == 'task_identity':
    method = task_identity.build(c, CFG, 10)
    model = torch_oracle.PromptedViT(mlp_hidden=tuple(c.task_identity.mlp_hidden), **kw)
    run = lambda m: m(X)[1]
  elif name in ('norga', 'hideprompt'):
    method = methods_lib.build(c, CFG, 10, 5)
    p = c.prompt
    model = torch_oracle.PromptedViT(prompt_layers=tuple(p.layers), pool=5, length=p.length,
                                     gate=p.gate, gate_act=p.activation, **kw)
    with torch.no_grad():
      if name == 'norga':
        model.e_prompt.act_scale.uniform_(0.5, 2.0)
    run = lambda m: m(X, torch.from_numpy(IDS))[1]
  elif name in ('l2p', 'dualprompt', 'sprompt'):
    method = methods_lib.build(c, CFG, 10, 5)
    p = c.prompt
    model = torch_oracle.KeyedPromptedViT(
        top_k=p.top_k, batchwise=p.batchwise_prompt, g_layers=tuple(p.g_layers) if name == 'dualprompt' else (),
        g_length=p.g_length, prompt_layers=tuple(p.layers), pool=p.pool_size, length=p.length,
        prefix=name != 'l2p', **kw)
    with torch.no_grad():
      model.e_prompt.prompt_key.normal_()
    run = lambda m: m(X)[0]
  elif name == 'coda':
    method = methods_lib.build(c, CFG, 10, 5)
    p = c.prompt
    model = torch_oracle.CodaViT(components=p.pool_size, length=p.length, num_tasks=5,
                                 prompt_layers=tuple(p.layers), **kw)
    state = {'task': jnp.int32(2)}
    run = lambda m: m(X, 2)
  else:
    c.prompt.update(layers=(0, 2), length=12, experts_top_k=2)
    method = methods_lib.build(c, CFG, 10, 5)
    model = torch_oracle.SmopeViT(expert_layers=(0, 2), experts=6, top_k=2, eps=0.4, **kw)
    state = method.init_state()
    # A reloaded reference learner: every usage count 0, every expert offset by 2 x range.
    run = lambda m: m(X, torch.full((2, 4, 6), 2.0))[0]
  return c, method, model, run, state


def save_reference(name, c, model, path):
  """The oracle's model as the reference repositories save it."""
  if reference.METHOD_LAYOUT[name] == 'smope':
    torch.save(torch_oracle.learner_state_dict(model), path)
  else:
    args = reference.reference_args(c, name, 10, 5)
    torch.save({'model': model.state_dict(), 'optimizer': {}, 'epoch': 3, 'args': args}, path)


def cljax_logits(method, params, state):
  trainable = {k: v for k, v in params.items() if k != 'backbone'}
  logits, _ = jax.jit(method.predict)(trainable, state, params['backbone'], IMAGES,
                                      jnp.asarray(IDS, jnp.int32), jnp.ones(6, bool))
  return np.asarray(logits)


def flat_equal(a, b):
  la, lb = jax.tree_util.tree_flatten_with_path(a)[0], jax.tree_util.tree_flatten_with_path(b)[0]
  assert [p for p, _ in la] == [p for p, _ in lb]
  for (path, x), (_, y) in zip(la, lb):
    assert np.asarray(x).dtype == np.asarray(y).dtype and np.array_equal(x, y), path


@pytest.mark.parametrize('name', METHODS)
def test_reference_checkpoint_both_ways(name, tmp_path):
  c, method, model, run, state = setup(name)
  original = tmp_path / 'original.pth'
  save_reference(name, c, model, original)
  ckpt = reference.read(str(original))
  assert (ckpt.method, ckpt.layout) == (name, reference.METHOD_LAYOUT[name])
  # PyTorch -> cljax: the same logits.
  layers = tuple(c.prompt.layers)
  params = reference.load(str(original), reference.method_template(method), layers=layers)
  with torch.no_grad():
    ref = run(model).numpy()
  assert rel_err(cljax_logits(method, params, state), ref) < FWD
  # cljax -> PyTorch: the export is the original state dict bit for bit ...
  exported = tmp_path / 'exported.pth'
  reference.export(str(exported), params, name, layers, args=reference.reference_args(c, name, 10, 5))
  raw = torch.load(exported, weights_only=True)     # args are a plain dict: safe to load
  saved = raw['model'] if reference.METHOD_LAYOUT[name] == 'hide' else raw
  first = torch.load(original, weights_only=False)
  first = first['model'] if reference.METHOD_LAYOUT[name] == 'hide' else first
  assert set(saved) == set(first)
  for key, value in first.items():
    assert saved[key].dtype == value.dtype and torch.equal(saved[key], value), key
  # ... loads strictly into a fresh oracle model and gives the same logits ...
  _, _, other, _, _ = setup(name)
  with torch.no_grad():
    for p in other.parameters():
      p.zero_()
  if reference.METHOD_LAYOUT[name] == 'smope':
    torch_oracle.load_learner_state_dict(other, saved)
  else:
    other.load_state_dict(saved, strict=True)
  with torch.no_grad():
    assert np.array_equal(run(other).numpy(), ref)
  # ... and reads back into cljax bit for bit.
  flat_equal(reference.load(str(exported), reference.method_template(method), layers=layers), params)


@pytest.mark.parametrize('name', METHODS)
def test_inspect_names_method_and_layout(name, tmp_path, capsys):
  c, _, model, _, _ = setup(name)
  path = tmp_path / 'ckpt.pth'
  save_reference(name, c, model, path)
  convert.main(['inspect', str(path)])
  first = capsys.readouterr().out.splitlines()[0]
  assert f'{reference.METHOD_NAMES[name]} ({name}) in {reference.LAYOUTS[reference.METHOD_LAYOUT[name]]}' in first


def test_convert_reference_reads_args_and_refuses_another_activation(tmp_path, capsys, monkeypatch):
  c, method, model, run, state = setup('norga')
  path = tmp_path / 'task5_checkpoint.pth'
  save_reference('norga', c, model, path)       # args: gate_act=tanh, layers 0,1,2, length 4, size 5
  from cljax.checkpoints import backbones
  # '--model demo' at this test's size; the layout itself comes from the checkpoint's args.
  monkeypatch.setattr(backbones, 'demo_vit_config', lambda **kw: ViTConfig(**{
      **dict(embed_dim=64, depth=3, num_heads=4, patch_size=8), **kw}))
  common = ['--model', 'demo', '--image-size', '32']
  out = tmp_path / 'out.pth'
  convert.main(['reference', str(path), str(out)] + common)
  assert 'NoRGa (norga)' in capsys.readouterr().out
  saved = torch.load(out, weights_only=False)
  assert saved['args']['gate_act'] == 'tanh'
  for key, value in model.state_dict().items():
    assert torch.equal(saved['model'][key], value), key
  with pytest.raises(SystemExit) as e:
    convert.main(['reference', str(path), str(tmp_path / 'o.pth'), '--activation', 'gelu'] + common)
  assert e.value.code == 2     # a user error: exit status 2, the line on stderr
  assert capsys.readouterr().err == f'error: {path}: checkpoint says gate_act=tanh, --activation=gelu\n'
  with pytest.raises(SystemExit) as e:
    convert.main(['reference', str(path), str(tmp_path / 'o.pth'), '--length', '8'] + common)
  assert e.value.code == 2
  assert capsys.readouterr().err == f'error: {path}: checkpoint says length=4, --length=8\n'


def test_check_args_names_both_values():
  c, _, _, _, _ = setup('norga')
  ckpt = reference.Checkpoint('t.pth', 'norga', 'hide', {}, vars(reference.reference_args(c, 'norga', 10, 5)))
  c.prompt.activation = 'gelu'
  names = {'gate_act': 'config.prompt.activation'}
  with pytest.raises(Exception) as e:
    reference.check_args(ckpt, reference.expected_args(c, 'norga', 10, 5), names)
  assert str(e.value) == 't.pth: checkpoint says gate_act=tanh, config.prompt.activation=gelu'
  # Without args, the caller's layout stands.
  reference.check_args(reference.Checkpoint('t.pth', 'norga', 'hide', {}, None),
                       reference.expected_args(c, 'norga', 10, 5), names)


def test_smope_learner_file_is_a_backbone_file_too(tmp_path):
  c, method, model, run, state = setup('smope')
  path = tmp_path / 'class.pth'
  save_reference('smope', c, model, path)
  from cljax.checkpoints import backbones
  params, notes = backbones.load_backbone(str(path), CFG)
  ours = reference.load(str(path), reference.method_template(method))['backbone']
  flat_equal(params, ours)


def test_reference_load_checks_args_against_the_model(tmp_path):
  from cljax.models.assembly import PromptedViTSpec
  from cljax.models.prompts import PoolSpec
  c, method, model, run, state = setup('norga')
  path = tmp_path / 'task5_checkpoint.pth'
  save_reference('norga', c, model, path)
  spec = lambda act: PromptedViTSpec(CFG, 10, PoolSpec((0, 1, 2), 5, 4, gate='norga', activation=act))
  flat_equal(reference.load(str(path), spec('tanh')),
             reference.load(str(path), reference.method_template(method)))
  with pytest.raises(Exception) as e:
    reference.load(str(path), spec('gelu'))
  assert str(e.value) == f'{path}: checkpoint says gate_act=tanh, model activation=gelu'
