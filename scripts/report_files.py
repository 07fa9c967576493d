"""The one writer of the benchmark scripts' results (`benchmark.py`, `end_to_end.py`):
OUT_DIR/NAME.md, the table README quotes, and OUT_DIR/NAME.json, its numbers with the machine,
date, versions and command that made them. NAME ends with the device (`device_name`), so runs on
different machines sit side by side in benchmarks/.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import sys


def cpu_vector_isa() -> str:
  """'avx512', 'avx2' or '' from /proc/cpuinfo: machines of the same core count differ 2-4x in
  matmul peak by it (390 vs 135 GFLOP/s on the 2-core hosts measured), so reports name it."""
  try:
    with open('/proc/cpuinfo') as f:
      flags = next((line.split(':', 1)[1].split() for line in f if line.startswith('flags')), [])
  except OSError:
    return ''
  return 'avx512' if 'avx512f' in flags else 'avx2' if 'avx2' in flags else ''


def device_name() -> str:
  """'cpu-<N>cores[-<isa>]' on a CPU, else the accelerator's kind, e.g. 'nvidia-h200'."""
  import jax  # pylint: disable=g-import-not-at-top
  d = jax.devices()[0]
  if d.platform == 'cpu':
    isa = cpu_vector_isa()
    return f'cpu-{os.cpu_count()}cores' + (f'-{isa}' if isa else '')
  return d.device_kind.replace(' ', '-').lower()


def version(name: str) -> str:
  try:
    return importlib.metadata.version(name)
  except importlib.metadata.PackageNotFoundError:
    return 'not installed'


def write(out_dir: str, name: str, text: str, record: dict, argv=None) -> str:
  """Write NAME.md (``text``) and NAME.json (``record`` with device, date, versions, core count
  and the command line) into ``out_dir``; returns the .md path."""
  os.makedirs(out_dir, exist_ok=True)
  md = os.path.join(out_dir, name + '.md')
  with open(md, 'w') as f:
    f.write(text + '\n')
  script = os.path.relpath(os.path.abspath(sys.argv[0]), os.getcwd()) if sys.argv and sys.argv[0] else ''
  common = {'device': device_name(), 'date': datetime.date.today().isoformat(),
            'jax': version('jax'), 'jaxlib': version('jaxlib'), 'torch': version('torch'),
            'cpu_count': os.cpu_count(),
            'command': ' '.join(['python', script] + list(sys.argv[1:] if argv is None else argv))}
  with open(os.path.join(out_dir, name + '.json'), 'w') as f:
    json.dump({**common, **record}, f, indent=1)
  return md
