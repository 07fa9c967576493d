"""Where a training step's time goes on this device: forward vs backward of the frozen ViT.

  python scripts/backward_breakdown.py [--model vit_b16] [--batch 8] [--repeats 3]

Prints GFLOP/s (XLA cost-analysis FLOPs over the median time) of
* the backbone's forward, and forward + backward to its input (activation gradients only, what
  prompt training back-propagates through a frozen ViT), and the backward alone by difference;
* each dense layer's matmul on its own, forward (x @ W) and backward (dY @ W.T);
* the exact-GELU forward and gradient on the MLP's hidden activations.
Random weights and inputs; no files needed. The README's performance section quotes it.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from cljax.models.assembly import PromptedViTSpec
from cljax.models.vit import vit_config


def median_seconds(fn, *args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))     # compile and warm up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def flops(fn, *args) -> float:
  return fn.lower(*args).cost_analysis()['flops']


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--model', default='vit_b16')
  p.add_argument('--batch', type=int, default=8)
  p.add_argument('--repeats', type=int, default=3)
  args = p.parse_args(argv)
  cfg = vit_config(args.model)
  spec = PromptedViTSpec(cfg, 10, None, ())
  x = jax.random.normal(jax.random.PRNGKey(0), (args.batch, cfg.image_size, cfg.image_size, 3))
  params = jax.jit(lambda k: spec.backbone.init(k, x[:1])['params'])(jax.random.PRNGKey(1))

  forward = jax.jit(lambda p, x: spec.backbone.apply({'params': p}, x)[0])
  both = jax.jit(jax.grad(lambda x, p: spec.backbone.apply({'params': p}, x)[0].sum()))
  t_fwd = median_seconds(forward, params, x, repeats=args.repeats)
  t_both = median_seconds(both, x, params, repeats=args.repeats)
  f_fwd, f_both = flops(forward, params, x), flops(both, x, params)
  print(f'{args.model}, batch {args.batch}, {jax.devices()[0].platform}:')
  print(f'  backbone forward            {f_fwd / t_fwd / 1e9:6.0f} GFLOP/s  ({args.batch / t_fwd:.2f} img/s)')
  print(f'  forward + input gradient    {f_both / t_both / 1e9:6.0f} GFLOP/s  ({args.batch / t_both:.2f} img/s)')
  print(f'  backward alone (difference) {(f_both - f_fwd) / (t_both - t_fwd) / 1e9:6.0f} GFLOP/s')

  rows = args.batch * (1 + (cfg.image_size // cfg.patch_size) ** 2)
  d, hidden = cfg.embed_dim, int(cfg.embed_dim * cfg.mlp_ratio)
  for n_in, n_out in ((d, hidden), (hidden, d), (d, 3 * d)):
    k = jax.random.PRNGKey(n_in * n_out)
    a, w, dy = (jax.random.normal(k, s) for s in ((rows, n_in), (n_in, n_out), (rows, n_out)))
    matmul_flops = 2 * rows * n_in * n_out
    t_f = median_seconds(jax.jit(lambda a, w: a @ w), a, w, repeats=args.repeats)
    t_b = median_seconds(jax.jit(lambda dy, w: dy @ w.T), dy, w, repeats=args.repeats)
    print(f'  matmul {n_in}x{n_out}: forward {matmul_flops / t_f / 1e9:.0f} GFLOP/s, '
          f'backward dY @ W.T {matmul_flops / t_b / 1e9:.0f} GFLOP/s')
  h = jax.random.normal(jax.random.PRNGKey(2), (rows, hidden))
  gelu = jax.jit(lambda h: jax.nn.gelu(h, approximate=False))
  gelu_grad = jax.jit(jax.grad(lambda h: jax.nn.gelu(h, approximate=False).sum()))
  t_one = median_seconds(jax.jit(lambda a, w: a @ w), jnp.ones((rows, d)), jnp.ones((d, hidden)),
                         repeats=args.repeats)
  print(f'  exact GELU on [{rows}, {hidden}]: forward {median_seconds(gelu, h, repeats=args.repeats) * 1e3:.1f} ms, '
        f'gradient {median_seconds(gelu_grad, h, repeats=args.repeats) * 1e3:.1f} ms '
        f'(one {d}x{hidden} matmul: {t_one * 1e3:.1f} ms)')


if __name__ == '__main__':
  main()
