"""Bad input outside the config (issue 17, item 5): tfds folders in the wrong format or
incomplete, `prepare` without a builder's modules, `report --out` into a missing folder, and one
exit status (2) for a user error in every entry point."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from cljax.data import benchmarks, prepare
from cljax.errors import DataError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def prepared(tmp_path_factory):
  """split_digits prepared as array_record (cljax's offline builder)."""
  d = tmp_path_factory.mktemp('tfds')
  benchmarks.tfds_split('split_digits', 'train', str(d))
  return d


def _copy(prepared, tmp_path):
  d = tmp_path / 'tfds'
  shutil.copytree(prepared, d)
  return d, d / 'split_digits' / '1.0.0'


def test_tfds_prepared_as_tfrecord_says_how_to_convert(prepared, tmp_path):
  d, version = _copy(prepared, tmp_path)
  for f in os.listdir(version):     # what tfds's default file format leaves on disk
    if '.array_record' in f:
      os.rename(version / f, version / f.replace('.array_record', '.tfrecord'))
  info = json.loads((version / 'dataset_info.json').read_text())
  info['fileFormat'] = 'tfrecord'
  (version / 'dataset_info.json').write_text(json.dumps(info))
  with pytest.raises(DataError) as e:
    benchmarks.tfds_split('split_digits', 'train', str(d))
  assert str(e.value) == (
      f"tfds dataset 'split_digits' is prepared as tfrecord in {version}, but cljax reads array_record: "
      f'convert it with `tfds convert_format --dataset_version_dir={version} --out_file_format=array_record` '
      f'(needs pip install -e .[prepare]), or delete {version} and run `python -m cljax.data.prepare '
      f'split_digits --data_dir={d}`')


def test_incomplete_tfds_folder_names_the_missing_file(prepared, tmp_path):
  d, version = _copy(prepared, tmp_path)
  (version / 'split_digits-test.array_record-00000-of-00001').unlink()
  with pytest.raises(DataError) as e:
    benchmarks.tfds_split('split_digits', 'train', str(d))
  assert str(e.value) == (
      f"tfds dataset 'split_digits' in {version} is incomplete: 1 of 2 files are missing (e.g. "
      f'split_digits-test.array_record-00000-of-00001); delete {version} and run `python -m '
      f'cljax.data.prepare split_digits --data_dir={d}`')


def test_prepare_checks_every_builders_modules_before_downloading(monkeypatch, tmp_path, capsys):
  # tfds's caltech_birds2011 decodes with OpenCV: a missing cv2 must stop `prepare cub` before
  # the 1.1 GB download, not after it.
  assert 'cv2' in prepare.builder_needs('caltech_birds2011')
  assert prepare.builder_needs('split_digits') == []
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, 'find_spec',
                      lambda name, *a: None if name == 'cv2' else (real(name, *a) if name != 'tensorflow' else object()))
  import tensorflow_datasets as tfds
  downloads = []
  monkeypatch.setattr(tfds.core.DatasetBuilder, 'download_and_prepare', lambda *a, **k: downloads.append(a))
  with pytest.raises(SystemExit) as e:
    prepare.main(['cub', '--data_dir', str(tmp_path)])
  assert e.value.code == 2 and downloads == []
  assert capsys.readouterr().err.strip() == (
      'error: preparing caltech_birds2011 needs modules that are not installed: cv2 (for caltech_birds2011); '
      'run pip install -e .[prepare]; nothing was downloaded')


def test_prepare_five_datasets_checks_the_notmnist_folder_first(monkeypatch, tmp_path, capsys):
  monkeypatch.setattr(importlib.util, 'find_spec', lambda name, *a: object())
  import tensorflow_datasets as tfds
  downloads = []
  monkeypatch.setattr(tfds.core.DatasetBuilder, 'download_and_prepare', lambda *a, **k: downloads.append(a))
  (tmp_path / 'notMNIST' / 'Train').mkdir(parents=True)
  with pytest.raises(SystemExit) as e:
    prepare.main(['five_datasets', '--data_dir', str(tmp_path / 'tfds'), '--notmnist_dir', str(tmp_path / 'notMNIST')])
  assert e.value.code == 2 and downloads == []
  assert capsys.readouterr().err.strip().startswith(
      f'error: notMNIST folder {tmp_path / "notMNIST"} lacks Train/A, Train/B, ')


def test_notmnist_builder_says_how_many_images_it_skipped(tmp_path, capfd):
  from PIL import Image
  root = tmp_path / 'notMNIST'
  for split in ('Train', 'Test'):
    for letter in 'ABCDEFGHIJ':
      os.makedirs(root / split / letter)
      Image.fromarray(np.zeros((28, 28), np.uint8)).save(root / split / letter / 'ok.png')
  for name in ('A/bad1.png', 'C/bad2.png'):
    (root / 'Train' / name).write_bytes(b'not an image')
  member = benchmarks.member_from_tfds('not_mnist_local', 'train', 'default', str(tmp_path / 'tfds'), str(root))
  assert len(member.labels) == 10
  out = capfd.readouterr().out
  assert f'not_mnist_local: skipped 2 unreadable image file(s) in {root / "Train"} (A/bad1.png, C/bad2.png)' in out


def _results(workdir, method='norga', seed=42, definition='hide'):
  os.makedirs(workdir)
  config = {'method': method, 'seed': seed, 'benchmark': {'name': 'split_digits', 'num_tasks': 5},
            'backbone': {'name': 'demo_fmnist'}}
  with open(os.path.join(workdir, 'results.json'), 'w') as f:
    json.dump({'config': config, 'tasks_completed': 5, 'final_average_accuracy': 70.0,
               'cumulative_average_accuracy': 80.0, 'forgetting': 5.0,
               'metric_definition': definition}, f)
  return str(workdir)


def test_report_out_into_a_missing_folder(tmp_path):
  from cljax import report
  run = _results(tmp_path / 'run')
  out = tmp_path / 'new' / 'folder' / 'table.md'
  report.main([run, '--out', str(out)])
  assert out.read_text().startswith('| Backbone | Method | Split-Digits FA |')
  blocker = tmp_path / 'a_file'
  blocker.write_text('')
  with pytest.raises(SystemExit) as e:
    report.main([run, '--out', str(blocker / 'table.md')])
  assert e.value.code == 2


def _cli(module, *args):
  return subprocess.run([sys.executable, '-m', module] + list(args), capture_output=True, text=True,
                        cwd=ROOT, timeout=300)


def test_every_entry_point_exits_2_on_a_user_error(tmp_path):
  cases = [
      (('cljax.report', str(tmp_path / 'nowhere')), f'error: {tmp_path / "nowhere"} holds no finished run (no results.json)'),
      (('cljax.convert', 'inspect', str(tmp_path / 'missing.pth')), f'error: checkpoint file {tmp_path / "missing.pth"} does not exist'),
      (('cljax.data.prepare', 'not_mnist_local', '--data_dir', str(tmp_path)),
       'error: notMNIST folder (none given) does not exist; '),
      (('cljax.seeds', '--config=configs/demo.py', f'--workdir={tmp_path / "s"}', '--seeds=4x'), 'error: '),
      (('cljax.main', '--config=configs/demo.py', f'--workdir={tmp_path / "m"}', '--config.prompt.epochs=0'),
       'error: config.prompt.epochs must be >= 1, got 0'),
  ]
  for args, expected in cases:
    out = _cli(*args)
    assert out.returncode == 2, (args, out.stderr[-2000:])
    assert out.stderr.strip().splitlines()[-1].startswith(expected), (args, out.stderr[-2000:])
    assert 'Traceback' not in out.stderr, args


@pytest.mark.parametrize('error, expected', [
    (ValueError('RESOURCE_EXHAUSTED: Error writing "x" in OCDBT database at local file '
                '"/w/checkpoints/tasks/3.orbax-checkpoint-tmp/default/": Failed writing: '
                '"/w/checkpoints/tasks/3.orbax-checkpoint-tmp/default/d/ab": Failed to write 9 '
                "bytes to file 5: No space left on device [os_error_code='28']"),
     'cannot write /w/checkpoints/tasks/3: no space left on the device; free space where /w '
     'lives (or move the workdir to a larger disk), then rerun the same command: it continues '
     'from the last complete checkpoint (the one being written is discarded; the ones before it '
     'are intact)'),
    (PermissionError(13, 'Permission denied', '/w/metrics.jsonl'),
     'cannot write /w/metrics.jsonl: permission denied; make /w writable for this user '
     '(chmod/chown, or remount read-write), then rerun the same command: it continues from the '
     'last complete checkpoint'),
    (RuntimeError('while saving'), None),   # the cause, not the message, is the disk's
])
def test_a_full_or_unwritable_disk_is_named_with_its_fix(error, expected):
  from cljax.errors import storage_error
  if expected is None:
    try:
      try:
        raise OSError(30, 'Read-only file system', '/w/results.json.tmp')
      except OSError as e:
        raise error from e
    except RuntimeError as e:
      error = e
    expected = ('cannot write /w/results.json.tmp: the file system is read-only; make /w writable '
                'for this user (chmod/chown, or remount read-write), then rerun the same command: '
                'it continues from the last complete checkpoint')
  assert str(storage_error(error, '/w')) == expected
  assert storage_error(ValueError('shape mismatch'), '/w') is None
