"""SMoPE on Split ImageNet-R with 20 tasks, the SMoPE repository's hyper-parameters.

  python -m cljax.main --config=configs/imr20_smope.py --workdir=DIR [--config.seed=0..4]
"""

from cljax import config as config_lib


def get_config():
  return config_lib.smope('imr', 20)
