"""Tests of the linear-vs-NoRGa sample-efficiency simulation (cljax.theory.gating_simulation)."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cljax.theory import gating_simulation as gs


def _numpy_moe(x, truth, gate, expert, alpha, tau):
  """g_{G*}(x) for one input, written out term by term from the paper's formula."""
  pre, prompt = truth['pretrained'], truth['prompt']

  def h(a, b):
    z = float(np.dot(a, x) + b)
    # GELU(z) = z * Phi(z), with the exact normal CDF.
    return z if expert == 'linear' else z * 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))

  numer = denom = 0.0
  for j in range(len(pre['c'])):
    e = math.exp(float(x @ pre['B'][j] @ x + pre['c'][j]))
    numer += e * h(pre['a'][j], pre['b'][j])
    denom += e
  for j in range(len(prompt['beta0'])):
    z = float(np.dot(prompt['beta1'][j], x))
    s = z + (alpha * math.tanh(tau * z) if gate == 'norga' else 0.0) + prompt['beta0'][j]
    e = math.exp(s)
    numer += e * h(prompt['a'][j], prompt['b'][j])
    denom += e
  return numer / denom


@pytest.mark.parametrize('gate,expert', [('norga', 'gelu'), ('linear', 'linear'),
                                         ('norga', 'linear'), ('linear', 'gelu')])
def test_generator_matches_numpy_formula(gate, expert):
  # Noise-free data are g_{G*}(X) itself; alpha and tau off their defaults so a mix-up shows.
  cfg = gs.SimConfig(noise_std=0.0, alpha=0.7, tau=1.3)
  truth = gs.make_truth(2, n_true_prompts=2)
  x, y = gs.sample_data(jax.random.PRNGKey(3), 5, truth, (gate, expert), cfg)
  want = [_numpy_moe(np.asarray(xi, float), truth, gate, expert, 0.7, 1.3) for xi in x]
  np.testing.assert_allclose(np.asarray(y), want, rtol=1e-5, atol=1e-6)
  # The summary used by the fits gives the same function as the full softmax.
  tr = gs._as_jnp(truth, jnp.float32)
  summary = gs.pretrained_summary(x, tr['pretrained'], expert)
  np.testing.assert_allclose(
      gs.moe_from_summary(x, summary, tr['prompt'], gate, expert, 0.7, 1.3), want, rtol=1e-5,
      atol=1e-6)


def test_norga_gate_score_by_hand():
  prompt = dict(beta1=np.array([[1.0, -2.0]]), beta0=np.array([0.25]), a=np.zeros((1, 2)),
                b=np.zeros(1))
  x = np.array([[0.5, 0.1]])
  z = 0.5 - 0.2
  got = gs.prompt_scores(jnp.asarray(x), prompt, 'norga', alpha=2.0, tau=3.0)
  assert float(got[0, 0]) == pytest.approx(z + 2.0 * math.tanh(3.0 * z) + 0.25, rel=1e-6)
  got = gs.prompt_scores(jnp.asarray(x), prompt, 'linear', alpha=2.0, tau=3.0)
  assert float(got[0, 0]) == pytest.approx(z + 0.25, rel=1e-6)


def test_voronoi_loss_zero_at_truth_and_positive_elsewhere():
  true = gs.make_truth(2, n_true_prompts=2)['prompt']
  assert float(gs.voronoi_loss(true, true)) == pytest.approx(0.0, abs=1e-7)
  key = jax.random.PRNGKey(0)
  for i in range(5):
    fit = gs.initial_params(jax.random.fold_in(key, i), true, n_fit=3, scale=0.3)
    assert float(gs.voronoi_loss(fit, true)) > 0.0
  # Splitting a true atom into two equal halves at the same place costs nothing...
  half = {k: np.repeat(v[:1], 2, axis=0) for k, v in true.items()}
  half['beta0'] = half['beta0'] - math.log(2.0)
  one = {k: v[:1] for k, v in true.items()}
  assert float(gs.voronoi_loss(half, one)) == pytest.approx(0.0, abs=1e-6)
  # ...but a wrong total mass does.
  half['beta0'] = half['beta0'] + 0.1
  assert float(gs.voronoi_loss(half, one)) > 0.1


def test_voronoi_loss_by_hand():
  # d = 1.  True atoms: omega*_1 = (beta1, a, b) = (1, 0, 0) with mass e^0 = 1, and
  # omega*_2 = (-1, 0, 0) with mass e^1.
  true = dict(beta1=np.array([[1.0], [-1.0]]), beta0=np.array([0.0, 1.0]),
              a=np.array([[0.0], [0.0]]), b=np.array([0.0, 0.0]))
  # Fitted atoms 1, 2 go to cell 1 (over-specified: squared distances), atom 3 to cell 2
  # (exactly specified: plain distances).
  fit = dict(beta1=np.array([[1.1], [0.8], [-1.0]]),
             beta0=np.log(np.array([0.5, 0.25, 2.0])),
             a=np.array([[0.0], [0.3], [0.0]]),
             b=np.array([0.0, 0.0, 0.4]))
  cell_1 = 0.5 * (0.1 ** 2) + 0.25 * (0.2 ** 2 + 0.3 ** 2)     # 0.005 + 0.0325
  cell_2 = 2.0 * (0.0 + 0.4)                                   # |dbeta1| + |deta|
  masses = abs(0.5 + 0.25 - 1.0) + abs(2.0 - math.e)
  want = cell_1 + cell_2 + masses
  assert float(gs.voronoi_loss(fit, true)) == pytest.approx(want, rel=1e-5)
  # The same numbers in numpy arrays or jnp arrays, jitted.
  got = jax.jit(gs.voronoi_loss)(gs._as_jnp(fit, jnp.float32), gs._as_jnp(true, jnp.float32))
  assert float(got) == pytest.approx(want, rel=1e-5)


def test_fit_slope_recovers_power_law():
  ns = np.array([100, 1000, 10000])
  values = np.stack([3.0 * ns ** -0.5, 5.0 * ns ** -0.5], axis=1)
  assert gs.fit_slope(ns, values) == pytest.approx(-0.5, abs=1e-9)
  # Every seed on the same power law: resampling seeds cannot move the slope.
  assert gs.slope_bootstrap_std(ns, values, n_boot=50) == pytest.approx(0.0, abs=1e-9)


def test_small_run_completes_with_finite_slopes():
  # The --size small configuration, trimmed to two sample sizes (which share one compiled fit
  # per model, being padded to the same size) and shorter fits; the script runs the full one.
  cfg = gs.config_for_size('small', ns=(100, 400), n_steps=40)
  lines = []
  result = gs.run_simulation(cfg, log=lines.append)
  assert set(result['models']) == {'norga+gelu', 'linear+gelu'}
  for res in result['models'].values():
    assert np.isfinite(res['regression_slope']) and np.isfinite(res['parameter_slope'])
    assert np.all(np.isfinite(res['regression_error']))
    # The L2 error must shrink from n = 100 to n = 400 (noise 0.1, so it is ~1e-2 at best).
    assert np.mean(res['regression_error'][1]) < np.mean(res['regression_error'][0])
  table = gs.summary_table(result)
  assert table.count('\n') == 2 + len(cfg.ns) + 2 and '**slope**, all n' in table
  assert any('slopes' in line for line in lines)


def test_large_n_fit_recovers_norga_truth():
  # Exactly specified NoRGa (one fitted prompt expert for one true one): parameters are
  # estimated at the parametric rate, so with n = 20000 and noise 0.1 every parameter should be
  # within a few hundredths of the truth, from a start 0.5 away (errors are ~0.01 here).
  cfg = dataclasses.replace(gs.SimConfig(), models=(('norga', 'gelu'),), n_fit_prompts=1,
                            ns=(20000,), n_seeds=1, n_restarts=1, n_steps=60)
  truth = gs.make_truth(cfg.dim, cfg.n_true_prompts)
  with jax.enable_x64(True):
    tr = gs._as_jnp(truth, jnp.float64)
    x, y = gs.sample_data(jax.random.PRNGKey(7), 20000, truth, ('norga', 'gelu'), cfg,
                          jnp.float64)
    starts = jax.tree_util.tree_map(lambda *v: jnp.stack(v)[None], *[
        gs.initial_params(jax.random.PRNGKey(k), truth['prompt'], 1, 0.5, jnp.float64)
        for k in range(1)])
    fitter = gs.make_fitter(('norga', 'gelu'), cfg.alpha, cfg.tau, cfg.n_steps, batch_size=1)
    params, _ = fitter(starts, x[None], y[None], jnp.ones((1, len(y))), tr['pretrained'])
    fit = {k: np.asarray(v[0]) for k, v in params.items()}
    for k in ('beta1', 'beta0', 'a', 'b'):
      np.testing.assert_allclose(fit[k], truth['prompt'][k], atol=0.05, err_msg=k)
    assert float(gs.voronoi_loss(fit, truth['prompt'])) < 0.1
    x_eval = gs.sample_inputs(jax.random.PRNGKey(8), 5000, cfg, jnp.float64)
    err = jnp.sqrt(jnp.mean((gs.moe_regression(x_eval, tr['pretrained'],
                                               gs._as_jnp(fit, jnp.float64), 'norga', 'gelu',
                                               1.0, 1.0)
                             - gs.moe_regression(x_eval, tr['pretrained'], tr['prompt'],
                                                 'norga', 'gelu', 1.0, 1.0)) ** 2))
    assert float(err) < 5e-3
