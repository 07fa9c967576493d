"""SMoPE against the PyTorch oracle (eval with a usage history, training with noise, the losses)
and its bookkeeping on hand-computed cases."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from cljax import config as config_lib
from cljax import methods as methods_lib
from cljax.checkpoints import backbones, torch_names
from cljax.models.vit import ViTConfig
from cljax_testing.torch_oracle import SmopeViT, rel_err

CFG = ViTConfig(embed_dim=64, depth=3, num_heads=4, patch_size=8, image_size=32)
IMAGES = np.random.RandomState(0).rand(6, 32, 32, 3).astype(np.float32)
LABELS = np.array([2, 3, 2, 3, 2, 3])
TASK_MASK = np.isin(np.arange(10), [2, 3])
FWD = 1e-5


def pair(eval_counts='saved'):
  c = config_lib.demo('smope')
  c.prompt.update(layers=(0, 1), length=12, experts_top_k=2, noise_eps=0.4, mu_router=0.3,
                  mu_router_old=0.2, smope_eval_counts=eval_counts)
  method = methods_lib.build(c, CFG, 10, 5)
  torch.manual_seed(0)
  model = SmopeViT(expert_layers=(0, 1), experts=6, top_k=2, eps=0.4, dim=64, depth=3, heads=4,
                   patch=8, image=32, num_classes=10)
  sd = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
  # The oracle's stacked experts map onto cljax's prompts/experts/{keys,values}.
  sd['experts.keys'], sd['experts.values'] = sd.pop('keys'), sd.pop('values')
  template = {'backbone': backbones.template(CFG), **jax.eval_shape(method.init, jax.random.PRNGKey(0))}
  params = torch_names.from_state_dict(sd, template)
  return c, method, model, params


def history():
  rng = np.random.default_rng(3)
  freq = rng.integers(0, 4, (2, 4, 6)).astype(np.int32)
  freq[:, :, 0] = 0                          # some never-used experts
  frequent = rng.random((2, 4, 6)) < 0.4
  return freq, frequent


@pytest.mark.parametrize('eval_counts', ['saved', 'reference'])
def test_eval_logits_with_a_usage_history(eval_counts):
  c, method, model, params = pair(eval_counts)
  freq, frequent = history()
  state = {**method.init_state(), 'freq': freq, 'frequent': frequent}
  trainable = {k: v for k, v in params.items() if k != 'backbone'}
  logits, _ = jax.jit(method.predict)(trainable, state, params['backbone'], IMAGES, jnp.zeros(6, jnp.int32),
                                      jnp.ones(6, bool))
  noise = np.where(freq == 0, 2.0, 0.0) if eval_counts == 'saved' else np.full(freq.shape, 2.0)
  ref, _ = model(torch.from_numpy(IMAGES).permute(0, 3, 1, 2), torch.from_numpy(noise).float())
  assert rel_err(logits, ref.detach().numpy()) < FWD


def test_train_logits_and_losses_with_noise():
  c, method, model, params = pair()
  freq, frequent = history()
  old_keys = np.asarray(params['prompts']['experts']['keys']) + 0.05 * np.random.default_rng(1).standard_normal((2, 6, 4, 16)).astype(np.float32)
  state = {**method.init_state(), 'freq': freq, 'frequent': frequent, 'old_keys': old_keys}
  trainable = {k: v for k, v in params.items() if k != 'backbone'}
  context = {'task_mask': jnp.asarray(TASK_MASK)}
  loss, m = jax.jit(method.loss)(trainable, state, params['backbone'], IMAGES, LABELS, jnp.ones(6, bool),
                                 jnp.int32(1), context)
  x = torch.from_numpy(IMAGES).permute(0, 3, 1, 2)
  logits, scores = model(x, torch.from_numpy(np.where(frequent, 0.4, 0.0)).float())
  ce = torch.nn.functional.cross_entropy(logits.masked_fill(~torch.from_numpy(TASK_MASK), float('-inf')),
                                         torch.from_numpy(LABELS))
  router = model.router_loss(scores, 1.0)
  proto = model.prototype_loss(torch.from_numpy(old_keys), torch.from_numpy(frequent), 1.0)
  assert float(m['ce']) == pytest.approx(ce.item(), rel=FWD)
  assert float(m['router']) == pytest.approx(router.item(), rel=FWD)
  assert float(m['prototype']) == pytest.approx(proto.item(), rel=FWD)
  assert float(loss) == pytest.approx(ce.item() + 0.3 * router.item() + 0.2 * proto.item(), rel=FWD)


def test_dense_warmup_uses_every_expert():
  c, method, model, params = pair()
  state = method.init_state()
  trainable = {k: v for k, v in params.items() if k != 'backbone'}
  context = {'task_mask': jnp.asarray(TASK_MASK)}
  loss, m = jax.jit(method.loss, static_argnames=('dense',))(
      trainable, state, params['backbone'], IMAGES, LABELS, jnp.ones(6, bool), jnp.int32(0), context, dense=True)
  logits, _ = model(torch.from_numpy(IMAGES).permute(0, 3, 1, 2), torch.zeros(2, 4, 6), dense=True)
  ce = torch.nn.functional.cross_entropy(logits.masked_fill(~torch.from_numpy(TASK_MASK), float('-inf')),
                                         torch.from_numpy(LABELS))
  assert float(loss) == pytest.approx(ce.item(), rel=FWD) and 'router' not in m
  assert [p.name for p in method.training_phases(0, 20)] == ['dense', 'train']
  assert method.training_phases(0, 20)[0].epochs == 10 and len(method.training_phases(1, 20)) == 1


def test_frequent_experts_marked_at_task_start():
  c, method, _, params = pair()
  state = method.init_state()
  freq = np.zeros((2, 4, 6), np.int32)
  freq[0, 0] = [3, 0, 1, 5, 0, 0]            # mean over used experts = 9 / 3 = 3
  state['freq'] = freq
  _, new = method.begin_task(params, state, 1)
  assert np.asarray(new['frequent'])[0, 0].tolist() == [True, False, False, True, False, False]
  # A head without counts: its mean is 0 (sum / max(1, 0)) and 0 >= 0 marks every expert, as
  # the reference's `freq >= freq_head_mean` does.
  assert np.asarray(new['frequent'])[1].all()
  np.testing.assert_array_equal(new['old_keys'], params['prompts']['experts']['keys'])
  # Never reset: a later task keeps earlier marks even if counts would not mark them.
  new['freq'] = np.asarray(new['freq']) * 0 + 10
  _, later = method.begin_task(params, new, 2)
  assert np.asarray(later['frequent']).all()


def test_usage_count_pass_counts_raw_top_k_of_full_batches():
  c, method, model, params = pair()
  trainable = {k: v for k, v in params.items() if k != 'backbone'}
  state = method.init_state()
  batches = [(IMAGES, np.ones(6, bool)), (IMAGES, np.array([1, 1, 1, 0, 0, 0], bool))]

  def run_pass(fn, carry, p, s):
    for images, mask in batches:
      carry = fn(p, s, params['backbone'], images, mask, carry)
    return carry
  new = method.after_training(trainable, state, 0, run_pass)
  # One full batch of 6 examples x top-2 per head; the partial batch is not counted.
  freq = np.asarray(new['freq'])
  assert freq.sum(-1).tolist() == [[12] * 4, [12] * 4]
  _, scores = model(torch.from_numpy(IMAGES).permute(0, 3, 1, 2), torch.full((2, 4, 6), 2.0))
  top = torch.topk(scores[0][0], 2, dim=-1).indices           # layer 0 raw scores [B, H, 1, K]
  expected = np.zeros((4, 6), int)
  for b in range(6):
    for h in range(4):
      expected[h, top[b, h, 0].numpy()] += 1
  assert freq[0].tolist() == expected.tolist()
