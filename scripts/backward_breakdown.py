"""Where a training step's time goes on this device, cljax against the PyTorch oracle.

  python scripts/backward_breakdown.py [--model vit_b16] [--batch 8] [--repeats 5] [--no-torch]
  python scripts/backward_breakdown.py --model demo --batch 32     # the offline demo's ViT
  python scripts/backward_breakdown.py --trace --no-torch          # + XLA's per-op profile

Times, for one transformer block of the model (and the whole frozen backbone), the forward and
the forward + gradient to the input (what prompt training back-propagates through a frozen ViT:
activation gradients only, no weight gradients), in cljax (jitted) and in `cljax_testing.torch_oracle`
(eager fp32, parameters with requires_grad False), interleaved in this process, medians of
``--repeats``:

* ``block``: LayerNorm, attention, LayerNorm, MLP with residuals (`vit.Block`);
* ``attention``: the attention sub-layer (qkv projection, scores, softmax, weighted sum, proj);
* ``attention core``: softmax(q k^T / sqrt(d)) v alone, from the qkv projection's output;
* ``mlp``: fc1, exact GELU, fc2;
* ``all blocks``: every block and the final norm, on patch tokens (the path prompt training
  back-propagates through; the frozen patch embedding takes no gradient).

With ``--trace`` it then profiles the all-blocks forward + gradient (`jax.profiler`, XLA:CPU's
per-thunk trace events) and prints the time per kind of XLA op and how much of the traced time
had 0, 1 or 2 ops running at once.

The columns give milliseconds, the backward alone (difference), and cljax's GFLOP/s (XLA's
cost analysis). The README's performance section quotes this table. Random weights and inputs;
no files needed.
"""

from __future__ import annotations

import argparse
import os
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cljax.models import prefix as prefix_lib
from cljax.models import vit
from cljax.checkpoints.backbones import demo_vit_config
from cljax.models.vit import vit_config


def interleaved_medians(calls, repeats: int):
  """Median seconds of each call, run in turns after one warm-up each (so drifts hit all)."""
  for call in calls:
    call()
  times = [[] for _ in calls]
  for _ in range(repeats):
    for i, call in enumerate(calls):
      start = time.perf_counter()
      call()
      times[i].append(time.perf_counter() - start)
  return [float(np.median(t)) for t in times]


def input_gradient(f):
  """x -> d(sum f(x))/dx (the vjp of a ones cotangent)."""
  return jax.grad(lambda x, *rest: jnp.sum(f(x, *rest)))


def flops(fn, *args) -> float:
  return jax.jit(fn).lower(*args).cost_analysis()['flops']


def cljax_parts(cfg, batch: int):
  """{name: (forward fn, its input)} of cljax's modules with random params."""
  tokens = 1 + (cfg.image_size // cfg.patch_size) ** 2
  key = jax.random.split(jax.random.PRNGKey(0), 3)
  x = jax.random.normal(key[0], (batch, tokens, cfg.embed_dim))
  block = vit.Block(cfg.num_heads, int(cfg.embed_dim * cfg.mlp_ratio))
  attn = vit.Attention(cfg.num_heads)
  mlp = vit.Mlp(int(cfg.embed_dim * cfg.mlp_ratio))
  p_block, p_attn, p_mlp = (m.init(key[1], x) for m in (block, attn, mlp))
  head_dim = cfg.embed_dim // cfg.num_heads
  qkv = jax.random.normal(key[2], (batch, tokens, 3, cfg.num_heads, head_dim))

  def core(qkv):   # as vit.Attention's explicit path, between its two projections
    t = qkv.transpose(2, 0, 3, 1, 4)
    return prefix_lib.attend(t[0], t[1], t[2], head_dim ** -0.5)[0]

  blocks = Blocks(cfg.depth, cfg.num_heads, int(cfg.embed_dim * cfg.mlp_ratio))
  p_blocks = jax.jit(blocks.init)(key[1], x)
  return {
      'block': (lambda x: block.apply(p_block, x)[0], x),
      'attention': (lambda x: attn.apply(p_attn, x)[0], x),
      'attention core': (core, qkv),
      'mlp': (lambda x: mlp.apply(p_mlp, x), x),
      'all blocks': (lambda x: blocks.apply(p_blocks, x), x),
  }


class Blocks(nn.Module):
  """The ViT's blocks and final norm on patch tokens: what prompt training back-propagates
  through (no gradient reaches the patch embedding, whose weights are frozen)."""
  depth: int
  num_heads: int
  mlp_hidden: int

  @nn.compact
  def __call__(self, x):
    for i in range(self.depth):
      x = vit.Block(self.num_heads, self.mlp_hidden, name=f'blocks_{i}')(x)[0]
    return vit.layer_norm('norm')(x)


def torch_parts(cfg, batch: int):
  import torch  # pylint: disable=g-import-not-at-top
  from cljax_testing import torch_oracle as O  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  tokens = 1 + (cfg.image_size // cfg.patch_size) ** 2
  dim, heads = cfg.embed_dim, cfg.num_heads
  block = O.Block(dim, heads, cfg.mlp_ratio)
  blocks = torch.nn.Sequential(*[O.Block(dim, heads, cfg.mlp_ratio) for _ in range(cfg.depth)],
                               torch.nn.LayerNorm(dim, eps=1e-6))
  for m in (block, blocks):
    m.requires_grad_(False)    # frozen: only activation gradients, as in prompt training
  x = torch.randn(batch, tokens, dim)
  qkv = torch.randn(batch, tokens, 3, heads, dim // heads)
  scale = (dim // heads) ** -0.5

  def core(qkv):   # as torch_oracle.PrefixAttention, between its two projections
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    return (q @ k.transpose(-1, -2) * scale).softmax(-1) @ v

  return {
      'block': (block, x),
      'attention': (block.attn, x),
      'attention core': (core, qkv),
      'mlp': (block.mlp, x),
      'all blocks': (blocks, x),
  }


def torch_calls(f, x):
  import torch  # pylint: disable=g-import-not-at-top

  def forward():
    with torch.no_grad():
      return f(x)

  def both():
    xi = x.detach().requires_grad_(True)
    f(xi).sum().backward()
    return xi.grad
  return forward, both


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--model', default='vit_b16', help='a vit_config name, or demo')
  p.add_argument('--batch', type=int, default=8)
  p.add_argument('--repeats', type=int, default=5)
  p.add_argument('--no-torch', action='store_true')
  p.add_argument('--trace', action='store_true', help='XLA per-op profile of the all-blocks gradient')
  args = p.parse_args(argv)
  cfg = demo_vit_config() if args.model == 'demo' else vit_config(args.model)
  ours = cljax_parts(cfg, args.batch)
  theirs = None if args.no_torch else torch_parts(cfg, args.batch)
  print(f'{args.model}, batch {args.batch}, {jax.devices()[0].platform}; ms, median of {args.repeats}; '
        f'"both" = forward + gradient to the input; cljax GFLOP/s from XLA\'s cost analysis')
  header = '| part | cljax fwd | cljax both | cljax bwd | GFLOP/s fwd / bwd |'
  if theirs:
    header += ' torch fwd | torch both | torch bwd | cljax/torch time, fwd / bwd |'
  print(header)
  print('|' + '---|' * (header.count('|') - 1))
  for name, (f, x) in ours.items():
    fwd, both = jax.jit(f), jax.jit(input_gradient(f))
    calls = [lambda: jax.block_until_ready(fwd(x)), lambda: jax.block_until_ready(both(x))]
    if theirs:
      calls += list(torch_calls(*theirs[name]))
    times = interleaved_medians(calls, args.repeats)
    f_fwd, f_both = flops(f, x), flops(input_gradient(f), x)
    t_fwd, t_both = times[0], times[1]
    row = (f'| {name} | {t_fwd * 1e3:.1f} | {t_both * 1e3:.1f} | {(t_both - t_fwd) * 1e3:.1f} | '
           f'{f_fwd / t_fwd / 1e9:.0f} / {(f_both - f_fwd) / max(t_both - t_fwd, 1e-9) / 1e9:.0f} |')
    if theirs:
      u_fwd, u_both = times[2], times[3]
      row += (f' {u_fwd * 1e3:.1f} | {u_both * 1e3:.1f} | {(u_both - u_fwd) * 1e3:.1f} | '
              f'{t_fwd / u_fwd:.2f} / {(t_both - t_fwd) / max(u_both - u_fwd, 1e-9):.2f} |')
    print(row, flush=True)
  if args.trace:
    f, x = ours['all blocks']
    trace(jax.jit(input_gradient(f)), x)


def xla_op_events(call, repeats: int):
  """(op name, start ns, duration ns) of every XLA:CPU op that ``repeats`` calls of ``call()``
  ran on XLA's worker threads (needs XLA_FLAGS=--xla_cpu_enable_xprof_traceme=true)."""
  import glob  # pylint: disable=g-import-not-at-top
  import tempfile  # pylint: disable=g-import-not-at-top
  from jax._src.lib import _profile_data  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory() as d:
    with jax.profiler.trace(d):
      for _ in range(repeats):
        jax.block_until_ready(call())
    data = _profile_data.ProfileData.from_file(glob.glob(f'{d}/**/*.xplane.pb', recursive=True)[0])
  for plane in data.planes:
    for line in plane.lines:
      if 'XLAEigen' not in line.name:     # XLA:CPU's worker threads
        continue
      for ev in line.events:
        if not ev.name.startswith(('ThunkExecutor', 'SlinkyThreadPool', 'end:')):
          yield ev.name, ev.start_ns, ev.duration_ns


def trace(fn, x, repeats: int = 3):
  """Per-op profile of fn(x) from XLA:CPU's trace events (needs the flag set before jax starts)."""
  import collections  # pylint: disable=g-import-not-at-top
  import re  # pylint: disable=g-import-not-at-top
  if '--xla_cpu_enable_xprof_traceme=true' not in os.environ.get('XLA_FLAGS', ''):
    print('--trace needs XLA_FLAGS=--xla_cpu_enable_xprof_traceme=true in the environment (set '
          'before jax starts); rerun with it')
    return
  jax.block_until_ready(fn(x))
  per_kind, edges = collections.Counter(), []
  for name, start_ns, duration_ns in xla_op_events(lambda: fn(x), repeats):
    per_kind[re.sub(r'\.\d+$', '', name)] += duration_ns
    edges += [(start_ns, 1), (start_ns + duration_ns, -1)]
  total = sum(per_kind.values())
  print(f'\nXLA ops of the all-blocks forward + gradient, ms per call (sum over worker threads):')
  for kind, ns in per_kind.most_common(12):
    print(f'  {ns / repeats / 1e6:8.1f} ms  {100 * ns / total:5.1f}%  {kind}')
  running, level, last = collections.Counter(), 0, min(t for t, _ in edges)
  for t, step in sorted(edges):
    running[level] += t - last
    level, last = level + step, t
  span = sum(running.values())
  print('  share of the traced time with N ops running: ' +
        ', '.join(f'N={k}: {100 * v / span:.0f}%' for k, v in sorted(running.items()) if k >= 0))


if __name__ == '__main__':
  main()
