"""An independent PyTorch implementation of the references' prompted ViT, for checking cljax.

Written for cljax from the references' documented behaviour (ALGORITHMS.md), not copied: a
timm-layout ViT with the references' state-dict keys, the prefix-tuning attention of
HiDe-Prompt (``linear``) and NoRGa (``norga``), prompt tuning (L2P), the reference's prompt
gather (including the key/value reshape quirk), the task-identity MLP mapping, fc_norm and the
linear head.

Used only by tests, `scripts/compare_torch.py` and the benchmarks: cljax itself never imports
torch (except to read .pth files). Importing this module requires torch.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from cljax.checkpoints import backbones, torch_names
from cljax.models.assembly import PromptedViTSpec
from cljax.models.prompts import PoolSpec
from cljax.models.vit import ViTConfig

GATE_ACTIVATIONS = {
    'identity': nn.Identity, 'tanh': nn.Tanh, 'sigmoid': nn.Sigmoid, 'gelu': nn.GELU,
    'relu': nn.ReLU, 'softplus': nn.Softplus, 'elu': nn.ELU,
}


class PrefixAttention(nn.Module):
  """Multi-head self-attention whose keys/values may be extended by per-example prefixes."""

  def __init__(self, dim, heads):
    super().__init__()
    self.heads = heads
    self.scale = (dim // heads) ** -0.5
    self.qkv = nn.Linear(dim, 3 * dim)
    self.proj = nn.Linear(dim, dim)

  def forward(self, x, prefix=None, act_scale=None, gate_act=None):
    b, n, c = x.shape
    q, k, v = self.qkv(x).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
    scores = q @ k.transpose(-1, -2) * self.scale
    if prefix is not None:
      # prefix: [B, 2, L, H, d] as the references hand it to a block.
      pk = prefix[:, 0].permute(0, 2, 1, 3)
      pv = prefix[:, 1].permute(0, 2, 1, 3)
      prompt_scores = q @ pk.transpose(-1, -2) * self.scale
      if act_scale is not None:     # NoRGa: s + alpha * act(tau * s)
        prompt_scores = prompt_scores + gate_act(prompt_scores * act_scale[0]) * act_scale[1]
      scores = torch.cat([prompt_scores, scores], -1)
      v = torch.cat([pv, v], 2)
    out = scores.softmax(-1) @ v
    return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
  def __init__(self, dim, hidden):
    super().__init__()
    self.fc1 = nn.Linear(dim, hidden)
    self.act = nn.GELU()
    self.fc2 = nn.Linear(hidden, dim)

  def forward(self, x):
    return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
  def __init__(self, dim, heads, mlp_ratio=4.0):
    super().__init__()
    self.norm1 = nn.LayerNorm(dim, eps=1e-6)
    self.attn = PrefixAttention(dim, heads)
    self.norm2 = nn.LayerNorm(dim, eps=1e-6)
    self.mlp = Mlp(dim, int(dim * mlp_ratio))

  def forward(self, x, prefix=None, act_scale=None, gate_act=None):
    x = x + self.attn(self.norm1(x), prefix, act_scale, gate_act)
    return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
  def __init__(self, patch, in_chans, dim):
    super().__init__()
    self.proj = nn.Conv2d(in_chans, dim, patch, patch)

  def forward(self, x):
    return self.proj(x).flatten(2).transpose(1, 2)


class MlpMapping(nn.Module):
  """HiDe's task-identity MLP: LayerNorm(net(x) + x), hidden widths as multiples of dim."""

  def __init__(self, dim, hidden: Sequence[int], final_norm=True):
    super().__init__()
    n = len(hidden)
    layers = []
    for i in range(n + 1):
      d_in = dim if i == 0 else dim * hidden[i - 1]
      d_out = dim if i == n else dim * hidden[i]
      if i == n:
        layers.append(nn.Sequential(nn.Linear(d_in, d_out), nn.Dropout(0.0)))
      elif 0 < i == n // 2:
        layers.append(nn.Sequential(nn.Linear(d_in, d_out), nn.Dropout(0.0), nn.LayerNorm(d_out)))
      else:
        layers.append(nn.Sequential(nn.Linear(d_in, d_out), nn.GELU(), nn.Dropout(0.0)))
    self.net = nn.ModuleList(layers)
    self.norm = nn.LayerNorm(dim) if final_norm else nn.Identity()

  def forward(self, x):
    out = x
    for layer in self.net:
      out = layer(out)
    return self.norm(out + x)


class EPrompt(nn.Module):
  """The references' prompt pool: prefix [L_e, 2, P, L, H, d] or tokens [L_e, P, L, D]."""

  def __init__(self, num_layers, pool, length, dim, heads, prefix=True, norga=False,
               prompt_key=False):
    super().__init__()
    self.prefix = prefix
    if prefix:
      self.prompt = nn.Parameter(torch.empty(num_layers, 2, pool, length, heads, dim // heads).uniform_(-1, 1))
    else:
      self.prompt = nn.Parameter(torch.empty(num_layers, pool, length, dim).uniform_(-1, 1))
    if norga:
      self.act_scale = nn.Parameter(torch.ones(num_layers, 2, 1, 1))
    if prompt_key:
      self.prompt_key = nn.Parameter(torch.empty(pool, dim).uniform_(-1, 1))

  def batched(self, idx, kv_layout='reference', pool=None):
    """Per-layer prompts for pool indices idx [B, K]; ``pool`` replaces self.prompt (HiDe's
    momentum-mixed pool in training)."""
    pool = self.prompt if pool is None else pool
    raw = pool[:, :, idx] if self.prefix else pool[:, idx]
    if not self.prefix:
      layers, b, k, length, dim = raw.shape
      return raw.reshape(layers, b, k * length, dim)
    layers, two, b, k, length, heads, d = raw.shape
    if kv_layout == 'reference':    # reshape (not transpose) [L,2,B,...] -> [L,B,2,...]
      return raw.reshape(layers, b, two, k * length, heads, d)
    return raw.transpose(1, 2).reshape(layers, b, two, k * length, heads, d)


class PromptedViT(nn.Module):
  """ViT + optional prompt pool + optional MLP mapping / fc_norm + linear head."""

  def __init__(self, dim=768, depth=12, heads=12, patch=16, image=224, in_chans=3,
               num_classes=100, final_norm=True, fc_norm=False, mlp_hidden: Sequence[int] = (),
               prompt_layers: Sequence[int] = (), pool=10, length=5, prefix=True,
               gate='linear', gate_act='identity', prompt_key=False, kv_layout='reference'):
    super().__init__()
    self.patch_embed = PatchEmbed(patch, in_chans, dim)
    self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
    self.pos_embed = nn.Parameter(torch.randn(1, (image // patch) ** 2 + 1, dim) * 0.02)
    self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
    self.norm = nn.LayerNorm(dim, eps=1e-6) if final_norm else nn.Identity()
    self.prompt_layers = list(prompt_layers)
    self.kv_layout = kv_layout
    self.gate = gate
    if self.prompt_layers:
      self.e_prompt = EPrompt(len(self.prompt_layers), pool, length, dim, heads, prefix=prefix,
                              norga=gate == 'norga', prompt_key=prompt_key)
      self.gate_act = GATE_ACTIVATIONS[gate_act]()
    self.mlp = MlpMapping(dim, mlp_hidden, final_norm=not fc_norm) if mlp_hidden else nn.Identity()
    self.fc_norm = nn.LayerNorm(dim, eps=1e-6) if fc_norm else nn.Identity()
    self.head = nn.Linear(dim, num_classes)
    with torch.no_grad():   # non-trivial values everywhere, so parity tests see every term
      for m in self.modules():
        if isinstance(m, nn.LayerNorm):
          m.weight.uniform_(0.5, 1.5)
          m.bias.uniform_(-0.1, 0.1)

  def features(self, x, prompt_idx: Optional[torch.Tensor] = None, prompt: Optional[torch.Tensor] = None):
    """x: [B, C, H, W]; prompt_idx: [B] or [B, K] pool indices; ``prompt`` replaces the pool's
    parameter. Returns the pooled token."""
    x = self.patch_embed(x)
    x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.pos_embed
    prompts = None
    prepended = 0
    if self.prompt_layers:
      idx = prompt_idx if prompt_idx.dim() == 2 else prompt_idx[:, None]
      prompts = self.e_prompt.batched(idx, self.kv_layout, prompt)
    for i, block in enumerate(self.blocks):
      if prompts is not None and i in self.prompt_layers:
        j = self.prompt_layers.index(i)
        if self.e_prompt.prefix:
          act_scale = self.e_prompt.act_scale[j] if self.gate == 'norga' else None
          x = block(x, prompts[j], act_scale, self.gate_act)
        else:
          x = torch.cat([prompts[j], x], 1)
          prepended += prompts[j].shape[1]
          x = block(x)
      else:
        x = block(x)
    return self.norm(x)[:, prepended]

  def classify(self, pre_logits):
    return self.head(self.fc_norm(self.mlp(pre_logits)))

  def forward(self, x, prompt_idx=None):
    pre_logits = self.features(x, prompt_idx)
    return pre_logits, self.classify(pre_logits)


def l2_normalize(x, dim=-1, epsilon=1e-12):
  """The references' l2_normalize: x * rsqrt(max(sum x^2, eps))."""
  return x * torch.rsqrt(torch.clamp(torch.sum(x ** 2, dim=dim, keepdim=True), min=epsilon))


class KeyedPromptedViT(PromptedViT):
  """L2P / DualPrompt / S-Prompt of the HiDe repositories: key-query matching against a frozen
  copy of the backbone, optional G-prompts, pull constraint."""

  def __init__(self, top_k=1, batchwise=False, g_layers=(), g_length=5, force_task_entry=False, **kw):
    super().__init__(prompt_key=True, **kw)
    self.top_k, self.batchwise, self.force = top_k, batchwise, force_task_entry
    self.g_layers = list(g_layers)
    dim, heads = self.cls_token.shape[-1], self.blocks[0].attn.heads
    if self.g_layers:
      self.g_prompt = nn.Parameter(torch.empty(len(self.g_layers), 2, g_length, heads, dim // heads).uniform_(-1, 1))

  @torch.no_grad()
  def query(self, x):
    """The frozen pretrained model's pooled feature (the references' original_model)."""
    h = self.patch_embed(x)
    h = torch.cat([self.cls_token.expand(h.shape[0], -1, -1), h], 1) + self.pos_embed
    for block in self.blocks:
      h = block(h)
    return self.norm(h)[:, 0]

  def select(self, q):
    keys_n, q_n = l2_normalize(self.e_prompt.prompt_key), l2_normalize(q)
    sim = q_n @ keys_n.t()
    idx = torch.topk(sim, self.top_k, dim=1).indices
    if self.batchwise:
      ids, counts = torch.unique(idx, return_counts=True, sorted=True)
      # The most frequent top_k ids; ties to the smaller id (torch.topk leaves ties open).
      order = sorted(range(len(ids)), key=lambda i: (-int(counts[i]), int(ids[i])))[: self.top_k]
      idx = ids[order].expand(q.shape[0], -1).contiguous()
    return idx, keys_n, q_n

  def features_with(self, x, idx):
    h = self.patch_embed(x)
    h = torch.cat([self.cls_token.expand(h.shape[0], -1, -1), h], 1) + self.pos_embed
    prompts = self.e_prompt.batched(idx, self.kv_layout)
    prepended = 0
    for i, block in enumerate(self.blocks):
      if i in self.g_layers:
        g = self.g_prompt[self.g_layers.index(i)].unsqueeze(0).expand(h.shape[0], -1, -1, -1, -1)
        h = block(h, g)
      elif i in self.prompt_layers:
        j = self.prompt_layers.index(i)
        if self.e_prompt.prefix:
          h = block(h, prompts[j])
        else:
          h = torch.cat([prompts[j], h], 1)
          prepended += prompts[j].shape[1]
          h = block(h)
      else:
        h = block(h)
    return self.norm(h)[:, prepended]

  def forward(self, x, task=None):
    """Logits, chosen ids and the pull term; ``task`` forces that task's entries (training)."""
    idx, keys_n, q_n = self.select(self.query(x))
    if task is not None and self.force:
      idx = torch.arange(task * self.top_k, (task + 1) * self.top_k).expand(x.shape[0], -1)
    reduce_sim = torch.sum(keys_n[idx] * q_n.unsqueeze(1)) / x.shape[0]
    return self.head(self.fc_norm(self.features_with(x, idx))), idx, reduce_sim


class CodaViT(PromptedViT):
  """CODA-Prompt as the SMoPE repository implements it (components, keys, attention vectors)."""

  def __init__(self, components=10, length=4, num_tasks=5, **kw):
    layers = kw.pop('prompt_layers')
    super().__init__(**kw)
    dim = self.cls_token.shape[-1]
    self.coda_layers, self.length, self.per_task = list(layers), length, components // num_tasks
    self.prompt = nn.Module()
    for l in self.coda_layers:
      setattr(self.prompt, f'e_p_{l}', nn.Parameter(torch.randn(components, length, dim)))
      setattr(self.prompt, f'e_k_{l}', nn.Parameter(torch.randn(components, dim)))
      setattr(self.prompt, f'e_a_{l}', nn.Parameter(torch.randn(components, dim)))

  query = KeyedPromptedViT.query

  def forward(self, x, task):
    q = self.query(x)
    f = (task + 1) * self.per_task
    h = self.patch_embed(x)
    h = torch.cat([self.cls_token.expand(h.shape[0], -1, -1), h], 1) + self.pos_embed
    b, heads = x.shape[0], self.blocks[0].attn.heads
    for i, block in enumerate(self.blocks):
      if i in self.coda_layers:
        K, A, P = (getattr(self.prompt, f'e_{k}_{i}')[:f] for k in 'kap')
        aq_k = torch.einsum('bkd,kd->bk', F.normalize(torch.einsum('bd,kd->bkd', q, A), dim=2),
                            F.normalize(K, dim=1))
        mixed = torch.einsum('bk,kld->bld', aq_k, P)
        half = self.length // 2
        pk = mixed[:, :half].reshape(b, half, heads, -1)
        pv = mixed[:, half:].reshape(b, half, heads, -1)
        h = block(h, torch.stack([pk, pv], 1))
      else:
        h = block(h)
    return self.head(self.fc_norm(self.norm(h)[:, 0]))


class SmopeViT(PromptedViT):
  """SMoPE (the SMoPE repository's OnePrompt): shared prompt experts per layer and head, mean-query
  scores, adaptive noise, top-K, router and prototype losses; loops written as the reference's."""

  def __init__(self, expert_layers=(0, 1), experts=6, top_k=2, eps=0.4, **kw):
    super().__init__(**kw)
    dim, heads = self.cls_token.shape[-1], self.blocks[0].attn.heads
    self.expert_layers, self.top_k, self.eps = list(expert_layers), top_k, eps
    self.keys = nn.Parameter(torch.rand(len(expert_layers), experts, heads, dim // heads))
    self.values = nn.Parameter(torch.rand(len(expert_layers), experts, heads, dim // heads))

  def sparse_attention(self, attn, x, pk, pv, noise, top_k):
    """pk, pv: [H, E, d]; noise: [H, E] eps per expert; top_k < 0: dense."""
    b, n, c = x.shape
    q, k, v = attn.qkv(x).view(b, n, 3, attn.heads, c // attn.heads).permute(2, 0, 3, 1, 4)
    q_prompt = q.mean(dim=-2, keepdim=True)                        # [B, H, 1, d]
    score = q_prompt @ pk.unsqueeze(0).transpose(-2, -1)           # [B, H, 1, E]
    label = None
    if top_k < 0:
      prompt_logits, values = score.expand(-1, -1, n, -1) * attn.scale, pv.unsqueeze(0).expand(b, -1, -1, -1)
    else:
      with torch.no_grad():
        rng = score.max(-1, keepdim=True).values - score.min(-1, keepdim=True).values
      label = score - noise.unsqueeze(0).unsqueeze(2) * rng
      idx = torch.topk(label, top_k, dim=-1).indices               # [B, H, 1, K]
      gather = lambda t: torch.gather(t.unsqueeze(0).unsqueeze(2).expand(b, -1, 1, -1, -1), 3,
                                      idx.unsqueeze(-1).expand(-1, -1, -1, -1, t.shape[-1])).squeeze(2)
      pk_sel, values = gather(pk), gather(pv)                       # [B, H, K, d]
      prompt_logits = (q_prompt @ pk_sel.transpose(-2, -1)).expand(-1, -1, n, -1) * attn.scale
    logits = torch.cat([prompt_logits, q @ k.transpose(-2, -1) * attn.scale], -1)
    out = logits.softmax(-1) @ torch.cat([values, v], 2)
    return attn.proj(out.transpose(1, 2).reshape(b, n, c)), (score, label)

  def forward(self, x, noise=None, dense=False):
    """noise: [L_s, H, E] eps per expert (train: eps on frequent experts; test: 2 on unused)."""
    h = self.patch_embed(x)
    h = torch.cat([self.cls_token.expand(h.shape[0], -1, -1), h], 1) + self.pos_embed
    scores = {}
    for i, block in enumerate(self.blocks):
      if i in self.expert_layers:
        j = self.expert_layers.index(i)
        pk, pv = self.keys[j].transpose(0, 1), self.values[j].transpose(0, 1)
        y, scores[i] = self.sparse_attention(block.attn, block.norm1(h), pk, pv, noise[j], -1 if dense else self.top_k)
        h = h + y
        h = h + block.mlp(block.norm2(h))
      else:
        h = block(h)
    return self.head(self.fc_norm(self.norm(h)[:, 0])), scores

  def router_loss(self, scores, mu):
    loss = 0.0
    for i in self.expert_layers:
      score, label = scores[i]
      indices = torch.topk(label, self.top_k, dim=-1).indices
      not_mask = 1.0 - torch.zeros_like(score).scatter(-1, indices, 1.0)
      with torch.no_grad():
        rng = score.max(-1, keepdim=True).values - score.min(-1, keepdim=True).values
      adjusted = score + not_mask * self.eps * rng
      for head in range(score.shape[1]):
        for k in range(self.top_k):
          loss = loss + mu * F.cross_entropy(adjusted[:, head, 0, :], indices[:, head, 0, k])
    return loss

  def prototype_loss(self, old_keys, frequent, mu):
    loss = 0.0
    for j in range(len(self.expert_layers)):
      for head in range(self.keys.shape[2]):
        chosen = frequent[j, head]
        if not chosen.any():
          continue
        old, cur = old_keys[j, :, head], self.keys[j, :, head]
        sampled = old[chosen]
        targets = torch.topk(sampled @ old.t(), self.top_k, dim=-1).indices
        for k in range(self.top_k):
          loss = loss + mu * F.cross_entropy(sampled @ cur.t(), targets[:, k])
    return loss


def learner_state_dict(model: nn.Module) -> Dict[str, torch.Tensor]:
  """The oracle's SmopeViT/CodaViT state dict in the SMoPE repository's learner layout (what its
  ``save_model`` writes as class.pth): the ViT under ``feat.``, the head as ``last.``, CODA's
  ``prompt.e_{p,k,a}_{l}`` as they are, and SMoPE's stacked experts as one [1, d] key and value
  per (layer, expert, head): ``prompt.e_pk_{layer}_{expert}_{head}``, ``prompt.e_pv_...``."""
  out = {}
  for key, value in model.state_dict().items():
    if key in ('keys', 'values'):
      kind = 'k' if key == 'keys' else 'v'
      for j, layer in enumerate(model.expert_layers):
        for e in range(value.shape[1]):
          for h in range(value.shape[2]):
            out[f'prompt.e_p{kind}_{layer}_{e}_{h}'] = value[j, e, h].unsqueeze(0).clone()
    elif key.startswith('head.'):
      out['last.' + key[len('head.'):]] = value
    elif key.startswith('prompt.'):
      out[key] = value
    else:
      out['feat.' + key] = value
  return out


def load_learner_state_dict(model: nn.Module, state: Dict[str, torch.Tensor]) -> None:
  """The inverse of `learner_state_dict`, loaded strictly into the oracle model."""
  own = {}
  experts = {}
  for key, value in state.items():
    if key.startswith('prompt.e_pk_') or key.startswith('prompt.e_pv_'):
      kind, layer, e, h = key[len('prompt.e_p'):].split('_')
      experts[(kind, int(layer), int(e), int(h))] = value
    elif key.startswith('last.'):
      own['head.' + key[len('last.'):]] = value
    elif key.startswith('feat.'):
      own[key[len('feat.'):]] = value
    else:
      own[key] = value
  if experts:
    for kind, name in (('k', 'keys'), ('v', 'values')):
      stacked = torch.zeros_like(getattr(model, name))
      for j, layer in enumerate(model.expert_layers):
        for e in range(stacked.shape[1]):
          for h in range(stacked.shape[2]):
            stacked[j, e, h] = experts.pop((kind, layer, e, h))[0]
      own[name] = stacked
    if experts:
      raise KeyError(f'unexpected expert keys {sorted(experts)[:4]}')
  model.load_state_dict(own, strict=True)


@torch.no_grad()
def evaluate_till_now(model: PromptedViT, tii_model: PromptedViT, test_sets, tasks, t: int,
                      batch_size: int):
  """The HiDe/NoRGa references' evaluation after task t (0-based), written for the oracle:
  each test task i <= t in order, in batches of batch_size; the task-identity model's argmax
  among the classes of tasks 0..t names the prompt; the prompted model's argmax over all classes
  (no mask) is the prediction. test_sets: [(images [n, H, W, C] float32, labels [n])] per task;
  tasks: the classes of each task. Returns (accuracy % per task, task-identity accuracy % per
  task)."""
  class_to_task = {int(k): i for i, classes in enumerate(tasks) for k in classes}
  seen = torch.zeros(tii_model.head.out_features, dtype=torch.bool)
  seen[[int(k) for s in tasks[: t + 1] for k in s]] = True
  mapping = torch.tensor([class_to_task.get(k, 0) for k in range(len(seen))])
  accuracy, identity = [], []
  for i in range(t + 1):
    images, labels = test_sets[i]
    correct = task_correct = 0
    for start in range(0, len(labels), batch_size):
      x = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size])).permute(0, 3, 1, 2)
      y = torch.from_numpy(np.asarray(labels[start:start + batch_size]))
      tii_logits = tii_model(x)[1].masked_fill(~seen, float('-inf'))
      task = mapping[tii_logits.argmax(-1)]
      logits = model(x, task)[1]
      correct += int((logits.argmax(-1) == y).sum())
      task_correct += int((task == i).sum())
    accuracy.append(100.0 * correct / len(labels))
    identity.append(100.0 * task_correct / len(labels))
  return accuracy, identity


# ----------------------------------------------------------------------------- cljax vs oracle

def rel_err(a, b) -> float:
  """max |a - b| / max |b|: the error relative to the reference's scale."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


class Pair:
  """A torch oracle model and the cljax params converted from its state dict."""

  def __init__(self, cfg: ViTConfig, num_classes=7, spec: PoolSpec = None, mlp_hidden=(),
               fc_norm=False, seed=0):
    torch.manual_seed(seed)
    self.cfg, self.spec = cfg, spec
    kwargs = {}
    if spec is not None:
      kwargs = dict(prompt_layers=spec.layers, pool=spec.pool_size, length=spec.length,
                    prefix=spec.kind == 'prefix', gate=spec.gate, gate_act=spec.activation,
                    prompt_key=spec.prompt_key, kv_layout=spec.kv_layout)
    self.torch = PromptedViT(
        dim=cfg.embed_dim, depth=cfg.depth, heads=cfg.num_heads, patch=cfg.patch_size,
        image=cfg.image_size, in_chans=cfg.in_channels, num_classes=num_classes,
        final_norm=cfg.final_norm, fc_norm=fc_norm, mlp_hidden=mlp_hidden, **kwargs)
    if spec is not None and spec.gate == 'norga':
      with torch.no_grad():   # away from the init value 1 so tau and alpha both matter
        self.torch.e_prompt.act_scale.uniform_(0.5, 2.0)
    self.model = PromptedViTSpec(cfg, num_classes, spec, tuple(mlp_hidden), fc_norm)
    self.vit, self.clf = self.model.backbone, self.model.classifier
    self.state_dict = {k: v.detach().numpy().copy() for k, v in self.torch.state_dict().items()}
    self.params = torch_names.from_state_dict(self.state_dict, self.model.template())

  def cljax_forward(self, params, images, idx=None):
    pre, logits, _ = self.model(params, images, idx)
    return pre, logits

  def cljax(self, images, idx=None, labels=None):
    """(pre_logits, logits) and, with labels, grads of the mean CE w.r.t. prompts and classifier."""
    images = jnp.asarray(images)
    pre, logits = jax.jit(self.cljax_forward)(self.params, images, idx)
    if labels is None:
      return np.asarray(pre), np.asarray(logits), None

    def loss(trainable):
      _, lg = self.cljax_forward({**self.params, **trainable}, images, idx)
      logp = jax.nn.log_softmax(lg)
      return -jnp.take_along_axis(logp, jnp.asarray(labels)[:, None], 1).mean()
    trainable = {k: v for k, v in self.params.items() if k != 'backbone'}
    grads = jax.jit(jax.grad(loss))(trainable)
    return np.asarray(pre), np.asarray(logits), torch_names.to_state_dict(grads)

  def reference(self, images, idx=None, labels=None):
    """The oracle's (pre_logits, logits) and, with labels, its grads by state-dict key."""
    x = torch.from_numpy(np.asarray(images)).permute(0, 3, 1, 2)
    t_idx = None if idx is None else torch.from_numpy(np.asarray(idx))
    self.torch.zero_grad()
    pre, logits = self.torch(x, t_idx)
    grads = None
    if labels is not None:
      torch.nn.functional.cross_entropy(logits, torch.from_numpy(np.asarray(labels))).backward()
      grads = {n: p.grad.numpy().copy() for n, p in self.torch.named_parameters()
               if p.grad is not None and not n.startswith(backbones.BACKBONE_PREFIXES)}
    return pre.detach().numpy(), logits.detach().numpy(), grads

  def layer_diffs(self, images, idx=None):
    """[(name, max abs diff, rel diff)] for the patch embedding, every block, pre_logits, logits."""
    from cljax.models import vit as vit_lib  # pylint: disable=g-import-not-at-top
    inputs = {} if self.spec is None else self.spec.inputs(self.params['prompts']['e_prompt'], idx)
    (pre, _), state = self.vit.apply(
        {'params': self.params['backbone']}, jnp.asarray(images), **inputs,
        capture_intermediates=lambda m, _: isinstance(m, (vit_lib.Block, vit_lib.PatchEmbed)))
    inter = state['intermediates']
    ours = [('patch_embed', np.asarray(inter['patch_embed']['__call__'][0]).reshape(len(images), -1, self.cfg.embed_dim))]
    ours += [(f'block {i}', np.asarray(inter[f'blocks_{i}']['__call__'][0][0]))
             for i in range(self.cfg.depth)]
    captured = []
    hooks = [self.torch.patch_embed.register_forward_hook(lambda m, i, o: captured.append(o))]
    hooks += [b.register_forward_hook(lambda m, i, o: captured.append(o)) for b in self.torch.blocks]
    t_pre, t_logits, _ = self.reference(images, idx)
    for h in hooks:
      h.remove()
    logits = self.clf.apply({'params': self.params['classifier']}, pre)
    rows = []
    for (name, a), b in zip(ours + [('pre_logits', pre), ('logits', logits)],
                            [c.detach().numpy() for c in captured] + [t_pre, t_logits]):
      rows.append((name, float(np.abs(np.asarray(a, np.float64) - b).max()), rel_err(a, b)))
    return rows
