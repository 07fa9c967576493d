"""tfds builders for the data that tfds itself cannot provide here.

* ``split_digits``: scikit-learn's bundled digits, a seeded stratified 70/30 train/test split
  (the offline demo benchmark; no download).
* ``fashion_mnist_debian``: Fashion-MNIST from Debian's ``dataset-fashion-mnist`` files (tfds's
  ``fashion_mnist`` builder would download, and rejects Debian's recompressed files on checksum).
* ``not_mnist_local``: notMNIST for 5-Datasets, from the user's own files (it has no tfds
  builder): a folder holding ``Train/`` and ``Test/``, each with one sub-folder per letter A..J
  of PNG images (the ACL notMNIST.zip layout the references use).

All three write array_record files and are read through ``as_data_source`` like the paper
benchmarks, without TensorFlow (images are stored as uint8 tensors).
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow_datasets as tfds

from cljax.data import offline

LETTERS = 'ABCDEFGHIJ'


def _info(builder, shape, num_classes, description):
  return tfds.core.DatasetInfo(
      builder=builder, description=description,
      features=tfds.features.FeaturesDict({
          'image': tfds.features.Tensor(shape=shape, dtype=np.uint8),
          'label': tfds.features.ClassLabel(num_classes=num_classes),
      }),
      supervised_keys=('image', 'label'))


class SplitDigits(tfds.core.GeneratorBasedBuilder):
  """scikit-learn digits (8x8 grey, 0..255), stratified 70/30 split with seed 0."""
  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return _info(self, (8, 8, 1), 10, __doc__)

  def _split_generators(self, dl_manager):
    del dl_manager
    data = offline.digits(seed=0, test_fraction=0.3)
    return {split: self._generate_examples(*data[split]) for split in ('train', 'test')}

  def _generate_examples(self, images, labels):
    for i, (image, label) in enumerate(zip(images, labels)):
      yield i, {'image': image, 'label': int(label)}


class FashionMnistDebian(tfds.core.GeneratorBasedBuilder):
  """Fashion-MNIST 60k/10k from Debian's dataset-fashion-mnist files."""
  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return _info(self, (28, 28, 1), 10, __doc__)

  def _split_generators(self, dl_manager):
    del dl_manager
    data = offline.fashion_mnist(os.environ.get('CLJAX_FASHION_MNIST_DIR', offline.FASHION_MNIST_DIR))
    return {split: self._generate_examples(*data[split]) for split in ('train', 'test')}

  def _generate_examples(self, images, labels):
    for i, (image, label) in enumerate(zip(images, labels)):
      yield i, {'image': image, 'label': int(label)}


class NotMnistLocal(tfds.core.GeneratorBasedBuilder):
  """notMNIST letters A..J from the user's Train/ and Test/ folders (28x28 grey)."""
  VERSION = tfds.core.Version('1.0.0')
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Unpack the ACL notMNIST.zip (the file the HiDe/NoRGa references use) so that the manual '
      'folder holds Train/A..J and Test/A..J with PNG images, and set '
      'config.benchmark.notmnist_dir to that folder.')

  def _info(self):
    return _info(self, (28, 28, 1), 10, __doc__)

  @staticmethod
  def check_manual_dir(root: str) -> None:
    """DataError naming the missing part of the folder (called before anything is written)."""
    offline.check_notmnist_dir(root, LETTERS)

  def _split_generators(self, dl_manager):
    root = dl_manager.manual_dir
    self.check_manual_dir(str(root))
    return {'train': self._generate_examples(os.path.join(root, 'Train')),
            'test': self._generate_examples(os.path.join(root, 'Test'))}

  def _generate_examples(self, folder):
    from PIL import Image  # pylint: disable=g-import-not-at-top
    skipped = []
    for label, letter in enumerate(LETTERS):
      directory = os.path.join(folder, letter)
      for name in sorted(os.listdir(directory)):
        try:
          with Image.open(os.path.join(directory, name)) as img:
            image = np.asarray(img.convert('L').resize((28, 28)), np.uint8)[..., None]
        except OSError:   # a few files of notMNIST.zip are unreadable: skip them
          skipped.append(f'{letter}/{name}')
          continue
        yield f'{letter}/{name}', {'image': image, 'label': label}
    report_skipped('not_mnist_local', folder, skipped)


def report_skipped(name: str, folder: str, skipped) -> None:
  """One line saying how many unreadable image files a builder left out (and the first few)."""
  if skipped:
    shown = ', '.join(skipped[:3]) + (', ...' if len(skipped) > 3 else '')
    print(f'{name}: skipped {len(skipped)} unreadable image file(s) in {folder} ({shown})',
          flush=True)
