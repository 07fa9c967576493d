"""HiDe-Prompt on Split CUB-200 (10 tasks) with the references' hyper-parameters (ALGORITHMS.md 9.1).

  python -m cljax.main --config=configs/cub_hideprompt.py[:BACKBONE] --workdir=DIR

BACKBONE is a paper name (sup21k, ibot21k, ...; default sup21k); the weights file is looked up
as config.backbone.weights_dir/<reference file name> unless --config.backbone.weights is given.
"""

from cljax import config as config_lib


def get_config(backbone: str = 'sup21k'):
  return config_lib.paper('cub', 'hideprompt', backbone)
