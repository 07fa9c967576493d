"""Image transforms of the references (torchvision semantics, implemented with PIL + numpy).

Families (ALGORITHMS.md 7.1):
* ``default`` (ImageNet-R, CUB, 5-Datasets): train RandomResizedCrop(size, scale (0.05, 1),
  ratio (3/4, 4/3), bilinear) + horizontal flip; test Resize(size*8/7, bicubic) + CenterCrop;
  pixels in [0, 1], no normalisation.
* ``cifar``: train RandomResizedCrop(size, scale (0.08, 1), bicubic) + flip + brightness jitter
  63/255 + Normalize(CIFAR-100 mean/std); test Resize + CenterCrop + the same Normalize.
* ``smope`` / ``smope_cifar`` ([S]: SMoPE, CODA-Prompt; 7.2): train RandomResizedCrop(size,
  scale (0.08, 1), bilinear) + flip; test Resize + CenterCrop (CIFAR: Resize(size) only); no
  normalisation.
* ``demo``: resize to size (bilinear), nothing random.
Grey images become RGB by repetition (the references' MNIST_RGB). Every random draw comes from
the numpy Generator passed in, so a batch is a pure function of (seed, epoch, example).

Every op of `make` is a PIL uint8 op (torchvision's order: crop/flip/jitter on the PIL image,
then ToTensor, then Normalize), so the host produces uint8 pixels and `to_model_input` (the one
definition of ToTensor + Normalize, for numpy on the host and jax.numpy on the devices) gives the
model's float input: a quarter of the bytes cross to the devices and the host does no float work.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
from PIL import Image, ImageEnhance

CIFAR_MEAN = np.array([0.5071, 0.4867, 0.4408], np.float32)
CIFAR_STD = np.array([0.2675, 0.2565, 0.2761], np.float32)
FAMILIES = ('default', 'cifar', 'smope', 'smope_cifar', 'demo')
# Per-channel (mean, std) of ToTensor + Normalize, indexed by `normalisation(family)`: row 0 is
# ToTensor alone ((x - 0) / 1 is exactly x), row 1 CIFAR-100's Normalize.
MEANS = np.stack([np.zeros(3, np.float32), CIFAR_MEAN])
STDS = np.stack([np.ones(3, np.float32), CIFAR_STD])


def normalisation(family: str) -> int:
  """The row of MEANS/STDS of a family's images (only ``cifar`` normalises)."""
  if family not in FAMILIES:
    raise ValueError(f'unknown transform family {family!r}')
  return 1 if family == 'cifar' else 0


def to_model_input(images, norm, xp=np):
  """ToTensor + Normalize: uint8 [B, H, W, 3] pixels -> float32 [B, H, W, 3] model input.

  ``norm`` [B] int: each row's `normalisation` (a batch may mix families). ``xp`` is numpy or
  jax.numpy: the same float32 ops in the same order, bit for bit, on the host and in a jitted
  function."""
  x = _divide(xp.asarray(images).astype(xp.float32), np.float32(255.0), xp)
  norm = xp.asarray(norm)
  mean = xp.asarray(MEANS)[norm][:, None, None, :]
  std = xp.asarray(STDS)[norm][:, None, None, :]
  return _divide(x - mean, std, xp)


def _divide(a, b, xp):
  """a / b rounded as numpy (and torchvision) divide. XLA turns a division by a broadcast into a
  multiplication by its reciprocal, up to 1 ulp off; a full-shaped divisor behind an
  optimization barrier keeps the true division."""
  if xp is np:
    return a / b
  import jax  # pylint: disable=g-import-not-at-top
  return a / jax.lax.optimization_barrier(xp.broadcast_to(xp.asarray(b, xp.float32), a.shape))


def to_pil(image: np.ndarray) -> Image.Image:
  if image.ndim == 3 and image.shape[-1] == 1:
    image = image[..., 0]
  img = Image.fromarray(image)
  return img.convert('RGB') if img.mode != 'RGB' else img


def random_resized_crop_box(rng: np.random.Generator, width: int, height: int, scale, ratio):
  """torchvision's RandomResizedCrop.get_params: (left, top, w, h)."""
  area = width * height
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target_area = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(*log_ratio))
    w = int(round(math.sqrt(target_area * aspect)))
    h = int(round(math.sqrt(target_area / aspect)))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return left, top, w, h
  in_ratio = width / height   # fallback: central crop
  if in_ratio < min(ratio):
    w, h = width, int(round(width / min(ratio)))
  elif in_ratio > max(ratio):
    h, w = height, int(round(height * max(ratio)))
  else:
    w, h = width, height
  return (width - w) // 2, (height - h) // 2, w, h


def resize_shorter(img: Image.Image, size: int, resample) -> Image.Image:
  w, h = img.size
  if w <= h:
    new_w, new_h = size, int(size * h / w)
  else:
    new_h, new_w = size, int(size * w / h)
  return img.resize((new_w, new_h), resample)


def center_crop(img: Image.Image, size: int) -> Image.Image:
  w, h = img.size
  left, top = int(round((w - size) / 2.0)), int(round((h - size) / 2.0))
  return img.crop((left, top, left + size, top + size))


def make(family: str, train: bool, size: int) -> Callable[[np.ndarray, np.random.Generator], np.ndarray]:
  """A transform uint8 HWC image (grey: HW or HW1) -> uint8 [size, size, 3], before ToTensor
  and Normalize (`to_model_input`). Raises ValueError for an unknown family."""
  if family not in FAMILIES:
    raise ValueError(f'unknown transform family {family!r}')
  resize = int(round(size * 256 / 224))

  def apply(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    img = to_pil(image)
    if family == 'demo':
      img = img.resize((size, size), Image.BILINEAR)
    elif train:
      cifar = family == 'cifar'
      scale = (0.05, 1.0) if family == 'default' else (0.08, 1.0)
      left, top, w, h = random_resized_crop_box(rng, img.size[0], img.size[1], scale, (3 / 4, 4 / 3))
      img = img.resize((size, size), Image.BICUBIC if cifar else Image.BILINEAR,
                       box=(left, top, left + w, top + h))
      if rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
      if cifar:
        b = 63.0 / 255.0
        img = ImageEnhance.Brightness(img).enhance(rng.uniform(max(0.0, 1 - b), 1 + b))
    elif family == 'smope_cifar':
      img = img.resize((size, size), Image.BILINEAR)
    else:
      img = center_crop(resize_shorter(img, resize, Image.BICUBIC), size)
    return np.asarray(img, np.uint8)

  return apply
