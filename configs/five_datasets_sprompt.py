"""S-Prompt (the HiDe repositories' version) on 5-Datasets (5 tasks) with the references' hyper-parameters (cljax/config/tables.py: baseline).

  python -m cljax.main --config=configs/five_datasets_sprompt.py[:BACKBONE] --workdir=DIR
"""

from cljax import config as config_lib


def get_config(backbone: str = 'sup21k'):
  return config_lib.paper('five_datasets', 'sprompt', backbone)
