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

This file is the method: it reproduces the authors' MNIST demo (same data order, model,
optimiser, subsets and estimator), top to bottom in the order of the paper's method section:

  Settings                the paper's defaults, which the command line overrides
  Data                    MNIST's 60,000 training examples, in tensorflow-datasets' order
  Subsets and batch order the authors' random draws, run by run
  Model                   the MLP: initialisation, forward pass, loss and its gradient
  Training step           SGD with momentum for K models in lockstep, and the learning record
  Estimator               held-out counts, C_r and C (with memorization and the halves' C_r
                          from the same masks)
  Examples figure         per class, the most typical and the most unusual examples
  main                    the paper's outer loop: train the runs the store lacks, group by
                          group, saving each; then estimate and write

It differs from the authors' code in how the work is done: K models of one ratio train in
lockstep, whole epochs in one compiled TensorFlow loop, each with its own subset, batch order and
initialisation (one model at a time leaves the device mostly idle). Everything that changes no
score lives in the package cscore/ beside this file, one module per concern (see its modules'
docstrings): other data sets and files, devices, the results store that makes a stopped run
resume, locks, shards and merge, progress, analysis beyond the C-score (standard errors,
reliability, proxies, the combined score), the other figures, the report and the command line.
This file needs cscore/ beside it: copied elsewhere alone, it does not run.

Usage:
    python mnist.py --runs 4                          # a first look: 36 models, minutes
    python mnist.py                                   # full protocol: 9 ratios x 200 runs
    python mnist.py --runs 4 --manual-dir DIR         # offline, DIR holds MNIST's four .gz files
    python mnist.py --shard $I/$N; python mnist.py --estimate-only   # N processes, then outputs
    python mnist.py --dataset fashion_mnist           # a tensorflow-datasets image data set
    python mnist.py --data FILE.npz                   # your own arrays x, y
"""

import dataclasses
import functools
import sys
import time
import typing

import numpy as np

from cscore import analysis
from cscore import cli
from cscore import datasets
from cscore import devices
from cscore import errors
from cscore import figures
from cscore import locks
from cscore import outputs
from cscore import progress
from cscore import runtime  # on import, sets what must be set before TensorFlow loads
from cscore import shards
from cscore import store

tf = runtime.tf  # TensorFlow, imported on its first use: --help answers at once


# ------------------------------------------------------------------------------------------------
# Settings: the paper's defaults; the command line overrides each of them (cscore/cli.py).
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
  inputs: int = 784            # set from the data, not by a flag: the MLP's input width
  classes: int = 10            # and its outputs, one per class


# ------------------------------------------------------------------------------------------------
# Data: MNIST's 60,000 training examples, in tensorflow-datasets' order (the scores' order).
# Another tfds image data set (--dataset) or the user's own arrays (--data): cscore/datasets.py.
# ------------------------------------------------------------------------------------------------

DIGITS = tuple(str(d) for d in range(10))


def load_mnist(data_dir=None, manual_dir=None):
  """MNIST's training split as a datasets.Data: images uint8 [n, 784], labels int32 [n], in
  tfds' order, prepared once (downloaded, or offline from manual_dir's official files). Pixels
  stay uint8 here (47 MB); the trainer scales them to [0, 1] after gathering a batch."""
  with runtime.native_stderr_silenced():
    import tensorflow_datasets as tfds
  builder = datasets.prepare_once(tfds.builder('mnist', data_dir=data_dir), manual_dir)
  data = tfds.as_numpy(builder.as_dataset(split='train', batch_size=-1, shuffle_files=False))
  images = data['image'].reshape(len(data['image']), -1)
  return datasets.Data('mnist', images, data['label'].astype(np.int32), DIGITS, (28, 28))


def with_data(config, data):
  """The settings with the model's input width and classes taken from the data."""
  return dataclasses.replace(config, inputs=data.x.shape[1], classes=len(data.class_names))


# ------------------------------------------------------------------------------------------------
# Subsets and batch order: the training subset and the batches of run s at ratio r, drawn as the
# authors drew them, so that run s here trains on the examples their run s trained on.
# ------------------------------------------------------------------------------------------------

def subset_size(n, ratio):
  return int(n * ratio)


def check_subsets(config, n):
  """Refuses a ratio whose subset would be empty: int(n r) examples must be at least one."""
  for ratio in config.ratios:
    if subset_size(n, ratio) < 1:
      raise errors.CScoreError(f'--ratios {ratio}: a subset of int({n} x {ratio}) = 0 examples; '
                               f'use a ratio of at least {1 / n:.2g}')


def draw_subset(seed, n, ratio):
  """(the run's subset, its random state after the draw): RandomState(seed).choice, whose
  state then draws the epochs' permutations, as the authors' code does."""
  rs = np.random.RandomState(seed)
  return rs.choice(n, size=subset_size(n, ratio), replace=False), rs


def training_subset(seed, n, ratio):
  """Indices of the examples that run `seed` trains on at `ratio`."""
  return draw_subset(seed, n, ratio)[0]


def held_out_mask(seed, n, ratio):
  mask = np.ones(n, dtype=bool)
  mask[training_subset(seed, n, ratio)] = False
  return mask


def batch_order(seed, n, ratio, epochs, batch_size):
  """[epochs, steps, width] example indices of the run's batches, a fresh permutation of the
  subset each epoch; width = batch_size, or the subset's size if smaller (one batch of it all).
  The last, smaller batch is padded with index 0; see batch_weights."""
  subset, rs = draw_subset(seed, n, ratio)
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
# Model: the authors' MLP, 784 -> 512 -> 256 -> 10 with ReLUs, and its mean NLL. Its gradient is
# TensorFlow's autodiff: a hand-written backward was measured no faster (benchmarks/throughput.py).
#
# These functions take one model (W [in, out], b [1, out], x [B, in]) or m models stacked
# (W [m, in, out], b [m, 1, out], x [m, B, in] or a shared [B, in]) alike: matmul batches over
# leading axes.
# ------------------------------------------------------------------------------------------------

def layer_sizes(config):
  return (config.inputs, *config.hidden, config.classes)


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
  """[m models] of [W1, b1, ...] -> [W1 [m, in, out], b1 [m, 1, out], ...]."""
  return [np.stack(p) for p in zip(*models)]


def mlp_logits(params, x, dtype='float32'):
  """The logits (fp32); matmuls in `dtype` (bf16: fp32 accumulation, bf16 results)."""
  weights = [tf.cast(p, dtype) for p in params]
  a = tf.cast(x, dtype)
  for i in range(0, len(weights), 2):
    z = tf.matmul(a, weights[i]) + weights[i + 1]
    a = tf.nn.relu(z) if i + 2 < len(weights) else z
  return tf.cast(a, tf.float32)


def mean_nll(logits, y, weight):
  """Sum over models of each one's mean NLL over its batch; `weight` [B] is 0 for the padding
  of a last, smaller batch. Summing keeps each model's gradient exactly its own."""
  nll = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
  return tf.reduce_sum(tf.reduce_sum(nll * weight, -1) / tf.reduce_sum(weight))


def loss_gradients(params, x, y, weight, dtype='float32'):
  """(the gradient of mean_nll for params, fp32; the forward pass's softmax probabilities,
  which the learning record reads: one small op more, no second forward pass)."""
  with tf.GradientTape() as tape:
    tape.watch(params)
    logits = mlp_logits(params, x, dtype)
    loss = mean_nll(logits, y, weight)
  return tape.gradient(loss, params), tf.nn.softmax(logits)


# ------------------------------------------------------------------------------------------------
# Training step: whole epochs of K models, in lockstep, inside one compiled tf.while_loop.
#
# Two layouts of the same computation, decided by the device (devices.layout, which says why): on
# a GPU one chain of all K models, weights stacked [K, in, out], one batched matmul per layer; on
# a CPU K chains of one model each, plain matmuls, one thread each and one chain per core.
#
# A chain is an int m (model m alone, its arrays 2-D) or a slice of models (their arrays stacked
# [m, ...]). Indexing any [K, ...] array by a chain gives that chain's part, in its layout.
# ------------------------------------------------------------------------------------------------

def momentum_update(param, velocity, grad, config):
  """v <- momentum v + g; w <- w - lr v, in place (as jax.example_libraries.optimizers.momentum,
  which is also TensorFlow's ApplyMomentum)."""
  return tf.raw_ops.ResourceApplyMomentum(
      var=param.handle, accum=velocity.handle, lr=tf.constant(config.learning_rate),
      grad=grad, momentum=tf.constant(config.momentum))


def record_step(record, rows, labels, probabilities, weight):
  """Adds one step's learning signals of all K models to their record [K, n, 2], in one scatter:
  per example of each batch (rows, labels [K, B]), seen before the step's update, 1 if the model
  classifies it correctly else 0, and its probability of the label, each times `weight` (0 on
  padding). Summed over epochs they are the paper's learning-speed proxies of the C-score."""
  hit = tf.cast(tf.argmax(probabilities, -1, output_type=labels.dtype) == labels, tf.float32)
  confidence = tf.gather(probabilities, labels, batch_dims=2)
  models = tf.broadcast_to(tf.range(tf.shape(rows, out_type=rows.dtype)[0])[:, None], tf.shape(rows))
  return record.scatter_nd_add(tf.stack([models, rows], -1), tf.stack([hit * weight, confidence * weight], -1))


def chain_shape(chain, shape):
  """The shape of a chain's part of a [K, *shape] array."""
  return shape if isinstance(chain, int) else (chain.stop - chain.start, *shape)


def stack_chains(chains, parts):
  """[K, ...] from the chains' parts, in model order."""
  return tf.concat([p if isinstance(c, slice) else p[None] for c, p in zip(chains, parts)], 0)


class GroupWork(typing.NamedTuple):
  """What the host draws for a group of K runs before they train: the runs' own randomness."""
  initial: list           # the initial weights, each stacked [K, ...]
  orders: np.ndarray      # [epochs, K, steps, B] example indices: each model's batches
  weight: np.ndarray      # [steps, B]: 1 for an example, 0 for padding (the same for all K)
  held_out: np.ndarray    # [K, n] bool: the examples outside each run's subset


def group_work(config, n, ratio, seeds):
  """The GroupWork of runs `seeds` at `ratio`."""
  return GroupWork(stack_models([init_mlp(s, layer_sizes(config)) for s in seeds]),
                   np.stack([batch_order(s, n, ratio, config.epochs, config.batch_size) for s in seeds], axis=1),
                   batch_weights(subset_size(n, ratio), config.batch_size),
                   np.stack([held_out_mask(s, n, ratio) for s in seeds]))


class EnsembleTrainer:
  """K models trained in lockstep, then evaluated, on data held on the device.

  While it trains, each model records for every example of its subset, from the forward pass
  of the step that uses it (before that step's update), whether it classified it correctly and
  its probability of the label, summed over epochs: `learning_record()` after `train()`.

  layout: a devices.Layout, the device's own (devices.layout) unless given. record: False only
  to measure what recording costs. gradients: another backward than loss_gradients, only to
  measure it against autodiff (benchmarks/throughput.py)."""

  def __init__(self, images, labels, config, layout=None, record=True, gradients=loss_gradients):
    self.config, self.record, self.gradients = config, record, gradients
    self.layout = layout or devices.layout(config, layer_sizes(config))
    stacked = self.layout.stacked
    # The images stay uint8 (4x less to gather than floats; cast after). In a GPU's layout the
    # table is a variable, whose gather has a GPU kernel for uint8 (a constant's has not), and
    # indices and labels are int64: TensorFlow keeps int32 tensors in host memory on a GPU, so
    # every step would cross over. The CPU keeps int32 and a constant: 3% faster there.
    self.index_dtype = tf.int64 if stacked else tf.int32
    self.images = tf.Variable(images, trainable=False) if stacked else tf.constant(images)
    self.labels = tf.constant(labels, self.index_dtype)
    self.dtype = tf.bfloat16 if config.precision == 'bfloat16' else tf.float32
    self._compiled = {}                 # K -> (weights, velocities, record, epoch function)
    self._last_k = None                 # K of the last train(), whose record learning_record reads
    self._predict = tf.function(self._predict_chunk)  # traced once per number of models

  def chains(self, k):
    """The layout of k models: one stacked chain, or k chains of one model each."""
    return [slice(0, k)] if self.layout.stacked else list(range(k))

  def _inputs(self, rows):
    """The examples `rows`, as the model takes them: pixels scaled to [0, 1], features as they are."""
    x = tf.cast(tf.gather(self.images, rows), tf.float32)
    return tf.cast(x * (1.0 / 255.0) if self.images.dtype == tf.uint8 else x, self.dtype)

  def _sgd_step(self, params, velocity, rows, weight):
    """One step of SGD with momentum for one chain's models on their batches, as the authors'
    update, opt_update(grad(loss)(params, batch)); returns the in-place updates and the forward
    pass's probabilities."""
    grads, probabilities = self.gradients([p.read_value() for p in params], self._inputs(rows),
                                          tf.gather(self.labels, rows), weight, self.dtype)
    with tf.control_dependencies(grads):  # update in place once the old weights are used
      return [momentum_update(p, v, g, self.config) for p, v, g in zip(params, velocity, grads)], probabilities

  def _epoch(self, chains, params, velocity, record, order, weight):
    """One epoch: order [K, steps, B] example indices, weight [steps, B]."""

    def step(s):
      rows = order[:, s]  # [K, B]: each model's batch
      updates, probabilities = [], []
      for chain, p, v in zip(chains, params, velocity):
        chain_updates, chain_probabilities = self._sgd_step(p, v, rows[chain], weight[s])
        updates += chain_updates
        probabilities.append(chain_probabilities)
      if self.record:  # for all K models at once: a few small ops a step, not a few per model
        updates.append(record_step(record, rows, tf.gather(self.labels, rows),
                                   stack_chains(chains, probabilities), weight[s]))
      with tf.control_dependencies(updates):
        return s + 1

    tf.while_loop(lambda s: s < tf.shape(order)[1], step, [tf.constant(0)])

  def _state(self, k):
    """Variables for k models and the compiled epoch over them, made once per k."""
    if k not in self._compiled:
      sizes, n, chains = layer_sizes(self.config), len(self.labels), self.chains(k)
      shapes = [s for i, o in zip(sizes[:-1], sizes[1:]) for s in ((i, o), (1, o))]
      variables = lambda: [[tf.Variable(tf.zeros(chain_shape(c, s))) for s in shapes] for c in chains]
      params, velocity = variables(), variables()
      record = tf.Variable(tf.zeros((k, n, 2)))  # per model and example: hits, summed confidence
      epoch = tf.function(lambda order, weight: self._epoch(chains, params, velocity, record,
                                                            order, weight),
                          reduce_retracing=True)  # one trace for all subset sizes
      self._compiled[k] = (params, velocity, record, epoch)
    return self._compiled[k]

  def train(self, work, on_epoch=None):
    """Trains a group of K runs together from their GroupWork; returns their weights, stacked
    [K, ...]. on_epoch(e) is called after each epoch e."""
    k = len(work.held_out)
    params, velocity, record, epoch_fn = self._state(k)
    for chain, p, v in zip(self.chains(k), params, velocity):
      for w, vel, value in zip(p, v, work.initial):
        w.assign(value[chain])
        vel.assign(tf.zeros_like(vel))
    record.assign(tf.zeros_like(record))
    weight = tf.constant(work.weight)
    for e in range(self.config.epochs):
      epoch_fn(tf.constant(work.orders[e], self.index_dtype), weight)
      if on_epoch:
        on_epoch(e)
    self._last_k = k
    return self._weights(k)

  def _weights(self, k):
    """The weights of the k models, stacked [k, ...], whichever the layout."""
    params = self._state(k)[0]
    return [stack_chains(self.chains(k), [p[j] for p in params]) for j in range(len(params[0]))]

  def learning_record(self):
    """(hits, summed confidence), each [K, n] float32, of the last train(): per example, over
    the epochs, how often the model classified it correctly, and its summed probability of the
    label, each read from the forward pass before the step that trained on it; 0 where it did
    not train on it."""
    record = self._state(self._last_k)[2].numpy()
    return record[..., 0], record[..., 1]

  def _models_per_evaluation(self, k):
    """Models per evaluation call, each call on the layout's eval_chunk examples, whatever k;
    its eval_rows bound the call's memory (devices.Layout)."""
    return min(k, max(1, self.layout.eval_rows // self.layout.eval_chunk))

  def _predict_chunk(self, params, start, size):
    """[m, size] bool: which of examples start..start+size each of the m models gets right."""
    x = self._inputs(tf.range(start, start + size))  # shared by the models: matmul broadcasts it
    chains = self.chains(params[0].shape[0])
    logits = stack_chains(chains, [mlp_logits([p[c] for p in params], x, self.dtype) for c in chains])
    return tf.argmax(logits, -1, output_type=self.index_dtype) == self.labels[start:start + size][None]

  def _index(self, i):
    return tf.constant(i, self.index_dtype)

  def correct(self, params):
    """[K, n] bool: which examples each model classifies correctly."""
    n, k, chunk = len(self.labels), int(params[0].shape[0]), self.layout.eval_chunk
    models = self._models_per_evaluation(k)
    return np.concatenate([
        np.concatenate([self._predict([p[m:m + models] for p in params], self._index(s),
                                      self._index(min(chunk, n - s))).numpy()
                        for s in range(0, n, chunk)], axis=1)
        for m in range(0, k, models)])

  def warm_up(self, k):
    """Compiles, ahead of the first group of k models, what it would compile on the way: the
    epoch (traced for a general number of steps) and the evaluation. The first group then runs
    at the pace of the others, and the progress bar's rate is right from the start."""
    epoch_fn = self._state(k)[3]
    for steps in (1, 2):  # two step counts give the trace that fits every subset size; the
      # weights they update are set afresh by train()
      epoch_fn(tf.zeros((k, steps, self.config.batch_size), self.index_dtype),
               tf.ones((steps, self.config.batch_size)))
    models = self._models_per_evaluation(k)
    for m in {models, k % models} - {0}:  # the calls' sizes: full, and what is left over
      self._predict([w[:m] for w in self._weights(k)], self._index(0), self._index(1))


class RunGroup(typing.NamedTuple):
  """What training K runs of a ratio yields, each array [K, n]."""
  held_out: np.ndarray    # bool: the examples outside the run's subset
  correct: np.ndarray     # bool: those the trained model classifies correctly
  hits: np.ndarray        # float32: epochs in which it classified the example correctly while
                          # training on it (before each step's update); 0 if held out
  confidence: np.ndarray  # float32: its mean probability of the label over the epochs, likewise


def train_run_group(trainer, ratio, seeds, on_step=None, work=None):
  """Trains runs `seeds` at `ratio` (from their GroupWork, drawn here unless given); returns
  their RunGroup. on_step(i) is called after each epoch i < epochs and after the evaluation
  (i = epochs)."""
  epochs = trainer.config.epochs
  if work is None:
    work = group_work(trainer.config, len(trainer.labels), ratio, seeds)
  params = trainer.train(work, on_step)
  correct = trainer.correct(params)
  if on_step:
    on_step(epochs)
  hits, confidence = trainer.learning_record()
  check_finite(params, confidence, ratio, seeds, trainer.config)
  return RunGroup(work.held_out, correct, hits, confidence / epochs)


def check_finite(params, confidence, ratio, seeds, config):
  """Refuses a group whose training diverged (NaN or inf in the weights or the probabilities),
  before anything of it is stored: its scores would be noise."""
  finite = [bool(tf.reduce_all(tf.math.is_finite(w))) for w in params]  # on the device: one bool each
  if all(finite) and np.isfinite(confidence).all():
    return
  raise errors.CScoreError(
      f'training diverged at ratio {ratio:.2f} (runs {shards.seed_ranges(seeds)}): NaN or inf in the '
      f'weights or the probabilities; usually too high a --learning-rate (now {config.learning_rate:g}) '
      'for this data: try a lower one')


# ------------------------------------------------------------------------------------------------
# Estimator: C-scores from the runs a command names. What else the same runs tell (standard
# errors, reliability, learning proxies, the combined score) is derived in cscore/analysis.py.
# ------------------------------------------------------------------------------------------------

def masks(found):
  """(held_out [R, n], correct [R, n]) of runs."""
  return np.stack([r.held_out for r in found]), np.stack([r.correct for r in found])


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


def heldout_accuracy(held_out, correct):
  """Mean over runs of each run's accuracy on the examples it held out."""
  return float(np.mean((held_out & correct).sum(1) / np.maximum(held_out.sum(1), 1)))


def estimate(runs, config, n):
  """The analysis.Estimates of this command's runs (its ratios x seeds) that are done: C_r and
  C, and from the same masks in the same pass, memorization and the C_r of the two halves."""
  L = len(config.ratios)
  per_ratio, memorization = np.full((L, n), np.nan), np.full((L, n), np.nan)
  counts = np.zeros((L, n), dtype=np.int64)
  half_per_ratio, half_counts = np.full((2, L, n), np.nan), np.zeros((2, L, n), dtype=np.int64)
  done, accuracy = np.zeros(L, dtype=np.int64), np.full(L, np.nan)
  found = [store.finished_runs(runs, config, ratio) for ratio in config.ratios]
  for j, f in enumerate(found):
    if not f:
      continue
    held_out, correct = masks(f)
    per_ratio[j], counts[j] = fraction_correct(held_out, correct)
    # Memorization (Feldman & Zhang, 2020): P(correct | trained on it) - P(correct | held out).
    memorization[j] = fraction_correct(~held_out, correct)[0] - per_ratio[j]
    done[j], accuracy[j] = len(held_out), heldout_accuracy(held_out, correct)
    if len(f) >= 2:  # the even and the odd runs by position in seed order: the two halves
      for half in (0, 1):
        half_per_ratio[half, j], half_counts[half, j] = fraction_correct(held_out[half::2], correct[half::2])
  cscores = mean_over_ratios(per_ratio)
  halves = np.stack([mean_over_ratios(p) for p in half_per_ratio])
  return analysis.estimates(config.ratios, found, done, accuracy, per_ratio, counts, cscores,
                            memorization, mean_over_ratios(memorization), halves, half_counts)


# ------------------------------------------------------------------------------------------------
# Examples figure: the paper's picture of what the C-score finds. The other figures are in
# cscore/figures.py.
# ------------------------------------------------------------------------------------------------

def extreme_examples(scores, labels, digit, per_side):
  """Indices of the `per_side` highest- and lowest-scored examples of a class (NaN skipped)."""
  idx = np.flatnonzero((labels == digit) & ~np.isnan(scores))
  ranked = idx[np.argsort(-scores[idx], kind='stable')]
  return ranked[:per_side], ranked[::-1][:per_side]


def examples_figure(data, scores, path, per_side=10):
  """Per class, one row: the highest-scored examples, a gap, the lowest-scored ones."""
  plt = figures.pyplot()
  cols, rows = 2 * per_side + 1, len(data.class_names)
  fig, axes = plt.subplots(rows, 1, figsize=(0.45 * cols, 0.45 * rows), squeeze=False,
                           gridspec_kw=dict(hspace=0.05))
  for c, ax in enumerate(axes[:, 0]):
    high, low = extreme_examples(scores, data.y, c, per_side)
    cells = list(high) + [None] * (per_side - len(high) + 1) + list(low)
    figures.show_examples(ax, data, cells + [None] * (cols - len(cells)))
    ax.text(-0.007, 0.5, data.class_names[c], transform=ax.transAxes, ha='right', va='center', fontsize=7)
  for label, at in (('highest C-scores', per_side / 2), ('lowest C-scores', per_side + 1 + per_side / 2)):
    axes[0, 0].text(at / cols, 1.15, label, transform=axes[0, 0].transAxes, fontsize=9)
  figures.save_figure(fig, path, bbox_inches='tight')


# ------------------------------------------------------------------------------------------------
# main: the paper's outer loop. Load the data; for each group of runs the store lacks, train,
# evaluate, save; then estimate from every stored run the command names, and write.
# ------------------------------------------------------------------------------------------------

def train_missing_runs(trainer, store_dir, runs, groups, tag=''):
  """Trains the groups [(ratio, seeds)], each saved to the store and to `runs` as it finishes,
  under a progress bar; Ctrl-C stops it, keeping what is finished. Returns (models trained,
  interrupted)."""
  config, n = trainer.config, len(trainer.labels)
  for k in sorted({len(seeds) for _, seeds in groups}):
    trainer.warm_up(k)  # compile first: the bar then times only the work
  steps = [progress.group_steps(layer_sizes(config), config.epochs, subset_size(n, ratio), n, len(seeds))
           for ratio, seeds in groups]
  with progress.Progress(groups, steps) as bar:
    # The host draws the next group's subsets and batches while this one trains.
    for (ratio, seeds), work in progress.prepared_ahead(groups, functools.partial(group_work, config, n)):
      bar.begin(ratio)
      began = time.perf_counter()
      group = train_run_group(trainer, ratio, seeds, bar.step, work)
      name = store.save_runs(store_dir, ratio, seeds, group, config.epochs, trainer.layout.hardware, tag,
                             seconds=time.perf_counter() - began)
      runs.update(store.stored_runs(store_dir, name))  # as a resume will read them
      bar.end(ratio, len(seeds))
  if bar.interrupted:  # a group saved just before Ctrl-C may not be in `runs` yet
    runs.update(store.load_runs(store_dir))
  return bar.trained, bar.interrupted


def train_share(config, data, store_dir, runs, shard=None, tag=''):
  """Trains the command's runs (shard = (I, N): shard I's share) that the store lacks, K at a
  time, round-robin over the ratios; returns (models trained, interrupted)."""
  n = len(data.y)
  check_subsets(config, n)
  devices.check_gpu_precision(config)
  if warning := devices.gpu_unseen_warning():
    print(warning, file=sys.stderr)
  if shard:
    shards.record_shards(store_dir, config, shard[1], tag)
  k = (min(config.models_at_once, config.runs)
       or devices.default_models_at_once(config.runs, layer_sizes(config), config.batch_size, n))
  groups = shards.planned_groups(config, runs, k, shard)
  print(progress.opening_line(config, n, groups, k, shard))
  return train_missing_runs(EnsembleTrainer(data.x, data.y, config), store_dir, runs, groups, tag)


def main(argv=None):
  """The command: what `python mnist.py` runs, flags in argv (see --help); returns its exit code."""
  config, args = cli.parse_args(argv, Config())
  start = time.perf_counter()

  def command():
    reader = bool(args.estimate_only or args.merge)  # trains nothing: writes from the store
    tag = shards.process_tag(args.shard, reader)
    load_data = datasets.loader(args.data, args.dataset, args.data_dir,
                                lambda: load_mnist(args.data_dir, args.manual_dir))
    if args.prepare_only:  # the data alone, on a machine with internet, before an offline job array
      devices.configure_tensorflow(train=False)
      return datasets.prepared_lines(load_data(), args.data_dir), False
    with locks.lock_store(args.out_dir, args.shard, reader, existing=args.estimate_only and not args.merge):
      devices.configure_tensorflow(train=not reader)  # after the lock: a refused process answers at once
      data = load_data()
      settings = with_data(config, data)
      store_dir, runs = shards.open_and_load_store(args.out_dir, settings, data, args.fresh, args.merge,
                                                   tag, reader)
      trained, interrupted = (0, False) if reader else train_share(settings, data, store_dir, runs,
                                                                   args.shard, tag)
      seconds = time.perf_counter() - start  # the command's time until now, not the outputs'
      if args.shard:  # a shard's own summary, with the runs the other shards stored meanwhile
        return shards.shard_lines(store_dir, store.load_runs(store_dir), settings, args.shard, trained), interrupted
      if not outputs.have_runs(store_dir, runs, settings, interrupted):
        return [], interrupted
      est = estimate(runs, settings, len(data.y))
      outputs.write_outputs(args.out_dir, data, est, runs, settings, examples_figure, tag)
      return outputs.summary(store_dir, args.out_dir, est, data, runs, settings, trained, seconds), interrupted

  return cli.run(command)  # one line for an error a user can fix; Ctrl-C keeps the finished runs


if __name__ == '__main__':
  sys.exit(main())
