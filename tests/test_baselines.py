"""L2P, DualPrompt, S-Prompt and CODA-Prompt against the PyTorch oracle, and their mechanics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from cljax import config as config_lib
from cljax import methods as methods_lib
from cljax.checkpoints import backbones, torch_names
from cljax.methods import coda, keyed
from cljax.models.vit import ViTConfig
from cljax_testing.torch_oracle import CodaViT, KeyedPromptedViT, rel_err

CFG = ViTConfig(embed_dim=64, depth=4, num_heads=4, patch_size=8, image_size=32)
FWD = 1e-5
IMAGES = np.random.RandomState(0).rand(6, 32, 32, 3).astype(np.float32)
LABELS = np.array([2, 3, 2, 3, 2, 3])


def oracle_kwargs(c, num_classes):
  return dict(dim=CFG.embed_dim, depth=CFG.depth, heads=CFG.num_heads, patch=CFG.patch_size,
              image=CFG.image_size, num_classes=num_classes)


def to_cljax(model, method):
  torch.manual_seed(0)
  sd = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
  template = {'backbone': backbones.template(CFG),
              **jax.eval_shape(method.init, jax.random.PRNGKey(0))}
  return torch_names.from_state_dict(sd, template)


def keyed_pair(name, batchwise=False):
  c = config_lib.demo(name)
  c.prompt.batchwise_prompt = batchwise
  method = methods_lib.build(c, CFG, 10, 5)
  p = c.prompt
  torch.manual_seed(0)
  model = KeyedPromptedViT(
      top_k=p.top_k, batchwise=batchwise, g_layers=tuple(p.g_layers) if name == 'dualprompt' else (),
      g_length=p.g_length, force_task_entry=name != 'l2p', prompt_layers=tuple(p.layers),
      pool=p.pool_size, length=p.length, prefix=name != 'l2p', **oracle_kwargs(c, 10))
  with torch.no_grad():   # keys near some queries, so the selection is not a coin toss
    model.e_prompt.prompt_key.normal_()
  return c, method, model, to_cljax(model, method)


@pytest.mark.parametrize('name,batchwise', [('l2p', True), ('l2p', False), ('dualprompt', False),
                                            ('dualprompt', True), ('sprompt', False), ('sprompt', True)])
def test_keyed_methods_match_the_oracle(name, batchwise):
  c, method, model, params = keyed_pair(name, batchwise)
  trainable = {k: v for k, v in params.items() if k != 'backbone'}
  mask = jnp.ones(6, bool)
  logits, idx = jax.jit(method.predict)(trainable, {}, params['backbone'], IMAGES, jnp.zeros(6, jnp.int32), mask)
  x = torch.from_numpy(IMAGES).permute(0, 3, 1, 2)
  t_logits, t_idx, _ = model(x)
  assert np.array_equal(np.asarray(idx), t_idx.numpy())
  if batchwise:
    assert len(set(map(tuple, np.asarray(idx).tolist()))) == 1
  assert rel_err(logits, t_logits.detach().numpy()) < FWD
  # Training at task 1: forced entries (DualPrompt, S-Prompt) or matching (L2P), masked CE, pull.
  context = {'task_mask': jnp.asarray(np.isin(np.arange(10), [2, 3]))}
  loss, metrics = jax.jit(method.loss)(trainable, {}, params['backbone'], IMAGES, LABELS, mask,
                                       jnp.int32(1), context)
  t_logits, _, t_sim = model(x, task=1)
  masked = t_logits.masked_fill(~torch.from_numpy(np.isin(np.arange(10), [2, 3])), float('-inf'))
  t_loss = torch.nn.functional.cross_entropy(masked, torch.from_numpy(LABELS)) - c.prompt.pull_coeff * t_sim
  assert float(metrics['key_similarity']) == pytest.approx(t_sim.item(), rel=FWD)
  assert float(loss) == pytest.approx(t_loss.item(), rel=FWD, abs=1e-6)


def test_keyed_selection_padding_does_not_vote():
  keys = jnp.asarray(np.eye(4, 8, dtype=np.float32))
  query = jnp.asarray(np.eye(4, 8, dtype=np.float32)[[1, 1, 1, 2, 0, 0]])
  idx, _, _ = keyed.select(keys, query, jnp.array([1, 1, 0, 1, 1, 1], bool), 1, batchwise=True)
  # Real votes: entry 1 twice, 2 once, 0 twice -> tie between 0 and 1 -> the smaller id.
  assert np.asarray(idx).ravel().tolist() == [0] * 6


def test_coda_matches_the_oracle():
  c = config_lib.demo('coda')
  c.prompt.update(layers=(0, 1, 2), pool_size=10, length=4)
  method = methods_lib.build(c, CFG, 10, 5)
  torch.manual_seed(0)
  model = CodaViT(components=10, length=4, num_tasks=5, prompt_layers=(0, 1, 2), **oracle_kwargs(c, 10))
  params = to_cljax(model, method)
  trainable = {k: v for k, v in params.items() if k != 'backbone'}
  x = torch.from_numpy(IMAGES).permute(0, 3, 1, 2)
  for task in (0, 2, 4):
    logits, _ = jax.jit(method.predict)(trainable, {'task': jnp.int32(task)}, params['backbone'],
                                        IMAGES, jnp.zeros(6, jnp.int32), jnp.ones(6, bool))
    ref = model(x, task).detach().numpy()
    assert rel_err(logits, ref) < FWD, task


def test_coda_gram_schmidt_components_and_freezing():
  rng = np.random.default_rng(0)
  rows = np.zeros((10, 3, 16), np.float32)
  rows = coda.gram_schmidt(rows, 0, 2, rng)                 # task 0 of 5
  np.testing.assert_allclose(rows.reshape(10, -1)[:2] @ rows.reshape(10, -1)[:2].T, np.eye(2), atol=1e-6)
  trained = rows.copy()
  trained[:2] *= 3.0                                        # "training" rescales task 0's rows
  rows = coda.gram_schmidt(trained, 2, 4, rng)              # task 1
  flat = rows.reshape(10, -1)
  assert np.array_equal(rows[:2], trained[:2])              # earlier components kept
  assert not flat[4:].any()                                 # later ones zero
  gram = flat[:4] @ flat[:4].T                              # new rows: unit, orthogonal to all before
  np.testing.assert_allclose(gram[2:, 2:], np.eye(2), atol=1e-6)
  np.testing.assert_allclose(gram[2:, :2], 0.0, atol=1e-6)
  # Old components get no gradient in training; the current task's do.
  c = config_lib.demo('coda')
  method = methods_lib.build(c, CFG, 10, 5)
  params = jax.jit(method.init)(jax.random.PRNGKey(0))
  params, state = method.begin_task(params, method.init_state(), 0)
  params, state = method.begin_task(params, state, 1)
  backbone = jax.jit(lambda k: method.model.backbone.init(k, jnp.zeros((1, 32, 32, 3)))['params'])(jax.random.PRNGKey(1))
  context = {'task_mask': jnp.asarray(np.isin(np.arange(10), [2, 3]))}
  grads = jax.grad(lambda p: method.loss(p, state, backbone, IMAGES, LABELS, jnp.ones(6, bool),
                                         jnp.int32(1), context)[0])(params)
  g = np.asarray(grads['prompts']['prompt']['e_p_0'])
  assert np.abs(g[:2]).max() == 0 and np.abs(g[2:4]).max() > 0 and np.abs(g[4:]).max() == 0
  gk = np.asarray(grads['prompts']['prompt']['e_k_0'])
  assert np.isfinite(gk).all() and np.abs(gk[4:]).max() == 0
  ga = np.asarray(grads['prompts']['prompt']['e_a_0'])      # zero rows of later tasks: no NaN
  assert np.isfinite(ga).all() and np.abs(ga[4:]).max() == 0 and np.abs(ga[2:4]).max() > 0


@pytest.mark.parametrize('name', ['l2p', 'sprompt'])
def test_batchwise_vote_also_reports_each_example_own_choice(name):
  """ALGORITHMS.md D1: with the vote on, predict_per_example is the vote-free forward."""
  _, voted, _, params = keyed_pair(name, batchwise=True)
  _, _, own_model, _ = keyed_pair(name, batchwise=False)     # same weights, no vote
  trainable = {k: v for k, v in params.items() if k != 'backbone'}
  args = (trainable, {}, params['backbone'], IMAGES, jnp.zeros(6, jnp.int32), jnp.ones(6, bool))
  logits, idx = jax.jit(voted.predict_per_example)(*args)
  t_logits, t_idx, _ = own_model(torch.from_numpy(IMAGES).permute(0, 3, 1, 2))
  assert np.array_equal(np.asarray(idx), t_idx.numpy())
  assert len(set(map(tuple, np.asarray(idx).tolist()))) > 1      # the vote would have made one
  assert rel_err(logits, t_logits.detach().numpy()) < FWD
  demo_votes = config_lib.demo(name).prompt.batchwise_prompt      # demo: L2P votes, S-Prompt not
  assert (methods_lib.build(config_lib.demo(name), CFG, 10, 5).predict_per_example is not None) == demo_votes


def test_hide_batchwise_vote_and_per_example_prompts():
  c = config_lib.demo('norga')
  c.prompt.batchwise_prompt = True
  voted = methods_lib.build(c, CFG, 10, 5)
  c.prompt.batchwise_prompt = False
  own = methods_lib.build(c, CFG, 10, 5)
  assert own.predict_per_example is None
  params = jax.jit(own.init)(jax.random.PRNGKey(0))
  backbone = jax.jit(lambda k: own.model.backbone.init(k, IMAGES[:1])['params'])(jax.random.PRNGKey(1))
  ids = jnp.array([0, 1, 1, 2, 1, 0], jnp.int32)
  mask = jnp.ones(6, bool)
  logits_own, used_own = own.predict(params, {}, backbone, IMAGES, ids, mask)
  logits_pe, used_pe = voted.predict_per_example(params, {}, backbone, IMAGES, ids, mask)
  logits_vote, used_vote = voted.predict(params, {}, backbone, IMAGES, ids, mask)
  np.testing.assert_array_equal(used_pe, ids)
  np.testing.assert_array_equal(logits_pe, logits_own)
  np.testing.assert_array_equal(used_vote, np.ones(6))          # id 1 has the most votes
  assert not np.allclose(logits_vote, logits_own)
