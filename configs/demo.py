"""The offline demo: NoRGa's two-stage pipeline on Split-Digits with the shipped demo backbone.

  python -m cljax.main --config=configs/demo.py --workdir=workdirs/demo

Split-Digits: scikit-learn's digits, 5 tasks x 2 classes, stratified 70/30 split. Backbone: a
small ViT pretrained on Fashion-MNIST by scripts/pretrain_demo_backbone.py (shipped in
cljax/assets). Runs on a 2-core CPU in a few minutes.
"""

from cljax import config as config_lib


def get_config(arg: str = 'norga'):
  c = config_lib.demo(method=arg or 'norga')
  return c
