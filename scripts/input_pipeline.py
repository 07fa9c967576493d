"""img/s of cljax's input pipeline (grain) against torchvision's DataLoader, on the same JPEGs.

  python scripts/input_pipeline.py                       # 2000 synthesised JPEGs, 2 repeats
  python scripts/input_pipeline.py --quick               # 200 JPEGs, 1 repeat (CI, < 60 s)
  python scripts/input_pipeline.py --data=DIR --out=benchmarks/input_pipeline_cpu-2cores.md

Both sides read the same JPEG files and decode them where the work is done (cljax: grain's
threads or worker processes, `cljax.data.pipeline.batches`; torch: `DataLoader` workers, or the
main process at 0 workers) with the references' ImageNet-R transforms: train
RandomResizedCrop(224, scale (0.05, 1)) + RandomHorizontalFlip + ToTensor; test
Resize(256, bicubic) + CenterCrop(224) + ToTensor. cljax's batches are uint8 (ToTensor happens on
the devices); torch's are float32 tensors, as its training loop receives them.

Without --data, the script synthesises natural-looking images (smooth colour fields, shapes and
grain, JPEG quality 90) into a temporary folder, at sizes drawn like ImageNet-R's (an assumption,
not measured from the dataset: shorter side 300-500 px, aspect 3:4 to 16:10).

img/s is the steady rate from the first batch to the last (worker start-up is reported apart,
and stopping the workers at the end is not counted). Per core: the
rate over the cores the side keeps busy (0 workers: cljax's decode threads, capped at the CPU
count, torch's main process; N workers: N). The projection to a 16-core host is the best per-core
rate times 15 (a core left for the training process), against the accelerator's projected rate
(`ACCELERATOR`, a documented estimate, not a measurement).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import time
import types

import numpy as np
from PIL import Image, ImageDraw

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from cljax.data import benchmarks, pipeline  # pylint: disable=wrong-import-position

IMAGE_SIZE = 224
HOST_CORES = 16
# The accelerator's projected step rates (img/s), ViT-B/16 at 224 on one H200: peak x an assumed
# 40% MFU / GFLOP per image. GFLOP/img: benchmarks/compute_report.md (XLA cost analysis):
# HiDe-Prompt/NoRGa prompt-stage training 71.6, inference 71.4 (SMoPE 35.7). Peaks: H200 SXM
# dense BF16 989 TFLOP/s, FP32 (no tensor cores; cljax's default float32 at matmul_precision
# highest) 67 TFLOP/s (NVIDIA H200 datasheet). A projection, not a measurement.
MFU = 0.4
ACCELERATOR = {
    ('train', 'bfloat16'): 989e12 * MFU / 71.6e9,
    ('test', 'bfloat16'): 989e12 * MFU / 71.4e9,
    ('train', 'float32'): 67e12 * MFU / 71.6e9,
    ('test', 'float32'): 67e12 * MFU / 71.4e9,
}


# ----------------------------------------------------------------------------- data

def synthesise(folder: str, n: int, seed: int = 0) -> list:
  """n JPEGs in folder (natural-looking: smooth colour field + shapes + grain); their paths."""
  rng = np.random.default_rng(seed)
  paths = []
  for i in range(n):
    short = int(rng.integers(300, 501))
    aspect = float(rng.uniform(0.75, 1.6))
    h, w = (short, int(short * aspect)) if rng.random() < 0.7 else (int(short * aspect), short)
    field = rng.integers(0, 256, (int(rng.integers(3, 9)), int(rng.integers(3, 9)), 3), dtype=np.uint8)
    img = Image.fromarray(field).resize((w, h), Image.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 12))):
      x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
      x1, y1 = x0 + int(rng.integers(10, w // 2)), y0 + int(rng.integers(10, h // 2))
      colour = tuple(int(c) for c in rng.integers(0, 256, 3))
      (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
    pixels = np.asarray(img, np.int16) + rng.normal(0, 8, (h, w, 3)).astype(np.int16)
    path = os.path.join(folder, f'{i:05d}.jpg')
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, 'JPEG', quality=90)
    paths.append(path)
  return paths


class JpegFiles:
  """fetch(j): the decoded uint8 image of file j (read and decoded in the caller's process)."""

  def __init__(self, paths):
    self.paths = list(paths)

  def __call__(self, j: int) -> np.ndarray:
    with open(self.paths[j], 'rb') as f:
      return benchmarks._decode(f.read())  # pylint: disable=protected-access


def cljax_dataset(paths):
  member = benchmarks.Member(JpegFiles(paths), np.zeros(len(paths), np.int64), 'default')
  return benchmarks.Dataset([member], [0])


# ----------------------------------------------------------------------------- the two sides

def timed(iterator):
  """(seconds to the first batch, steady img/s from the first batch to the last) of consuming
  an iterator of batch sizes; the end of the iterator (stopping workers) is not counted."""
  t0 = time.perf_counter()
  next(iterator)
  t1 = last = time.perf_counter()
  count = 0
  for n in iterator:
    count, last = count + n, time.perf_counter()
  return t1 - t0, count / max(last - t1, 1e-9)


def run_cljax(paths, train: bool, workers: int, batch: int):
  data = cljax_dataset(paths)
  it = pipeline.batches(data, np.arange(len(paths)), batch, IMAGE_SIZE, train=train, seed=(0, 1),
                        shuffle=train, workers=workers)
  return timed(int(b.mask.sum()) for b in it)


def import_torchvision_transforms():
  """torchvision.transforms; where torchvision's compiled ops do not load against the installed
  torch (a CUDA torchvision wheel with a CPU torch), the pure-Python transforms (PIL) are imported
  without the package's op registrations, which they do not use."""
  try:
    from torchvision import transforms  # pylint: disable=g-import-not-at-top
    return transforms
  except (ImportError, RuntimeError):
    for name in [m for m in sys.modules if m == 'torchvision' or m.startswith('torchvision.')]:
      del sys.modules[name]
    spec = importlib.util.find_spec('torchvision')
    if spec is None:
      raise
    package = types.ModuleType('torchvision')
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules['torchvision'] = package
    from torchvision import transforms  # pylint: disable=g-import-not-at-top
    return transforms


def torch_transform(train: bool):
  T = import_torchvision_transforms()
  if train:
    return T.Compose([T.RandomResizedCrop(IMAGE_SIZE, scale=(0.05, 1.0)), T.RandomHorizontalFlip(),
                      T.ToTensor()])
  return T.Compose([T.Resize(int(round(IMAGE_SIZE * 256 / 224)), interpolation=T.InterpolationMode.BICUBIC),
                    T.CenterCrop(IMAGE_SIZE), T.ToTensor()])


class TorchFiles:
  """A torch map-style dataset of the JPEG files: (transformed image, label 0)."""

  def __init__(self, paths, transform):
    self.paths, self.transform = list(paths), transform

  def __len__(self):
    return len(self.paths)

  def __getitem__(self, j):
    with Image.open(self.paths[j]) as img:
      return self.transform(img.convert('RGB')), 0


def run_torch(paths, train: bool, workers: int, batch: int):
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(1)
  loader = torch.utils.data.DataLoader(TorchFiles(paths, torch_transform(train)), batch_size=batch,
                                       shuffle=train, num_workers=workers)
  return timed(len(labels) for _, labels in loader)


def cores(side: str, workers: int) -> int:
  cpus = os.cpu_count() or 1
  if workers:
    return min(workers, cpus)
  return min(pipeline.threads(), cpus) if side == 'cljax' else 1


# ----------------------------------------------------------------------------- table

def load() -> str:
  return ', '.join(f'{x:.2f}' for x in os.getloadavg())


def measure(paths, workers_list, repeats: int, batch: int):
  rows = []
  for split in ('train', 'test'):
    for workers in workers_list:
      row = {'split': split, 'workers': workers}
      for side, fn in (('cljax', run_cljax), ('torch', run_torch)):
        runs = [fn(paths, split == 'train', workers, batch) for _ in range(repeats)]
        row[side] = statistics.median(r[1] for r in runs)
        row[side + '_first'] = statistics.median(r[0] for r in runs)
        row[side + '_core'] = row[side] / cores(side, workers)
      rows.append(row)
      print(f"{split} workers={workers}: cljax {row['cljax']:.0f} img/s, torch {row['torch']:.0f} img/s"
            f' (load {load()})', flush=True)
  return rows


def table(rows, args, n_images: int, loads) -> str:
  lines = [
      f'## Input pipeline: cljax (grain) vs torchvision DataLoader, {os.cpu_count()} cores',
      '',
      f'{time.strftime("%Y-%m-%d")}; {n_images} JPEGs ({"--data " + args.data if args.data else "synthesised"}, '
      f'ImageNet-R-like sizes), batch {args.batch}, image {IMAGE_SIZE}, median of {args.repeats} '
      f'repeat(s); load average (1, 5, 15 min) before: {loads[0]}, after: {loads[1]} (a shared '
      f'machine: other processes compete for the cores).',
      f'Command: `python scripts/input_pipeline.py {" ".join(sys.argv[1:])}`',
      '',
      '| transform | workers | cljax img/s | cljax img/s/core | torch img/s | torch img/s/core | '
      'per-core ratio | cljax first batch s | torch first batch s |',
      '|---|---|---|---|---|---|---|---|---|',
  ]
  for r in rows:
    lines.append(f"| {r['split']} | {r['workers']} | {r['cljax']:.0f} | {r['cljax_core']:.0f} | "
                 f"{r['torch']:.0f} | {r['torch_core']:.0f} | {r['cljax_core'] / r['torch_core']:.2f}x | "
                 f"{r['cljax_first']:.1f} | {r['torch_first']:.1f} |")
  lines += ['', f'Projection to a {HOST_CORES}-core host (best per-core rate with workers x '
            f'{HOST_CORES - 1} worker cores) against one H200\'s projected step rate (ViT-B/16, '
            f'{MFU:.0%} MFU of the peak, GFLOP/img of benchmarks/compute_report.md; projections, '
            'not measurements):', '',
            '| transform | cljax host img/s | torch host img/s | H200 bf16 img/s | H200 fp32 img/s | '
            'cljax host / H200 bf16 | cljax host / H200 fp32 |',
            '|---|---|---|---|---|---|---|']
  for split in ('train', 'test'):
    mine = [r for r in rows if r['split'] == split and r['workers']] or [r for r in rows if r['split'] == split]
    host = {side: max(r[side + '_core'] for r in mine) * (HOST_CORES - 1) for side in ('cljax', 'torch')}
    bf16, fp32 = ACCELERATOR[(split, 'bfloat16')], ACCELERATOR[(split, 'float32')]
    lines.append(f"| {split} | {host['cljax']:.0f} | {host['torch']:.0f} | {bf16:.0f} | {fp32:.0f} | "
                 f"{host['cljax'] / bf16:.2f}x | {host['cljax'] / fp32:.2f}x |")
  return '\n'.join(lines) + '\n'


def main(argv=None) -> str:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--quick', action='store_true', help='200 images, 1 repeat, batch 32')
  parser.add_argument('--data', default='', help='a folder of JPEGs (default: synthesise them)')
  parser.add_argument('--images', type=int, default=2000)
  parser.add_argument('--repeats', type=int, default=2)
  parser.add_argument('--batch', type=int, default=64)
  parser.add_argument('--workers', default='0,1,2')
  parser.add_argument('--out', default='', help='write the markdown table here')
  args = parser.parse_args(argv)
  if args.quick:
    args.images, args.repeats, args.batch = 200, 1, 32
  workers_list = [int(w) for w in args.workers.split(',')]
  loads = [load()]
  with tempfile.TemporaryDirectory() as tmp:
    if args.data:
      paths = sorted(os.path.join(args.data, f) for f in os.listdir(args.data)
                     if f.lower().endswith(('.jpg', '.jpeg')))[:args.images]
    else:
      t0 = time.perf_counter()
      paths = synthesise(tmp, args.images)
      mb = sum(os.path.getsize(p) for p in paths) / 1e6
      print(f'synthesised {len(paths)} JPEGs ({mb:.0f} MB) in {time.perf_counter() - t0:.0f}s', flush=True)
    rows = measure(paths, workers_list, args.repeats, args.batch)
  loads.append(load())
  text = table(rows, args, len(paths), loads)
  print(text)
  if args.out:
    with open(args.out, 'w') as f:
      f.write(text)
  return text


if __name__ == '__main__':
  main()
