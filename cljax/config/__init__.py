"""Experiment configs: one schema, shared pieces, the references' hyper-parameters as data.

A run file in ``configs/`` is a few lines: ``get_config()`` calls `paper` (a benchmark x method
x backbone cell of the references' tables) or builds on `base`. Everything a run can set is in
`base`; `validate` checks a finished config before anything is compiled, with one-line messages
that name the key and the fix.

  schema.py   `base` (every key and its default), the names keys may take, reading a config
  tables.py   `paper`, `demo`: the references' cells and the offline demo
  checks.py   `validate`, the numeric ranges, the command line's overrides, protocol warnings
"""

from cljax.errors import ConfigError  # pylint: disable=unused-import  (config_lib.ConfigError)
from cljax.config.schema import (  # pylint: disable=unused-import
    BENCHMARKS, METHODS, SCHEDULES, STATISTICS, STATISTICS_BATCHES, OPTIMIZERS, IMR_SPLITS,
    BACKBONE_ALIASES, base, num_classes, lr_scale, weights_path, to_dict, MATMUL_PRECISIONS,
    matmul_precision, to_json, from_json, differences)
from cljax.config.tables import (  # pylint: disable=unused-import
    paper, demo, demo_baseline, BASELINES, baseline, smope)
from cljax.config.checks import (  # pylint: disable=unused-import
    validate, protocol_warnings, NUMBER_RANGES, check_numbers, tuple_keys, check_overrides,
    suggest_keys, check_key_path, check_schema)
