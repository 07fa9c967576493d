"""L2P on Split CUB-200 (10 tasks) with the references' hyper-parameters (cljax/config/tables.py: baseline).

  python -m cljax.main --config=configs/cub_l2p.py[:BACKBONE] --workdir=DIR
"""

from cljax import config as config_lib


def get_config(backbone: str = 'sup21k'):
  return config_lib.paper('cub', 'l2p', backbone)
