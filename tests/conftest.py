"""Shared fixtures: the script as a module, small synthetic data, and the real MNIST prepared
once per test session from the official files in ../shared/mnist (no network needed)."""
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import mnist  # noqa: E402

# As mnist.py's main() does, before TensorFlow's first op: the in-process runs then compute
# exactly as the script's own processes do, whatever order the tests run in.
mnist.configure_tensorflow()

MANUAL_DIR = pathlib.Path(os.environ.get('MNIST_MANUAL_DIR', ROOT.parent / 'shared' / 'mnist'))


@pytest.fixture
def synthetic_data():
  """600 examples of MNIST's shape whose label is readable from the pixels (learnable)."""
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 10, 600).astype(np.int32)
  images = rng.integers(0, 60, (600, 784)).astype(np.uint8)
  for digit in range(10):  # a bright bar per class
    images[labels == digit, digit * 78:(digit + 1) * 78] = 255
  return images, labels


def sgd_by_hand(images, labels, seed, ratio, config, before_step=None):
  """The weights of a run's model stepped one batch at a time with the plain SGD-with-momentum
  recurrence, written out independently of mnist's own update. before_step(idx, weight, x,
  params) sees each batch before its update."""
  n = len(labels)
  params = [tf.constant(p) for p in mnist.init_mlp(seed, mnist.layer_sizes(config))]
  velocity = [tf.zeros_like(p) for p in params]
  weight = mnist.batch_weights(mnist.subset_size(n, ratio), config.batch_size)
  for epoch in mnist.batch_order(seed, n, ratio, config.epochs, config.batch_size):
    for idx, w in zip(epoch, weight):
      x = tf.constant(images[idx] / 255.0, tf.float32)
      if before_step:
        before_step(idx, w, x, params)
      grads, _ = mnist.mlp_gradients(params, x, labels[idx], w)
      velocity = [0.9 * v + g for v, g in zip(velocity, grads)]
      params = [p - 0.1 * v for p, v in zip(params, velocity)]
  return params


@pytest.fixture(scope='session')
def manual_dir():
  """The folder of the four official MNIST files."""
  if not MANUAL_DIR.is_dir():
    pytest.skip(f'no MNIST files at {MANUAL_DIR} (set MNIST_MANUAL_DIR)')
  return MANUAL_DIR


# A tiny protocol on the real MNIST: 8 models of 1 epoch, 2 at a time, in about 10 s.
TINY = ['--runs', '4', '--epochs', '1', '--ratios', '0.5,0.9', '--models-at-once', '2']


def tiny_argv(data_dir, out):
  return [*TINY, '--data-dir', str(data_dir), '--out-dir', str(out)]


def script_command(*argv):
  return [sys.executable, str(ROOT / 'mnist.py'), *argv]


def run_script(*argv):
  return subprocess.run(script_command(*argv), capture_output=True, text=True, timeout=600)


def stored_files(out):
  store = out / mnist.STORE_DIR
  return sorted(f for f in os.listdir(store) if f.startswith('runs-')) if store.is_dir() else []


def start_and_signal_after_first_group(argv, sig):
  """Starts the script, sends `sig` once a first group is stored in its out-dir; returns the
  process."""
  out = argv[argv.index('--out-dir') + 1]
  # A shell's background jobs ignore SIGINT and their children inherit that; give the script
  # the default disposition a terminal's foreground job has.
  proc = subprocess.Popen(script_command(*argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
  deadline = time.time() + 300
  while not stored_files(pathlib.Path(out)) and proc.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  proc.send_signal(sig)
  proc.wait(timeout=300)
  return proc


@pytest.fixture(scope='session')
def first_run(tmp_path_factory, manual_dir):
  """(out dir, tfds data dir, completed process) of one uninterrupted tiny run on a machine that
  has never prepared MNIST: it prepares the real MNIST from the official files."""
  data_dir, out = tmp_path_factory.mktemp('tfds'), tmp_path_factory.mktemp('out')
  result = run_script(*tiny_argv(data_dir, out), '--manual-dir', str(manual_dir))
  return out, data_dir, result


@pytest.fixture(scope='session')
def mnist_data_dir(first_run):
  """A tfds data dir holding the real MNIST, prepared from the official files."""
  assert first_run[2].returncode == 0, first_run[2].stderr
  return first_run[1]


@pytest.fixture(scope='session')
def tiny_run(first_run):
  """(out dir, completed process) of one uninterrupted tiny run."""
  return first_run[0], first_run[2]
