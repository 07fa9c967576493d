"""Regenerate cljax/data/assets/imagenet_r_split.txt.gz, the CODA-Prompt/SMoPE ImageNet-R split
shipped with cljax (ALGORITHMS.md D3), from the SMoPE repository's YAML lists.

  python scripts/ship_imagenet_r_split.py [FOLDER]   # default ../shared/data/imagenet_r_split

The YAML files (SMoPE `dataloaders/splits/imagenet-r_{train,test}.yaml`, MIT licence) list
`data/imagenet-r/<wnid>/<file>` paths with a class index each; the asset keeps the wnid of each
class index once and, per split and in the listed order, `<class index> <file>` lines
(`cljax.data.imagenet_r_split.read_shipped` reads it back; tests/test_imagenet_r_split.py checks
it equals the YAML entry for entry).
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from cljax.data import imagenet_r_split  # pylint: disable=wrong-import-position


def main():
  folder = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, '..', 'shared', 'data', 'imagenet_r_split')
  lists = imagenet_r_split.read_yaml(folder)
  imagenet_r_split.write_shipped(lists, imagenet_r_split.SHIPPED)
  print(f'{imagenet_r_split.SHIPPED}: {len(lists["train"])} train, {len(lists["test"])} test entries, '
        f'{os.path.getsize(imagenet_r_split.SHIPPED)} bytes')


if __name__ == '__main__':
  main()
