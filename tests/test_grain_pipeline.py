"""The grain input pipeline (cljax.data.pipeline): batches a pure function of (seed, epoch,
example) whatever config.data_workers, exact mid-epoch resume, per-host rows, padding and mask,
uint8 pixels to the devices and the one ToTensor + Normalize there.

Small images and few worker starts: each worker process costs ~1-3 s to start on 2 cores."""

import io
import sys
import threading
import time

import cloudpickle
import jax
import numpy as np
import pytest
from PIL import Image

from cljax.data import benchmarks, pipeline, transforms

# The workers unpickle this module's dataset by value, without importing the test module.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def jpeg_dataset(n=45, seed=0):
  """A Dataset whose images are JPEG bytes decoded on access (as ImageNet-R's and CUB's tfds
  sources with SkipDecoding), of varied sizes, half CIFAR-normalised (as a 5-Datasets mix)."""
  rng = np.random.default_rng(seed)
  encoded = []
  for i in range(n):
    h, w = int(rng.integers(20, 48)), int(rng.integers(20, 48))
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, 'JPEG')
    encoded.append(buf.getvalue())
  members = [benchmarks.Member(lambda j, e=encoded: benchmarks._decode(e[j]),  # pylint: disable=protected-access
                               np.arange(n) % 5, family) for family in ('default', 'cifar')]
  return benchmarks.Dataset(members, [0, 5])


DATA = jpeg_dataset()
KW = dict(batch_size=16, image_size=24, train=True, seed=(3, 1, 0, 0, 2), shuffle=True)


def fields_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    for field in range(4):
      np.testing.assert_array_equal(x[field], y[field])


def test_batches_do_not_depend_on_the_workers():
  """Two worker processes (decoding the JPEGs there, taking batches round-robin) give the
  in-process batches: here one host's rows of an epoch resumed at batch 1 (one worker: below)."""
  idx = np.arange(len(DATA))
  kw = dict(KW, start_batch=1, rows=(8, 16))
  fields_equal(list(pipeline.batches(DATA, idx, workers=2, **kw)),
               list(pipeline.batches(DATA, idx, workers=0, **kw)))


def test_resume_mid_epoch_is_the_uninterrupted_tail():
  """start_batch=k (the checkpoint's position) is the epoch's batches from k on, and is grain's
  own iterator state after k batches."""
  idx = np.arange(len(DATA))
  whole = list(pipeline.batches(DATA, idx, **KW))
  assert len(whole) == 6
  for k in (1, 4, 5):
    fields_equal(list(pipeline.batches(DATA, idx, start_batch=k, **KW)), whole[k:])
  assert list(pipeline.batches(DATA, idx, start_batch=6, **KW)) == []
  it = iter(pipeline.loader(pipeline.batch_dataset(DATA, idx, **KW)))
  for _ in range(4):
    next(it)
  state = it.get_state()
  fresh = iter(pipeline.loader(pipeline.batch_dataset(DATA, idx, **KW)))
  fresh.set_state(state)
  fields_equal([pipeline.Batch(*x) for x in fresh], whole[4:])


def test_each_host_gets_its_rows_and_the_last_batch_is_padded():
  idx = np.arange(len(DATA))[:37]      # 3 batches of 16, the last with 5 real rows
  whole = list(pipeline.batches(DATA, idx, **KW))
  halves = [list(pipeline.batches(DATA, idx, rows=r, **KW)) for r in ((0, 8), (8, 16))]
  for w, a, b in zip(whole, *halves):
    for field in range(4):
      np.testing.assert_array_equal(w[field], np.concatenate([a[field], b[field]]))
  last = whole[-1]
  assert last.images.shape == (16, 24, 24, 3) and last.mask.tolist() == [True] * 5 + [False] * 11
  assert halves[1][-1].mask.sum() == 0                    # the second host's rows: all padding
  assert last.images[~last.mask].max() == 0 and (last.labels[~last.mask] == 0).all()
  assert sorted(np.concatenate([b.labels[b.mask] for b in whole]).tolist()) == sorted(
      DATA.labels[idx].tolist())


def test_uint8_pixels_cross_to_the_devices(monkeypatch):
  """The host batch is uint8; to_device puts uint8 on the devices and converts there, to the
  host's conversion; features cross as they are."""
  from cljax import parallel
  put = []
  real_put = parallel.put
  monkeypatch.setattr(parallel, 'put', lambda x, s: put.append(x.dtype) or real_put(x, s))
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  batch = next(pipeline.batches(DATA, np.arange(len(DATA)), **KW))
  assert batch.images.dtype == np.uint8 and set(batch.norm.tolist()) == {0, 1}
  on_device = pipeline.to_device(batch, sharding)
  assert put[0] == np.uint8 and on_device.images.dtype == np.float32 and on_device.norm is None
  np.testing.assert_array_equal(np.asarray(on_device.images), pipeline.host_input(batch).images)
  feats = next(pipeline.feature_batches(np.ones((5, 4), np.float32), np.arange(5), 8))
  assert feats.norm is None
  np.testing.assert_array_equal(np.asarray(pipeline.to_device(feats, sharding).images), feats.images)


@pytest.mark.parametrize('family', ['default', 'cifar'])
def test_jitted_normalisation_is_the_float_transform(family):
  """The device's ToTensor + Normalize of the uint8 transform output equals, bit for bit, the
  float32 output of the transform before the move to uint8 batches (x / 255, then CIFAR's
  (x - mean) / std), for every pixel value."""
  rng = np.random.default_rng(1)
  image = rng.integers(0, 256, (37, 29, 3), dtype=np.uint8)
  pixels = transforms.make(family, True, 24)(image, np.random.default_rng([5, 7]))
  assert pixels.dtype == np.uint8 and pixels.shape == (24, 24, 3)
  before = np.asarray(pixels, np.float32) / 255.0     # the old float path, as it was written
  if family == 'cifar':
    before = (before - transforms.CIFAR_MEAN) / transforms.CIFAR_STD
  norm = np.array([transforms.normalisation(family)], np.int8)
  jitted = jax.jit(lambda x, n: transforms.to_model_input(x, n, jax.numpy))
  np.testing.assert_array_equal(np.asarray(jitted(pixels[None], norm))[0], before)
  np.testing.assert_array_equal(transforms.to_model_input(pixels[None], norm)[0], before)
  every = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, -1)
  as_before = every.astype(np.float32) / 255.0
  if family == 'cifar':
    as_before = (as_before - transforms.CIFAR_MEAN) / transforms.CIFAR_STD
  np.testing.assert_array_equal(np.asarray(jitted(every, norm)), as_before)


def test_a_consumer_that_stops_early_stops_the_worker():
  """A dry run reads one batch of an epoch: the background thread and the worker process stop
  when the consumer closes the iterator. The worker's batch is the in-process one. Only the
  threads and processes this test starts are watched (other tests' may still be winding down)."""
  import multiprocessing  # pylint: disable=g-import-not-at-top
  in_process = pipeline.batches(DATA, np.arange(len(DATA)), **KW)
  expected = next(in_process)
  in_process.close()
  before = set(threading.enumerate())
  children_before = set(multiprocessing.active_children())
  it = pipeline.in_background(pipeline.batches(DATA, np.arange(len(DATA)), workers=1, **KW),
                              lambda b: b, size=1)
  fields_equal([next(it)], [expected])
  it.close()
  # The background thread (in_background's producer) and the worker process must go; grain's
  # own thread pool, made once per process by whichever test first uses workers, stays.
  started = lambda: ([t for t in threading.enumerate()
                      if t not in before and t.is_alive() and '(producer)' in t.name] +
                     [p for p in multiprocessing.active_children() if p not in children_before])
  for _ in range(100):
    if not started():
      break
    time.sleep(0.1)
  assert not started()


def test_closing_the_consumer_returns_after_the_producer_has_finished():
  """A run that ends on an error (a diverged loss) closes its stream and exits: the producer
  thread must be out of its batch by then, since a thread still inside jaxlib or grain when the
  interpreter finalizes aborted the process (`FATAL: exception not rethrown`, exit 134) in about
  half of the diverged demo runs. Here the producer is mid-batch (0.5 s) when the consumer
  closes; close returns only after it has left and closed its source."""
  closed, converting = [], threading.Event()

  def source():
    try:
      for i in range(100):
        yield i
    finally:
      closed.append(True)

  def slow(i):
    converting.set()
    time.sleep(0.5)
    return i

  before = set(threading.enumerate())
  it = pipeline.in_background(source(), slow, size=1)
  assert next(it) == 0
  converting.clear()
  assert converting.wait(5)      # the producer is inside a later batch's conversion
  it.close()
  assert closed == [True]
  assert not [t for t in threading.enumerate() if t not in before and t.is_alive()]


def test_the_epochs_of_a_phase_are_each_epochs_batches_from_one_loader(monkeypatch):
  """pipeline.epochs, the trainer's stream for a training phase: each epoch is `batches` of its
  own seed, back to back (here resumed at batch 4 of epoch 1, then cut to 2 batches an epoch as a
  dry run), read by one loader, so config.data_workers' processes start once a phase."""
  idx = np.arange(len(DATA))
  kw = {k: v for k, v in KW.items() if k != 'seed'}
  seeds = [(3, 1, 0, 0, e) for e in range(3)]
  calls = []
  real_loader = pipeline.loader
  monkeypatch.setattr(pipeline, 'loader', lambda ds, workers=0: calls.append(workers) or real_loader(ds, workers))
  got = list(pipeline.epochs(DATA, idx, seeds=seeds, start=(1, 4), workers=2, **kw))
  assert calls == [2]
  per_epoch = [list(pipeline.batches(DATA, idx, seed=s, **kw)) for s in seeds]
  assert len(got) == 2 + 6
  fields_equal(got, per_epoch[1][4:] + per_epoch[2])
  assert not np.array_equal(per_epoch[1][0].labels, per_epoch[2][0].labels)   # epochs differ
  fields_equal(list(pipeline.epochs(DATA, idx, seeds=seeds, max_batches=2, **kw)),
               [b for epoch in per_epoch for b in epoch[:2]])
  assert list(pipeline.epochs(DATA, idx, seeds=seeds, start=(3, 0), **kw)) == []


def test_a_run_with_workers_stopped_mid_phase_resumes_to_the_in_process_numbers(tmp_path, monkeypatch):
  """config.data_workers=2, stopped between steps in the second prompt-stage epoch (after its
  checkpoint at step 10), then resumed with 1 worker: every epoch's losses and the accuracies are
  those of an uninterrupted run with data_workers=0."""
  import json  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  from cljax.continual import interrupts, trainer  # pylint: disable=g-import-not-at-top
  from cljax.errors import RunInterrupted  # pylint: disable=g-import-not-at-top
  from cljax_testing.helpers import demo_config  # pylint: disable=g-import-not-at-top

  def run(workers, workdir):
    c = demo_config(str(tmp_path / 'tfds'), depth=1, epochs=(1, 2), ca_epochs=(1, 1), log_every_steps=0)
    c.prompt.layers, c.stop_after_task, c.data_workers, c.checkpoint_every_steps = (0,), 1, workers, 5
    return trainer.run(c, str(tmp_path / workdir))

  def epochs(workdir):
    lines = [json.loads(l) for l in open(tmp_path / workdir / 'metrics.jsonl')]
    return [{k: v for k, v in l.items() if k not in ('img_per_s', 'time')} for l in lines
            if l.get('stage') == 'prompt' and 'epoch' in l and 'loss' in l and 'phase' in l]

  whole = run(0, 'whole')
  assert len(epochs('whole')) == 2
  real_check = interrupts.check

  def check():   # Ctrl-C before step 4 of the prompt stage's second epoch (train_stage's locals)
    where = sys._getframe(1).f_locals   # pylint: disable=protected-access
    if getattr(where.get('stage'), 'name', None) == 'prompt' and (where.get('epoch'), where.get('b')) == (1, 4):
      raise KeyboardInterrupt
    real_check()
  monkeypatch.setattr(interrupts, 'check', check)
  with pytest.raises(RunInterrupted, match='checkpoint 10 training steps into the prompt stage'):
    run(2, 'stopped')
  assert len(epochs('stopped')) == 1
  monkeypatch.setattr(interrupts, 'check', real_check)
  resumed = run(1, 'stopped')
  assert epochs('stopped') == epochs('whole')
  assert resumed['accuracy_matrix'] == whole['accuracy_matrix']
  assert os.path.exists(tmp_path / 'stopped' / 'results.json')


def test_threads_reading_two_epochs_at_once_get_each_epochs_batches():
  """grain's threads read a phase's dataset concurrently, also across an epoch's end (the next
  epoch's first batches are prefetched while the last ones are read): threads reading two
  epochs at once get the batches of a sequential read."""
  interval = sys.getswitchinterval()
  sys.setswitchinterval(1e-6)    # switch threads as often as possible, to meet a race if any
  try:
    idx = np.arange(len(DATA))
    kw = {k: v for k, v in KW.items() if k != 'seed'}
    seeds = [(3, 1, 0, 0, e) for e in range(4)]
    expected = [pipeline.epochs_dataset(DATA, idx, seeds=seeds, **kw)[b] for b in range(12)]
    ds = pipeline.epochs_dataset(DATA, idx, seeds=seeds, **kw)
    got = [None] * 12

    def read(j):   # thread j: epochs j % 2 and j % 2 + 2, 3 batches each
      for e in (j % 2, j % 2 + 2):
        for b in range(3 * e + j // 2, 3 * e + 3, 2):
          got[b] = ds[b]
    threads = [threading.Thread(target=read, args=(j,)) for j in range(4)]
    for t in threads:
      t.start()
    for t in threads:
      t.join()
    fields_equal(got, expected)
  finally:
    sys.setswitchinterval(interval)
