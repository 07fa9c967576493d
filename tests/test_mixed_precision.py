"""config.dtype='bfloat16': bf16 compute, fp32 master params, fp32 losses; close to fp32."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cljax import config as config_lib
from cljax import methods as methods_lib
from cljax.models.vit import ViTConfig

CFG = ViTConfig(embed_dim=64, depth=4, num_heads=4, patch_size=8, image_size=32)
IMAGES = jnp.asarray(np.random.RandomState(0).rand(6, 32, 32, 3).astype(np.float32))
LABELS = jnp.array([2, 3, 2, 3, 2, 3])


@pytest.mark.parametrize('name', ['norga', 'smope'])
def test_bf16_compute_keeps_fp32_params_and_losses(name):
  out = {}
  for dtype in ('float32', 'bfloat16'):
    c = config_lib.demo(name)
    c.dtype = dtype
    method = methods_lib.build(c, CFG, 10, 5)
    backbone = method.model.backbone.init(jax.random.PRNGKey(1), IMAGES[:1])['params']
    params = method.init(jax.random.PRNGKey(0))
    context = {'task_mask': jnp.asarray(np.isin(np.arange(10), [2, 3])), 'seen_mask': jnp.ones(10, bool),
               'means': jnp.zeros((10, 64)), 'means_valid': jnp.zeros(10, bool)}
    flags = dict(method.training_phases(1, 2)[-1].flags)
    (loss, metrics), grads = jax.jit(jax.value_and_grad(method.loss, has_aux=True), static_argnames=tuple(flags))(
        params, method.init_state(), backbone, IMAGES, LABELS, jnp.ones(6, bool), jnp.int32(1), context, **flags)
    assert loss.dtype == jnp.float32 and metrics['ce'].dtype == jnp.float32
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads))   # fp32 master copies
    out[dtype] = float(loss)
  assert out['bfloat16'] == pytest.approx(out['float32'], rel=2e-2)
