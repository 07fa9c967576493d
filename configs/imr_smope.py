"""SMoPE on Split-ImageNet-R (10 tasks) with the SMoPE repository's hyper-parameters (cljax/config/tables.py: smope).

  python -m cljax.main --config=configs/imr_smope.py --workdir=DIR [--config.seed=0..4]
"""

from cljax import config as config_lib


def get_config():
  return config_lib.smope('imr', 10)
