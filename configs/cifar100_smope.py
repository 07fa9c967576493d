"""SMoPE on Split-CIFAR-100 (10 tasks) with the SMoPE repository's hyper-parameters (cljax/config/tables.py: smope).

  python -m cljax.main --config=configs/cifar100_smope.py --workdir=DIR [--config.seed=0..4]
"""

from cljax import config as config_lib


def get_config():
  return config_lib.smope('cifar100', 10)
