"""Shared fixtures: the script as a module, small synthetic data, and the real MNIST prepared
once per test session from the official files in ../shared/mnist (no network needed)."""
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

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


@pytest.fixture(scope='session')
def manual_dir():
  """The folder of the four official MNIST files."""
  if not MANUAL_DIR.is_dir():
    pytest.skip(f'no MNIST files at {MANUAL_DIR} (set MNIST_MANUAL_DIR)')
  return MANUAL_DIR


# A tiny protocol on the real MNIST: 8 models of 1 epoch, 2 at a time, in about 10 s.
TINY = ['--runs', '4', '--epochs', '1', '--ratios', '0.5,0.9', '--models-at-once', '2']


def script_command(*argv):
  return [sys.executable, str(ROOT / 'mnist.py'), *argv]


def run_script(*argv):
  return subprocess.run(script_command(*argv), capture_output=True, text=True, timeout=600)


@pytest.fixture(scope='session')
def first_run(tmp_path_factory, manual_dir):
  """(out dir, tfds data dir, completed process) of one uninterrupted tiny run on a machine that
  has never prepared MNIST: it prepares the real MNIST from the official files."""
  data_dir, out = tmp_path_factory.mktemp('tfds'), tmp_path_factory.mktemp('out')
  result = run_script(*TINY, '--manual-dir', str(manual_dir), '--data-dir', str(data_dir),
                      '--out-dir', str(out))
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
