"""DualPrompt on Split ImageNet-R (10 tasks) with the references' hyper-parameters (cljax/config/tables.py: baseline).

  python -m cljax.main --config=configs/imr_dualprompt.py[:BACKBONE] --workdir=DIR
"""

from cljax import config as config_lib


def get_config(backbone: str = 'sup21k'):
  return config_lib.paper('imr', 'dualprompt', backbone)
