"""Checkpoint interop: every backbone layout, the references' training checkpoints, round trips."""

import re
import argparse

import jax
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cljax.checkpoints import backbones, files, reference, torch_names
from cljax.errors import CheckpointError
from cljax.models.assembly import PromptedViTSpec
from cljax.models.prompts import PoolSpec
from cljax.models.vit import ViTConfig
from cljax_testing.torch_oracle import Pair, rel_err

CFG = ViTConfig(embed_dim=64, depth=2, num_heads=4, patch_size=8, image_size=32)
NORGA = PoolSpec(layers=(0, 1), pool_size=3, length=4, gate='norga', activation='tanh')


@pytest.fixture(scope='module')
def pair():
  return Pair(CFG, num_classes=5, spec=NORGA)


def backbone_sd(pair):
  return {k: v for k, v in pair.state_dict.items() if k.startswith(backbones.BACKBONE_PREFIXES)}


def assert_same_tree(a, b):
  la, lb = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
  assert [p for p, _ in la] == [p for p, _ in lb]
  for (path, x), (_, y) in zip(la, lb):
    assert np.array_equal(np.asarray(x), np.asarray(y)), path


def timm_to_google(sd, heads):
  """Test-side inverse of the npz layout (ALGORITHMS.md 8.2), written independently."""
  dim = sd['cls_token'].shape[-1]
  out = {'embedding/kernel': sd['patch_embed.proj.weight'].transpose(2, 3, 1, 0),
         'embedding/bias': sd['patch_embed.proj.bias'], 'cls': sd['cls_token'],
         'Transformer/posembed_input/pos_embedding': sd['pos_embed'],
         'Transformer/encoder_norm/scale': sd['norm.weight'],
         'Transformer/encoder_norm/bias': sd['norm.bias'],
         'head/kernel': np.zeros((dim, 21843), np.float32), 'head/bias': np.zeros(21843, np.float32),
         'pre_logits/kernel': np.zeros((dim, dim), np.float32)}
  i = 0
  while f'blocks.{i}.norm1.weight' in sd:
    b, t = f'Transformer/encoderblock_{i}/', f'blocks.{i}.'
    m = b + 'MultiHeadDotProductAttention_1/'
    q, k, v = np.split(sd[t + 'attn.qkv.weight'], 3, 0)
    qb, kb, vb = np.split(sd[t + 'attn.qkv.bias'], 3)
    for name, w, bias in (('query', q, qb), ('key', k, kb), ('value', v, vb)):
      out[f'{m}{name}/kernel'] = w.T.reshape(dim, heads, dim // heads)
      out[f'{m}{name}/bias'] = bias.reshape(heads, dim // heads)
    out[m + 'out/kernel'] = sd[t + 'attn.proj.weight'].T.reshape(heads, dim // heads, dim)
    out[m + 'out/bias'] = sd[t + 'attn.proj.bias']
    out[b + 'LayerNorm_0/scale'], out[b + 'LayerNorm_0/bias'] = sd[t + 'norm1.weight'], sd[t + 'norm1.bias']
    out[b + 'LayerNorm_2/scale'], out[b + 'LayerNorm_2/bias'] = sd[t + 'norm2.weight'], sd[t + 'norm2.bias']
    for r in range(2):
      out[b + f'MlpBlock_3/Dense_{r}/kernel'] = sd[t + f'mlp.fc{r + 1}.weight'].T
      out[b + f'MlpBlock_3/Dense_{r}/bias'] = sd[t + f'mlp.fc{r + 1}.bias']
    i += 1
  return out


def test_state_dict_round_trip_is_bit_exact(pair, tmp_path):
  back = torch_names.to_state_dict(pair.params)
  assert list(back) == list(pair.state_dict) or set(back) == set(pair.state_dict)
  for key, value in pair.state_dict.items():
    assert back[key].dtype == value.dtype and back[key].shape == value.shape, key
    assert np.array_equal(back[key], value), key
  for suffix in ('.pth', '.safetensors', '.npz'):
    path = str(tmp_path / f'ckpt{suffix}')
    files.write(path, back)
    assert_same_tree(torch_names.from_state_dict(files.unwrap(files.read(path)), pair.model.template()),
                     pair.params)


def test_reference_training_checkpoint_both_ways(pair, tmp_path):
  # As the references save it: model + optimizer + epoch + argparse args (weights-only safe).
  model = pair.torch
  opt = torch.optim.Adam(model.parameters(), lr=0.1)
  path = tmp_path / 'task3_checkpoint.pth'
  torch.save({'model': model.state_dict(), 'optimizer': opt.state_dict(), 'epoch': 4,
              'args': argparse.Namespace(lr=0.03, length=4)}, path)
  params = reference.load(str(path), pair.model)
  assert_same_tree(params, pair.params)
  out = tmp_path / 'export.pth'
  reference.export(str(out), params)
  saved = torch.load(out, weights_only=True)['model']
  original = model.state_dict()
  assert list(saved) == list(original) or set(saved) == set(original)
  for key, value in original.items():
    assert saved[key].dtype == value.dtype and saved[key].shape == value.shape
    assert torch.equal(saved[key], value), key
  # ... and the exported file evaluates identically in the PyTorch oracle.
  other = Pair(CFG, num_classes=5, spec=NORGA, seed=1)
  other.torch.load_state_dict(saved)
  x = np.random.RandomState(0).rand(2, 32, 32, 3).astype(np.float32)
  assert np.array_equal(other.reference(x, np.array([0, 2]))[1], pair.reference(x, np.array([0, 2]))[1])


def test_task_identity_checkpoint(tmp_path):
  p = Pair(CFG, num_classes=5, mlp_hidden=(4, 4))
  path = tmp_path / 'task1_checkpoint.pth'
  torch.save({'model': p.torch.state_dict(), 'epoch': 19}, path)
  assert_same_tree(reference.load(str(path), p.model), p.params)
  assert 'mlp.net.1.2.weight' in p.state_dict and 'mlp.norm.bias' in p.state_dict


@pytest.mark.parametrize('layout', ['timm_pth', 'hf_bin', 'safetensors', 'dino', 'ibot_21k',
                                    'ibot_1k', 'mocov3_deit', 'mocov3_raw', 'google_npz',
                                    'google_npz_opt_target'])
def test_backbone_layouts(pair, tmp_path, layout):
  sd = backbone_sd(pair)
  head = {'head.weight': np.zeros((9, 64), np.float32), 'head.bias': np.zeros(9, np.float32)}
  torch_sd = lambda d: {k: torch.from_numpy(v) for k, v in d.items()}
  path = tmp_path / 'w.pth'
  cfg = CFG
  if layout == 'timm_pth':
    torch.save(torch_sd({**sd, **head}), path)
  elif layout == 'hf_bin':
    path = tmp_path / 'pytorch_model.bin'
    torch.save(torch_sd({**sd, **head}), path)
  elif layout == 'safetensors':
    path = tmp_path / 'model.safetensors'
    files.write(str(path), {**sd, **head}, wrap_key=None)
  elif layout == 'dino':
    torch.save(torch_sd(sd), path)
  elif layout == 'ibot_21k':
    teacher = {'backbone.' + k: v for k, v in sd.items()}
    teacher.update({'backbone.masked_embed': np.zeros(64, np.float32),
                    'head.mlp.0.weight': np.zeros((8, 64), np.float32)})
    torch.save({'teacher': torch_sd(teacher), 'student': torch_sd(teacher), 'epoch': 3}, path)
  elif layout == 'ibot_1k':
    torch.save({'state_dict': torch_sd({**sd, 'masked_embed': np.zeros(64, np.float32)})}, path)
  elif layout == 'mocov3_deit':
    cfg = ViTConfig(**{**CFG.__dict__, 'final_norm': False})
    torch.save({'model': torch_sd({**sd, **head})}, path)
  elif layout == 'mocov3_raw':
    cfg = ViTConfig(**{**CFG.__dict__, 'final_norm': False})
    raw = {'module.base_encoder.' + k: v for k, v in sd.items()}
    raw['module.base_encoder.head.0.weight'] = np.zeros((8, 64), np.float32)
    raw['module.predictor.0.weight'] = np.zeros((8, 8), np.float32)
    torch.save({'state_dict': torch_sd(raw), 'epoch': 300}, path)
  else:
    path = tmp_path / 'ViT-B_16.npz'
    npz = timm_to_google(sd, CFG.num_heads)
    if layout == 'google_npz_opt_target':
      npz = {'opt/target/' + k: v for k, v in npz.items()}
    np.savez(path, **npz)
  params, notes = backbones.load_backbone(str(path), cfg)
  expected = dict(pair.params['backbone'])
  if not cfg.final_norm:
    expected.pop('norm')
  assert_same_tree(params, expected)
  if layout in ('timm_pth', 'ibot_21k', 'mocov3_raw', 'google_npz'):
    assert any('ignored' in n for n in notes)


def test_pos_embed_resize_matches_torch_bicubic():
  pos = np.random.RandomState(0).randn(1, 1 + 14 * 14, 16).astype(np.float32)
  for new in (7, 12, 24):
    ours = backbones.resize_pos_embed(pos, new)
    grid = torch.from_numpy(pos[:, 1:]).reshape(1, 14, 14, 16).permute(0, 3, 1, 2)
    ref = F.interpolate(grid, size=(new, new), mode='bicubic', align_corners=False)
    ref = torch.cat([torch.from_numpy(pos[:, :1]), ref.permute(0, 2, 3, 1).reshape(1, -1, 16)], 1)
    assert ours.shape == (1, 1 + new * new, 16)
    assert rel_err(ours, ref.numpy()) < 1e-5   # torch computes in fp32, we in fp64


def test_backbone_at_other_image_size_resizes(pair, tmp_path):
  path = tmp_path / 'w.safetensors'
  files.write(str(path), backbone_sd(pair), wrap_key=None)
  cfg = ViTConfig(**{**CFG.__dict__, 'image_size': 48})
  params, notes = backbones.load_backbone(str(path), cfg)
  assert params['pos_embed'].shape == (1, 37, 64)
  assert any('resized pos_embed' in n for n in notes)


# ----------------------------------------------------------------------------- clear errors

def test_missing_unexpected_misshaped_keys_are_named(pair):
  sd = dict(pair.state_dict)
  tmpl = pair.model.template()
  with pytest.raises(CheckpointError, match=r'lacks 1 key.*e_prompt\.act_scale'):
    torch_names.from_state_dict({k: v for k, v in sd.items() if k != 'e_prompt.act_scale'}, tmpl)
  with pytest.raises(CheckpointError, match=r'unexpected key.*e_prompt\.extra'):
    torch_names.from_state_dict({**sd, 'e_prompt.extra': np.zeros(3)}, tmpl)
  with pytest.raises(CheckpointError, match=r'mis-shaped key.*head\.weight \(5, 63\) \(model: \(5, 64\)\)'):
    torch_names.from_state_dict({**sd, 'head.weight': np.zeros((5, 63), np.float32)}, tmpl)


def test_backbone_missing_block_is_named(pair, tmp_path):
  sd = {k: v for k, v in backbone_sd(pair).items() if not k.startswith('blocks.1.mlp')}
  path = tmp_path / 'w.safetensors'
  files.write(str(path), sd, wrap_key=None)
  with pytest.raises(CheckpointError, match=r'lacks 4 key.*blocks\.1\.mlp\.fc1\.bias'):
    backbones.load_backbone(str(path), CFG)


@pytest.mark.parametrize('content,match', [
    (None, 'does not exist'), (b'not a checkpoint', 'is not a PyTorch checkpoint: it is a text file'),
    # The right format, damaged inside: the library's parse error, never its advice to unpickle.
    (b'\x80\x02garbage that is no pickle', r'cannot read a PyTorch checkpoint .*w\.pth \('),
])
def test_unreadable_files(tmp_path, content, match):
  path = tmp_path / 'w.pth'
  if content is not None:
    path.write_bytes(content)
  with pytest.raises(CheckpointError, match=match) as e:
    files.read(str(path))
  assert not any(w in str(e.value) for w in ('weights_only', 'allow_pickle', 'unpickl')), str(e.value)


def test_unknown_suffix(tmp_path):
  with pytest.raises(CheckpointError, match='expected one of'):
    files.read(__file__)


class Arbitrary:
  """Any class outside the allow-list: unpickling it could run code."""


def test_weights_only_refuses_arbitrary_objects(tmp_path):
  path = tmp_path / 'evil.pth'
  torch.save({'model': {}, 'obj': Arbitrary()}, path)
  with pytest.raises(CheckpointError, match='cannot read a PyTorch checkpoint .* holds objects other than tensors'):
    files.read(str(path))


def test_convert_commands(pair, tmp_path, capsys):
  from cljax import convert
  ref = tmp_path / 'task2_checkpoint.pth'
  torch.save({'model': pair.torch.state_dict(), 'epoch': 1}, ref)
  convert.main(['inspect', str(ref)])
  assert 'NoRGa (norga) in the MoE_PromptCL/HiDe-Prompt training checkpoint layout' in capsys.readouterr().out
  args = ['--model', 'vit_ti8', '--image-size', '32', '--num-classes', '5', '--gate', 'norga',
          '--prompt-layers', '0,1', '--length', '4', '--pool', '3']
  # The oracle here is a 2-block, 64-wide model: vit_ti8 has 12 blocks, so the check must fail
  # and name what differs.
  with pytest.raises(SystemExit) as e:      # a user error: one line, exit status 2 (as main)
    convert.main(['reference', str(ref), str(tmp_path / 'out.safetensors')] + args)
  assert e.value.code == 2 and re.match(r'error: .*lacks .* key', capsys.readouterr().err)
  out = tmp_path / 'bb.safetensors'
  files.write(str(tmp_path / 'bb.pth'), backbone_sd(pair), wrap_key=None)
  with pytest.raises(SystemExit) as e:
    convert.main(['backbone', str(tmp_path / 'bb.pth'), str(out), '--model', 'vit_ti8', '--image-size', '32'])
  assert e.value.code == 2
  assert re.match(r'error: .*bb.pth lacks 120 key\(s\) the model needs: blocks.10', capsys.readouterr().err)


class _Payload:
  """Unpickling this calls open(path, 'w'): what a malicious checkpoint would do."""
  def __init__(self, path):
    self.path = path

  def __reduce__(self):
    return (open, (self.path, 'w'))


def test_a_code_running_checkpoint_is_refused_before_its_code_runs(tmp_path):
  marker = tmp_path / 'the_payload_ran'
  path = tmp_path / 'evil.pth'
  torch.save({'model': {'w': torch.zeros(2)}, 'x': _Payload(str(marker))}, path)
  with pytest.raises(CheckpointError, match=rf'^cannot read a PyTorch checkpoint {path}: it holds objects other than tensors'):
    files.read(str(path))
  assert not marker.exists()
