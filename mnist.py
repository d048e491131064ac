"""C-scores of the MNIST training set, estimated by training many small MLPs at once.

Reference: Ziheng Jiang, Chiyuan Zhang, Kunal Talwar, Michael C. Mozer. "Characterizing
Structural Regularities of Labeled Data in Overparameterized Models". ICML 2021.
https://arxiv.org/abs/2002.03206

The consistency score (C-score) of a training example (x, y) from a data set D of n examples is
the expected accuracy on it of models trained on random subsets of the *other* examples:

    C(x, y) = E_r  E_{S ~ D \\ {(x, y)}, |S| = r n}  P[ f(x; S) = y ]

It is estimated by holdout. For each subset ratio r in 0.1, 0.2, ..., 0.9, train R models, run
s on a uniform random subset S_{r,s} of int(n r) examples. Then, for example i,

    C_r(i) = sum_s [i not in S_{r,s}] [f_{r,s}(x_i) = y_i]  /  sum_s [i not in S_{r,s}]
    C(i)   = mean of C_r(i) over the ratios r at which some run held i out

Typical digits get C close to 1; ambiguous, odd or mislabeled ones get C close to 0.

This script reproduces the authors' MNIST demo (same data order, model, optimiser, subsets and
estimator) and differs from it in how the work is done:
  * K models of one ratio train in lockstep, whole epochs in one compiled TensorFlow loop, each
    model with its own subset, batch order and initialisation: on a GPU as one batched matmul
    per layer (weights stacked [K, in, out]), on a CPU as K chains of plain matmuls side by side
    on the cores. This keeps the device busy; one model at a time leaves it mostly idle.
  * Every finished group of runs is saved at once to a results store in the output directory,
    so a stopped run resumes where it stopped, and a larger --runs only adds runs.
  * An example that no run held out at some ratio has no estimate there; that ratio is left out
    of its mean instead of counting as 0.

Usage:
    python mnist.py                                   # full protocol: 9 ratios x 200 runs
    python mnist.py --runs 4 --manual-dir DIR         # small, offline, DIR holds MNIST's .gz
"""

import argparse
import contextlib
import dataclasses
import datetime
import fcntl
import functools
import hashlib
import json
import logging
import os
import socket
import sys
import tempfile
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # before TensorFlow loads: no start-up log

import numpy as np
from tqdm import tqdm


@contextlib.contextmanager
def native_stderr_silenced():
  """Hides what native libraries write to stderr (TensorFlow logs some lines before its own
  log level applies); Python's exceptions are raised as usual."""
  sys.stderr.flush()
  saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
  os.dup2(devnull, 2)
  try:
    yield
  finally:
    os.dup2(saved, 2)
    os.close(saved)
    os.close(devnull)


with native_stderr_silenced():
  import tensorflow as tf


# ------------------------------------------------------------------------------------------------
# Settings: the paper's defaults; the command line overrides them.
# ------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Config:
  ratios: tuple = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)  # subset sizes, as parts of n
  runs: int = 200              # models trained per ratio
  seed: int = 0                # run seeds are seed, seed + 1, ..., seed + runs - 1
  epochs: int = 10
  batch_size: int = 128
  learning_rate: float = 0.1
  momentum: float = 0.9
  hidden: tuple = (512, 256)   # MLP 784 -> 512 -> 256 -> 10
  precision: str = 'float32'   # or 'bfloat16': bf16 matmuls, fp32 weights, loss and updates
  models_at_once: int = 0      # K; 0 picks it from the device


# What a stored run depends on. A store made with other values is refused, not mixed in.
TRAINING_SETTINGS = ('epochs', 'batch_size', 'learning_rate', 'momentum', 'hidden', 'precision')

NUM_CLASSES = 10


class CScoreError(Exception):
  """A problem the user can fix; main() prints it as one line, without a traceback."""


# ------------------------------------------------------------------------------------------------
# Data: MNIST's 60,000 training examples, in tensorflow-datasets' order.
# ------------------------------------------------------------------------------------------------

MNIST_FILES = ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz',
               't10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz')
MNIST_HOST = 'storage.googleapis.com'  # where tfds downloads MNIST from


def mnist_download_config(manual_dir):
  """tfds download settings: the official files from manual_dir when given."""
  import tensorflow_datasets as tfds
  if manual_dir is None:
    return tfds.download.DownloadConfig()
  if not os.path.isdir(manual_dir):
    raise CScoreError(f'--manual-dir {manual_dir} is not a folder')
  missing = [f for f in MNIST_FILES if not os.path.isfile(os.path.join(manual_dir, f))]
  if missing:
    raise CScoreError(f'--manual-dir {manual_dir}: missing {", ".join(missing)} '
                      f'(it must hold the four official MNIST files: {", ".join(MNIST_FILES)})')
  return tfds.download.DownloadConfig(manual_dir=manual_dir)


def network_reachable(host=MNIST_HOST, timeout=5.0):
  """Whether the download host resolves and answers; tfds itself retries for minutes."""
  try:
    socket.create_connection((host, 443), timeout=timeout).close()
    return True
  except OSError:
    return False


def proxied():
  """Behind a proxy the host may not resolve here, yet tfds' download works."""
  return any(os.environ.get(v) for v in ('HTTPS_PROXY', 'https_proxy', 'ALL_PROXY', 'all_proxy'))


def load_mnist(data_dir=None, manual_dir=None):
  """MNIST's training split as (images uint8 [n, 784], labels int32 [n]), in tfds' order.

  Pixels stay uint8 here (47 MB); the trainer scales them to [0, 1] after gathering a batch."""
  with native_stderr_silenced():
    import tensorflow_datasets as tfds
  tfds.disable_progress_bar()  # its bars and notes would bury our own lines
  logging.getLogger('absl').setLevel(logging.ERROR)
  builder = tfds.builder('mnist', data_dir=data_dir)
  if not builder.is_prepared():
    print(f'preparing MNIST in {builder.data_dir} (once)', flush=True)
    config = mnist_download_config(manual_dir)
    if manual_dir is None and not proxied() and not network_reachable():
      raise CScoreError(
          f'MNIST is not prepared in {builder.data_dir} and {MNIST_HOST} cannot be reached. '
          'Offline, pass --manual-dir DIR, a folder holding the four official MNIST files '
          f'({", ".join(MNIST_FILES)}).')
    try:
      builder.download_and_prepare(download_config=config)
    except Exception as e:  # tfds' checksum and download errors: keep their first line
      raise CScoreError(f'preparing MNIST failed: {str(e).strip().splitlines()[0]}') from e
  data = tfds.as_numpy(builder.as_dataset(split='train', batch_size=-1, shuffle_files=False))
  images = data['image'].reshape(len(data['image']), -1)
  return images, data['label'].astype(np.int32)


def data_fingerprint(images, labels):
  """A short hash of the data, so that a store is never mixed with runs on other data."""
  h = hashlib.sha256()
  h.update(np.ascontiguousarray(images).tobytes())
  h.update(np.ascontiguousarray(labels).astype(np.int64).tobytes())
  return f'{len(labels)}:{h.hexdigest()[:16]}'


# ------------------------------------------------------------------------------------------------
# Runs: the training subset and the batch order of run s at ratio r.
# ------------------------------------------------------------------------------------------------

def subset_size(n, ratio):
  return int(n * ratio)


def run_generator(seed, n, ratio):
  """The run's random state after drawing its subset, and the subset (as the authors did:
  RandomState(seed).choice, then the epochs' permutations from the same state)."""
  rs = np.random.RandomState(seed)
  subset = rs.choice(n, size=subset_size(n, ratio), replace=False)
  return rs, subset


def training_subset(seed, n, ratio):
  """Indices of the examples that run `seed` trains on at `ratio`."""
  return run_generator(seed, n, ratio)[1]


def held_out_mask(seed, n, ratio):
  mask = np.ones(n, dtype=bool)
  mask[training_subset(seed, n, ratio)] = False
  return mask


def batch_order(seed, n, ratio, epochs, batch_size):
  """[epochs, steps, width] example indices of the run's batches, a fresh permutation of the
  subset each epoch; width = batch_size, or the subset's size if smaller (one batch of it all).
  The last, smaller batch is padded with index 0; see batch_weights."""
  rs, subset = run_generator(seed, n, ratio)
  batch_size = min(batch_size, len(subset))  # no padding wider than the data
  steps = -(-len(subset) // batch_size)
  order = np.zeros((epochs, steps * batch_size), dtype=np.int32)
  for e in range(epochs):
    order[e, :len(subset)] = subset[rs.permutation(len(subset))]
  return order.reshape(epochs, steps, batch_size)


def batch_weights(m, batch_size):
  """[steps, width] weights: 1 for real examples, 0 for the padding of the last batch."""
  batch_size = min(batch_size, m)
  steps = -(-m // batch_size)
  w = np.zeros(steps * batch_size, dtype=np.float32)
  w[:m] = 1
  return w.reshape(steps, batch_size)


# ------------------------------------------------------------------------------------------------
# Model ensemble: K MLPs, each with its own weights.
# ------------------------------------------------------------------------------------------------

def layer_sizes(config, input_size=784):
  return (input_size, *config.hidden, NUM_CLASSES)


def init_mlp(seed, sizes):
  """One MLP's [W1, b1, W2, b2, ...] as JAX's stax.Dense initialises them: W [in, out] glorot
  normal (normal truncated at 2 std, variance 2 / (fan_in + fan_out)), b [1, out] normal with
  std 0.01."""
  rng = np.random.default_rng([seed, 0x5EED])
  params = []
  for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
    w = rng.standard_normal((fan_in, fan_out))
    while (bad := np.abs(w) > 2).any():  # redraw outside [-2, 2]: a truncated normal
      w[bad] = rng.standard_normal(bad.sum())
    std = np.sqrt(2.0 / (fan_in + fan_out)) / 0.87962566103423978  # std of N(0,1) cut at +-2
    params += [(w * std).astype(np.float32), (0.01 * rng.standard_normal((1, fan_out))).astype(np.float32)]
  return params


def stack_models(models):
  """[K models] of [W1, b1, ...] -> [W1 [K, in, out], b1 [K, 1, out], ...]."""
  return [np.stack(p) for p in zip(*models)]


# The functions below take one model (W [in, out], b [1, out], x [B, in]) or K stacked models
# (W [K, in, out], b [K, 1, out], x [K, B, in]) alike: matmul batches over leading axes.

def mlp_logits(params, x, dtype=tf.float32):
  """Logits (fp32) and the inputs of each layer; matmuls in `dtype` (bf16: fp32 accumulation,
  bf16 results)."""
  weights = [tf.cast(p, dtype) for p in params]
  activations = [tf.cast(x, dtype)]
  for i in range(0, len(weights), 2):
    z = tf.matmul(activations[-1], weights[i]) + weights[i + 1]
    activations.append(tf.nn.relu(z) if i + 2 < len(weights) else z)
  return tf.cast(activations.pop(), tf.float32), activations


def mlp_loss(params, x, y, weight, dtype=tf.float32):
  """Sum over models of each one's mean NLL over its batch; `weight` [B] is 0 for the padding
  of a last, smaller batch. Summing keeps each model's gradient exactly its own."""
  logits, _ = mlp_logits(params, x, dtype)
  nll = -tf.gather(tf.nn.log_softmax(logits), y, batch_dims=len(y.shape))
  return tf.reduce_sum(tf.reduce_sum(nll * weight, -1) / tf.reduce_sum(weight))


def mlp_gradients(params, x, y, weight, dtype=tf.float32):
  """The gradient of mlp_loss (fp32), by hand: no gradient for the inputs x, and transposed
  matmuls instead of materialised transposes."""
  weights = [tf.cast(p, dtype) for p in params]  # cast once for forward and backward
  logits, activations = mlp_logits(weights, x, dtype)
  delta = (tf.nn.softmax(logits) - tf.one_hot(y, NUM_CLASSES)) * (weight / tf.reduce_sum(weight))[:, None]
  delta = tf.cast(delta, dtype)
  grads = []
  for i in reversed(range(0, len(params), 2)):
    a = activations[i // 2]
    grads = [tf.cast(tf.matmul(a, delta, transpose_a=True), tf.float32),
             tf.reduce_sum(tf.cast(delta, tf.float32), -2, keepdims=True)] + grads
    if i > 0:
      delta = tf.matmul(delta, weights[i], transpose_b=True) * tf.cast(a > 0, dtype)
  return grads


# ------------------------------------------------------------------------------------------------
# Training: whole epochs of K models inside one compiled function.
#
# Two layouts of the same computation. On a GPU, one batched matmul per layer for all K models
# (weights stacked [K, in, out]) keeps the device busy. On a CPU, TensorFlow's batched matmul
# uses its cores poorly for these small shapes (about 120-140 GFLOP/s here against 217 for a
# large matmul); K independent chains of plain matmuls, one thread each and one chain per core
# at a time, reach 155-180. Either way the K models step in lockstep inside one tf.while_loop.
# ------------------------------------------------------------------------------------------------

@functools.cache  # the devices do not change within a process
def accelerators():
  """The GPUs TensorFlow sees. Its first device query also starts its runtime, which logs
  (e.g. a failed CUDA init on a CPU machine) past TF_CPP_MIN_LOG_LEVEL: hence the silence."""
  with native_stderr_silenced():
    return tf.config.list_physical_devices('GPU')


def cpu_cores():
  return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()


def configure_tensorflow():
  """On a CPU: deterministic ops, and one thread per op with as many ops at once as cores (the
  per-model layout's parallelism). Call it before TensorFlow's first op."""
  tf.get_logger().setLevel('ERROR')  # not its retracing notes
  if accelerators():
    return
  # Bit-identical reruns and resumes; measured here at no cost (within noise) on the CPU.
  tf.config.experimental.enable_op_determinism()
  with contextlib.suppress(RuntimeError):  # the runtime has started: keep its settings
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(cpu_cores())


@functools.cache  # one nvidia-smi call, however many ask
def gpu_memory_bytes():
  """Total memory of the first GPU (nvidia-smi), or None."""
  import subprocess
  try:
    out = subprocess.run(['nvidia-smi', '--query-gpu=memory.total', '--format=csv,noheader,nounits'],
                         capture_output=True, text=True, timeout=10).stdout
    return int(out.split()[0]) * 2**20
  except (OSError, ValueError, IndexError, subprocess.SubprocessError):
    return None


def per_model_bytes(config):
  """Training memory of one model: weights, momentum and gradients, and a batch's activations."""
  sizes = layer_sizes(config)
  weights = sum(i * o + o for i, o in zip(sizes[:-1], sizes[1:]))
  return 4 * (3 * weights + 4 * config.batch_size * sum(sizes))


def default_models_at_once(runs, config=Config()):
  """K. On a CPU: enough chains to keep every core busy (8 is as fast as 16 here). On a GPU:
  as many as a quarter of its memory holds (about 10 MB a model), at most 128."""
  if accelerators():
    k = min(128, (gpu_memory_bytes() or 8 * 2**30) // 4 // per_model_bytes(config))
  else:
    k = max(8, 2 * cpu_cores())
  return int(max(1, min(k, runs)))


def default_eval_rows(config=Config()):
  """Models x examples per evaluation call: its activations take 4 bytes x sum(layer sizes) a
  row, about 1 GB for 160,000 rows; on a GPU, an eighth of its memory."""
  if accelerators():
    return int((gpu_memory_bytes() or 8 * 2**30) // 8 // (4 * sum(layer_sizes(config))))
  return 160_000


def momentum_update(param, velocity, grad, config):
  """v <- momentum v + g; w <- w - lr v, in place (as jax.example_libraries.optimizers.momentum,
  which is also TensorFlow's ApplyMomentum)."""
  return tf.raw_ops.ResourceApplyMomentum(
      var=param.handle, accum=velocity.handle, lr=tf.constant(config.learning_rate),
      grad=grad, momentum=tf.constant(config.momentum))


class EnsembleTrainer:
  """Compiled training and evaluation of K models at once, on data held on the device."""

  def __init__(self, images, labels, config, per_model=None, eval_rows=None):
    self.config = config
    self.images = tf.constant(images)   # uint8: 4x less to gather than floats; cast after
    self.labels = tf.constant(labels, tf.int32)
    self.per_model = (not accelerators()) if per_model is None else per_model
    self.dtype = tf.bfloat16 if config.precision == 'bfloat16' else tf.float32
    self.eval_rows = eval_rows or default_eval_rows(config)  # bounds evaluation's memory
    self._compiled = {}                 # K -> (weights, velocities, epoch function)
    self._predict = tf.function(self._predict_chunk)  # traced once per K

  def _inputs(self, idx):
    return tf.cast(tf.cast(tf.gather(self.images, idx), tf.float32) * (1.0 / 255.0), self.dtype)

  def _groups(self, k):
    """How the K models are laid out: K groups of one, or one group of K."""
    return [[m] for m in range(k)] if self.per_model else [list(range(k))]

  def _state(self, k):
    """Variables for K models and the compiled epoch over them, made once per K."""
    if k not in self._compiled:
      sizes = layer_sizes(self.config)
      shapes = [s for i, o in zip(sizes[:-1], sizes[1:]) for s in ((i, o), (1, o))]
      groups = self._groups(k)
      lead = lambda g: () if self.per_model else (len(g),)  # a plain 2-D chain, or stacked
      params = [[tf.Variable(tf.zeros(lead(g) + s)) for s in shapes] for g in groups]
      velocity = [[tf.Variable(tf.zeros(lead(g) + s)) for s in shapes] for g in groups]
      epoch = tf.function(lambda order, weight: self._epoch(groups, params, velocity, order, weight),
                          reduce_retracing=True)  # one trace for all subset sizes
      self._compiled[k] = (params, velocity, epoch)
    return self._compiled[k]

  def _epoch(self, groups, params, velocity, order, weight):
    """One epoch: order [K, steps, B] example indices, weight [steps, B]."""
    def step(s):
      updates = []
      for g, p, v in zip(groups, params, velocity):
        idx = order[g[0], s] if self.per_model else order[:, s]
        grads = mlp_gradients([w.read_value() for w in p], self._inputs(idx),
                              tf.gather(self.labels, idx), weight[s], self.dtype)
        with tf.control_dependencies(grads):  # update in place once the old weights are used
          updates += [momentum_update(w, vel, gr, self.config) for w, vel, gr in zip(p, v, grads)]
      with tf.control_dependencies(updates):
        return s + 1

    tf.while_loop(lambda s: s < tf.shape(order)[1], step, [tf.constant(0)])

  def train(self, seeds, ratio, on_epoch=None):
    """Trains the runs `seeds` of `ratio` together; returns their weights, stacked [K, ...]."""
    c, n, k = self.config, len(self.labels), len(seeds)
    params, velocity, epoch_fn = self._state(k)
    initial = stack_models([init_mlp(s, layer_sizes(c)) for s in seeds])
    for g, p, v in zip(self._groups(k), params, velocity):
      for w, vel, value in zip(p, v, initial):
        w.assign(value[g[0]] if self.per_model else value)
        vel.assign(tf.zeros_like(vel))
    orders = np.stack([batch_order(s, n, ratio, c.epochs, c.batch_size) for s in seeds], axis=1)
    weight = tf.constant(batch_weights(subset_size(n, ratio), c.batch_size))
    for e in range(c.epochs):
      epoch_fn(tf.constant(orders[e]), weight)
      if on_epoch:
        on_epoch(e)
    return [tf.stack([p[j] for p in params]) if self.per_model else params[0][j].read_value()
            for j in range(len(initial))]

  def _predict_chunk(self, params, start, size):
    """[K, size] bool: which of examples start..start+size each model gets right."""
    x = self._inputs(tf.range(start, start + size))
    y = self.labels[start:start + size]
    if self.per_model:  # K independent chains, run side by side on the cores
      logits = tf.stack([mlp_logits([p[m] for p in params], x, self.dtype)[0]
                         for m in range(params[0].shape[0])])
    else:  # [1, size, in] x [K, in, out]: matmul broadcasts the shared inputs
      logits = mlp_logits(params, x[None], self.dtype)[0]
    return tf.argmax(logits, -1, output_type=tf.int32) == y[None]

  def correct(self, params):
    """[K, n] bool: which examples each model classifies correctly."""
    n, k = len(self.labels), int(params[0].shape[0])
    chunk = max(1000, self.eval_rows // k)
    return np.concatenate([self._predict(params, tf.constant(s), tf.constant(min(chunk, n - s))).numpy()
                           for s in range(0, n, chunk)], axis=1)


def train_run_group(trainer, ratio, seeds, on_epoch=None):
  """Trains runs `seeds` at `ratio`; returns (held_out [K, n] bool, correct [K, n] bool)."""
  n = len(trainer.labels)
  params = trainer.train(seeds, ratio, on_epoch)
  held_out = np.stack([held_out_mask(s, n, ratio) for s in seeds])
  return held_out, trainer.correct(params)


# ------------------------------------------------------------------------------------------------
# Results store: every finished run, saved as it finishes.
#
#   OUT/cscore-runs/settings.json     what the runs depend on (training settings, data hash)
#   OUT/cscore-runs/runs-*.npz        one file per group: ratio, seeds, held-out and correct
#                                     masks, bit-packed (7.5 KB each per run)
# Each file is written to a temporary name and renamed, so a killed run never leaves half a file.
# ------------------------------------------------------------------------------------------------

STORE_DIR = 'cscore-runs'
SETTINGS_FILE = 'settings.json'


def store_settings(config, fingerprint):
  s = {k: getattr(config, k) for k in TRAINING_SETTINGS}
  s['hidden'] = list(s['hidden'])
  s['data'] = fingerprint
  return s


def write_atomically(path, write):
  """Calls write(file) on a temporary file beside path, then renames it to path."""
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix='.tmp-')
  try:
    with os.fdopen(fd, 'wb') as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.unlink(tmp)
    raise


def lock_store(out_dir):
  """Creates the store's folder and locks it for this process (the lock ends with it), so a
  second process on the same out-dir refuses at once instead of interleaving runs."""
  path = os.path.join(out_dir, STORE_DIR)
  try:
    os.makedirs(path, exist_ok=True)
    tempfile.TemporaryFile(dir=out_dir).close()  # the outputs go to out_dir itself
    lock = open(os.path.join(path, '.lock'), 'a')
  except OSError as e:
    raise CScoreError(f'cannot write to --out-dir {out_dir}: {e.strerror or e}') from e
  try:
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    lock.close()
    raise CScoreError(f'another mnist.py is running on {path}; wait for it to end, or use '
                      'another --out-dir') from None
  return lock


def open_store(out_dir, settings, fresh=False):
  """The store's folder, created or checked against `settings`; `fresh` empties it first."""
  path = os.path.join(out_dir, STORE_DIR)
  settings_path = os.path.join(path, SETTINGS_FILE)
  os.makedirs(path, exist_ok=True)
  for folder in (out_dir, path):  # under the lock: no other process is writing here
    for name in os.listdir(folder):
      if name.startswith('.tmp-') or (folder == path and fresh and
                                      (name.endswith('.npz') or name == SETTINGS_FILE)):
        os.unlink(os.path.join(folder, name))  # what a killed write left, or --fresh
  if not os.path.exists(settings_path):
    if any(name.startswith('runs-') for name in os.listdir(path)):
      raise CScoreError(f'{path} holds runs but no {SETTINGS_FILE}: their settings are unknown; '
                        'use --fresh to start over, or another --out-dir')
    write_atomically(settings_path, lambda f: f.write(json.dumps(settings, indent=1).encode()))
    return path
  try:
    with open(settings_path) as f:
      stored = json.load(f)
  except (OSError, ValueError) as e:
    raise CScoreError(f'{settings_path} is unreadable ({e}); use --fresh to start over') from e
  diffs = [f'{k}: store has {stored.get(k)!r}, this run {v!r}'
           for k, v in settings.items() if stored.get(k) != v]
  if diffs:
    raise CScoreError(f'the results store {path} was made with other settings '
                      f'({"; ".join(diffs)}); use them, another --out-dir, or --fresh')
  return path


def save_runs(store, ratio, seeds, held_out, correct):
  name = f'runs-r{ratio_key(ratio):.6f}-s{seeds[0]:06d}-{seeds[-1]:06d}-k{len(seeds)}.npz'
  arrays = dict(ratio=np.float64(ratio), seeds=np.asarray(seeds, np.int64),
                n=np.int64(held_out.shape[1]),
                held_out=np.packbits(held_out, axis=1), correct=np.packbits(correct, axis=1))
  write_atomically(os.path.join(store, name), lambda f: np.savez(f, **arrays))


def ratio_key(ratio):
  return round(float(ratio), 6)


def load_runs(store):
  """{(ratio, seed): (held_out [n] bool, correct [n] bool)} of every run in the store."""
  runs = {}
  for name in sorted(os.listdir(store)):
    if not (name.startswith('runs-') and name.endswith('.npz')):
      continue
    path = os.path.join(store, name)
    try:
      with np.load(path, allow_pickle=False) as f:
        ratio, seeds, n = float(f['ratio']), f['seeds'], int(f['n'])
        held_out = np.unpackbits(f['held_out'], axis=1, count=n).astype(bool)
        correct = np.unpackbits(f['correct'], axis=1, count=n).astype(bool)
    except Exception as e:
      raise CScoreError(f'{path} is corrupt or unreadable ({type(e).__name__}: {e}); '
                        'delete it to retrain its runs, or use --fresh to start over') from e
    for s, h, c in zip(seeds, held_out, correct):
      runs[ratio_key(ratio), int(s)] = (h, c)
  return runs


def planned_groups(config, done, k):
  """The (ratio, seeds) groups still to train, round-robin over ratios: a run stopped early
  has runs at every ratio, so its partial scores mean something."""
  per_ratio = []
  for ratio in config.ratios:
    todo = [s for s in range(config.seed, config.seed + config.runs)
            if (ratio_key(ratio), s) not in done]
    per_ratio.append([(ratio, todo[i:i + k]) for i in range(0, len(todo), k)])
  rounds = max((len(g) for g in per_ratio), default=0)
  return [g[j] for j in range(rounds) for g in per_ratio if j < len(g)]


# ------------------------------------------------------------------------------------------------
# Estimation: C-scores from the stored runs.
# ------------------------------------------------------------------------------------------------

def runs_at_ratio(runs, config, ratio):
  """(held_out [R, n], correct [R, n]) of this command's runs at `ratio` that are done."""
  found = [runs[ratio_key(ratio), s] for s in range(config.seed, config.seed + config.runs)
           if (ratio_key(ratio), s) in runs]
  if not found:
    return None
  return np.stack([h for h, _ in found]), np.stack([c for _, c in found])


def fraction_correct(mask, correct):
  """(p, count) per example over the runs where mask is set: p = the fraction of those runs
  that classify it correctly, NaN where there are none. With mask = held_out, p is C_r."""
  count = mask.sum(0)
  hits = (mask & correct).sum(0)
  with np.errstate(invalid='ignore', divide='ignore'):
    return np.where(count > 0, hits / np.maximum(count, 1), np.nan), count


def mean_over_ratios(per_ratio):
  """Per example, the mean over the ratios that have a value (not NaN); NaN if none has."""
  per_ratio = np.asarray(per_ratio, dtype=np.float64)
  counted = ~np.isnan(per_ratio)
  total = np.where(counted, per_ratio, 0).sum(0)
  with np.errstate(invalid='ignore', divide='ignore'):
    return np.where(counted.any(0), total / counted.sum(0), np.nan)


def binomial_variance(p, count):
  """Variance of a per-ratio score p measured on `count` held-out runs: the Jeffreys posterior
  variance a b / ((a + b)^2 (a + b + 1)), a = hits + 1/2, b = misses + 1/2. Unlike p (1 - p) / count
  it is not 0 at p = 0 or 1, where most examples sit. NaN where count is 0."""
  a, b = p * count + 0.5, (1 - p) * count + 0.5
  return a * b / ((a + b) ** 2 * (a + b + 1))


def standard_error(per_ratio, counts):
  """Standard error of the C-score, the mean of L independent per-ratio scores:
  sqrt(sum_r var_r) / L, over the ratios with an estimate."""
  var = binomial_variance(per_ratio, counts)
  counted = ~np.isnan(per_ratio)
  with np.errstate(invalid='ignore', divide='ignore'):
    return np.where(counted.any(0), np.sqrt(np.where(counted, var, 0).sum(0)) / counted.sum(0), np.nan)


def runs_to_halve_standard_error(est):
  """The --runs at which the median standard error would be half today's, if each example's
  per-ratio scores stayed as they are. Not simply 4x: at a score of 1, the Jeffreys variance
  falls about as 1/count^2, so there 2x the runs halve it."""
  runs = int(est.runs.max())
  target = np.nanmedian(est.standard_error) / 2
  for factor in np.arange(1.25, 16.01, 0.25):
    if np.nanmedian(standard_error(est.per_ratio, est.held_out_counts * factor)) <= target:
      return int(np.ceil(runs * factor))
  return 16 * runs


def heldout_accuracy(held_out, correct):
  """Mean over runs of each run's accuracy on the examples it held out."""
  return float(np.mean((held_out & correct).sum(1) / np.maximum(held_out.sum(1), 1)))


@dataclasses.dataclass
class Estimates:
  """All that is estimated from the runs; saved as cscores-details.npz."""
  ratios: np.ndarray            # [L]
  runs: np.ndarray              # [L] runs done per ratio
  heldout_accuracy: np.ndarray  # [L] mean accuracy of a run on the examples it held out
  per_ratio: np.ndarray         # [L, n] C_r: accuracy on the example of the runs that held it out
  held_out_counts: np.ndarray   # [L, n] how many runs held the example out
  cscores: np.ndarray           # [n] mean of per_ratio over ratios
  standard_error: np.ndarray    # [n] of cscores
  memorization_per_ratio: np.ndarray  # [L, n] P(correct | trained on it) - P(correct | held out)
  memorization: np.ndarray      # [n] its mean over ratios (Feldman & Zhang, 2020)


def estimate(runs, config, n):
  """Estimates from this command's runs (its ratios x seeds) that are done."""
  L = len(config.ratios)
  per_ratio, mem = np.full((L, n), np.nan), np.full((L, n), np.nan)
  counts = np.zeros((L, n), dtype=np.int64)
  done, accuracy = np.zeros(L, dtype=np.int64), np.full(L, np.nan)
  for j, ratio in enumerate(config.ratios):
    found = runs_at_ratio(runs, config, ratio)
    if found is None:
      continue
    held_out, correct = found
    per_ratio[j], counts[j] = fraction_correct(held_out, correct)
    mem[j] = fraction_correct(~held_out, correct)[0] - per_ratio[j]
    done[j], accuracy[j] = len(held_out), heldout_accuracy(held_out, correct)
  return Estimates(np.array(config.ratios), done, accuracy, per_ratio, counts,
                   mean_over_ratios(per_ratio), standard_error(per_ratio, counts), mem,
                   mean_over_ratios(mem))


# ------------------------------------------------------------------------------------------------
# Figures
# ------------------------------------------------------------------------------------------------

def pyplot():
  import matplotlib
  matplotlib.use('Agg')  # files only, no display needed
  import matplotlib.pyplot as plt
  return plt


def show_digit(ax, image, title=None):
  ax.imshow(image.reshape(28, 28), cmap='gray', vmin=0, vmax=255)  # as the authors' figures
  ax.set_axis_off()
  if title:
    ax.set_title(title, fontsize=7, pad=2)


def extreme_examples(scores, labels, digit, per_side):
  """Indices of the `per_side` highest- and lowest-scored examples of a class (NaN skipped)."""
  idx = np.flatnonzero((labels == digit) & ~np.isnan(scores))
  ranked = idx[np.argsort(-scores[idx], kind='stable')]
  return ranked[:per_side], ranked[::-1][:per_side]


def examples_figure(images, labels, scores, path, per_side=10):
  """Per digit, one row: the highest-scored examples, a gap, the lowest-scored ones."""
  plt = pyplot()
  cols = 2 * per_side + 1
  fig, axes = plt.subplots(NUM_CLASSES, cols, figsize=(0.45 * cols, 0.45 * NUM_CLASSES),
                           gridspec_kw=dict(wspace=0.05, hspace=0.05))
  for digit in range(NUM_CLASSES):
    high, low = extreme_examples(scores, labels, digit, per_side)
    cells = list(high) + [None] * (per_side - len(high) + 1) + list(low)
    for col, ax in enumerate(axes[digit]):
      ax.set_axis_off()
      if col < len(cells) and cells[col] is not None:
        show_digit(ax, images[cells[col]])
  axes[0, per_side // 2].set_title('highest C-scores', loc='left', fontsize=9)
  axes[0, per_side + 1 + per_side // 2].set_title('lowest C-scores', loc='left', fontsize=9)
  fig.savefig(path, bbox_inches='tight')
  plt.close(fig)


def hard_examples(scores, count, top=0.5):
  """`count` examples with C-scores spread evenly over [0, top], the lowest first: with few
  runs the very hardest all sit at 0 and their curves coincide."""
  idx = np.flatnonzero(~np.isnan(scores))
  chosen = []
  for target in np.linspace(0, top, min(count, len(idx))):
    free = idx[~np.isin(idx, chosen)]
    chosen.append(free[np.argmin(np.abs(scores[free] - target))])
  return np.array(chosen)


def cscores_figure(est, images, labels, path, hard=6):
  """The distribution of C-scores, the learning curve, C-score per class, and C_r against the
  subset ratio for hard examples (spread over C in [0, 0.5], not only the very hardest, which
  with few runs all sit at 0 on top of each other)."""
  plt = pyplot()
  fig = plt.figure(figsize=(13, 8.5), layout='constrained')
  grid = fig.add_gridspec(2, 3)
  valid = est.cscores[~np.isnan(est.cscores)]

  ax = fig.add_subplot(grid[0, 0])
  ax.hist(valid, bins=50, range=(0, 1), log=True, color='tab:blue')
  ax.set(xlabel='C-score', ylabel='examples (log scale)',
         title=f'{len(valid)} examples, {(valid < 0.5).sum()} below 0.5')

  ax = fig.add_subplot(grid[0, 1])
  has = est.runs > 0
  ax.plot(est.ratios[has], est.heldout_accuracy[has], 'o-')
  ax.set(xlabel='subset ratio (part of the training set trained on)', ylabel='mean held-out accuracy',
         title='learning curve')
  ax.grid(alpha=0.3)

  ax = fig.add_subplot(grid[0, 2])
  scored = ~np.isnan(est.cscores)
  per_class = [est.cscores[scored & (labels == d)].mean() if (scored & (labels == d)).any() else 0
               for d in range(NUM_CLASSES)]
  ax.bar(range(NUM_CLASSES), per_class, color='tab:green')
  ax.set(xlabel='digit', ylabel='mean C-score', xticks=range(NUM_CLASSES),
         ylim=(max(0, min(per_class) - 0.02), 1), title='C-score per class')

  ax = fig.add_subplot(grid[1, :2])
  chosen = hard_examples(est.cscores, hard)
  for k, i in enumerate(chosen):
    ax.plot(est.ratios, est.per_ratio[:, i], 'o-', color=f'C{k}',
            label=f'#{i}: label {labels[i]}, C = {est.cscores[i]:.2f}')
  ax.set(xlabel='subset ratio', ylabel='C_r: held-out accuracy on the example', ylim=(-0.03, 1.03),
         title='hard examples (C from 0 to 0.5): held-out accuracy on them by subset ratio')
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  cells = grid[1, 2].subgridspec(2, (hard + 1) // 2)
  for k, i in enumerate(chosen):
    sub = fig.add_subplot(cells[k // ((hard + 1) // 2), k % ((hard + 1) // 2)])
    show_digit(sub, images[i])
    sub.set_title(f'#{i}, label {labels[i]}', fontsize=8, color=f'C{k}')
  fig.savefig(path)
  plt.close(fig)


def memorization_figure(est, images, labels, path, rows=3, cols=10):
  """The most memorized examples: right when trained on, wrong when held out."""
  plt = pyplot()
  mem = np.where(np.isnan(est.memorization), -np.inf, est.memorization)
  chosen = np.lexsort((est.cscores, -mem))[:rows * cols]  # ties: the lower C-score first
  fig, axes = plt.subplots(rows, cols, figsize=(1.1 * cols, 1.35 * rows))
  for ax, i in zip(axes.flat, chosen):
    show_digit(ax, images[i], f'#{i} label {labels[i]}\nmem {est.memorization[i]:.2f}')
  fig.suptitle('most memorized: P(correct | trained on it) - P(correct | held out)', fontsize=9)
  fig.savefig(path, bbox_inches='tight')
  plt.close(fig)


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------

def parse_ratios(text):
  try:
    ratios = tuple(float(r) for r in text.split(','))
  except ValueError:
    raise argparse.ArgumentTypeError(f'not a comma-separated list of numbers: {text!r}')
  bad = [r for r in ratios if not 0 < r < 1]
  if bad:
    raise argparse.ArgumentTypeError(f'ratios must lie strictly between 0 and 1, got {bad[0]}')
  if len(set(map(ratio_key, ratios))) != len(ratios):
    raise argparse.ArgumentTypeError(f'repeated ratio in {text!r}')
  return ratios


def int_at_least(minimum):
  """An argparse type: a whole number >= minimum."""
  def parse(text):
    try:
      value = int(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f'not a whole number: {text!r}')
    if value < minimum:
      raise argparse.ArgumentTypeError(f'must be at least {minimum}, got {value}')
    return value
  return parse


class OneLineErrorParser(argparse.ArgumentParser):
  def error(self, message):
    self.exit(2, f'{self.prog}: error: {message} (see --help)\n')


def parse_args(argv=None):
  """(Config, argparse namespace with the paths and --fresh)."""
  d = Config()
  p = OneLineErrorParser(
      prog='mnist.py', description='Estimate the C-score of every MNIST training example.',
      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument('--runs', type=int_at_least(1), default=d.runs, help='models trained per ratio')
  p.add_argument('--ratios', type=parse_ratios, default=d.ratios,
                 help='subset ratios, comma-separated, each in (0, 1)')
  p.add_argument('--epochs', type=int_at_least(1), default=d.epochs)
  p.add_argument('--batch-size', type=int_at_least(1), default=d.batch_size)
  p.add_argument('--seed', type=int_at_least(0), default=d.seed, help='first run seed')
  p.add_argument('--precision', choices=('float32', 'bfloat16'), default=d.precision)
  p.add_argument('--models-at-once', type=int_at_least(0), default=d.models_at_once,
                 help='K, the models trained together; 0 picks it from the device')
  p.add_argument('--out-dir', default='.', help='where the outputs and the results store go')
  p.add_argument('--data-dir', default=None, help="tensorflow-datasets' data dir")
  p.add_argument('--manual-dir', default=None,
                 help='a folder holding the four official MNIST .gz files, for offline machines')
  p.add_argument('--fresh', action='store_true', help='discard the results store and start over')
  args = p.parse_args(argv)
  if args.seed + args.runs > 2**32:  # numpy's RandomState takes seeds below 2^32
    p.error(f'--seed + --runs must stay below 2^32 = {2**32}')
  config = dataclasses.replace(d, runs=args.runs, ratios=args.ratios, epochs=args.epochs,
                               batch_size=args.batch_size, seed=args.seed,
                               precision=args.precision, models_at_once=args.models_at_once)
  return config, args


def summary_lines(est, trained, seconds):
  lines = ['held-out accuracy per ratio (runs done):']
  lines += [f'  {r:.2f}: {acc:.4f} ({k})' for r, k, acc in zip(est.ratios, est.runs, est.heldout_accuracy)]
  scores, se = est.cscores, est.standard_error
  valid = scores[~np.isnan(scores)]
  lines.append(f'C-scores: {len(valid)} examples scored, {int(np.isnan(scores).sum())} never held out; '
               f'{(valid < 0.5).sum()} below 0.5, {(valid < 0.1).sum()} below 0.1')
  if len(valid):
    runs = int(est.runs.max())
    more = runs_to_halve_standard_error(est)
    lines.append(f'standard error: median {np.nanmedian(se):.4f}, 95th percentile '
                 f'{np.nanpercentile(se, 95):.4f}; --runs {more} would halve the median '
                 f'({more - runs} more per ratio)')
  rate = trained / seconds if seconds > 0 else float('nan')
  lines.append(f'models trained now: {trained} in {datetime.timedelta(seconds=round(seconds))} '
               f'({rate:.3f} models/s); models in the estimate: {est.runs.sum()}')
  return lines


OUTPUTS = dict(scores='cscores.npy', details='cscores-details.npz', examples='mnist-examples.pdf',
               overview='mnist-cscores.pdf', memorized='mnist-memorized.pdf')


def write_outputs(out_dir, images, labels, runs, config):
  """Estimates from the stored runs, written as the output files; returns them."""
  est = estimate(runs, config, len(labels))
  path = {k: os.path.join(out_dir, name) for k, name in OUTPUTS.items()}
  write_atomically(path['scores'], lambda f: np.save(f, est.cscores.astype(np.float32)))
  write_atomically(path['details'], lambda f: np.savez_compressed(f, **dataclasses.asdict(est)))
  if not np.isnan(est.cscores).all():
    examples_figure(images, labels, est.cscores, path['examples'])
    cscores_figure(est, images, labels, path['overview'])
    memorization_figure(est, images, labels, path['memorized'])
  return est


def train_missing_runs(trainer, store, runs, groups, epochs):
  """Trains the groups, saving each to the store and `runs` as it finishes, under a progress
  bar; Ctrl-C stops it, keeping what is finished. Returns (models trained, interrupted)."""
  todo, trained = sum(len(seeds) for _, seeds in groups), 0
  with tqdm(total=todo, unit='model', dynamic_ncols=True, smoothing=0.1,
            bar_format='{l_bar}{bar}| {n:.1f}/{total} models [{elapsed}<{remaining}, {rate_fmt}]') as bar:
    try:
      for ratio, seeds in groups:
        bar.set_description(f'ratio {ratio:.2f}')
        done_before = bar.n  # whole models at the end of a group, parts of them per epoch
        held_out, correct = train_run_group(trainer, ratio, seeds, on_epoch=lambda e: bar.update(
            done_before + len(seeds) * (e + 1) / epochs - bar.n))
        save_runs(store, ratio, seeds, held_out, correct)
        for s, h, c in zip(seeds, held_out, correct):
          runs[ratio_key(ratio), s] = (h, c)
        trained += len(seeds)
    except KeyboardInterrupt:
      return trained, True
  return trained, False


INTERRUPTED = 'interrupted: finished runs are kept in the store; run the same command again to resume'


def main(argv=None):
  config, args = parse_args(argv)
  start = time.perf_counter()
  configure_tensorflow()
  try:
    with lock_store(args.out_dir):
      images, labels = load_mnist(args.data_dir, args.manual_dir)
      store = open_store(args.out_dir, store_settings(config, data_fingerprint(images, labels)),
                         fresh=args.fresh)
      runs = load_runs(store)
      k = min(config.models_at_once, config.runs) or default_models_at_once(config.runs, config)
      groups = planned_groups(config, runs, k)
      todo = sum(len(seeds) for _, seeds in groups)
      print(f'{len(labels)} examples; {len(config.ratios)} ratios x {config.runs} runs: '
            f'{len(config.ratios) * config.runs - todo} done, {todo} to train, {k} at a time')
      trained, interrupted = train_missing_runs(EnsembleTrainer(images, labels, config), store,
                                                runs, groups, config.epochs)
      est = write_outputs(args.out_dir, images, labels, runs, config)
  except (CScoreError, OSError) as e:
    print(f'mnist.py: error: {e}', file=sys.stderr)
    return 1
  except (MemoryError, tf.errors.ResourceExhaustedError):
    print('mnist.py: error: out of memory; use a smaller --models-at-once or --batch-size',
          file=sys.stderr)
    return 1
  except KeyboardInterrupt:
    print(f'mnist.py: {INTERRUPTED}', file=sys.stderr)
    return 130
  for line in summary_lines(est, trained, time.perf_counter() - start):
    print(line)
  if interrupted:
    print(f'mnist.py: {INTERRUPTED}', file=sys.stderr)
    return 130
  return 0


if __name__ == '__main__':
  sys.exit(main())
