"""Shared fixtures: the script as a module (and its package, cscore/), small synthetic data, and
the real MNIST prepared once per test session from the official files in ../shared/mnist (no
network needed)."""
import functools
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# The tests check bit-identity across K, shards and resumes, which holds on a CPU. On a GPU host
# they run on its CPU: no GPU for TensorFlow, here and in every subprocess (inherited), set before
# TensorFlow loads. The opt-in GPU test (test_devices.py) gives its subprocess the user's setting.
USERS_CUDA_VISIBLE_DEVICES = os.environ.get('CUDA_VISIBLE_DEVICES')
os.environ['CUDA_VISIBLE_DEVICES'] = ''

import mnist  # noqa: E402
from cscore import datasets, devices, store  # noqa: E402

# As mnist.py's main() does, before TensorFlow's first op: the in-process runs then compute
# exactly as the script's own processes do, whatever order the tests run in.
devices.configure_tensorflow()

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


def mnist_like(images, labels):
  """Data of MNIST's shape and classes, for the outputs' tests."""
  return datasets.Data('mnist', images, np.asarray(labels, np.int32), mnist.DIGITS, (28, 28))


# --- The MLP in float64 NumPy, written out independently of mnist.py's TensorFlow --------------

def numpy_logits(params, x):
  """One model's forward pass: ReLU hidden layers, a linear output layer."""
  a = np.asarray(x, np.float64)
  for i in range(0, len(params), 2):
    z = a @ np.asarray(params[i], np.float64) + np.asarray(params[i + 1], np.float64)
    a = np.maximum(z, 0) if i + 2 < len(params) else z
  return a


def numpy_softmax(logits):
  e = np.exp(logits - logits.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def numpy_gradients(params, x, y, weight):
  """One model's gradient of its mean NLL over the real examples of a batch (weight 1; 0 for
  padding), by backpropagation: d loss / d logits = (softmax - one-hot) / real examples."""
  params = [np.asarray(p, np.float64) for p in params]
  inputs = [np.asarray(x, np.float64)]  # each layer's input
  for i in range(0, len(params) - 2, 2):
    inputs.append(np.maximum(inputs[-1] @ params[i] + params[i + 1], 0))
  probabilities = numpy_softmax(inputs[-1] @ params[-2] + params[-1])
  delta = (probabilities - np.eye(probabilities.shape[-1])[y]) * (weight / weight.sum())[:, None]
  grads = []
  for i in reversed(range(0, len(params), 2)):
    grads = [inputs[i // 2].T @ delta, delta.sum(0, keepdims=True)] + grads
    delta = (delta @ params[i].T) * (inputs[i // 2] > 0)
  return grads


def sgd_by_hand(images, labels, seed, ratio, config, before_step=None):
  """The weights of a run's model stepped one batch at a time with the plain SGD-with-momentum
  recurrence v <- m v + g, w <- w - lr v, in NumPy. before_step(idx, weight, x, params) sees
  each batch before its update."""
  n = len(labels)
  params = [p.astype(np.float64) for p in mnist.init_mlp(seed, mnist.layer_sizes(config))]
  velocity = [np.zeros_like(p) for p in params]
  weight = mnist.batch_weights(mnist.subset_size(n, ratio), config.batch_size)
  for epoch in mnist.batch_order(seed, n, ratio, config.epochs, config.batch_size):
    for idx, w in zip(epoch, weight):
      x = images[idx] / 255.0
      if before_step:
        before_step(idx, w, x, params)
      grads = numpy_gradients(params, x, labels[idx], w)
      velocity = [config.momentum * v + g for v, g in zip(velocity, grads)]
      params = [p - config.learning_rate * v for p, v in zip(params, velocity)]
  return params


# --- Runs without training ------------------------------------------------------------------------

CPU = ('CPU', 'fp32')
A100_TF32 = ('A100-SXM4-80GB', 'tf32')  # as older drivers name it: before 'CPU' in sort order


def random_group(k, n=64, epochs=3, seed=0):
  """A RunGroup of k made-up runs on n examples: subsets of half of them, a record only there."""
  rng = np.random.default_rng(seed)
  held_out = np.stack([rng.permutation(n) < n // 2 for _ in range(k)])
  correct = rng.random((k, n)) < 0.9
  hits = np.where(held_out, 0, rng.integers(0, epochs + 1, (k, n))).astype(np.float32)
  confidence = np.where(held_out, 0, rng.random((k, n))).astype(np.float32)
  return mnist.RunGroup(held_out, correct, hits, confidence)


def pick(group, rows):
  """The RunGroup of some of a group's runs."""
  return mnist.RunGroup(*(field[rows] for field in group))


def flipped(group):
  """The same runs with every correctness flipped: another record of them."""
  return group._replace(correct=~group.correct)


def masks_only_run(held_out, correct, epochs=1):
  """A Run for the estimator's tests, which read its masks: its record says it learned, in
  every epoch and with certainty, the examples it trained on and gets right, and no others."""
  held_out, correct = np.asarray(held_out, bool), np.asarray(correct, bool)
  right = correct[~held_out]
  return store.Run(held_out, correct, (right * epochs).astype(np.uint8), (right * 255).astype(np.uint8), epochs, CPU)


def bernoulli_store(skill, ratios, runs, seed=0, held_out_share=1.0):
  """Runs in which each example is held out with probability held_out_share and classified
  correctly with probability skill[i], independently: the truth is known."""
  rng = np.random.default_rng(seed)
  n = len(skill)
  return {(store.ratio_key(r), s): masks_only_run(rng.random(n) < held_out_share, rng.random(n) < skill)
          for r in ratios for s in range(runs)}


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


def run_main_without(module, argv):
  """The completed process of mnist.main(argv) in a fresh interpreter where `import module`
  fails, as on a platform or an installation without it."""
  code = ('import sys\n'
          f'sys.modules[{module!r}] = None  # "import {module}" now fails\n'
          f'sys.path.insert(0, {str(ROOT)!r})\n'
          'import mnist\n'
          f'sys.exit(mnist.main({list(argv)!r}))\n')
  return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=600)


def stored_files(out):
  folder = out / store.STORE_DIR
  return sorted(f for f in os.listdir(folder) if f.startswith('runs-')) if folder.is_dir() else []


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


# MNIST as mnist.load_mnist loads it, loaded once per session for the commands the tests run in
# this process (a load takes seconds); the scripts they start load it themselves.
load_mnist_once = functools.cache(mnist.load_mnist)


@pytest.fixture
def mnist_loaded_once(monkeypatch):
  """mnist.main loads MNIST from the session's one load."""
  monkeypatch.setattr(mnist, 'load_mnist', load_mnist_once)
