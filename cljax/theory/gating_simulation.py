"""Sample efficiency of linear vs non-linear residual (NoRGa) prompt gates.

Le et al., "Mixture of Experts Meets Prompt-Based Continual Learning" (NeurIPS 2024) read one
attention head with prefix prompts as a mixture of experts (MoE).  For an input X in R^d:

  g_G(X) = sum_j  exp(X^T B_j^0 X + c_j^0) / T(X) * h(X, eta_j^0)          (pre-trained experts)
         + sum_j' exp(s(X; beta1_j', beta0_j')) / T(X) * h(X, eta_j')       (prompt experts)

where T(X) is the sum of all the gate exponentials and the pre-trained part (B^0, c^0, eta^0) is
known and fixed.  The prompt gate score is either

  linear (plain prefix tuning):  s = beta1^T X + beta0
  NoRGa:                         s = beta1^T X + alpha * tanh(tau * beta1^T X) + beta0

with alpha, tau fixed and known, and the expert is h(X, (a, b)) = a^T X + b ('linear', what a
value projection is) or h(X, (a, b)) = GELU(a^T X + b) ('gelu', a one-layer network).  Data
follow Y = g_{G*}(X) + N(0, noise_std^2).  The prompt experts form the mixing measure
G = sum_j' exp(beta0_j') delta_{(beta1_j', eta_j')}.

Theorem 4.1: the least-squares fit converges in L2(mu) at sqrt(log n / n).  Theorem 4.3: if h
and the activation are algebraically independent, the Voronoi loss L1(G_hat, G*) is
O~(n^{-1/2}).  With the linear gate the parameters of the gate and of the expert interact through
the PDE  d^2 u / (d beta1 d b) = d u / d a,  u = exp(beta1^T X + beta0) h(X, (a, b)), and the
parameter rates can be as slow as 1 / log^tau(n) (Theorem A.1).  That PDE holds for every ridge
expert h = phi(a^T X + b), the linear one and the GELU one alike (both sides equal
X exp(.) phi'(a^T X + b)); NoRGa's residual multiplies d u / d beta1 by
(1 + alpha tau tanh'(tau beta1^T X)) and breaks it.

Why NoRGa's expert must be non-linear: algebraic independence also needs the second
derivatives of u in the expert parameters, and a linear expert has d^2 h / d eta^2 = 0.
Concretely, two fitted prompt experts that share one gate (same beta1, beta0's summing to the
true mass) reproduce a linear expert exactly for any split of a*, b* into weighted averages,
whatever the gate; the Voronoi loss of those fits is positive while g_G = g_{G*}, so no rate
can hold for it.

The models are therefore (gate, expert) pairs: 'norga+gelu' (Theorem 4.3's setting),
'linear+gelu' (the same experts behind a linear gate: the gate-only comparison), and
'linear+linear' (plain prefix tuning, Theorem A.1); 'norga+linear' is available as a control.
The separation shows up when the model is over-specified (more fitted prompt experts than true
ones), so that is the default here.

This module draws the data, fits each model by least squares with L-BFGS (optax) from several
starts (best training loss kept), and measures the L2(mu) error by Monte Carlo and the Voronoi
loss on a log grid of n; `run_simulation` returns plain Python numbers (JSON-ready) including
the log-log slopes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import time
from typing import Callable, Dict, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

GATES = ('norga', 'linear')
EXPERTS = ('gelu', 'linear')
# (gate, expert) pairs: NoRGa vs the linear gate with the same one-layer experts, then plain
# prefix tuning (linear gate, linear experts); norga+linear is a control (see the docstring).
DEFAULT_MODELS = (('norga', 'gelu'), ('linear', 'gelu'), ('linear', 'linear'))
CONTROL_MODELS = (('norga', 'linear'),)
Params = Dict[str, jax.Array]


def model_name(model: Tuple[str, str]) -> str:
  """'norga+gelu' etc., the key of a model in the results."""
  return f'{model[0]}+{model[1]}'


# ----------------------------------------------------------------------------------------------
# Configuration and the true model


@dataclasses.dataclass(frozen=True)
class SimConfig:
  """Everything that defines one simulation.

  Attributes:
    models: (gate, expert) pairs to simulate.
    dim: input dimension d.
    n_true_prompts: L*, number of prompt experts in the truth.
    n_fit_prompts: L', number of fitted prompt experts (> L* is the over-specified case).
    alpha, tau: NoRGa's residual scale and temperature (fixed and known, as in the theory).
    noise_std: standard deviation of the Gaussian regression noise.
    input_radius: X ~ Uniform([-r, r]^d); the theory needs a bounded input space.
    ns: sample sizes.
    n_seeds: independent data sets per sample size.
    n_restarts: optimiser starts per data set; the one with the smallest training loss is kept.
    n_steps: L-BFGS iterations per start.
    init_scale: std of the Gaussian perturbation of the starts around the truth (see
      `initial_params`).
    param_bound: the fitted prompt parameters live in the box [-B, B] (the theory's compact
      parameter space Theta); without it a few small-n fits push a stray atom's gate mass
      exp(beta0) to e^10 and more, and one such fit dominates a mean.
    n_eval: held-out Monte-Carlo sample for the L2(mu) error.
    pad_to: data sets smaller than this are zero-padded, with zero weight in the loss, to this
      size, so that all the small n share one compiled fit: compiling the L-BFGS fit takes
      seconds, fitting a small data set much less.
    vmap_points: fits are vmapped in chunks of about vmap_points / n starts.  vmapping pays for
      small n, where per-step overhead dominates, but not for large n: the line search is a
      while loop, and a vmapped while loop runs every member until the slowest is done.
    x64: fit in float64; at n = 1e5 the least-squares fit beats the truth's training loss by
      ~1e-4 of its value, and the last digits of that are finer than float32 line searches
      resolve reliably.
  """
  models: Sequence[Tuple[str, str]] = DEFAULT_MODELS
  dim: int = 2
  n_true_prompts: int = 1
  n_fit_prompts: int = 2
  alpha: float = 1.0
  tau: float = 1.0
  noise_std: float = 0.1
  input_radius: float = 1.0
  ns: Sequence[int] = (100, 268, 720, 1931, 5179, 13895, 37276, 100000)
  n_seeds: int = 6
  n_restarts: int = 2
  n_steps: int = 300
  init_scale: float = 0.5
  param_bound: float = 5.0
  n_eval: int = 20000
  pad_to: int = 2048
  vmap_points: int = 30000
  x64: bool = True


def log_grid(lo: float, hi: float, num: int) -> tuple:
  """Integer sample sizes evenly spaced in log between lo and hi (inclusive)."""
  return tuple(int(round(v)) for v in np.logspace(math.log10(lo), math.log10(hi), num))


def config_for_size(size: str, n_seeds: Optional[int] = None, **overrides) -> SimConfig:
  """The two sizes of the command-line entry: 'default' (the README numbers) and 'small'."""
  if size == 'default':
    cfg = SimConfig(ns=log_grid(1e2, 1e5, 8))
  elif size == 'small':
    # A smoke-sized run: the gate-only comparison, few points and seeds, short fits.  Its
    # slopes are finite but noisy.
    cfg = SimConfig(models=DEFAULT_MODELS[:2], ns=log_grid(1e2, 3e3, 3), n_seeds=2, n_restarts=2,
                    n_steps=60, n_eval=4000)
  else:
    raise ValueError(f'unknown size {size!r}')
  if n_seeds is not None:
    overrides['n_seeds'] = n_seeds
  return dataclasses.replace(cfg, **overrides)


def make_truth(dim: int = 2, n_true_prompts: int = 1) -> Dict[str, Params]:
  """The fixed true mixture: two pre-trained experts with quadratic gates and L* prompt experts.

  The same numbers serve every (gate, expert) model.  For d = 2 they are written out here;
  other dimensions draw them from a fixed-seed generator.  The prompt
  experts have beta1* != 0, which algebraic independence needs (at beta1 = 0 the tanh residual
  is locally linear), a* not parallel to beta1*, and b* near 0 so that GELU's curvature is
  visible on the inputs.
  """
  if dim == 2 and n_true_prompts <= 2:
    pre = dict(
        B=np.array([[[0.5, 0.2], [0.2, -0.3]], [[-0.4, 0.0], [0.0, 0.6]]]),
        c=np.array([0.0, 0.2]),
        a=np.array([[1.0, -0.5], [-0.8, 0.4]]),
        b=np.array([0.3, -0.2]))
    prompt = dict(
        beta1=np.array([[1.2, -0.8], [-1.0, -1.0]]),
        beta0=np.array([0.5, 0.0]),
        a=np.array([[0.5, 1.0], [-1.0, 0.3]]),
        b=np.array([0.2, -0.3]))
    prompt = {k: v[:n_true_prompts] for k, v in prompt.items()}
  else:
    rng = np.random.default_rng(1234)
    m = rng.normal(size=(2, dim, dim)) * 0.4
    pre = dict(B=(m + np.swapaxes(m, 1, 2)) / 2, c=rng.normal(size=2) * 0.2,
               a=rng.normal(size=(2, dim)), b=rng.normal(size=2) * 0.3)
    beta1 = rng.normal(size=(n_true_prompts, dim))
    beta1 *= 1.4 / np.linalg.norm(beta1, axis=1, keepdims=True)
    prompt = dict(beta1=beta1, beta0=rng.normal(size=n_true_prompts) * 0.3,
                  a=rng.normal(size=(n_true_prompts, dim)),
                  b=rng.normal(size=n_true_prompts) * 0.3)
  return dict(pretrained=pre, prompt=prompt)


# ----------------------------------------------------------------------------------------------
# The MoE regression function


def prompt_scores(x: jax.Array, prompt: Params, gate: str, alpha: float,
                  tau: float) -> jax.Array:
  """Gate scores [n, L] of the prompt experts: linear, or NoRGa's non-linear residual gate."""
  z = x @ prompt['beta1'].T
  if gate == 'norga':
    z = z + alpha * jnp.tanh(tau * z)
  elif gate != 'linear':
    raise ValueError(f'unknown gate {gate!r}')
  return z + prompt['beta0']


def expert_outputs(x: jax.Array, a: jax.Array, b: jax.Array, expert: str) -> jax.Array:
  """h(x, (a, b)) for every expert: [n, d] x [E, d] x [E] -> [n, E]."""
  pre = x @ a.T + b
  if expert == 'linear':
    return pre
  if expert == 'gelu':
    return jax.nn.gelu(pre, approximate=False)
  raise ValueError(f'unknown expert {expert!r}')


def pretrained_summary(x: jax.Array, pretrained: Params, expert: str):
  """The fixed pre-trained part, reduced to two numbers per input.

  Returns (log T0(x), m0(x)) with T0 the sum of the pre-trained gate exponentials and m0 their
  gate-weighted expert average; softmax([log T0, s_1..s_L]) . [m0, h_1..h_L] equals the full
  softmax over all N + L experts.  Fits compute it once instead of at every loss evaluation.
  """
  quad = jnp.einsum('ni,jik,nk->nj', x, pretrained['B'], x) + pretrained['c']
  h0 = expert_outputs(x, pretrained['a'], pretrained['b'], expert)
  return jax.nn.logsumexp(quad, axis=1), jnp.sum(jax.nn.softmax(quad, axis=1) * h0, axis=1)


def moe_from_summary(x: jax.Array, summary, prompt: Params, gate: str, expert: str,
                     alpha: float, tau: float) -> jax.Array:
  """g_G(x) given `pretrained_summary(x, ...)`."""
  log_t0, m0 = summary
  scores = jnp.concatenate([log_t0[:, None], prompt_scores(x, prompt, gate, alpha, tau)], 1)
  experts = jnp.concatenate([m0[:, None], expert_outputs(x, prompt['a'], prompt['b'], expert)],
                            axis=1)
  # softmax == exp(score) / T(x), computed stably.
  return jnp.sum(jax.nn.softmax(scores, axis=1) * experts, axis=1)


def moe_regression(x: jax.Array, pretrained: Params, prompt: Params, gate: str, expert: str,
                   alpha: float, tau: float) -> jax.Array:
  """g_G(x) for a batch x [n, d]: softmax over all gate scores, times the experts."""
  return moe_from_summary(x, pretrained_summary(x, pretrained, expert), prompt, gate, expert,
                          alpha, tau)


def sample_inputs(key: jax.Array, n: int, cfg: SimConfig, dtype=jnp.float32) -> jax.Array:
  """X ~ Uniform([-r, r]^d), the input measure mu."""
  return jax.random.uniform(key, (n, cfg.dim), dtype, -cfg.input_radius, cfg.input_radius)


def sample_data(key: jax.Array, n: int, truth: Dict[str, Params], model: Tuple[str, str],
                cfg: SimConfig, dtype=jnp.float32):
  """(X, Y) with X ~ mu and Y = g_{G*}(X) + N(0, noise_std^2)."""
  kx, ky = jax.random.split(key)
  x = sample_inputs(kx, n, cfg, dtype)
  tr = _as_jnp(truth, dtype)
  y = moe_regression(x, tr['pretrained'], tr['prompt'], *model, cfg.alpha, cfg.tau)
  return x, y + cfg.noise_std * jax.random.normal(ky, (n,), dtype)


def _as_jnp(tree, dtype):
  """A pytree of arrays (e.g. `make_truth`'s numpy numbers) as jnp arrays of dtype."""
  return jax.tree_util.tree_map(lambda v: jnp.asarray(v, dtype), tree)


# ----------------------------------------------------------------------------------------------
# Voronoi loss


def voronoi_loss(fit: Params, true: Params) -> jax.Array:
  """The Voronoi-type loss L1(G, G*) of Theorem 4.3 between two sets of prompt experts.

  Each fitted atom i (parameters omega_i = (beta1_i, a_i, b_i)) goes to the Voronoi cell A_j of
  its nearest true atom.  With Delta beta1_ij = beta1_i - beta1*_j and Delta eta_ij likewise
  for eta = (a, b):

    L1 = sum_{j: |A_j| > 1} sum_{i in A_j} exp(beta0_i) (|Delta beta1_ij|^2 + |Delta eta_ij|^2)
       + sum_{j: |A_j| = 1} sum_{i in A_j} exp(beta0_i) (|Delta beta1_ij|   + |Delta eta_ij|)
       + sum_j | sum_{i in A_j} exp(beta0_i) - exp(beta0*_j) |.

  Atoms in over-specified cells are charged squared distances because they can only be
  estimated at the square root of the rate of exactly-specified ones; the last term compares
  the gate masses.  This is the form used throughout this line of work on softmax-gated MoE
  (Nguyen, Ho et al.); the constants of the paper's own appendix were not checked against it.
  Works on jnp or np arrays, and can be jitted and vmapped.
  """
  omega_fit = jnp.concatenate([fit['beta1'], fit['a'], fit['b'][:, None]], axis=1)
  omega_true = jnp.concatenate([true['beta1'], true['a'], true['b'][:, None]], axis=1)
  cell = jnp.argmin(jnp.sum((omega_fit[:, None] - omega_true[None]) ** 2, -1), axis=1)
  onehot = jax.nn.one_hot(cell, omega_true.shape[0], dtype=omega_fit.dtype)  # [L', L*]
  count = jnp.sum(onehot, axis=0)
  d_beta1 = jnp.linalg.norm(fit['beta1'] - true['beta1'][cell], axis=1)
  d_eta = jnp.linalg.norm(
      jnp.concatenate([fit['a'] - true['a'][cell], (fit['b'] - true['b'][cell])[:, None]], 1),
      axis=1)
  weight = jnp.exp(fit['beta0'])
  over = count[cell] > 1
  per_atom = jnp.where(over, d_beta1 ** 2 + d_eta ** 2, d_beta1 + d_eta)
  mass = jnp.abs(onehot.T @ weight - jnp.exp(true['beta0']))
  return jnp.sum(weight * per_atom) + jnp.sum(mass)


# ----------------------------------------------------------------------------------------------
# Least-squares fitting


def initial_params(key: jax.Array, true: Params, n_fit: int, scale: float,
                   dtype=jnp.float32) -> Params:
  """One optimiser start: fitted atom i perturbs true atom i mod L* by N(0, scale^2).

  Starting in a neighbourhood of the truth, as the simulations of this line of work do, keeps
  the comparison about the statistical rate rather than about which basin a random start
  finds; scale = 0.5 is of the order of the parameters themselves, so the optimiser still has
  to travel.  Atoms sharing a true atom split its gate mass (beta0* - log(count)).
  """
  l_true = true['beta1'].shape[0]
  idx = np.arange(n_fit) % l_true
  share = np.log(np.bincount(idx, minlength=l_true)[idx])
  base = dict(beta1=np.asarray(true['beta1'])[idx],
              beta0=np.asarray(true['beta0'])[idx] - share,
              a=np.asarray(true['a'])[idx], b=np.asarray(true['b'])[idx])
  keys = jax.random.split(key, len(base))
  return {k: jnp.asarray(v, dtype) + scale * jax.random.normal(kk, np.shape(v), dtype)
          for kk, (k, v) in zip(keys, sorted(base.items()))}


def lbfgs_fit(params: Params, x: jax.Array, y: jax.Array, weight: jax.Array,
              pretrained: Params, model: Tuple[str, str], alpha: float, tau: float,
              n_steps: int, bound: float = 5.0):
  """Minimise the mean squared error from one start with optax's L-BFGS (zoom line search).

  weight [n] is 1 on real samples and 0 on padding.  The parameters are confined to
  [-bound, bound] through theta = bound * tanh(phi / bound), and L-BFGS runs on phi: a smooth
  change of variables keeps the quasi-Newton updates consistent where clipping would not, and
  near the truth (|theta| <= ~1.5) it barely bends the landscape.  Returns the final
  parameters and their training loss (inf if it is not finite).
  """
  summary = pretrained_summary(x, pretrained, model[1])
  total = jnp.sum(weight)
  to_box = lambda phi: jax.tree_util.tree_map(lambda v: bound * jnp.tanh(v / bound), phi)

  def loss_fn(phi):
    resid = y - moe_from_summary(x, summary, to_box(phi), *model, alpha, tau)
    return jnp.sum(weight * resid ** 2) / total

  params = jax.tree_util.tree_map(
      lambda v: bound * jnp.arctanh(jnp.clip(v / bound, -0.99, 0.99)), params)

  opt = optax.lbfgs(memory_size=10,
                    linesearch=optax.scale_by_zoom_linesearch(max_linesearch_steps=20))
  value_and_grad = optax.value_and_grad_from_state(loss_fn)

  def step(carry, _):
    p, state = carry
    value, grad = value_and_grad(p, state=state)
    updates, new_state = opt.update(grad, state, p, value=value, grad=grad, value_fn=loss_fn)
    new_p = optax.apply_updates(p, updates)
    # A start that ran into NaNs (e.g. an overflowing exp) stays at its last finite iterate.
    ok = jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in jax.tree_util.tree_leaves(new_p)]))
    keep = lambda new, old: jnp.where(ok, new, old)
    return (jax.tree_util.tree_map(keep, new_p, p),
            jax.tree_util.tree_map(keep, new_state, state)), None

  (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), None, length=n_steps)
  final = loss_fn(params)
  return to_box(params), jnp.where(jnp.isfinite(final), final, jnp.inf)


@functools.lru_cache(maxsize=None)
def make_fitter(model: Tuple[str, str], alpha: float, tau: float, n_steps: int,
                batch_size: int, bound: float = 5.0) -> Callable:
  """A jitted least-squares fit of S data sets from R starts each.

  Returns f(starts [S, R, ...], x [S, n, d], y [S, n], weight [S, n], pretrained) ->
  (best params [S, ...], best training loss [S]).  The S * R fits go through `lax.map` in
  vmapped chunks of batch_size; per data set the start with the smallest training loss is
  kept.  Cached, so that equal shapes reuse one compilation.
  """

  def fit_one(args):
    p, x, y, w, pre = args
    return lbfgs_fit(p, x, y, w, pre, model, alpha, tau, n_steps, bound)

  def fit_all(starts, x, y, weight, pre):
    s, r = x.shape[0], jax.tree_util.tree_leaves(starts)[0].shape[1]
    flat = jax.tree_util.tree_map(lambda v: v.reshape((s * r,) + v.shape[2:]), starts)
    # Each start carries its own copy of the index into the data, not of the data.
    idx = jnp.repeat(jnp.arange(s), r)
    params, losses = jax.lax.map(
        lambda a: fit_one((a[0], x[a[1]], y[a[1]], weight[a[1]], pre)), (flat, idx),
        batch_size=batch_size)
    params = jax.tree_util.tree_map(lambda v: v.reshape((s, r) + v.shape[1:]), params)
    losses = losses.reshape(s, r)
    best = jnp.argmin(losses, axis=1)
    pick = lambda v: jnp.take_along_axis(v, best.reshape((s, 1) + (1,) * (v.ndim - 2)), 1)[:, 0]
    return jax.tree_util.tree_map(pick, params), jnp.min(losses, axis=1)

  return jax.jit(fit_all)


# ----------------------------------------------------------------------------------------------
# The experiment


def fit_slope(ns: Sequence[float], values) -> float:
  """Least-squares slope of log(value) on log(n), pooling the seeds (values [len(ns), S])."""
  values = np.asarray(values, float)
  if len(set(ns)) < 2:
    return float('nan')
  logn = np.repeat(np.log(np.asarray(ns, float))[:, None], values.shape[1], axis=1)
  keep = np.isfinite(values) & (values > 0)
  return float(np.polyfit(logn[keep], np.log(values[keep]), 1)[0])


def slope_bootstrap_std(ns: Sequence[float], values, n_boot: int = 2000, seed: int = 0) -> float:
  """Standard deviation of `fit_slope` when the seeds (columns of values) are resampled."""
  values = np.asarray(values, float)
  rng = np.random.default_rng(seed)
  cols = rng.integers(0, values.shape[1], size=(n_boot, values.shape[1]))
  return float(np.std([fit_slope(ns, values[:, c]) for c in cols]))


def run_model(model: Tuple[str, str], cfg: SimConfig, truth: Dict[str, Params],
              log: Callable[[str], None] = print) -> dict:
  """All sample sizes and seeds for one (gate, expert) model; errors per (n, seed) and slopes."""
  dtype = jnp.float64 if cfg.x64 else jnp.float32
  tr = _as_jnp(truth, dtype)
  name = model_name(model)
  g_true = jax.jit(lambda x: moe_regression(x, tr['pretrained'], tr['prompt'], *model,
                                            cfg.alpha, cfg.tau))
  g_fit = jax.jit(jax.vmap(
      lambda p, x: moe_regression(x, tr['pretrained'], p, *model, cfg.alpha, cfg.tau),
      in_axes=(0, None)))
  vloss = jax.jit(jax.vmap(voronoi_loss, in_axes=(0, None)))
  # One held-out sample, shared by all fits, for the Monte-Carlo L2(mu) norm.
  x_eval = sample_inputs(jax.random.PRNGKey(10_000), cfg.n_eval, cfg, dtype)
  y_eval = g_true(x_eval)

  out = dict(regression_error=[], parameter_loss=[], train_loss=[], truth_train_loss=[],
             fitted_params=[], seconds=[])
  for n in cfg.ns:
    t0 = time.time()
    # Seed s and size n give their own data and starts, so any subset of seeds is reproducible,
    # and the models see the same inputs and noise.
    keys = [jax.random.fold_in(jax.random.PRNGKey(s), n) for s in range(cfg.n_seeds)]
    data = [sample_data(jax.random.fold_in(k, 0), n, truth, model, cfg, dtype) for k in keys]
    x = jnp.stack([d[0] for d in data])
    y = jnp.stack([d[1] for d in data])
    stack = lambda trees: jax.tree_util.tree_map(lambda *v: jnp.stack(v), *trees)
    starts = stack([
        stack([initial_params(kk, truth['prompt'], cfg.n_fit_prompts, cfg.init_scale, dtype)
               for kk in jax.random.split(jax.random.fold_in(k, 1), cfg.n_restarts)])
        for k in keys])
    n_pad = max(n, cfg.pad_to)
    pad = ((0, 0), (0, n_pad - n))
    batch = int(np.clip(cfg.vmap_points // n_pad, 1, cfg.n_seeds * cfg.n_restarts))
    fitter = make_fitter(tuple(model), cfg.alpha, cfg.tau, cfg.n_steps, batch, cfg.param_bound)
    params, train_loss = fitter(starts, jnp.pad(x, pad + ((0, 0),)), jnp.pad(y, pad),
                                jnp.pad(jnp.ones_like(y), pad), tr['pretrained'])
    reg = jnp.sqrt(jnp.mean((g_fit(params, x_eval) - y_eval) ** 2, axis=1))
    par = vloss(params, tr['prompt'])
    # The training loss at the truth: a least-squares fit should end at or below it, so a
    # positive gap flags an optimisation failure rather than a statistical effect.
    truth_loss = jnp.mean((y - jax.vmap(g_true)(x)) ** 2, axis=1)
    for key, v in (('regression_error', reg), ('parameter_loss', par),
                   ('train_loss', train_loss), ('truth_train_loss', truth_loss)):
      out[key].append([float(t) for t in np.asarray(v)])
    out['fitted_params'].append({k: np.asarray(v).tolist() for k, v in params.items()})
    out['seconds'].append(time.time() - t0)
    log(f'  [{name}] n={n:>6d}  L2 error {np.mean(reg):.2e}  Voronoi loss {np.mean(par):.2e}  '
        f'train loss - truth {np.max(train_loss - truth_loss):+.1e}  '
        f'({out["seconds"][-1]:.1f}s)')
  out['regression_slope'] = fit_slope(cfg.ns, out['regression_error'])
  out['parameter_slope'] = fit_slope(cfg.ns, out['parameter_loss'])
  # How much the slopes move when the seeds are resampled: the uncertainty to quote with them.
  out['regression_slope_std'] = slope_bootstrap_std(cfg.ns, out['regression_error'])
  out['parameter_slope_std'] = slope_bootstrap_std(cfg.ns, out['parameter_loss'])
  # The rates are asymptotic and small n is dominated by stray fitted atoms, so the upper half
  # of the grid gets its own slope too.
  half = len(cfg.ns) // 2
  out['regression_slope_upper'] = fit_slope(cfg.ns[half:], out['regression_error'][half:])
  out['parameter_slope_upper'] = fit_slope(cfg.ns[half:], out['parameter_loss'][half:])
  log(f'  [{name}] slopes: L2 error {out["regression_slope"]:.2f} '
      f'± {out["regression_slope_std"]:.2f} (upper half {out["regression_slope_upper"]:.2f}), '
      f'Voronoi loss {out["parameter_slope"]:.2f} ± {out["parameter_slope_std"]:.2f} '
      f'(upper half {out["parameter_slope_upper"]:.2f})')
  return out


def run_simulation(cfg: SimConfig, log: Callable[[str], None] = print) -> dict:
  """Every model on the same grid; returns a JSON-serialisable dict of every number."""
  truth = make_truth(cfg.dim, cfg.n_true_prompts)
  t0 = time.time()
  # Scoped, so importing this module never switches the rest of the process to float64.
  ctx = jax.enable_x64(True) if cfg.x64 else contextlib.nullcontext()
  results = {}
  with ctx:
    for model in cfg.models:
      log(f'fitting {model_name(model)} (L*={cfg.n_true_prompts}, L\'={cfg.n_fit_prompts}, '
          f'{cfg.n_seeds} seeds x {cfg.n_restarts} starts, {cfg.n_steps} L-BFGS steps)')
      results[model_name(model)] = run_model(tuple(model), cfg, truth, log)
  cfg_dict = dataclasses.asdict(cfg)
  cfg_dict['ns'] = list(cfg.ns)
  cfg_dict['models'] = [list(m) for m in cfg.models]
  return dict(config=cfg_dict,
              truth=jax.tree_util.tree_map(lambda v: np.asarray(v).tolist(), truth),
              models=results, seconds=time.time() - t0)


def summary_table(result: dict) -> str:
  """Markdown table: mean ± std over seeds per n and model, and the fitted log-log slopes."""
  ns = result['config']['ns']
  models = result['models']
  names = list(models)

  def cell(values):
    v = np.asarray(values, float)
    return f'{v.mean():.2e} ± {v.std():.1e}'

  def slope_cell(res, key, with_std):
    text = f'**{res[key]:.2f}**'
    return text + (f' ± {res[key + "_std"]:.2f}' if with_std and key + '_std' in res else '')

  def slope_row(label, suffix):
    keys = ['regression_slope' + suffix, 'parameter_slope' + suffix]
    return (f'| {label} | ' + ' | '.join(slope_cell(models[m], k, not suffix)
                                        for k in keys for m in names) + ' |\n')

  head = ('| n | ' + ' | '.join(f'L2 error, {m}' for m in names) + ' | '
          + ' | '.join(f'Voronoi loss, {m}' for m in names) + ' |\n'
          + '|---:' * (1 + 2 * len(names)) + '|\n')
  rows = ''.join(
      f'| {n} | ' + ' | '.join(cell(models[m]['regression_error'][i]) for m in names) + ' | '
      + ' | '.join(cell(models[m]['parameter_loss'][i]) for m in names) + ' |\n'
      for i, n in enumerate(ns))
  upper = ns[len(ns) // 2]
  return (head + rows + slope_row('**slope**, all n', '')
          + slope_row(f'**slope**, n ≥ {upper}', '_upper'))
