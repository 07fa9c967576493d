"""CODA-Prompt (the SMoPE repository's version) on Split CIFAR-100 (10 tasks) with the references' hyper-parameters (cljax/config/tables.py: baseline).

  python -m cljax.main --config=configs/cifar100_coda.py[:BACKBONE] --workdir=DIR
"""

from cljax import config as config_lib


def get_config(backbone: str = 'sup21k'):
  return config_lib.paper('cifar100', 'coda', backbone)
