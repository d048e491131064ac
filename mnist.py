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
    model with its own subset, batch order and initialisation. This keeps the device busy; one
    model at a time leaves it mostly idle.
  * Every finished group of runs is saved at once to a results store in the output directory,
    so a stopped run resumes where it stopped, and a larger --runs only adds runs.
  * Shards (--shard I/N) spread the runs over processes, GPUs and machines, with the scheduler
    one has (a Slurm job array, a Kubernetes Indexed Job); they share one store, or are merged.
  * An example that no run held out at some ratio has no estimate there; that ratio is left out
    of its mean instead of counting as 0.

From the same runs, at no extra training: standard errors, split-half reliability,
memorization (Feldman & Zhang, 2020) and the paper's cheap proxies of the C-score, how fast and
how confidently each example is learned while it is trained on (recorded during training from
the forward pass each step computes anyway), and a combined score: the C-score shrunk toward
what learning confidence predicts, by its own noise, which ranks the hard examples better at a
small budget.

Sections, top to bottom. The method:
  Settings                the paper's defaults, which the command line overrides
  Data                    MNIST's 60,000 training examples, in tensorflow-datasets' order; or
                          another tfds image data set (--dataset), or your arrays (--data)
  Subsets and batch order the authors' random draws, run by run
  Model                   the MLP: initialisation, forward pass, loss and its gradient
  Training step           SGD with momentum for K models in lockstep, and the learning record
  Estimator               C-score, standard error, memorization, split-half reliability, proxies,
                          and the combined score of the C-score and learning confidence
  Figures
  Report                  every example in one HTML page: what it shows, and how it fits
  Outputs and summaries
  main
Then the machinery, which changes no score:
  Data download and files tfds' preparation, once, quietly; offline from the official files;
                          tfds data sets and .npz files read and checked
  Device sizing           K, evaluation chunks, the opening line's description
  GPUs                    one per process, memory growth; which one and its free memory,
                          from nvidia-smi; bf16's limit; the warnings and failures
  Results store           every finished run on disk, written atomically
  Locks                   who may share a store at once
  Shards and merge        which process trains which run; copying stores together
  Progress and ETA        the bar, counted in FLOPs
  Command line            flags, and the one-line errors for bad ones
  Errors, TensorFlow and stderr   one-line errors; TensorFlow loaded late and quietly; devices
  Report page             the report's HTML, CSS and JavaScript

Usage:
    python mnist.py                                   # full protocol: 9 ratios x 200 runs
    python mnist.py --runs 4 --manual-dir DIR         # small, offline, DIR holds MNIST's .gz
    python mnist.py --shard $I/$N; python mnist.py --estimate-only   # N processes, then outputs
    python mnist.py --dataset fashion_mnist           # a tensorflow-datasets image data set
    python mnist.py --data digits.npz                 # your own arrays x, y
"""

import argparse
import base64
import collections
import concurrent.futures
import contextlib
import dataclasses
import datetime
import functools
import hashlib
import io
import json
import logging
import os
import platform
import re
import socket
import sys
import tempfile
import time
import types
import typing
import zipfile
import zlib

import numpy as np
from tqdm import tqdm

# `tf` is TensorFlow, imported on its first use (see the last section): --help and a mistyped
# flag answer at once.


# ================================================================================================
# THE METHOD
# ================================================================================================

# ------------------------------------------------------------------------------------------------
# Settings: the paper's defaults; the command line overrides each of them (see parse_args).
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


# What a trained run depends on. A results store made with other values is refused, not mixed in.
# (The data, and with them the inputs and classes, are checked by their fingerprint.)
TRAINING_SETTINGS = ('epochs', 'batch_size', 'learning_rate', 'momentum', 'hidden', 'precision')


def run_seeds(config):
  return range(config.seed, config.seed + config.runs)


def ratio_key(ratio):
  """A ratio as the key of its runs: 0.3 and 0.1 + 0.2 are one ratio."""
  return round(float(ratio), 6)


# ------------------------------------------------------------------------------------------------
# Data: MNIST's 60,000 training examples, in tensorflow-datasets' order (the scores' order); or
# another image data set of tensorflow-datasets, or the user's own arrays, each in its own order.
# ------------------------------------------------------------------------------------------------

class Data(typing.NamedTuple):
  """The examples to score, in the scores' order."""
  name: str           # names the figures: mnist -> mnist-examples.pdf
  x: np.ndarray       # [n, inputs]: uint8 pixels, which the trainer scales to [0, 1], or
                      # float32 features, standardized
  y: np.ndarray       # [n] int32: the class of each, 0 .. C-1
  class_names: tuple  # C names, for the figures
  shape: tuple        # one example as a picture: (28, 28) for MNIST, (H, W, 3) in colour;
                      # None for features
  label_values: tuple = ()  # the file's own labels of classes 0 .. C-1 (an npz's), if not those
  fingerprint: str = ''     # of the arrays as read (an npz's), if not of x and y: standardized
                            # features may differ in their last bit from one NumPy to another


DIGITS = tuple(str(d) for d in range(10))


def data_loader(args):
  """A function that returns the data a command scores: the user's own arrays (--data
  FILE.npz), read and checked now, before anything is written; an image data set of
  tensorflow-datasets (--dataset NAME), checked now and loaded when called; or MNIST, loaded
  when called. (Loading goes through TensorFlow, which must be configured first.)"""
  if args.data is not None:
    data = npz_data(args.data)
    return lambda: data
  if args.dataset not in (None, 'mnist'):
    builder, image, label = tfds_builder(args.dataset, args.data_dir)
    name = args.dataset.split(':')[0].replace('/', '_')  # emnist/digits -> emnist_digits
    return lambda: tfds_data(name, builder, image, label)
  return lambda: Data('mnist', *load_mnist(args.data_dir, args.manual_dir), DIGITS, (28, 28))


def npz_data(path):
  """The user's own arrays from an .npz, loaded without pickle, in the file's order: x [n, ...]
  and y [n] integer labels, with class_names optional (in the sorted order of y's values).
  uint8 x of shape [n, H, W] or [n, H, W, 1 or 3] are images, scaled as MNIST's; any other x
  are numeric features, flattened and standardized per feature (a constant one gives 0). Labels
  are mapped to 0 .. C-1 in sorted order."""
  arrays = read_npz(path, ('x', 'y'), optional=('class_names',))
  x, y = arrays['x'], arrays['y']
  if x.dtype.kind not in 'iufb' or x.ndim < 2 or 0 in x.shape:
    raise CScoreError(f'{path}: x must be a numeric array of examples, [n, ...], none empty, not '
                      f'{x.dtype} shaped {list(x.shape)}')
  if y.ndim != 1 or len(x) != len(y):
    raise CScoreError(f'{path}: x holds {len(x)} examples but y is shaped {list(y.shape)}: y must be '
                      'one label per example')
  if y.dtype.kind not in 'iu':
    raise CScoreError(f'{path}: y must be integer labels, not {y.dtype}')
  if x.dtype.kind == 'f' and not np.isfinite(x).all():
    raise CScoreError(f'{path}: x holds NaN or inf ({int((~np.isfinite(x)).sum())} values)')
  values, y = np.unique(y, return_inverse=True)
  if len(values) < 2:
    raise CScoreError(f'{path}: y holds one class only ({values[0]}): a C-score needs at least two')
  if len(values) > len(y) // 2:
    raise CScoreError(f'{path}: y holds {len(values)} classes for {len(y)} examples, more than half '
                      'as many: labels, not example indices, are needed')
  names = tuple(str(v) for v in values)
  if 'class_names' in arrays:
    given = arrays['class_names']
    if given.ndim != 1 or given.dtype.kind not in 'US' or len(given) != len(values):
      raise CScoreError(f'{path}: class_names must be {len(values)} strings, one per class of y in '
                        f'sorted order, not {given.dtype} shaped {list(given.shape)}')
    names = tuple(v.decode() if isinstance(v, bytes) else str(v) for v in given)
  fingerprint = data_fingerprint(x, y)  # before any change: the file's own arrays
  pictures = x.dtype == np.uint8 and (x.ndim == 3 or x.ndim == 4 and x.shape[-1] in (1, 3))
  if pictures:  # grayscale [H, W] (a channel of 1 dropped), or colour [H, W, 3]
    shape, x = (x.shape[1:] if x.ndim == 4 and x.shape[-1] == 3 else x.shape[1:3]), x.reshape(len(x), -1)
  else:
    shape, x = None, standardized(x.reshape(len(x), -1))
  return Data(os.path.splitext(os.path.basename(path))[0], x, y.astype(np.int32), names, shape,
              tuple(values.tolist()), fingerprint)  # the file's labels, as Python ints of any size


def standardized(features):
  """Each feature to mean 0 and standard deviation 1, float32; a constant feature to 0."""
  features = features.astype(np.float64)
  std = features.std(0)
  return ((features - features.mean(0)) / np.where(std > 0, std, 1)).astype(np.float32)


def with_data(config, data):
  """The settings with the model's input width and classes taken from the data."""
  return dataclasses.replace(config, inputs=data.x.shape[1], classes=len(data.class_names))


def load_mnist(data_dir=None, manual_dir=None):
  """MNIST's training split as (images uint8 [n, 784], labels int32 [n]), in tfds' order.

  Pixels stay uint8 here (47 MB); the trainer scales them to [0, 1] after gathering a batch."""
  with native_stderr_silenced():
    import tensorflow_datasets as tfds
  builder = tfds.builder('mnist', data_dir=data_dir)
  builder = prepare_once(builder, manual_dir)  # downloaded, or from the official files offline
  data = tfds.as_numpy(builder.as_dataset(split='train', batch_size=-1, shuffle_files=False))
  images = data['image'].reshape(len(data['image']), -1)
  return images, data['label'].astype(np.int32)


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
      raise CScoreError(f'--ratios {ratio}: a subset of int({n} x {ratio}) = 0 examples; '
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
# Two layouts of the same computation, chosen in one place (EnsembleTrainer.chains). On a GPU,
# one batched matmul per layer for all K models (weights stacked [K, in, out]) keeps the device
# busy. On a CPU, TensorFlow's batched matmul uses its cores poorly for these small shapes (about
# 120-140 GFLOP/s on a Zen 4 core pair, against 217 for a large matmul); K independent chains of
# plain matmuls, one thread each and one chain per core at a time, reach 155-180.
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
  its probability of the label, summed over epochs: `learning_record()` after `train()`."""

  def __init__(self, images, labels, config, stacked=None, eval_rows=None, record=True,
               gradients=loss_gradients):
    self.config = config
    self.stacked = bool(accelerators()) if stacked is None else stacked  # the layout: a GPU's
    # The images stay uint8 (4x less to gather than floats; cast after). In a GPU's layout the
    # table is a variable, whose gather has a GPU kernel for uint8 (a constant's has not), and
    # indices and labels are int64: TensorFlow keeps int32 tensors in host memory on a GPU, so
    # every step would cross over. The CPU keeps int32 and a constant: 3% faster there.
    self.index_dtype = tf.int64 if self.stacked else tf.int32
    self.images = tf.Variable(images, trainable=False) if self.stacked else tf.constant(images)
    self.labels = tf.constant(labels, self.index_dtype)
    self.dtype = tf.bfloat16 if config.precision == 'bfloat16' else tf.float32
    self.eval_rows = eval_rows or default_eval_rows(config)  # bounds evaluation's memory
    self.record = record                # False only to measure what recording costs
    self.gradients = gradients          # another backward only to measure it against autodiff
    self.hardware = (device_kind(), matmul_precision(config))
    self._compiled = {}                 # K -> (weights, velocities, record, epoch function)
    self._last_k = None                 # K of the last train(), whose record learning_record reads
    self._predict = tf.function(self._predict_chunk)  # traced once per number of models

  def chains(self, k):
    """The layout of k models: one stacked chain, or k chains of one model each."""
    return [slice(0, k)] if self.stacked else list(range(k))

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

  def train(self, seeds, ratio, on_epoch=None, work=None):
    """Trains the runs `seeds` of `ratio` together, from their GroupWork (prepared here if not
    given); returns their weights, stacked [K, ...]."""
    c, k = self.config, len(seeds)
    if work is None:
      work = group_work(c, len(self.labels), ratio, seeds)
    params, velocity, record, epoch_fn = self._state(k)
    for chain, p, v in zip(self.chains(k), params, velocity):
      for w, vel, value in zip(p, v, work.initial):
        w.assign(value[chain])
        vel.assign(tf.zeros_like(vel))
    record.assign(tf.zeros_like(record))
    weight = tf.constant(work.weight)
    for e in range(c.epochs):
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
    """Models per evaluation call, each call on EVAL_CHUNK examples, whatever k; eval_rows
    bounds the call's memory. In per-model chains (a CPU's) a model's predictions, hence its
    stored correctness, are then the same bit for bit however many models trained beside it,
    on whichever shard."""
    return min(k, max(1, self.eval_rows // EVAL_CHUNK))

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
    n, k = len(self.labels), int(params[0].shape[0])
    models = self._models_per_evaluation(k)
    return np.concatenate([
        np.concatenate([self._predict([p[m:m + models] for p in params], self._index(s),
                                      self._index(min(EVAL_CHUNK, n - s))).numpy()
                        for s in range(0, n, EVAL_CHUNK)], axis=1)
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
  """Trains runs `seeds` at `ratio` (from their GroupWork, if prepared); returns their RunGroup.
  on_step(i) is called after each epoch i < epochs and after the evaluation (i = epochs)."""
  epochs = trainer.config.epochs
  if work is None:
    work = group_work(trainer.config, len(trainer.labels), ratio, seeds)
  params = trainer.train(seeds, ratio, on_step, work)
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
  raise CScoreError(f'training diverged at ratio {ratio:.2f} (runs {seed_ranges(seeds)}): NaN or inf in '
                    'the weights or the probabilities; usually too high a --learning-rate (now '
                    f'{config.learning_rate:g}) for this data: try a lower one')


# ------------------------------------------------------------------------------------------------
# Estimator: C-scores and what else the runs tell, from the runs a command names.
# ------------------------------------------------------------------------------------------------

class Run(typing.NamedTuple):
  """One run as the results store keeps it and the estimator reads it."""
  held_out: np.ndarray    # [n] bool
  correct: np.ndarray     # [n] bool
  hits: np.ndarray        # [m] over the run's subset, in example order: epochs in which it was
                          # classified correctly while trained on
  confidence: np.ndarray  # [m] uint8: its mean probability of the label over the epochs, x 255
  epochs: int
  hardware: tuple         # the device kind and how its matmuls round, e.g. ('CPU', 'fp32')
  file: str = ''          # the store file it came from
  alternates: int = 0     # other records of this run, from other hardware, set aside
  seconds: float = float('nan')  # its share of its group's training time (NaN: not recorded)


def group_runs(group, epochs, hardware, seconds=float('nan')):
  """[Run] of a RunGroup that trained in `seconds`: the learning record kept only over each
  run's subset, its confidence quantized to 8 bits (round(255 p): within 0.002)."""
  return [Run(h, c, hits[~h].round().astype(np.min_scalar_type(epochs)),
              np.rint(p[~h] * 255).clip(0, 255).astype(np.uint8), epochs, hardware,
              seconds=seconds / len(group.held_out))
          for h, c, hits, p in zip(*group)]


def finished_runs(runs, config, ratio):
  """[Run] of the command's runs at `ratio` that are done, in seed order."""
  return [runs[ratio_key(ratio), s] for s in run_seeds(config) if (ratio_key(ratio), s) in runs]


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


def spearman_brown(r, factor):
  """The reliability of an estimate `factor` times as large as one of reliability r (NaN for a
  negative r: no reliability to project)."""
  return factor * r / (1 + (factor - 1) * r) if r >= 0 else np.nan


def runs_for_reliability(est, target):
  """Runs per ratio whose estimate would reach reliability `target`: Spearman-Brown solved for
  the factor, from this estimate's reliability at its runs; None if it has none to project."""
  r, runs = est.reliability, int(est.runs.max())
  if not 0 < r < 1:
    return None
  factor = target * (1 - r) / (r * (1 - target))
  return max(2, int(np.ceil(round(runs * factor, 6))))  # (rounded: 110.00000000000001 is 110)


def pearson(a, b):
  """Pearson's r over the examples both score; NaN for fewer than 2 or a constant one."""
  both = ~np.isnan(a) & ~np.isnan(b)
  if both.sum() < 2 or not np.ptp(a[both]) or not np.ptp(b[both]):
    return np.nan
  return float(np.corrcoef(a[both], b[both])[0, 1])


def split_half_reliability(halves, runs):
  """How reproducible a score is, from the runs themselves: r, the Pearson correlation of its
  values from the even and from the odd runs (`halves` [2, n]). The Spearman-Brown formula
  projects it to the whole estimate, 2r / (1 + r), and to 200 runs per ratio (the published
  scores' size), k r / (1 + (k - 1) r) with k = 400 / runs. Returns (r, whole, at 200 runs);
  NaN (not available) without halves."""
  r = pearson(*halves)
  return r, spearman_brown(r, 2), spearman_brown(r, 400 / runs)


def learning_proxies(found, n):
  """Per example, the mean over the runs that trained on it of the fraction of epochs in which
  it was classified correctly before its step's update, and of its confidence (mean probability
  of the label): how fast and how confidently it is learned. NaN where no run trained on it."""
  return proxy_means(*proxy_sums(found, n))


def proxy_sums(found, n):
  """(speed, confidence, count) [n] each: the learning record summed over the runs that trained
  on each example, and how many did."""
  speed, confidence = np.zeros(n), np.zeros(n)
  count = np.zeros(n, dtype=np.int64)
  for run in found:
    trained = ~run.held_out
    speed[trained] += run.hits / run.epochs
    confidence[trained] += run.confidence / 255
    count[trained] += 1
  return speed, confidence, count


def proxy_means(speed, confidence, count):
  with np.errstate(invalid='ignore', divide='ignore'):
    return np.where(count > 0, speed / count, np.nan), np.where(count > 0, confidence / count, np.nan)


# The combined score. Learning confidence ranks the hard examples better than a C-score of few
# runs, and worse than one of many (its own ceiling, about rho 0.94 against the published scores
# on MNIST's hard examples, is what it measures, not noise). So each example's C-score is
# shrunk toward the C-score that examples of its learning confidence have, by how noisy it is:
# Kelley's true-score estimate, with each example's own noise. Among the examples of like
# learning confidence (a group), an example's C-score is c = t + e: its true C-score t scatters
# around the group's curve m with variance tau^2, and its noise e, of variance s^2 u, comes from
# the finite runs that held it out (u below). The best linear estimate of t is
#     m + w (c - m),   w = tau^2 / (tau^2 + s^2 u),
# and the runs measure both unknowns: the even and the odd runs' C-scores differ by noise alone,
# so mean (c_even - c_odd)^2 = s^2 mean (u_even + u_odd), and tau^2 = mean (c - m)^2 - s^2 mean u.
# As runs are added, u falls and w rises to 1: the C-score alone. The published scores set
# nothing here. See the README's "A sharper cheap answer".


NOISE_GROUP = 500  # examples whose halves both score them, a group for s^2 and tau^2: within ~6%


def group_size(count):
  """Examples a group of like learning confidence for the curve m, of `count` with both scores:
  1% of them, so that 100 groups follow the curve, and at least 50 (each mean within about
  +-0.01 on MNIST's hard examples)."""
  return max(50, count // 100)


def noise_units(counts):
  """[n] the variance of each example's C-score in units of one held-out run's: a mean over the
  L_i ratios that held it out of means over k_ir runs, (1 / L_i^2) sum_r 1 / k_ir; NaN where no
  run held it out. counts: [L, n] runs that held each example out, per ratio."""
  held = counts > 0
  with np.errstate(invalid='ignore', divide='ignore'):
    return np.where(held.any(0), np.where(held, 1 / np.maximum(counts, 1), 0).sum(0) / held.sum(0) ** 2, np.nan)


def confidence_curve(cscores, confidence, group=None):
  """The C-score that examples of a learning confidence have, as a function: the mean C-score of
  each group of `group` examples (default: group_size) by confidence, made never to fall as
  confidence rises (isotonic regression: an example learned more confidently is not predicted
  harder, and the curve keeps learning confidence's order), interpolated between the groups'
  median confidences. None if no example has both scores."""
  from scipy.optimize import isotonic_regression
  both = np.flatnonzero(~np.isnan(cscores) & ~np.isnan(confidence))
  if not len(both):
    return None
  group = group or group_size(len(both))
  groups = np.array_split(both[np.argsort(confidence[both], kind='stable')], max(1, len(both) // group))
  medians, means = (np.array([f(values[g]) for g in groups])
                    for f, values in ((np.median, confidence), (np.mean, cscores)))
  at, where = np.unique(medians, return_inverse=True)  # (groups of one tied confidence: one point)
  sizes = np.bincount(where, [len(g) for g in groups])
  curve = isotonic_regression(np.bincount(where, means * [len(g) for g in groups]) / sizes, weights=sizes).x
  return lambda x: np.interp(x, at, curve)


def combined_score(cscores, confidence, counts, halves, half_counts, curve_group=None, noise_group=NOISE_GROUP):
  """(combined [n], weight [n], signal): per example, m + w (c - m) with c its C-score and m the
  C-score its learning confidence predicts (see above); w the weight on the C-score, 1 where it
  has no learning confidence and 0 where it has no C-score. signal: the share of the C-scores'
  spread about m that is signal, sum tau^2 / sum mean (c - m)^2 over the groups, the C-score's
  weight overall (NaN: not measured). halves: [2, n] the C-scores of the even and the odd runs,
  half_counts [2, L, n] their held-out counts, at the ratios with 2 runs or more (halves None,
  or NaN everywhere: the noise is not measurable, w = 0). The curve m is drawn in groups of
  curve_group examples (default: group_size), the noise measured in groups of noise_group.
  Examples with neither score, or with learning confidence only when none has both, are NaN."""
  combined, weight = cscores.copy(), np.where(np.isnan(cscores), np.nan, 1.0)
  curve = confidence_curve(cscores, confidence, curve_group)
  if curve is None:
    return combined, weight, np.nan
  has = ~np.isnan(confidence)
  prior = np.full(len(cscores), np.nan)
  prior[has] = curve(confidence[has])
  combined[has], weight[has] = prior[has], 0.0  # no C-score: the one its confidence predicts
  both = np.flatnonzero(has & ~np.isnan(cscores))
  both = both[np.argsort(confidence[both], kind='stable')]
  u = noise_units(counts)
  measured = (np.zeros(len(both), bool) if halves is None
              else ~np.isnan(halves[:, both]).any(0))  # noise measured here: both halves score it
  k = max(1, int(measured.sum()) // noise_group)  # groups of `noise_group` measured examples
  of = np.minimum(np.cumsum(measured) * k // max(measured.sum(), 1), k - 1)  # each one's group
  signal, spread = 0.0, 0.0
  for j in range(k):
    g, h = both[of == j], both[(of == j) & measured]  # the group, and where its halves both score
    if len(h) < 3:
      continue  # (the noise is not measurable: w stays 0)
    half_units = noise_units(half_counts[0][:, h]) + noise_units(half_counts[1][:, h])
    s2 = np.mean((halves[0, h] - halves[1, h]) ** 2) / np.mean(half_units)
    deviation = cscores[g] - prior[g]
    tau2 = max(float(np.mean(deviation ** 2) - s2 * np.mean(u[g])), 0.0)
    noise = s2 * u[g]
    w = np.divide(tau2, tau2 + noise, out=np.ones(len(g)), where=tau2 + noise > 0)
    combined[g], weight[g] = prior[g] + w * deviation, w
    signal, spread = signal + len(g) * tau2, spread + float(np.sum(deviation ** 2))
  return combined, weight, signal / spread if spread > 0 else np.nan


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
  split_half_r: float           # Pearson r of the C-scores of the even and the odd runs
  reliability: float            # the whole estimate's, 2r / (1 + r); NaN: not available
  reliability_200_runs: float   # projected to 200 runs per ratio
  split_half_cscores: np.ndarray  # [2, n] the C-scores of each half
  learning_speed: np.ndarray    # [n] mean over runs trained on it: epochs right / epochs
  learning_confidence: np.ndarray  # [n] and its mean probability of the label while trained on
  confidence_split_half_r: float  # learning confidence's r between the even and the odd runs
  confidence_reliability: float   # and its whole estimate's, 2r / (1 + r)
  split_half_confidence: np.ndarray  # [2, n] the learning confidence of each half
  combined_score: np.ndarray    # [n] the C-score shrunk toward what learning confidence predicts
  combined_weight: np.ndarray   # [n] the weight on the C-score in it (1: the C-score alone)
  combined_signal: float        # the share of the C-scores' spread about its curve that is signal


def estimate(runs, config, n):
  """Estimates from this command's runs (its ratios x seeds) that are done."""
  L = len(config.ratios)
  per_ratio, memorization = np.full((L, n), np.nan), np.full((L, n), np.nan)
  counts = np.zeros((L, n), dtype=np.int64)
  half_per_ratio, half_counts = np.full((2, L, n), np.nan), np.zeros((2, L, n), dtype=np.int64)
  done, accuracy = np.zeros(L, dtype=np.int64), np.full(L, np.nan)
  found = [finished_runs(runs, config, ratio) for ratio in config.ratios]
  for j, f in enumerate(found):
    if not f:
      continue
    held_out, correct = masks(f)
    per_ratio[j], counts[j] = fraction_correct(held_out, correct)
    memorization[j] = fraction_correct(~held_out, correct)[0] - per_ratio[j]
    done[j], accuracy[j] = len(held_out), heldout_accuracy(held_out, correct)
    if len(f) >= 2:  # the even and the odd runs by position in seed order: the two halves
      for half in (0, 1):
        half_per_ratio[half, j], half_counts[half, j] = fraction_correct(held_out[half::2], correct[half::2])
  cscores = mean_over_ratios(per_ratio)
  # The halves' C-scores at the ratios with 2 runs or more: the combined score's noise. The
  # split-half reliabilities need halves at every ratio; the whole's proxies are then the
  # halves' records added up.
  halves = np.stack([mean_over_ratios(p) for p in half_per_ratio])
  every = min(done) >= 2
  if every:
    sums = [proxy_sums([run for f in found for run in f[half::2]], n) for half in (0, 1)]
    scores_of_halves, confidence_of_halves = halves, np.stack([proxy_means(*s)[1] for s in sums])
    speed, confidence = proxy_means(*(a + b for a, b in zip(*sums)))
  else:
    scores_of_halves = confidence_of_halves = np.full((2, n), np.nan)
    speed, confidence = learning_proxies([run for f in found for run in f], n)
  runs_per_ratio = max(1, np.mean(done))
  r, whole, at_200_runs = split_half_reliability(scores_of_halves, runs_per_ratio)
  confidence_r, confidence_whole, _ = split_half_reliability(confidence_of_halves, runs_per_ratio)
  combined, weight, signal = combined_score(cscores, confidence, counts, halves, half_counts)
  return Estimates(
      ratios=np.array(config.ratios), runs=done, heldout_accuracy=accuracy,
      per_ratio=per_ratio, held_out_counts=counts, cscores=cscores,
      standard_error=standard_error(per_ratio, counts),
      memorization_per_ratio=memorization, memorization=mean_over_ratios(memorization),
      split_half_r=r, reliability=whole, reliability_200_runs=at_200_runs,
      split_half_cscores=scores_of_halves, learning_speed=speed, learning_confidence=confidence,
      confidence_split_half_r=confidence_r, confidence_reliability=confidence_whole,
      split_half_confidence=confidence_of_halves, combined_score=combined, combined_weight=weight,
      combined_signal=signal)


# ------------------------------------------------------------------------------------------------
# Figures
# ------------------------------------------------------------------------------------------------

def pyplot():
  import matplotlib
  matplotlib.use('Agg')  # files only, no display needed
  import matplotlib.pyplot as plt
  return plt


def save_figure(fig, path, **options):
  """Saves a figure as a PDF atomically (processes may write the outputs at once), closes it."""
  write_atomically(path, lambda f: fig.savefig(f, format='pdf', **options))
  pyplot().close(fig)


def show_examples(ax, data, cells, titles=None, colors=None, gap=0.1):
  """A row of examples, `cells` (indices; None leaves a cell blank), side by side as one picture
  on ax, each with its title above: grayscale (as the authors' figures) or colour, in their own
  shape; features (no shape) get the titles alone. One image a row, not an axes a picture: a
  figure of 200 axes took seconds to lay out and write."""
  ax.set_axis_off()
  h, w = data.shape[:2] if data.shape is not None else (1, 1)
  step = w + max(1, round(gap * w))  # a cell and the white gap after it, in pixels
  if data.shape is not None:
    row = np.full((h, step * len(cells) - (step - w), *data.shape[2:]), 255, np.uint8)
    for k, i in enumerate(cells):
      if i is not None:
        row[:, k * step:k * step + w] = data.x[i].reshape(data.shape)
    ax.imshow(row, cmap='gray', vmin=0, vmax=255, interpolation='nearest')
  else:
    ax.set(xlim=(0, step * len(cells)), ylim=(h, 0))
  for k, (i, title) in enumerate(zip(cells, titles or [None] * len(cells))):
    if i is not None and title:
      ax.text(k * step + w / 2, -0.04 * h, title, ha='center', va='bottom', fontsize=7,
              color=colors[k] if colors else 'black')


def extreme_examples(scores, labels, digit, per_side):
  """Indices of the `per_side` highest- and lowest-scored examples of a class (NaN skipped)."""
  idx = np.flatnonzero((labels == digit) & ~np.isnan(scores))
  ranked = idx[np.argsort(-scores[idx], kind='stable')]
  return ranked[:per_side], ranked[::-1][:per_side]


def examples_figure(data, scores, path, per_side=10):
  """Per class, one row: the highest-scored examples, a gap, the lowest-scored ones."""
  plt = pyplot()
  cols, rows = 2 * per_side + 1, len(data.class_names)
  fig, axes = plt.subplots(rows, 1, figsize=(0.45 * cols, 0.45 * rows), squeeze=False,
                           gridspec_kw=dict(hspace=0.05))
  for c, ax in enumerate(axes[:, 0]):
    high, low = extreme_examples(scores, data.y, c, per_side)
    cells = list(high) + [None] * (per_side - len(high) + 1) + list(low)
    show_examples(ax, data, cells + [None] * (cols - len(cells)))
    ax.text(-0.007, 0.5, data.class_names[c], transform=ax.transAxes, ha='right', va='center', fontsize=7)
  for label, at in (('highest C-scores', per_side / 2), ('lowest C-scores', per_side + 1 + per_side / 2)):
    axes[0, 0].text(at / cols, 1.15, label, transform=axes[0, 0].transAxes, fontsize=9)
  save_figure(fig, path, bbox_inches='tight')


def hard_examples(scores, count, top=0.5):
  """`count` examples with C-scores spread evenly over [0, top], the lowest first: with few
  runs the very hardest all sit at 0 and their curves coincide."""
  idx = np.flatnonzero(~np.isnan(scores))
  chosen = []
  for target in np.linspace(0, top, min(count, len(idx))):
    free = idx[~np.isin(idx, chosen)]
    chosen.append(free[np.argmin(np.abs(scores[free] - target))])
  return np.array(chosen)


def cscores_figure(est, data, path, hard=6):
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
  scored, classes = ~np.isnan(est.cscores), range(len(data.class_names))
  per_class = [est.cscores[scored & (data.y == c)].mean() if (scored & (data.y == c)).any() else 0
               for c in classes]
  ax.bar(classes, per_class, color='tab:green')
  ax.set(xlabel='class', ylabel='mean C-score', xticks=classes,
         ylim=(max(0, min(per_class) - 0.02), 1), title='C-score per class')
  ax.set_xticklabels(data.class_names)

  ax = fig.add_subplot(grid[1, :2])
  chosen = hard_examples(est.cscores, hard)
  for k, i in enumerate(chosen):
    ax.plot(est.ratios, est.per_ratio[:, i], 'o-', color=f'C{k}',
            label=f'#{i}: label {data.class_names[data.y[i]]}, C = {est.cscores[i]:.2f}')
  ax.set(xlabel='subset ratio', ylabel='C_r: held-out accuracy on the example', ylim=(-0.03, 1.03),
         title='hard examples (C from 0 to 0.5): held-out accuracy on them by subset ratio')
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  per_row = (hard + 1) // 2
  cells = grid[1, 2].subgridspec(2, 1)
  for r in range(2):
    row = list(chosen[r * per_row:(r + 1) * per_row])
    show_examples(fig.add_subplot(cells[r]), data, row + [None] * (per_row - len(row)),
                  [f'#{i}, label {data.class_names[data.y[i]]}' for i in row],
                  [f'C{k}' for k in range(r * per_row, r * per_row + len(row))])
  save_figure(fig, path)


def memorization_figure(est, data, path, rows=3, cols=10):
  """The most memorized examples: right when trained on, wrong when held out."""
  plt = pyplot()
  mem = np.where(np.isnan(est.memorization), -np.inf, est.memorization)
  chosen = list(np.lexsort((est.cscores, -mem))[:rows * cols])  # ties: the lower C-score first
  fig, axes = plt.subplots(rows, 1, figsize=(1.1 * cols, 1.35 * rows), squeeze=False)
  for r, ax in enumerate(axes[:, 0]):
    row = chosen[r * cols:(r + 1) * cols]
    show_examples(ax, data, row + [None] * (cols - len(row)),
                  [f'#{i} label {data.class_names[data.y[i]]}\nmem {est.memorization[i]:.2f}' for i in row])
  fig.suptitle('most memorized: P(correct | trained on it) - P(correct | held out)', fontsize=9)
  save_figure(fig, path, bbox_inches='tight')


PROXIES = (('learning_speed', 'learning speed: epochs classified right / epochs'),
           ('learning_confidence', 'learning confidence: mean p(label) while trained on'))


def proxy_agreement(proxy, cscores, hardest=0.1):
  """(Spearman's rho over the examples both score, over the hardest 10% of them by C-score,
  mask of the examples both score)."""
  import scipy.stats
  both = ~np.isnan(proxy) & ~np.isnan(cscores)
  if both.sum() < 3:
    return np.nan, np.nan, both
  hard = both & (cscores <= np.quantile(cscores[both], hardest))
  def rho(where):  # NaN where either is constant, as scipy says with a warning
    a, b = proxy[where], cscores[where]
    return float(scipy.stats.spearmanr(a, b).statistic) if np.ptp(a) and np.ptp(b) else np.nan
  return rho(both), rho(hard) if hard.sum() > 2 else np.nan, both


def proxies_figure(est, data, path, per_row=10):
  """Each learning proxy against the C-score (hexbin, log colour: most mass sits at 1), with
  Spearman's rho, and the examples on which they disagree most, both ways; and the combined score
  against the C-score."""
  plt = pyplot()
  fig = plt.figure(figsize=(16, 13), layout='constrained')
  top, *rows = fig.subfigures(5, 1, height_ratios=(5, 2, 2, 2, 2))
  plots = top.subplots(1, 3)
  both = ~np.isnan(est.cscores) & ~np.isnan(est.learning_confidence)
  weight = 'n/a' if not both.any() else f'{0 if np.isnan(est.combined_signal) else est.combined_signal:.2f}'
  combined = f'combined score: the C-score shrunk toward the one its\nlearning confidence predicts (the C-score weighs {weight})'
  for ax, (key, title) in zip(plots, PROXIES + (('combined_score', combined),)):
    proxy = getattr(est, key)
    rho_all, rho_hard, both = proxy_agreement(proxy, est.cscores)
    if both.any():
      art = ax.hexbin(proxy[both], est.cscores[both], gridsize=40, bins='log', cmap='viridis',
                      extent=(0, 1, 0, 1), mincnt=1)
      top.colorbar(art, ax=ax, label='examples (log scale)')
    else:  # one run: the examples it held out (C-score) are not those it trained on (proxies)
      ax.text(0.5, 0.5, 'too few runs: no example was both held out\n(a C-score) and trained on (a proxy)',
              ha='center', va='center', transform=ax.transAxes)
    ax.set(xlabel=title, ylabel='C-score', xlim=(0, 1), ylim=(0, 1))
    ax.set_title(f"Spearman's rho {rho_all:.2f} over {both.sum():,} examples,\n"
                 f"{rho_hard:.2f} over the hardest 10% by C-score", fontsize=10)
  for col, (key, title) in enumerate(PROXIES):
    proxy = getattr(est, key)
    both = ~np.isnan(proxy) & ~np.isnan(est.cscores)
    gap = np.where(both, proxy - est.cscores, 0)  # > 0: the proxy finds it easier than C does
    for row, (sign, what) in zip(rows[2 * col:], ((1, 'learned easily, yet a low C-score'),
                                                   (-1, 'learned with difficulty, yet a high C-score'))):
      row.suptitle(f'{key.replace("_", " ")}: {what}', fontsize=10, x=0.01, ha='left')
      chosen = [i for i in np.argsort(-sign * gap, kind='stable')[:per_row] if both[i]]
      show_examples(row.subplots(), data, chosen + [None] * (per_row - len(chosen)),
                    [f'#{i} label {data.class_names[data.y[i]]}\nC {est.cscores[i]:.2f}, '
                     f'{key.split("_")[1]} {proxy[i]:.2f}' for i in chosen])
  fig.suptitle('Learning proxies, and the combined score, against the C-score, from the same runs', fontsize=11)
  save_figure(fig, path)


# ------------------------------------------------------------------------------------------------
# Report: every example in one HTML page, to sort, filter, look at and take away
# ------------------------------------------------------------------------------------------------

REPORT_LIMIT = 20_000_000  # bytes: a page any browser opens at once, and one can mail or copy

REPORT_COLUMNS = (('cscore', 'cscores'), ('standard_error', 'standard_error'),
                  ('memorization', 'memorization'), ('learning_speed', 'learning_speed'),
                  ('learning_confidence', 'learning_confidence'), ('combined_score', 'combined_score'))
# (the page's name, Estimates')


def extremes_per_class(scores, labels, classes, keep):
  """Indices, in example order, of the `keep` // 2 lowest- and highest-scored examples of each
  class (of every scored one where a class has fewer); NaN scores are left out."""
  chosen = []
  for c in range(classes):
    idx = np.flatnonzero((labels == c) & ~np.isnan(scores))
    ranked = idx[np.argsort(scores[idx], kind='stable')]
    half = keep // (2 * classes)  # (0 when fewer than two a class fit: none)
    chosen.append(ranked if len(ranked) <= 2 * half else np.concatenate([ranked[:half], ranked[len(ranked) - half:]]))
  return np.sort(np.concatenate(chosen)).astype(np.int64)


def sprite_sheets(pictures, shape):
  """PNG sprite sheets of pictures [m, H * W (* 3)] as base64 text, and (per sheet, columns):
  up to 1,000 pictures a sheet, row by row, a sheet at most about 4,096 pixels a side."""
  from PIL import Image  # Pillow: matplotlib's own dependency
  h, w = shape[:2]
  cols = max(1, min(40, 4096 // w))
  per_sheet = cols * max(1, min(25, 4096 // h))
  sheets = []
  for start in range(0, len(pictures), per_sheet):
    chunk = pictures[start:start + per_sheet].reshape(-1, *shape)
    rows = -(-len(chunk) // cols)
    tiles = np.zeros((rows * cols, *shape), np.uint8)
    tiles[:len(chunk)] = chunk
    sheet = tiles.reshape(rows, cols, *shape).swapaxes(1, 2).reshape(rows * h, cols * w, *shape[2:])
    png = io.BytesIO()
    Image.fromarray(sheet).save(png, format='png')
    sheets.append(base64.b64encode(png.getvalue()).decode())
  return sheets, (per_sheet, cols)


def encoded(values, dtype):
  """An array as base64 text of its bytes in `dtype`, little-endian (as JavaScript's typed arrays
  read them on any current machine)."""
  return base64.b64encode(np.ascontiguousarray(values, dtype=np.dtype(dtype).newbyteorder('<')).tobytes()).decode()


def report_data(est, data, facts, shown):
  """What the page shows of the examples `shown` (indices), as JSON-ready values: numbers as
  base64 little-endian arrays, pictures as sprite sheets."""
  counts = est.held_out_counts[:, shown]
  count_type = next(t for t in (np.uint8, np.uint16, np.uint32) if counts.max(initial=0) <= np.iinfo(t).max)
  hits = np.rint(np.nan_to_num(est.per_ratio[:, shown]) * counts)  # C_r = hits / count, exactly
  page = dict(name=data.name, n=len(data.y), facts=facts, class_names=list(data.class_names),
              label_values=[str(v) for v in (data.label_values or range(len(data.class_names)))],
              ratios=est.ratios.tolist(), runs=est.runs.tolist(),
              heldout_accuracy=[None if np.isnan(a) else float(a) for a in est.heldout_accuracy],
              index=encoded(shown, '<u4'), label=encoded(data.y[shown], '<u2'),
              columns={name: encoded(getattr(est, field)[shown], '<f4') for name, field in REPORT_COLUMNS},
              count_type=np.dtype(count_type).name, hits=encoded(hits, count_type),
              counts=encoded(counts, count_type), shape=None,
              unscored=int(np.isnan(est.cscores).sum()))  # of all the examples, shown or not
  if data.shape is not None:
    sheets, (per_sheet, cols) = sprite_sheets(data.x[shown], tuple(data.shape))
    page.update(shape=list(data.shape[:2]), per_sheet=per_sheet, cols=cols)
    return page, sheets
  return page, []


def report_html(page, sheets):
  """The page: REPORT_TEMPLATE (below, with the machinery) with the data and the sheets in it."""
  css = '\n'.join(f'.s{i}{{background-image:url(data:image/png;base64,{s})}}' for i, s in enumerate(sheets))
  data = json.dumps(page, separators=(',', ':')).replace('<', '\\u003c')  # no tag inside <script>
  return REPORT_TEMPLATE.replace('/*SHEETS*/', css).replace('/*DATA*/', data)


def report(est, data, facts, limit=REPORT_LIMIT):
  """The report page (text) of every example, or, when their pictures would pass `limit` bytes,
  of the lowest- and highest-scored of each class, as many as fit: sized from a first 2,000,
  then checked."""
  def page(shown):
    content, sheets = report_data(est, data, facts, shown)
    return report_html(dict(content, left_out=len(data.y) - len(shown)), sheets)
  n = len(data.y)
  empty = len(page(np.arange(0)).encode())  # the code, the facts, the names
  sample = np.arange(min(n, 2000))
  per_example = (len(page(sample).encode()) - empty) / max(len(sample), 1)
  shown = np.arange(n)
  while True:
    if empty + per_example * len(shown) > limit:  # the extremes of each class, as many as fit
      keep = max(0, min(len(shown) - 1, int(0.98 * (limit - empty) / per_example)))
      shown = extremes_per_class(est.cscores, data.y, len(data.class_names), keep)
    html = page(shown)
    size = len(html.encode())
    if size <= limit or not len(shown):
      return html
    per_example = (size - empty) / len(shown)


# ------------------------------------------------------------------------------------------------
# Outputs and summaries: the files written from the stored runs, and what the command prints
# ------------------------------------------------------------------------------------------------

def output_files(name='mnist', pictures=True):
  """The files written, the figures named after the data; without pictures (features), not
  the figures that are made of examples."""
  files = dict(scores='cscores.npy', details='cscores-details.npz', report=f'{name}-report.html',
               examples=f'{name}-examples.pdf', overview=f'{name}-cscores.pdf',
               memorized=f'{name}-memorized.pdf', proxies=f'{name}-proxies.pdf')
  return files if pictures else {k: v for k, v in files.items() if k not in ('examples', 'memorized')}


OUTPUTS = output_files()  # MNIST's


OUTPUT_NOTES = dict(
    scores="the C-score of each training example, float32, in the data's order (MNIST's: tfds train order)",
    details='per-ratio scores, standard errors, split-half reliability, memorization, learning proxies, combined score',
    report='every example, to sort, filter and take away as CSV: open it in a browser',
    examples="per class, the 10 highest- and 10 lowest-scored examples",
    overview='C-score histogram, learning curve, C-score per class, hard examples by ratio',
    memorized='the 30 most memorized examples',
    proxies='the learning proxies and the combined score against the C-score')


def write_outputs(out_dir, data, runs, config, tag=''):
  """Estimates from the stored runs, written as the output files; returns them. The details
  also hold the classes' names and, for an npz, the file's label of each class."""
  est = estimate(runs, config, len(data.y))
  path = {k: os.path.join(out_dir, name) for k, name in output_files(data.name, data.shape is not None).items()}
  classes = dict(class_names=np.array(data.class_names, dtype=str),
                 label_values=np.array(data.label_values or range(len(data.class_names))))
  write_atomically(path['scores'], lambda f: np.save(f, est.cscores.astype(np.float32)), tag)
  write_atomically(path['details'], lambda f: np.savez_compressed(f, **dataclasses.asdict(est), **classes), tag)
  page = report(est, data, report_facts(est, runs, config))
  write_atomically(path['report'], lambda f: f.write(page.encode()), tag)
  if not np.isnan(est.cscores).all():
    if data.shape is not None:
      examples_figure(data, est.cscores, path['examples'])
      memorization_figure(est, data, path['memorized'])
    cscores_figure(est, data, path['overview'])
    proxies_figure(est, data, path['proxies'])
  return est


def write_outputs_and_summarize(args, config, data, store, runs, trained, seconds, interrupted):
  """Writes the outputs from the stored runs the command names; returns the summary's lines.
  With none stored that is an error, unless Ctrl-C stopped the very first group."""
  if not any(finished_runs(runs, config, r) for r in config.ratios):
    if interrupted:
      return []
    raise CScoreError(f'{store} holds none of the runs this command names ({len(config.ratios)} '
                      f'ratios x seeds {seed_ranges(run_seeds(config))}); '
                      'train them first, or check --runs, --ratios and --seed')
  est = write_outputs(args.out_dir, data, runs, config, process_tag(args))
  missing = [line for line in (missing_line(runs, config), rerun_line(store, runs, config)) if line]
  return summary_lines(est, runs, config, trained, seconds) + missing + written_lines(args.out_dir, est, data)


def reliability_line(est):
  if np.isnan(est.reliability):
    return 'split-half reliability: not available (it needs at least 2 runs at every ratio)'
  return (f'split-half reliability: r = {est.split_half_r:.3f} between the even and the odd runs; '
          f'the whole estimate {est.reliability:.3f}; 200 runs per ratio would reach '
          f'{est.reliability_200_runs:.3f}')


def combined_lines(est):
  """Learning confidence's reliability, and how the combined score weighs the C-score."""
  has_c, has_l = ~np.isnan(est.cscores), ~np.isnan(est.learning_confidence)
  both, only_c, only_l = (int(x.sum()) for x in (has_c & has_l, has_c & ~has_l, has_l & ~has_c))
  lines = ['learning confidence\'s split-half reliability: ' + (
      'not available (it needs at least 2 runs at every ratio)' if np.isnan(est.confidence_reliability)
      else f'r = {est.confidence_split_half_r:.3f}; the whole estimate {est.confidence_reliability:.3f}')]
  if not both:
    lines.append('combined score: the C-score alone; no example has both a C-score and learning confidence'
                 + (f', so the {only_l:,} with learning confidence only have none (see learning_confidence)' if only_l else ''))
    return lines
  signal = (f'{est.combined_signal:.2f} (the share of its spread about that prediction that is signal, not noise)'
            if not np.isnan(est.combined_signal) else
            '0 (its noise is not measurable: no ratio has 2 runs)' if not (est.runs >= 2).any() else
            '0 (its noise is not measurable: too few examples are scored by both halves of the runs)')
  lines.append('combined score: each C-score shrunk toward the one its learning confidence predicts, by its '
               f'own noise; the C-score weighs {signal} over the {both:,} examples with both'
               + (f'; {only_c:,} have the C-score only, which it is' if only_c else '')
               + (f'; {only_l:,} have learning confidence only: the C-score it predicts' if only_l else ''))
  return lines


def hardware_line(runs, config):
  """Which devices and matmul precisions trained the runs in the estimate."""
  kinds = collections.Counter(r.hardware for ratio in config.ratios
                              for r in finished_runs(runs, config, ratio))
  listed = ', '.join(f'{count} on {device} ({matmul})' for (device, matmul), count in kinds.most_common())
  twice = sum(r.alternates > 0 for ratio in config.ratios for r in finished_runs(runs, config, ratio))
  return (f'runs in the estimate trained {"on mixed hardware: " if len(kinds) > 1 else ""}{listed}'
          + (f'; {twice} of them stored twice, by different hardware: one record of each is used, '
             "the CPU's (between GPUs, the first by name)" if twice else ''))


def training_time_line(runs, config):
  """The training time of the runs in the estimate, summed from the store's records."""
  found = [r for ratio in config.ratios for r in finished_runs(runs, config, ratio)]
  timed = [r.seconds for r in found if not np.isnan(r.seconds)]
  def runs(count):
    return f'{count:,} run{"s" if count != 1 else ""}'
  if not timed:
    return f'training time: not recorded for the {runs(len(found))} in the estimate (stored by an older mnist.py)'
  return (f'training time: {datetime.timedelta(seconds=round(sum(timed)))}, the store\'s record for '
          f'{runs(len(timed))}, evaluation included (summed: processes that ran at once each count)'
          + (f'; {runs(len(found) - len(timed))} stored by an older mnist.py have no time recorded'
             if len(timed) < len(found) else ''))


def report_facts(est, runs, config):
  """The report's summary of what was run, on what, for how long, and how reliable it is."""
  done = sorted(set(est.runs.tolist()))
  per_ratio = f'{done[0]}' if len(done) == 1 else f'{done[0]} to {done[-1]}'
  se = (f'standard error of a C-score: median {np.nanmedian(est.standard_error):.4f}'
        if not np.isnan(est.standard_error).all() else 'standard error: none (no example scored)')
  return [f'{per_ratio} runs per ratio at {len(est.ratios)} ratios ('
          + ', '.join(f'{r:g}' for r in est.ratios) + f'): {int(est.runs.sum()):,} models; '
          f'{config.epochs} epoch{"s" if config.epochs > 1 else ""} each, batch {config.batch_size}, '
          f'{config.precision}',
          hardware_line(runs, config), training_time_line(runs, config), reliability_line(est),
          *combined_lines(est), se]


def summary_lines(est, runs, config, trained, seconds):
  lines = ['held-out accuracy per ratio (runs done):']
  lines += [f'  {r:.2f}: {acc:.4f} ({k})' for r, k, acc in zip(est.ratios, est.runs, est.heldout_accuracy)]
  scores, se = est.cscores, est.standard_error
  valid = scores[~np.isnan(scores)]
  lines.append(f'C-scores: {len(valid)} examples scored, {int(np.isnan(scores).sum())} never held out; '
               f'{(valid < 0.5).sum()} below 0.5, {(valid < 0.1).sum()} below 0.1')
  if len(valid):
    runs_done = int(est.runs.max())
    more = runs_to_halve_standard_error(est)
    lines.append(f'standard error: median {np.nanmedian(se):.4f}, 95th percentile '
                 f'{np.nanpercentile(se, 95):.4f}; --runs {more} would halve the median '
                 f'({more - runs_done} more per ratio)')
    lines.append(reliability_line(est))
    lines += combined_lines(est)
    lines.append(hardware_line(runs, config))
  rate = f' ({trained / seconds:.3f} models/s)' if trained and seconds > 0 else ''
  lines.append(f'models trained now: {trained} in {datetime.timedelta(seconds=round(seconds))}'
               f'{rate}; models in the estimate: {est.runs.sum()}')
  if len(valid) and (plan := plan_line(est, config, trained, seconds)):
    lines.append(plan)
  return lines


def plan_line(est, config, trained, seconds):
  """How many runs per ratio this data needs for a reliability of 0.99 and of 0.999, and, when
  this command trained, how long each protocol would take at its rate (models a second); None
  without a reliability to project. It sits beside the standard-error line, which says what
  halves the error; this one says what reaches a reliability."""
  targets = {t: runs_for_reliability(est, t) for t in (0.99, 0.999)}
  if None in targets.values():
    return None
  rate = trained / seconds if trained and seconds > 0 else None
  def plan(target, runs):
    models = runs * len(config.ratios)
    took = f', {models:,} models, about {datetime.timedelta(seconds=round(models / rate))}' if rate else ''
    return f'{target} takes --runs {runs}{took}'
  return (f'plan: from this estimate\'s reliability ({est.reliability:.3f} at {int(est.runs.max())} runs '
          f'per ratio, Spearman-Brown), a reliability of ' + '; of '.join(plan(t, r) for t, r in targets.items())
          + (' at this run\'s rate' if rate else ''))


def seed_ranges(seeds):
  """'0-3, 7, 9-10' for [0, 1, 2, 3, 7, 9, 10]."""
  spans = []
  for s in seeds:
    if spans and s == spans[-1][1] + 1:
      spans[-1][1] = s
    else:
      spans.append([s, s])
  return ', '.join(f'{a}-{b}' if b > a else f'{a}' for a, b in spans)


def missing_line(runs, config):
  """The command's runs not stored yet, per ratio as seed ranges; None if there are none."""
  missing = missing_runs(runs, config)
  total = len(config.ratios) * config.runs
  if not missing:
    return None
  count = sum(len(s) for s in missing.values())
  return (f'missing: {count} of the command\'s {total} runs are not stored yet ('
          + '; '.join(f'ratio {r:.2f}: seed{"s" if len(s) > 1 else ""} {seed_ranges(s)}'
                      for r, s in missing.items()) + ')')


def shard_lines(store, runs, config, shard, trained):
  """A shard's summary: its own runs done and left, and the whole command's: which are missing,
  by seeds and by shard."""
  i, n = shard
  share = len(runs_named(config, shard))
  left = sum(len(s) for s in missing_runs(runs, config, shard).values())
  total = len(config.ratios) * config.runs
  stored = total - sum(len(s) for s in missing_runs(runs, config).values())
  return [f'shard {i}/{n}: {trained} runs trained now; {share - left} of its {share} runs stored, '
          f'{left} left{" (run the same command again to train them)" if left else ""}',
          f'the command\'s runs stored by all shards: {stored} of {total}; when all are, the same '
          f'command with --estimate-only in place of --shard {i}/{n} writes the outputs'] + [
              line for line in (missing_line(runs, config), rerun_line(store, runs, config)) if line]


def written_lines(out_dir, est, data):
  """The files written, each with its full path, and which to open first."""
  figures, pictures = not np.isnan(est.cscores).all(), data.shape is not None
  paths = {k: os.path.abspath(os.path.join(out_dir, file))
           for k, file in output_files(data.name, pictures).items() if figures or not file.endswith('.pdf')}
  width = max(map(len, paths.values()))
  lines = ['wrote:'] + [f'  {path:<{width}}  {OUTPUT_NOTES[k]}'
                        + (f' ({size_text(os.path.getsize(path))})' if k == 'report' else '')
                        for k, path in paths.items()]
  if figures and pictures:
    lines.append(f'open first: {paths["examples"]}, the most typical and the most unusual examples')
  elif figures:
    lines.append(f'not written: the figures of examples ({data.name}-examples.pdf, '
                 f'{data.name}-memorized.pdf): x holds features, not images')
  return lines


# ------------------------------------------------------------------------------------------------
# main: load the data, train the runs the store lacks, estimate, write the outputs
# ------------------------------------------------------------------------------------------------

INTERRUPTED = 'interrupted: finished runs are kept in the store; run the same command again to resume'


def main(argv=None):
  config, args = parse_args(argv)
  with contextlib.suppress(AttributeError, ValueError):  # each line as it is printed, in a log file too
    sys.stdout.reconfigure(line_buffering=True)
  start = time.perf_counter()
  try:
    load_data = data_loader(args)
    with lock_store(args.out_dir, args.shard, reader=bool(args.estimate_only or args.merge),
                    existing=args.estimate_only and not args.merge):
      # After the lock: a refused process answers at once.
      configure_tensorflow(train=not (args.estimate_only or args.merge))
      data = load_data()
      config = with_data(config, data)
      store, runs = open_and_load_store(args, config, data)
      trained, interrupted = train_share(args, config, data, store, runs)
      if args.shard:  # a shard's own summary, with the runs the other shards stored meanwhile
        lines = shard_lines(store, load_runs(store), config, args.shard, trained)
      else:
        lines = write_outputs_and_summarize(args, config, data, store, runs, trained,
                                            time.perf_counter() - start, interrupted)
  except KeyboardInterrupt:
    print(f'mnist.py: {INTERRUPTED}', file=sys.stderr)
    return 130
  except (CScoreError, OSError) as e:
    print(f'mnist.py: error: {e}', file=sys.stderr)
    return 1
  except ImportError as e:  # TensorFlow, tensorflow-datasets, matplotlib or scipy
    print(f'mnist.py: error: {first_line(e)}; install what the script needs: '
          'pip install -r requirements.txt', file=sys.stderr)
    return 1
  except Exception as e:
    if not (out_of_memory(e) or gpu_failed_to_start(e)):
      raise
    print(f'mnist.py: error: {failure_line(e)}', file=sys.stderr)
    return 1
  for line in lines:
    print(line)
  if interrupted:
    print(f'mnist.py: {INTERRUPTED}', file=sys.stderr)
    return 130
  return 0


# ================================================================================================
# MACHINERY: nothing below changes a score
# ================================================================================================

# ------------------------------------------------------------------------------------------------
# Data download and files: tensorflow-datasets prepares a data set once, quietly (MNIST offline
# from the official files); an .npz read without pickle; data checked against memory first.
# ------------------------------------------------------------------------------------------------

MNIST_FILES = ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz',
               't10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz')
MNIST_HOST = 'storage.googleapis.com'  # where tfds downloads MNIST from


def prepare_once(builder, manual_dir):
  """Prepares the tfds builder's data set unless it is prepared: one line of ours instead of
  tfds' bars and notes, and a one-line error offline or on a bad file. Processes that start at
  once on a fresh data dir (a job array's shards) take turns: the first prepares it, the others
  wait and read it. Returns the builder to read: a new one if another process prepared it (a
  builder made before knows no splits)."""
  import tensorflow_datasets as tfds
  tfds.disable_progress_bar()
  logging.getLogger('absl').setLevel(logging.ERROR)
  if builder.is_prepared():
    return builder
  root = str(builder.data_dir)[:-len(builder.info.full_name) - 1]  # DATA_DIR/mnist/3.0.1
  os.makedirs(root, exist_ok=True)
  with open(os.path.join(root, '.cscore-prepare.lock'), 'a+') as turn:
    while not try_lock(turn, True):  # the OS drops it with its holder, even on kill -9
      time.sleep(1)
    if builder.is_prepared():  # by another process, while this one waited
      name_and_config = builder.info.full_name.rsplit('/', 1)[0]
      return tfds.builder(f'{name_and_config}:{builder.version}', data_dir=root)
    prepare(builder, manual_dir)
  return builder


def prepare(builder, manual_dir):
  """Downloads and prepares the data set (MNIST from manual_dir's official files, if given)."""
  name = 'MNIST' if builder.name == 'mnist' else builder.name
  print(f'preparing {name} in {builder.data_dir} (once)', flush=True)
  config = mnist_download_config(manual_dir)
  if manual_dir is None and not proxied() and not network_reachable():
    if builder.name != 'mnist':
      raise CScoreError(
          f'{name} is not prepared in {builder.data_dir} and the network cannot be reached. Prepare '
          f'it on a machine online (tfds build {builder.name} --data_dir DIR), copy DIR here and pass '
          'it as --data-dir.')
    raise CScoreError(
        f'MNIST is not prepared in {builder.data_dir} and {MNIST_HOST} cannot be reached. '
        'Offline, pass --manual-dir DIR, a folder holding the four official MNIST files '
        f'({", ".join(MNIST_FILES)}).')
  try:
    with contextlib.redirect_stdout(io.StringIO()):  # tfds' own lines: ours above says it
      builder.download_and_prepare(download_config=config)
  except Exception as e:  # tfds' checksum and download errors: keep their first line
    raise CScoreError(f'preparing {name} failed: {first_line(e)}') from e


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


def tfds_builder(name, data_dir):
  """(builder, image feature, label feature) of an image classification data set of
  tensorflow-datasets, checked: known, with an image and a label feature, images of one shape,
  its train split small enough for this machine's memory."""
  with native_stderr_silenced():
    import tensorflow_datasets as tfds
  logging.getLogger('absl').setLevel(logging.ERROR)
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # DatasetNotFoundError, or a bad config name
    raise CScoreError(f'--dataset {name}: {first_line(e)} List the names with: python -c '
                      '"import tensorflow_datasets as tfds; print(tfds.list_builders())"') from e
  features = builder.info.features
  image, label = (features[k] if k in features.keys() else None for k in ('image', 'label'))
  if not isinstance(image, tfds.features.Image) or not isinstance(label, tfds.features.ClassLabel):
    raise CScoreError(f'--dataset {name}: not an image classification data set: it needs an image '
                      f'and a label feature, and has {", ".join(features.keys())}')
  if None in image.shape:
    raise CScoreError(f'--dataset {name}: its images vary in shape ({image.shape}); the MLP needs '
                      'one shape: resize them and pass them with --data FILE.npz')
  if image.np_dtype != np.uint8:
    raise CScoreError(f'--dataset {name}: its images are {image.np_dtype}, not 8-bit pixels; pass them, '
                      'scaled as you need, with --data FILE.npz')
  check_train_split_fits(name, builder, image)  # known once prepared (metadata)
  return builder, image, label


def check_train_split_fits(name, builder, image):
  """Refuses a data set without a train split, or one too large for this machine's memory, if
  its splits are known (they are once it is prepared)."""
  if builder.info.splits and 'train' not in builder.info.splits:
    raise CScoreError(f'--dataset {name}: it has no train split (only {", ".join(builder.info.splits)})')
  if 'train' in builder.info.splits:
    n = builder.info.splits['train'].num_examples
    check_fits_in_memory(f'--dataset {name}', 2 * n * (int(np.prod(image.shape)) + 8))  # loaded, then flattened


def tfds_data(name, builder, image, label):
  """The train split of a checked tfds builder, prepared once (downloaded), in tfds' order."""
  builder = prepare_once(builder, None)
  check_train_split_fits(name, builder, image)  # before loading it whole
  x, y = [], []
  for batch in builder.as_dataset(split='train', shuffle_files=False).batch(10_000).as_numpy_iterator():
    x.append(batch['image'].reshape(len(batch['image']), -1))
    y.append(batch['label'])
  shape = image.shape[:2] if image.shape[-1] == 1 else image.shape
  return Data(name, np.concatenate(x), np.concatenate(y).astype(np.int32), tuple(label.names), shape)


def read_npz(path, required, optional=()):
  """{name: array} of an .npz's required and optional members, read without pickle; one-line
  errors for a file that is missing, not an npz, lacks a member or needs pickle."""
  if not os.path.isfile(path):
    raise CScoreError(f'{path}: cannot read it (no such file)')
  if not zipfile.is_zipfile(path):
    raise CScoreError(f'{path} is not a NumPy .npz file of x and y (numpy.savez writes one)')
  check_fits_in_memory(path, npz_memory(npz_members(path)))
  try:
    with np.load(path, allow_pickle=False) as f:
      missing = [k for k in required if k not in f.files]
      if missing:
        raise CScoreError(f'{path} has no {" or ".join(missing)} (it holds {", ".join(f.files) or "nothing"}); '
                          'it needs x, the examples, and y, their labels')
      return {k: f[k] for k in (*required, *optional) if k in f.files}
  except ValueError as e:  # numpy's words for an object array: "Object arrays cannot be loaded..."
    if 'allow_pickle' in str(e):
      raise CScoreError(f'{path} needs pickle to load (an array of Python objects); save plain '
                        'numeric arrays, and class_names as strings') from e
    raise CScoreError(f'{path} is not a NumPy .npz file ({first_line(e)})') from e
  except (OSError, EOFError, zipfile.BadZipFile) as e:
    raise CScoreError(f'{path}: cannot read it ({first_line(e)})') from e


def npz_members(path):
  """{name: (shape, dtype)} of an .npz's arrays, read from their headers (nothing is loaded);
  {} if it cannot tell (np.load then says what is wrong)."""
  try:
    members = {}
    with zipfile.ZipFile(path) as z:
      for name in z.namelist():
        with z.open(name) as f:
          header = {(1, 0): np.lib.format.read_array_header_1_0,
                    (2, 0): np.lib.format.read_array_header_2_0}[np.lib.format.read_magic(f)]
          shape, _, dtype = header(f)
        members[name.removesuffix('.npy')] = tuple(shape), dtype
    return members
  except Exception:  # not a zip, not .npy members, a header numpy cannot read
    return {}


def npz_memory(members):
  """Bytes that loading and preparing an .npz takes at its peak: its arrays, and for x one more
  copy of images, or, for features, the float64 and float32 copies that standardizing makes
  (about 28 bytes a value)."""
  size = lambda shape, dtype: int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
  total = sum(size(*m) for m in members.values())
  if 'x' in members:
    shape, dtype = members['x']
    pictures = dtype == np.uint8 and len(shape) in (3, 4)
    total += size(shape, dtype) if pictures else 28 * int(np.prod(shape, dtype=np.int64))
  return total


def check_fits_in_memory(what, nbytes):
  """Refuses data whose loading and preparing would take more than the memory available now
  (`nbytes`: their peak, copies included)."""
  available = available_memory()
  if available and nbytes > available:
    raise CScoreError(f'{what}: loading and preparing it takes about {size_text(nbytes)}; '
                      f'this machine has {size_text(available)} available')


def size_text(nbytes):
  return f'{nbytes / 2**30:.1f} GB' if nbytes >= 2**30 else f'{nbytes / 2**20:.1f} MB'


# ------------------------------------------------------------------------------------------------
# Device sizing: how many models train at once (K), evaluation chunks, the opening line.
# ------------------------------------------------------------------------------------------------

def per_model_bytes(config, n=60000):
  """Training memory of one model: weights, momentum and gradients, a batch's activations, and
  its learning record (two floats per example)."""
  sizes = layer_sizes(config)
  weights = sum(i * o + o for i, o in zip(sizes[:-1], sizes[1:]))
  return 4 * (3 * weights + 4 * config.batch_size * sum(sizes) + 2 * n)


# Assumed for a GPU whose memory nvidia-smi cannot tell (none on PATH, an order it cannot map).
UNKNOWN_GPU_MEMORY = 8 * 2**30


def gpu_free_bytes():
  """Free memory of the GPU this process trains on, as nvidia-smi reads it before TensorFlow
  takes any (memory growth is on, so TensorFlow takes only what it uses)."""
  gpu = visible_gpu()
  return gpu.free if gpu and gpu.free else UNKNOWN_GPU_MEMORY


def default_models_at_once(runs, config=Config(), n=60000):
  """K. On a CPU: enough chains to keep every core busy (8 is as fast as 16 on 2 cores). On a
  GPU: as many as a quarter of its free memory holds (about 10 MB a model: 2,000 on an idle
  80 GB GPU, so there every run of a ratio trains at once)."""
  if accelerators():
    k = gpu_free_bytes() // 4 // per_model_bytes(config, n)
  else:
    k = max(8, 2 * cpu_cores())
  return int(max(1, min(k, runs)))


# Evaluation goes EVAL_CHUNK examples at a time, whatever K (see EnsembleTrainer.correct).
EVAL_CHUNK = 10_000
# More rows per call gain nothing: at 32 models x 10,000 examples a call is about 0.3 TFLOP,
# milliseconds on any GPU, against tens of microseconds to launch it; its activations take 2 GB.
MAX_EVAL_ROWS = 320_000


def default_eval_rows(config=Config()):
  """Models x examples per evaluation call: its activations take 4 bytes x sum(layer sizes) a
  row, about 1 GB for 160,000 rows; on a GPU, an eighth of its free memory (with K's quarter,
  the data and TensorFlow's own, well inside it), at most MAX_EVAL_ROWS."""
  if accelerators():
    return int(min(MAX_EVAL_ROWS, gpu_free_bytes() // 8 // (4 * sum(layer_sizes(config)))))
  return 160_000


def device_description(config):
  """Where the models train, for the line that opens a run."""
  if accelerators():
    gpu, count = visible_gpu(), len(gpus_seen())
    notes = [f'{gpu.free / 2**30:.1f} of {gpu.total / 2**30:.1f} GiB free'] if gpu and gpu.free and gpu.total else []
    notes += [f'the first of {count} visible, the others left free'] if count > 1 else []
    where = f'the GPU {gpu.name if gpu else device_kind()}' + (f' ({"; ".join(notes)})' if notes else '')
  else:
    where = f'the CPU ({cpu_name()}, {cpu_cores()} cores)'
  return f'{where}, {config.precision} ({matmul_precision(config)} matmuls)'


# ------------------------------------------------------------------------------------------------
# GPUs: one per process, its memory grown as needed; found by nvidia-smi as CUDA numbers it; its
# warnings and failures.
#
# CUDA numbers the GPUs fastest first unless CUDA_DEVICE_ORDER is PCI_BUS_ID; nvidia-smi numbers
# them by PCI bus. So that an index in CUDA_VISIBLE_DEVICES names the same GPU for both, the
# script sets PCI_BUS_ID (before CUDA starts) unless the user chose an order. A UUID
# (GPU-... or MIG-...) names one device whatever the order. A GPU split by MIG shows CUDA its
# first slice only, and the slice's memory is its profile's (1g.10gb: 10 GB).
# ------------------------------------------------------------------------------------------------

os.environ.setdefault('CUDA_DEVICE_ORDER', 'PCI_BUS_ID')


class Gpu(typing.NamedTuple):
  """A GPU, or a MIG slice of one, as nvidia-smi lists it; memory in bytes, None if unknown."""
  index: int             # the GPU's nvidia-smi index (the slice's GPU's, for a slice)
  name: str              # e.g. 'NVIDIA A100-SXM4-80GB', or 'NVIDIA A100-SXM4-80GB MIG 1g.10gb'
  uuid: str
  free: typing.Optional[int]
  total: typing.Optional[int]
  slices: tuple = ()     # its MIG slices, each a Gpu


def nvidia_smi(*args):
  """nvidia-smi's output, or '' where it is missing, fails or hangs."""
  import subprocess
  try:
    done = subprocess.run(['nvidia-smi', *args], capture_output=True, text=True, timeout=10)
  except (OSError, subprocess.SubprocessError):
    return ''
  return done.stdout if done.returncode == 0 else ''


NVIDIA_SMI_GPU = re.compile(r'GPU (\d+): (.+?) \(UUID: (GPU-[\w-]+)\)')
NVIDIA_SMI_MIG = re.compile(r'\s+MIG ((?:\d+c\.)?\d+g\.(\d+)gb\S*)\s+Device\s+\d+: \(UUID: (MIG-[\w/-]+)\)')


def nvidia_smi_gpus():
  """[Gpu] that nvidia-smi lists (-L), with their free and total memory (--query-gpu); lines it
  cannot read are left out, so garbage gives []."""
  memory = {}
  for line in nvidia_smi('--query-gpu=uuid,memory.free,memory.total',
                         '--format=csv,noheader,nounits').splitlines():
    fields = [f.strip() for f in line.split(',')]
    if len(fields) == 3 and fields[1].isdigit() and fields[2].isdigit():
      memory[fields[0]] = int(fields[1]) * 2**20, int(fields[2]) * 2**20  # MiB
  gpus = []
  for line in nvidia_smi('-L').splitlines():
    if match := NVIDIA_SMI_GPU.fullmatch(line.strip()):
      index, name, uuid = int(match[1]), match[2], match[3]
      gpus.append(Gpu(index, name, uuid, *memory.get(uuid, (None, None))))
    elif gpus and (match := NVIDIA_SMI_MIG.fullmatch(line.rstrip())):
      gpu, size = gpus[-1], int(match[2]) * 10**9
      mig = Gpu(gpu.index, f'{gpu.name} MIG {match[1]}', match[3], size, size)
      gpus[-1] = gpu._replace(slices=gpu.slices + (mig,))
  return gpus


@functools.cache  # one look, however many ask
def visible_gpu():
  """The device CUDA gives this process first (see above), as nvidia-smi knows it: a Gpu, or
  None if there is none or it cannot be told which it is (an index under CUDA's own order on a
  machine of several GPUs)."""
  visible = os.environ.get('CUDA_VISIBLE_DEVICES')
  first = '0' if visible is None else visible.split(',')[0].strip()
  gpus = nvidia_smi_gpus()
  if first.isdigit():
    if len(gpus) > 1 and os.environ.get('CUDA_DEVICE_ORDER') != 'PCI_BUS_ID':
      return None
    found = [g for g in gpus if g.index == int(first)]
  else:  # a UUID or its unique start, as CUDA accepts; '' or -1 hide every GPU
    found = [d for g in gpus for d in (g, *g.slices) if first.startswith(('GPU-', 'MIG-')) and d.uuid.startswith(first)]
  if len(found) != 1:
    return None
  return found[0].slices[0] if found[0].slices else found[0]


@functools.cache  # the devices do not change within a process
def gpus_seen():
  """The GPUs TensorFlow sees. Its first device query also starts its runtime, which logs
  (e.g. a failed CUDA init on a CPU machine) past TF_CPP_MIN_LOG_LEVEL: hence the silence."""
  with native_stderr_silenced():
    return tf.config.list_physical_devices('GPU')


@functools.cache
def accelerators():
  """The GPU this process trains on, as a list of one (or none): the first TensorFlow may use,
  the others hidden from it, so that a process holds no memory of GPUs it does not use. Memory
  growth is on, so that TensorFlow takes what it uses, not nearly all of the GPU: a second
  process, or an --estimate-only beside running shards, still finds room. Call it before
  TensorFlow's first op (configure_tensorflow does), when both settings can still be made."""
  gpus = tf.config.get_visible_devices('GPU')[:1] if gpus_seen() else []
  with contextlib.suppress(RuntimeError):  # the runtime has started (tests): keep its settings
    for gpu in gpus:
      tf.config.experimental.set_memory_growth(gpu, True)
    tf.config.set_visible_devices(gpus, 'GPU')
  return gpus


def hide_gpus():
  """For a command that trains nothing (--estimate-only, --merge): no GPU, not even CUDA
  started, so that it takes no GPU memory beside running shards."""
  os.environ['CUDA_VISIBLE_DEVICES'] = ''  # read when CUDA starts, and by visible_gpu()
  if 'tensorflow' in sys.modules:  # loaded already (tests): hide them from it too
    with contextlib.suppress(RuntimeError):
      tf.config.set_visible_devices([], 'GPU')
  for cached in (accelerators, visible_gpu, device_kind):
    cached.cache_clear()


def gpu_unseen_warning():
  """One line when nvidia-smi lists a GPU for this process but TensorFlow sees none (so the run
  would train on the CPU without a word); None otherwise."""
  if accelerators() or (gpu := visible_gpu()) is None:
    return None
  return (f'mnist.py: warning: nvidia-smi lists {gpu.name} but TensorFlow sees no GPU, so this run '
          'trains on the CPU. Most likely TensorFlow lacks its CUDA libraries (pip install '
          '"tensorflow[and-cuda]") or the driver is older than its CUDA needs; see docs/gpu.md. '
          'CUDA_VISIBLE_DEVICES="" silences this')


def check_gpu_precision(config):
  """bf16 needs a GPU of compute capability 8.0 (Ampere) or newer: older ones have no bf16
  matmul units, and TensorFlow runs it slowly or not at all."""
  capability = gpu_compute_capability()
  if config.precision == 'bfloat16' and capability and capability < (8, 0):
    raise CScoreError(f'--precision bfloat16 needs a GPU of compute capability 8.0 or newer; '
                      f'{device_kind()} has {capability[0]}.{capability[1]}: use float32')


def gpu_compute_capability():
  """(major, minor) of the GPU this process trains on; None on a CPU, or if TensorFlow does not
  say."""
  gpus = accelerators()
  capability = gpus and tf.config.experimental.get_device_details(gpus[0]).get('compute_capability')
  return tuple(capability) if capability else None


def failure_line(error):
  """What to do when the device fails: out of memory, or CUDA failing to start."""
  if gpu_failed_to_start(error):
    return (f'the GPU failed to start ({first_line(error)}); check it with nvidia-smi (another '
            'process holding it, a driver older than TensorFlow\'s CUDA needs), or train on the CPU '
            'with CUDA_VISIBLE_DEVICES=""')
  if not isinstance(error, MemoryError) and accelerators():  # a device's: TensorFlow is loaded
    return ('the GPU ran out of memory (nvidia-smi shows who else uses it); use a smaller '
            '--models-at-once')
  return 'out of memory; use a smaller --models-at-once or --batch-size'


# What TensorFlow's errors say when CUDA fails to initialise (a driver too old for TensorFlow's
# CUDA, a GPU in a bad state or held exclusively by another process), not later CUDA errors.
CUDA_START_FAILURES = ('cuInit', 'implicit initialization', 'CUDA_ERROR_', 'cudaSetDevice', 'cudaGetDevice')


def gpu_failed_to_start(error):
  """Whether an error is CUDA failing to initialise: an InternalError that says so."""
  tensorflow = sys.modules.get('tensorflow')
  return (tensorflow is not None and isinstance(error, tensorflow.errors.InternalError)
          and any(words in str(error) for words in CUDA_START_FAILURES))


# ------------------------------------------------------------------------------------------------
# Results store: every finished run, saved as it finishes, by one process or by many.
#
#   OUT/cscore-runs/settings.json     what the runs depend on (training settings, data hash)
#   OUT/cscore-runs/runs-*.npz        one file per group of runs: ratio, seeds, held-out and
#                                     correct masks (bit-packed), the learning record, the
#                                     device and matmul precision that trained them, and the
#                                     seconds it took
#   OUT/cscore-runs/.lock*            the operating system's locks (see Locks)
# Each file is written to a temporary name and renamed, so a killed process never leaves half a
# file; settings.json is created exclusively, so two processes starting at once agree on it.
# ------------------------------------------------------------------------------------------------

STORE_DIR = 'cscore-runs'
SETTINGS_FILE = 'settings.json'


def store_settings(config, fingerprint):
  s = {k: getattr(config, k) for k in TRAINING_SETTINGS}
  s['hidden'] = list(s['hidden'])
  s['data'] = fingerprint
  return s


def data_fingerprint(images, labels):
  """A short hash of the data, so that a store is never mixed with runs on other data."""
  h = hashlib.sha256()
  h.update(np.ascontiguousarray(images).tobytes())
  h.update(np.ascontiguousarray(labels).astype(np.int64).tobytes())
  return f'{len(labels)}:{h.hexdigest()[:16]}'


TEMP_PREFIX = '.cscore-tmp-'  # distinctive: --out-dir may be a folder of the user's own


def mode_of_new_files():
  """The permissions open() gives a new file, 0o666 less the umask. mkstemp's own 0o600 would
  hide the outputs and the store from the rest of a lab's group on a shared filesystem. Read
  once, at import, while no other thread can create a file under the umask briefly set to 0."""
  umask = os.umask(0)
  os.umask(umask)
  return 0o666 & ~umask


NEW_FILE_MODE = mode_of_new_files()


@contextlib.contextmanager
def temporary_file(folder, tag=''):
  """(file, path) of a new temporary file in folder, named .cscore-tmp-<tag>-...: a process
  clears only the leftovers of its own tag. Written, flushed and synced on leaving; deleted on
  an error."""
  fd, tmp = tempfile.mkstemp(dir=folder or '.', prefix=f'{TEMP_PREFIX}{tag}-' if tag else TEMP_PREFIX)
  try:
    os.chmod(tmp, NEW_FILE_MODE)
    with os.fdopen(fd, 'wb') as f:
      yield f, tmp
      f.flush()
      os.fsync(f.fileno())
  except BaseException:
    with contextlib.suppress(OSError):
      os.unlink(tmp)
    raise


def write_atomically(path, write, tag=''):
  """Calls write(file) on a temporary file beside path, then renames it to path."""
  with temporary_file(os.path.dirname(path), tag) as (f, tmp):
    write(f)
  try:
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.unlink(tmp)
    raise


def create_exclusively(path, text, tag=''):
  """Creates path holding text unless it exists; returns whether this call created it. The text
  goes to a temporary file first, then is hard-linked to path (atomic, and it fails if path
  exists), so a reader never sees it half written."""
  with temporary_file(os.path.dirname(path), tag) as (f, tmp):
    f.write(text.encode())
  try:
    os.link(tmp, path)
    return True
  except FileExistsError:
    return False
  except OSError:  # a filesystem without hard links: exclusive creation, then the text
    try:
      with open(path, 'x') as f:
        f.write(text)
      return True
    except FileExistsError:
      return False
  finally:
    os.unlink(tmp)


def clear_leftovers(out_dir, path, tag):
  """Deletes what killed writes left: every temporary file when this process has the store to
  itself (tag ''), else only those of its own tag (a restarted shard's)."""
  for folder in ((path,) if tag else (out_dir, path)):
    for name in os.listdir(folder):
      if name.startswith(f'{TEMP_PREFIX}{tag}-' if tag else TEMP_PREFIX):
        with contextlib.suppress(FileNotFoundError):
          os.unlink(os.path.join(folder, name))


def read_settings(path):
  settings_path = os.path.join(path, SETTINGS_FILE)
  for attempt in range(3):
    try:
      with open(settings_path) as f:
        text = f.read()
      if text or attempt == 2:  # empty: another process is still writing it (no hard links)
        settings = json.loads(text)
        if not isinstance(settings, dict):
          raise ValueError(f'not a JSON object but {type(settings).__name__}')
        return settings
    except (OSError, ValueError) as e:
      raise CScoreError(f'{settings_path} is unreadable ({first_line(e)}); fix or delete it, or start over: an unsharded run with --fresh discards the store') from e
    time.sleep(1)


def check_settings(path, settings):
  """Refuses a store made with other settings, naming each difference."""
  stored = read_settings(path)
  diffs = [f'{k}: store has {stored.get(k)!r}, this run {v!r}'
           for k, v in settings.items() if stored.get(k) != v]
  if diffs:
    raise CScoreError(f'the results store {path} was made with other settings '
                      f'({"; ".join(diffs)}); use them, another --out-dir, or --fresh')


def open_store(out_dir, settings, fresh=False, tag=''):
  """The store's folder, created or checked against `settings`; `fresh` empties it first.
  tag: '' for a process that has the store to itself, else its own (a shard's)."""
  path = os.path.join(out_dir, STORE_DIR)
  settings_path = os.path.join(path, SETTINGS_FILE)
  os.makedirs(path, exist_ok=True)
  clear_leftovers(out_dir, path, tag)
  if fresh:
    for name in os.listdir(path):
      if name.endswith('.npz') or name == SETTINGS_FILE or name.startswith('shards-'):
        os.unlink(os.path.join(path, name))
  if not os.path.exists(settings_path):
    if any(name.startswith('runs-') for name in os.listdir(path)):
      raise CScoreError(f'{path} holds runs but no {SETTINGS_FILE}: their settings are unknown; '
                        'use another --out-dir, or start over: an unsharded run with --fresh discards the store')
    if create_exclusively(settings_path, json.dumps(settings, indent=1), tag):
      return path
  check_settings(path, settings)  # made before, or just now by a process that started with us
  return path


def process_tag(args):
  """The temporary-file tag of this process: '' when it has the store to itself, a shard's own
  (a restart clears its leftovers), or one unique to this process (--estimate-only, --merge)."""
  if args.shard:
    return f'shard-{args.shard[0]}-of-{args.shard[1]}'
  if args.estimate_only or args.merge:
    return f'{socket.gethostname()}-{os.getpid()}'
  return ''


def open_and_load_store(args, config, data):
  """The store in --out-dir, created or checked (and merged into, with --merge), and its runs."""
  fingerprint = data.fingerprint or data_fingerprint(data.x, data.y)  # MNIST's as before
  settings = store_settings(config, fingerprint if data.name == 'mnist' else f'{data.name} {fingerprint}')
  store = open_store(args.out_dir, settings, fresh=args.fresh, tag=process_tag(args))
  if args.merge:
    copied, elsewhere = merge_stores(store, args.merge, settings, process_tag(args))
    print(f'merged {copied} runs into {store}' + (
        f'; {elsewhere} runs it held were trained again on other hardware there: its own records '
        'are kept' if elsewhere else ''))
  runs = load_runs(store)
  if args.estimate_only or args.merge:
    check_protocol(store, runs, config)
  return store, runs


def run_file_name(ratio, seeds):
  """runs-r<ratio>-s<lowest>-<highest>-k<K>-<hash of the seeds>.npz: the hash tells apart groups
  whose seeds are not contiguous (a shard's share)."""
  digest = hashlib.sha256(np.asarray(seeds, np.int64).tobytes()).hexdigest()[:8]
  return f'runs-r{ratio_key(ratio):.6f}-s{min(seeds):06d}-{max(seeds):06d}-k{len(seeds)}-{digest}.npz'


def write_run_file(store, ratio, seeds, runs, tag=''):
  """Saves runs of one ratio (all of one device) as one file; returns its name. Masks are
  bit-packed (7.5 KB each). The file's seconds are its runs' (NaN if any has none recorded)."""
  arrays = dict(ratio=np.float64(ratio), seeds=np.asarray(seeds, np.int64), n=np.int64(len(runs[0].held_out)),
                held_out=np.packbits([r.held_out for r in runs], axis=1),
                correct=np.packbits([r.correct for r in runs], axis=1),
                device=np.str_(runs[0].hardware[0]), matmul=np.str_(runs[0].hardware[1]),
                epochs=np.int64(runs[0].epochs), hits=np.stack([r.hits for r in runs]),
                confidence=np.stack([r.confidence for r in runs]),
                seconds=np.float64(sum(r.seconds for r in runs)))
  name = run_file_name(ratio, seeds)
  write_atomically(os.path.join(store, name), lambda f: np.savez_compressed(f, **arrays), tag)
  return name


def save_runs(store, ratio, seeds, group, epochs, hardware, tag='', seconds=float('nan')):
  """Saves a RunGroup that trained in `seconds`; returns the file's name."""
  return write_run_file(store, ratio, seeds, group_runs(group, epochs, hardware, seconds), tag)


def read_run_file(path):
  """The runs of one store file, [(ratio, seed, Run)]; a file that is not one is an error
  naming it."""
  try:
    with np.load(path, allow_pickle=False) as f:
      if 'hits' not in f or 'device' not in f:
        raise ValueError('it has no learning record or no device: an mnist.py older than this one '
                         'wrote it; its runs must be trained again')
      ratio, seeds, n, epochs = float(f['ratio']), f['seeds'], int(f['n']), int(f['epochs'])
      held_out = np.unpackbits(f['held_out'], axis=1, count=n).astype(bool)
      correct = np.unpackbits(f['correct'], axis=1, count=n).astype(bool)
      hardware = (str(f['device']), str(f['matmul']))
      hits, confidence = f['hits'], f['confidence']
      seconds = float(f['seconds']) / len(seeds) if 'seconds' in f else np.nan  # (older files: none)
    if not len(seeds) == len(held_out) == len(correct) == len(hits) == len(confidence):
      raise ValueError('its arrays disagree on the number of runs')
    if not all(len(h) == len(c) == (~o).sum() for h, c, o in zip(hits, confidence, held_out)):
      raise ValueError('its learning record does not match the runs\' subsets')
  except Exception as e:
    raise CScoreError(f'{path} is corrupt or unreadable ({type(e).__name__}: {e}); '
                      'delete it to retrain its runs (an unsharded run with --fresh discards the whole store)') from e
  return [(ratio, int(s), Run(*record, epochs, hardware, str(path), seconds=seconds))
          for s, *record in zip(seeds, held_out, correct, hits, confidence)]


def same_record(a, b):
  """Whether two records of one run agree."""
  return all(np.array_equal(getattr(a, f), getattr(b, f)) for f in ('held_out', 'correct', 'hits', 'confidence'))


def run_files(store):
  return sorted(name for name in os.listdir(store) if name.startswith('runs-') and name.endswith('.npz'))


def add_run(runs, ratio, seed, run):
  """Adds a stored run to {(ratio, seed): Run}: once if stored twice identically. Two records
  that differ because different devices or precisions trained them (a CPU's bits are not a
  GPU's) are both valid: the first by (device, precision) is kept, whatever order the files
  come in, and the other counted. Two that differ from the same hardware are an error naming
  both files."""
  key = ratio_key(ratio), seed
  if key not in runs or same_record(runs[key], run):
    runs.setdefault(key, run)
    return
  held = runs[key]
  if held.hardware == run.hardware:
    raise CScoreError(f'run {seed} at ratio {key[0]} is stored twice with different results by the '
                      f'same hardware ({" ".join(run.hardware)}), in {held.file} and {run.file}: '
                      'delete the one to distrust')
  kept = min(held, run, key=lambda r: (r.hardware[0] != 'CPU', r.hardware))  # a CPU's first
  runs[key] = kept._replace(alternates=held.alternates + run.alternates + 1)


def load_runs(store):
  """{(ratio, seed): Run} of every run in the store."""
  runs = {}
  for name in run_files(store):
    for ratio, seed, run in read_run_file(os.path.join(store, name)):
      add_run(runs, ratio, seed, run)
  return runs


# ------------------------------------------------------------------------------------------------
# Locks. Who may share a store at once:
#   * one unsharded training run, alone: an exclusive lock on .lock;
#   * shards of one N (--shard I/N), each I once, and --estimate-only or --merge beside them:
#     a shared lock on .lock; a shard also holds an exclusive lock on .lock-shard-I-of-N and a
#     shared one on .lock-shards-N, which a shard of another N probes. Every lock is the
#     operating system's own, so it ends with its process, even on kill -9.
# ------------------------------------------------------------------------------------------------

try:  # flock on POSIX, msvcrt.locking on Windows
  import fcntl
except ImportError:
  fcntl = None
try:
  import msvcrt
except ImportError:
  msvcrt = None


def try_lock(f, exclusive):
  """Locks an open file without waiting; returns whether it got the lock. flock on POSIX
  (shared or exclusive); on Windows msvcrt.locking, which is only exclusive."""
  if fcntl is not None:
    try:
      fcntl.flock(f, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
      return True
    except BlockingIOError:
      return False
  if msvcrt is not None:
    f.seek(0)
    try:
      msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
      return True
    except OSError:
      return False
  return True  # no OS lock on this platform: lock_store warned


def lock_file(folder, name, exclusive, refusal, stack):
  """Opens folder/name and locks it for the rest of `stack`, or raises CScoreError(refusal)."""
  f = stack.enter_context(open(os.path.join(folder, name), 'a+'))
  if not try_lock(f, exclusive):
    raise CScoreError(refusal)
  return f


@contextlib.contextmanager
def lock_store(out_dir, shard=None, reader=False, existing=False):
  """Creates the store's folder and takes this process's locks on it (see above), so that
  processes that must not share a store refuse at once instead of interleaving runs. `shard` is
  (I, N); `reader`: --estimate-only or --merge; `existing`: the store must exist already."""
  path = os.path.join(out_dir, STORE_DIR)
  if existing and not os.path.isfile(os.path.join(path, SETTINGS_FILE)):
    raise CScoreError(f'{out_dir} holds no results store ({os.path.join(path, SETTINGS_FILE)} is missing)')
  try:
    os.makedirs(path, exist_ok=True)
    tempfile.TemporaryFile(dir=out_dir).close()  # the outputs go to out_dir itself
  except OSError as e:
    raise CScoreError(f'cannot write to --out-dir {out_dir}: {e.strerror or e}') from e
  if fcntl is None and msvcrt is None:
    print(f'mnist.py: warning: this platform has no file locks; nothing stops a second process '
          f'on {path}', file=sys.stderr)
  with contextlib.ExitStack() as stack:
    busy = f'another mnist.py is running on {path}'
    if shard is None and not reader:
      lock_file(path, '.lock', True, f'{busy}; wait for it to end, or use another --out-dir', stack)
    elif fcntl is None:  # msvcrt's locks are exclusive only
      lock_file(path, '.lock', True, f'{busy}; on this platform a store takes one process at a time', stack)
    else:
      lock_file(path, '.lock', False, f'an unsharded mnist.py is training on {path}; wait for it to '
                'end, or use another --out-dir', stack)
    if shard is not None:
      i, n = shard
      lock_file(path, f'.lock-shard-{i}-of-{n}', True, f'shard {i}/{n} is already running on {path}', stack)
      with open(os.path.join(path, '.lock-start'), 'a+') as start:
        # One starting shard at a time takes its N's lock and probes the other N's: two shards
        # starting together would otherwise collide on their probes and one refuse wrongly.
        if fcntl is not None:  # (on Windows the exclusive .lock above admits one process)
          fcntl.flock(start, fcntl.LOCK_EX)  # held for milliseconds; the OS drops it with its holder
        lock_file(path, f'.lock-shards-{n}', False, f'shards of another N are starting on {path}', stack)
        for other in sorted(os.listdir(path)):
          if other.startswith('.lock-shards-') and other != f'.lock-shards-{n}':
            with open(os.path.join(path, other), 'a+') as probe:
              if not try_lock(probe, True):
                raise CScoreError(f'shards of N = {other.rsplit("-", 1)[1]} are running on {path}, and '
                                  f'this is shard {i}/{n}; a store takes shards of one N at a time')
    yield


# ------------------------------------------------------------------------------------------------
# Shards and merge. N processes (a Slurm job array, a Kubernetes Indexed Job, one per GPU) each
# train the runs whose shard number is theirs. It depends on (ratio, seed, N) alone, never on K,
# the device or the store, so shards on any hardware, restarted at any moment, never train a run
# twice; at every ratio consecutive seeds go round-robin, so each shard gets its share +-1 there.
# ------------------------------------------------------------------------------------------------

def shard_of(ratio, seed, shards):
  """The shard (0 .. shards - 1) that trains run `seed` at `ratio`. The round-robin starts at an
  offset of the ratio's own, so that the odd runs left over at each ratio fall to different
  shards."""
  return (seed + zlib.crc32(f'{ratio_key(ratio):.6f}'.encode())) % shards


def runs_named(config, shard=None):
  """[(ratio, seed)] of the runs the command names (its ratios x seeds); with shard = (I, N),
  only shard I's share of them."""
  return [(ratio, s) for ratio in config.ratios for s in run_seeds(config)
          if shard is None or shard_of(ratio, s, shard[1]) == shard[0]]


def missing_runs(runs, config, shard=None):
  """{ratio: [seeds]} of the runs the command names (of `shard`, if given) that are not stored."""
  missing = collections.defaultdict(list)
  for ratio, s in runs_named(config, shard):
    if (ratio_key(ratio), s) not in runs:
      missing[ratio].append(s)
  return dict(missing)


def planned_groups(config, done, k, shard=None):
  """The (ratio, seeds) groups still to train (of `shard` = (I, N), if given), round-robin over
  ratios: a run stopped early has runs at every ratio, so its partial scores mean something."""
  per_ratio = [[(ratio, seeds[i:i + k]) for i in range(0, len(seeds), k)]
               for ratio, seeds in missing_runs(done, config, shard).items()]
  rounds = max((len(g) for g in per_ratio), default=0)
  return [g[j] for j in range(rounds) for g in per_ratio if j < len(g)]


# The protocol shards were started for, recorded in the store by the first shard of each
# (shards-<N>-<hash>.json): later commands then know N, name missing runs by shard, and refuse
# an estimate whose --runs, --ratios or --seed drifted from the shards'.

def shard_protocol(config, n):
  return dict(shards=n, runs=config.runs, ratios=[ratio_key(r) for r in config.ratios], seed=config.seed)


def record_shards(store, config, n, tag=''):
  """Records that shards of N = n were started on the store for the command's runs; once."""
  protocol = shard_protocol(config, n)
  digest = hashlib.sha256(json.dumps(protocol, sort_keys=True).encode()).hexdigest()[:8]
  create_exclusively(os.path.join(store, f'shards-{n}-{digest}.json'), json.dumps(protocol), tag)


def shard_records(store):
  """[protocol] of the shards started on the store, in the order they were recorded."""
  records = []
  for name in os.listdir(store):
    if name.startswith('shards-') and name.endswith('.json'):
      path = os.path.join(store, name)
      try:
        with open(path) as f:
          records.append((os.path.getmtime(path), name, json.load(f)))
      except (OSError, ValueError) as e:
        raise CScoreError(f'{path} is unreadable ({first_line(e)}); delete it: the next shard writes it again') from e
  return [protocol for *_, protocol in sorted(records, key=lambda r: r[:2])]


def protocol_flags(protocol):
  return (f'--runs {protocol["runs"]} --ratios {",".join(f"{r:g}" for r in protocol["ratios"])} '
          f'--seed {protocol["seed"]}')


def check_protocol(store, runs, config):
  """Refuses, in one line, an --estimate-only or --merge that names runs neither stored nor asked
  of the store's shards: another --runs, --ratios or --seed than theirs."""
  records = shard_records(store)
  asked = {(ratio_key(r), s) for p in records for r in p['ratios'] for s in range(p['seed'], p['seed'] + p['runs'])}
  stray = [(r, s) for r, s in runs_named(config) if (ratio_key(r), s) not in asked and (ratio_key(r), s) not in runs]
  if records and stray:
    started = '; '.join(f'{protocol_flags(p)} (N = {p["shards"]})' for p in records)
    raise CScoreError(f'this command names {len(stray)} runs that the store\'s shards were never started '
                      f'for ({protocol_flags(shard_protocol(config, 0))}), but they were started with '
                      f'{started}: give it the shards\' --runs, --ratios and --seed')


def rerun_line(store, runs, config):
  """Which shards (of the last N started on the store) hold the command's missing runs, and the
  commands that train them and then write the outputs; None if none are missing or no shards
  were started."""
  records, missing = shard_records(store), missing_runs(runs, config)
  if not records or not missing:
    return None
  n = records[-1]['shards']
  shards = ','.join(map(str, sorted({shard_of(r, s, n) for r, seeds in missing.items() for s in seeds})))
  return (f'missing by shard (N = {n}): {shards.replace(",", ", ")}. If they are not running, run them '
          f'again: in the job array of docs/scale.md, sbatch --array={shards} cscores.sbatch; by hand, '
          f'the same command with --shard I/{n} for each. Then the estimate again, after them '
          '(with sbatch, a new dependency on the new job)')


def merge_stores(store, sources, settings, tag=''):
  """Copies into `store` the runs of other out-dirs' stores that it lacks, each file landing
  atomically; returns (runs copied, runs both hold from different hardware: the store keeps its
  own record). Their settings and data must be this run's, and a run both hold from the same
  hardware must be the same in both."""
  have, copied, elsewhere = load_runs(store), 0, 0
  for source in sources:
    path = os.path.join(source, STORE_DIR)
    if not os.path.isfile(os.path.join(path, SETTINGS_FILE)):
      raise CScoreError(f'--merge {source}: no results store there ({os.path.join(path, SETTINGS_FILE)} is missing)')
    check_settings(path, settings)
    for name in os.listdir(path):  # the protocols its shards were started for
      if name.startswith('shards-') and name.endswith('.json'):
        with open(os.path.join(path, name)) as f:
          create_exclusively(os.path.join(store, name), f.read(), tag)
    for name in run_files(path):
      found = read_run_file(os.path.join(path, name))
      new = [(ratio, seed, run) for ratio, seed, run in found if (ratio_key(ratio), seed) not in have]
      for ratio, seed, run in found:
        key = ratio_key(ratio), seed
        elsewhere += key in have and have[key].hardware != run.hardware and not same_record(have[key], run)
        add_run(have, ratio, seed, run)
      if new:
        write_run_file(store, new[0][0], [seed for _, seed, _ in new], [run for *_, run in new], tag)
        copied += len(new)
  return copied, elsewhere


# ------------------------------------------------------------------------------------------------
# Progress and ETA: train what is missing under a bar that counts work, not models.
# ------------------------------------------------------------------------------------------------

def flops_per_example(config):
  """(training step, forward pass) FLOPs of one example: forward 2 sum(in out); backward the
  weight gradients 2 sum(in out) plus the input gradients of all layers but the first."""
  sizes = layer_sizes(config)
  forward = 2 * sum(i * o for i, o in zip(sizes[:-1], sizes[1:]))
  return 2 * forward + 2 * sum(i * o for i, o in zip(sizes[1:-1], sizes[2:])), forward


def model_work(config, n, ratio):
  """(training, evaluation) FLOPs of one model: every epoch on its subset, then all n examples.
  A model at ratio 0.9 costs about 6.5 times one at 0.1."""
  train, forward = flops_per_example(config)
  return train * subset_size(n, ratio) * config.epochs, forward * n


def group_steps(config, n, ratio, k):
  """The progress steps of a group of k models at `ratio`, in MFLOP (whole numbers, so that
  they add up exactly): one per epoch, then the evaluation."""
  train, evaluate = (round(k * flops / 1e6) for flops in model_work(config, n, ratio))
  epochs = [train // config.epochs] * config.epochs
  epochs[-1] += train - sum(epochs)
  return epochs + [evaluate]


def prepared_ahead(groups, prepare):
  """Yields ((ratio, seeds), prepare(ratio, seeds)) for each group, preparing the next group on a
  thread while the caller trains the current one (TensorFlow releases the GIL while an epoch
  runs), so that a GPU does not wait for the host's draws: at K = 200 and ratio 0.9 they take
  seconds and the batch orders 430 MB. The draws are the runs' own, whichever thread makes them."""
  pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix='group-work')
  try:
    ahead = [pool.submit(prepare, *group) for group in groups[:1]]
    for i, group in enumerate(groups):
      work = ahead.pop().result()
      if i + 1 < len(groups):
        ahead.append(pool.submit(prepare, *groups[i + 1]))
      yield group, work
  finally:  # Ctrl-C: do not wait for draws that no group will use
    pool.shutdown(wait=False, cancel_futures=True)


class LogLines:
  """Progress where stderr is a file (a batch job's log): a plain line when a group finishes, at
  most once a minute and always at the last, with the share of the work done and the ETA at the
  mean rate so far. A bar's carriage-return frames would pile up in the file."""

  def __init__(self, total, every=60.0):
    self.total, self.every, self.done, self.start, self.last = total, every, 0, time.perf_counter(), None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return False

  def update(self, amount):
    self.done += amount

  def set_description(self, text):
    """Called as each group begins (nothing done yet) and ends: prints at an end, if due."""
    now = time.perf_counter()
    if not self.done or (self.done < self.total and self.last is not None and now - self.last < self.every):
      return
    self.last, elapsed = now, now - self.start
    left = elapsed * (self.total - self.done) / self.done
    print(f'{text}: {100 * self.done / self.total:.0f}% of the work, '
          f'{datetime.timedelta(seconds=round(elapsed))} elapsed, about '
          f'{datetime.timedelta(seconds=round(left))} left', file=sys.stderr, flush=True)


def progress_bar(total):
  """A bar (tqdm) on a terminal, plain lines in a file; `total` work in MFLOP."""
  if not sys.stderr.isatty():
    return LogLines(total)
  return tqdm(total=total, unit_scale=1e-6, dynamic_ncols=True, smoothing=0.1,
              bar_format='{desc}{percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} TFLOP [{elapsed}<{remaining}]')


def train_missing_runs(trainer, store, runs, groups, tag=''):
  """Trains the groups, saving each to the store and `runs` as it finishes, under a progress
  bar (in a log file, a line a minute); Ctrl-C stops it, keeping what is finished. Returns
  (models trained, interrupted).

  The bar counts work, not models: a model's training FLOPs grow with its ratio (one at 0.9
  costs about 6.5 times one at 0.1, evaluation included), so counting models would make the ETA
  swing from group to group. Each epoch and each evaluation is a step, and the rate a moving
  average over about the last ten of them."""
  config, n = trainer.config, len(trainer.labels)
  steps = [group_steps(config, n, ratio, len(seeds)) for ratio, seeds in groups]
  models, trained = sum(len(seeds) for _, seeds in groups), 0
  for k in sorted({len(seeds) for _, seeds in groups}):
    trainer.warm_up(k)  # compile first: the bar then times only the work
  with progress_bar(sum(map(sum, steps))) as bar:
    try:
      prepare = functools.partial(group_work, config, n)
      for ((ratio, seeds), work), work_steps in zip(prepared_ahead(groups, prepare), steps):
        bar.set_description(f'ratio {ratio:.2f}, {trained}/{models} models done')
        began = time.perf_counter()
        group = train_run_group(trainer, ratio, seeds, lambda i: bar.update(work_steps[i]), work)
        name = save_runs(store, ratio, seeds, group, config.epochs, trainer.hardware, tag,
                         seconds=time.perf_counter() - began)
        for r, s, run in read_run_file(os.path.join(store, name)):  # as a resume will see them
          runs[ratio_key(r), s] = run
        trained += len(seeds)
        bar.set_description(f'ratio {ratio:.2f}, {trained}/{models} models done')
    except KeyboardInterrupt:
      runs.update(load_runs(store))  # a group saved just before Ctrl-C may not be in `runs` yet
      return trained, True
  return trained, False


def train_share(args, config, data, store, runs):
  """Trains the command's runs (its shard's, with --shard) that the store lacks; returns
  (models trained, interrupted). --estimate-only and --merge train nothing."""
  if args.estimate_only or args.merge:
    return 0, False
  check_subsets(config, len(data.y))
  check_gpu_precision(config)
  if warning := gpu_unseen_warning():
    print(warning, file=sys.stderr)
  if args.shard:
    record_shards(store, config, args.shard[1], process_tag(args))
  k = min(config.models_at_once, config.runs) or default_models_at_once(config.runs, config, len(data.y))
  groups = planned_groups(config, runs, k, args.shard)
  todo, planned = sum(len(seeds) for _, seeds in groups), len(runs_named(config, args.shard))
  whose = f"shard {args.shard[0]}/{args.shard[1]}'s share of " if args.shard else ''
  print(f'{len(data.y)} examples; {whose}{len(config.ratios)} ratios x {config.runs} runs: '
        f'{planned - todo} done, {todo} to train, {k} at a time on {device_description(config)}')
  return train_missing_runs(EnsembleTrainer(data.x, data.y, config), store, runs, groups,
                            process_tag(args))


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


def number_in(low, high, low_included=False):
  """An argparse type: a number below high and above low (or equal to it, if low_included)."""
  def parse(text):
    try:
      value = float(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f'not a number: {text!r}')
    if not np.isfinite(value):
      raise argparse.ArgumentTypeError(f'not a finite number: {text!r}')
    if not (low < value < high or (low_included and value == low)):
      below = f' and below {high}' if high < float('inf') else ''
      raise argparse.ArgumentTypeError(f'must be {"at least" if low_included else "above"} {low}{below}, got {value}')
    return value
  return parse


def parse_hidden(text):
  """'512,256' -> (512, 256): the widths of the hidden layers."""
  try:
    sizes = tuple(int(s) for s in text.split(','))
  except ValueError:
    raise argparse.ArgumentTypeError(f'not a comma-separated list of whole numbers: {text!r}')
  if min(sizes) < 1:
    raise argparse.ArgumentTypeError(f'every hidden layer needs at least 1 unit, got {text!r}')
  return sizes


def parse_shard(text):
  """'I/N' -> (I, N) with 0 <= I < N."""
  parts = text.split('/')
  if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
    raise argparse.ArgumentTypeError(f'expected I/N, two whole numbers such as 0/4, got {text!r}')
  i, n = int(parts[0]), int(parts[1])
  if not 0 <= i < n:
    raise argparse.ArgumentTypeError(f'I/N needs 0 <= I < N, got {text!r}')
  return i, n


class OneLineErrorParser(argparse.ArgumentParser):
  def error(self, message):
    self.exit(2, f'{self.prog}: error: {message} (see --help)\n')


def parse_args(argv=None):
  """(Config, argparse namespace with the paths and modes). Needs no TensorFlow: --help and a
  mistyped flag answer at once."""
  d = Config()
  p = OneLineErrorParser(  # no abbreviations: --data must not quietly mean --data-dir
      prog='mnist.py', allow_abbrev=False, description='Estimate the C-score of every training example '
      'of MNIST (or of --dataset, or --data): train many small MLPs on random subsets of the data, record which held-out examples each gets '
      'right. Every finished run is stored in OUT-DIR/cscore-runs, so a stopped command resumes.')
  p.add_argument('--runs', type=int_at_least(1), default=d.runs, metavar='R',
                 help=f'models trained per ratio, run seeds SEED .. SEED+R-1 (default: {d.runs}, '
                      "the paper's; 4 gives a first look in minutes)")
  p.add_argument('--ratios', type=parse_ratios, default=d.ratios, metavar='R1,R2,...',
                 help='subset ratios, comma-separated, each strictly between 0 and 1 (default: '
                      '0.1,0.2,...,0.9)')
  p.add_argument('--epochs', type=int_at_least(1), default=d.epochs, metavar='E',
                 help=f'epochs of SGD per model (default: {d.epochs})')
  p.add_argument('--batch-size', type=int_at_least(1), default=d.batch_size, metavar='B',
                 help=f'examples per SGD step (default: {d.batch_size})')
  p.add_argument('--learning-rate', type=number_in(0, float('inf')), default=d.learning_rate, metavar='LR',
                 help=f"SGD's step size (default: {d.learning_rate}, the paper's)")
  p.add_argument('--momentum', type=number_in(0, 1, low_included=True), default=d.momentum, metavar='M',
                 help=f"SGD's momentum, at least 0 and below 1 (default: {d.momentum}, the paper's)")
  p.add_argument('--hidden', type=parse_hidden, default=d.hidden, metavar='H1,H2,...',
                 help="widths of the MLP's hidden layers, comma-separated (default: "
                      f"{','.join(map(str, d.hidden))}, the paper's)")
  p.add_argument('--seed', type=int_at_least(0), default=d.seed, metavar='SEED',
                 help=f'the first run seed (default: {d.seed})')
  p.add_argument('--precision', choices=('float32', 'bfloat16'), default=d.precision,
                 help='float32 (the default), or bfloat16: bf16 matmuls with float32 weights, '
                      'loss and updates, faster on CPUs with native bf16 (see the README)')
  p.add_argument('--models-at-once', type=int_at_least(0), default=d.models_at_once, metavar='K',
                 help='models trained together (default: 0, chosen for the device: 8 on a '
                      "small CPU, as many as a quarter of a GPU's memory holds)")
  p.add_argument('--out-dir', default='.', metavar='DIR',
                 help='where the outputs and the results store go (default: the current folder)')
  p.add_argument('--dataset', metavar='NAME',
                 help='an image classification data set of tensorflow-datasets, scored on its '
                      'train split, e.g. fashion_mnist, kmnist, emnist/digits, cifar10 '
                      '(default: mnist)')
  p.add_argument('--data', metavar='FILE.npz',
                 help='your own data instead of MNIST: an .npz of x (examples: uint8 images '
                      '[n, H, W] or [n, H, W, 1 or 3], or numeric features) and y (integer labels), '
                      'class_names optional (default: none, MNIST)')
  p.add_argument('--data-dir', default=None, metavar='DIR',
                 help="tensorflow-datasets' data folder (default: its own, ~/tensorflow_datasets)")
  p.add_argument('--manual-dir', default=None, metavar='DIR',
                 help='a folder holding the four official MNIST .gz files, for machines without '
                      'internet (default: none; MNIST is downloaded)')
  p.add_argument('--fresh', action='store_true',
                 help='discard the results store in --out-dir and start over (default: resume)')
  p.add_argument('--shard', type=parse_shard, metavar='I/N',
                 help='train only share I of N (0 <= I < N) of the runs, into the store, as one '
                      'task of a job array or one process per GPU; then --estimate-only writes '
                      'the outputs (default: train every run)')
  p.add_argument('--estimate-only', action='store_true',
                 help='train nothing: write the outputs from the runs stored so far and list the '
                      'missing ones; safe while shards run (default: train, then write)')
  p.add_argument('--merge', nargs='+', metavar='DIR',
                 help="copy the runs of other out-dirs' stores into this one (shards that ran "
                      'without a shared folder), then write the outputs as --estimate-only does')
  args = p.parse_args(argv)
  if args.seed + args.runs > 2**32:  # numpy's RandomState takes seeds below 2^32
    p.error(f'--seed + --runs must stay below 2^32 = {2**32}')
  together = [f for f, on in (('--shard', args.shard), ('--merge', args.merge),
                              ('--estimate-only', args.estimate_only)) if on]
  if args.fresh and together:
    p.error(f'--fresh would discard runs that {together[0]} needs; use it alone')
  if args.shard and len(together) > 1:
    p.error(f'a shard trains; {together[1]} does not: use them in separate commands')
  if args.data == '':
    p.error('--data needs a file name (an empty one, an unset shell variable?)')
  if args.data and args.dataset:
    p.error('--data scores your own arrays, --dataset a tensorflow-datasets one: use one of them')
  if (args.data or args.dataset not in (None, 'mnist')) and args.manual_dir:
    p.error(f"--manual-dir holds MNIST's files; {'--data' if args.data else '--dataset'} scores "
            'other data: use one of them')
  config = Config(ratios=args.ratios, runs=args.runs, seed=args.seed, epochs=args.epochs,
                  batch_size=args.batch_size, learning_rate=args.learning_rate,
                  momentum=args.momentum, hidden=args.hidden, precision=args.precision,
                  models_at_once=args.models_at_once)
  return config, args


# ------------------------------------------------------------------------------------------------
# Errors, TensorFlow and stderr: one-line errors; TensorFlow loaded on first use, quietly; the
# devices it sees.
# ------------------------------------------------------------------------------------------------

class CScoreError(Exception):
  """A problem the user can fix; main() prints it as one line, without a traceback."""


def first_line(error):
  """An exception's message cut to its first line (its type's name if it has none)."""
  return (str(error).strip().splitlines() or [type(error).__name__])[0]


os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # before TensorFlow loads: no start-up log


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


class LazyTensorFlow(types.ModuleType):
  """TensorFlow, imported on first use: it takes seconds to load, and --help or a mistyped flag
  should answer at once."""

  def __getattr__(self, name):
    global tf
    if name.startswith('__'):  # a probe (copy, inspect, mock), not a use: no import for it
      raise AttributeError(name)
    with native_stderr_silenced():
      import tensorflow
    tf = tensorflow
    return getattr(tensorflow, name)


tf = LazyTensorFlow('tensorflow')


def out_of_memory(error):
  """Whether an error is running out of memory: the host's, or a device's. TensorFlow is not
  imported for the question: if it is not loaded, none of its errors can have been raised."""
  tensorflow = sys.modules.get('tensorflow')
  return isinstance(error, MemoryError) or (
      tensorflow is not None and isinstance(error, tensorflow.errors.ResourceExhaustedError))


def available_memory():
  """Bytes of memory available now (Linux's MemAvailable; elsewhere the free pages), or None."""
  with contextlib.suppress(OSError, ValueError, IndexError):
    with open('/proc/meminfo') as f:
      for line in f:
        if line.startswith('MemAvailable:'):
          return int(line.split()[1]) * 1024
  with contextlib.suppress(OSError, ValueError, AttributeError):
    return os.sysconf('SC_AVPHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')
  return None


def cpu_cores():
  return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()


def cpu_name():
  with contextlib.suppress(OSError):
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  return platform.processor() or platform.machine()


def configure_tensorflow(train=True):
  """Call it before TensorFlow's first op. A command that trains nothing (train=False) hides the
  GPUs. On a GPU: one, its memory grown as needed (accelerators()). On a CPU: deterministic ops,
  and one thread per op with as many ops at once as cores (the per-model chains' parallelism)."""
  if not train:
    hide_gpus()
  tf.get_logger().setLevel('ERROR')  # not its retracing notes
  if accelerators():
    visible_gpu()  # its free memory, read before TensorFlow takes any
    return
  # Bit-identical reruns and resumes; measured at no cost (within noise) on the CPU.
  tf.config.experimental.enable_op_determinism()
  with contextlib.suppress(RuntimeError):  # the runtime has started: keep its settings
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(cpu_cores())


@functools.cache
def device_kind():
  """What trains here, as each stored run records it: 'CPU', or the first GPU's name."""
  gpus = accelerators()
  if not gpus:
    return 'CPU'
  return tf.config.experimental.get_device_details(gpus[0]).get('device_name', 'GPU')


def matmul_precision(config):
  """How the matmuls round: 'bf16', 'tf32' (float32 on an Ampere or newer GPU, where TensorFlow
  uses TensorFloat-32 by default) or 'fp32'."""
  if config.precision == 'bfloat16':
    return 'bf16'
  capability = gpu_compute_capability()
  if capability and capability >= (8, 0) and tf.config.experimental.is_tensor_float_32_execution_enabled():
    return 'tf32'
  return 'fp32'


# ------------------------------------------------------------------------------------------------
# Report page: the HTML, CSS and JavaScript of <name>-report.html. Plain JavaScript, no framework
# and nothing fetched: the data go in at /*DATA*/ as JSON, the pictures at /*SHEETS*/ as CSS
# sprite sheets (data URIs), so the one file opens offline from disk in any current browser.
# ------------------------------------------------------------------------------------------------

REPORT_TEMPLATE = r'''<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>C-scores</title>
<style>
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; color: #222; background: #fcfcfc; }
header, section { padding: 10px 24px; }
h1 { font-size: 21px; margin: 6px 0 2px; }
h2 { font-size: 16px; margin: 8px 0 4px; }
#facts { margin: 4px 0; padding-left: 20px; }
.charts { display: flex; gap: 32px; flex-wrap: wrap; }
.charts figure { margin: 0; }
.charts figcaption { font-size: 12px; color: #555; }
svg text { font-size: 11px; fill: #444; }
#controls { display: flex; gap: 8px 16px; flex-wrap: wrap; align-items: center; position: sticky; top: 0;
            background: #fcfcfc; padding: 8px 0; border-bottom: 1px solid #ddd; z-index: 1; }
#rule { color: #555; margin: 6px 0; max-width: 70em; }
table { border-collapse: collapse; }
th { text-align: right; padding: 4px 10px; border-bottom: 2px solid #ccc; user-select: none; white-space: nowrap; }
th[data-key] { cursor: pointer; }
th[data-key]:hover { background: #eef; }
td { text-align: right; padding: 2px 10px; border-bottom: 1px solid #eee; font-variant-numeric: tabular-nums; }
tr.ex { cursor: pointer; }
tr.ex:hover { background: #eef3ff; }
.pic { display: inline-block; vertical-align: middle; background-repeat: no-repeat;
       image-rendering: pixelated; image-rendering: crisp-edges; }
.none { color: #a33; font-style: italic; }
#detail { position: fixed; inset: 0; background: rgba(0, 0, 0, .45); display: none; align-items: center;
          justify-content: center; z-index: 2; }
#detail.open { display: flex; }
#detail-body { background: #fff; padding: 16px 22px; border-radius: 6px; max-width: 92vw; max-height: 92vh; overflow: auto; }
#detail-body .row { display: flex; gap: 24px; flex-wrap: wrap; align-items: flex-start; }
#detail-body table td, #detail-body table th { padding: 1px 8px; }
#message { color: #a33; }
</style>
<style>
/*SHEETS*/
</style>
</head>
<body>
<header>
<h1 id="title">C-scores</h1>
<div id="subtitle"></div>
<noscript>This report needs JavaScript to show the examples.</noscript>
</header>
<section id="summary">
<h2>What was run</h2>
<ul id="facts"></ul>
<div class="charts">
<figure><svg id="histogram" width="380" height="190"></svg><figcaption id="histogram-caption"></figcaption></figure>
<figure><svg id="curve" width="380" height="190"></svg><figcaption>Held-out accuracy of a run, by the ratio of the data it trained on (the learning curve)</figcaption></figure>
</div>
</section>
<section id="browser">
<h2>Examples</h2>
<div id="controls">
<label>class <select id="class"></select></label>
<label>sort by <select id="key"></select></label>
<button id="direction" type="button"></button>
<button id="mislabeled" type="button">likely mislabeled</button>
<label>example # <input id="find" type="number" min="0" step="1" style="width: 7em"></label>
<span id="count"></span>
<span><button id="first" type="button">&laquo;</button> <button id="prev" type="button">&lsaquo;</button>
<span id="page"></span> <button id="next" type="button">&rsaquo;</button> <button id="last" type="button">&raquo;</button></span>
<label>rows <select id="rows"><option value="50">50</option><option value="100" selected>100</option><option value="250">250</option><option value="1000">1000</option></select></label>
<button id="csv" type="button">download this view as CSV</button>
<span id="message"></span>
</div>
<p id="rule"></p>
<table id="table"><thead><tr id="table-head"></tr></thead><tbody id="table-body"></tbody></table>
</section>
<div id="detail"><div id="detail-body"></div></div>
<script type="application/json" id="data">/*DATA*/</script>
<script>
'use strict';
const D = JSON.parse(document.getElementById('data').textContent);
const $ = id => document.getElementById(id);

function decode(text, Type) {
  const s = atob(text), bytes = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) bytes[i] = s.charCodeAt(i);
  return new Type(bytes.buffer);
}
const COUNTS = {uint8: Uint8Array, uint16: Uint16Array, uint32: Uint32Array};
const index = decode(D.index, Uint32Array), label = decode(D.label, Uint16Array);
const m = index.length;
const hits = decode(D.hits, COUNTS[D.count_type]), counts = decode(D.counts, COUNTS[D.count_type]);
const col = {};
for (const name in D.columns) col[name] = decode(D.columns[name], Float32Array);
function difference(a, b) {
  const out = new Float32Array(m);
  for (let p = 0; p < m; p++) out[p] = col[a][p] - col[b][p];
  return out;
}
// The sort keys, and what each means.
const KEYS = [
  {key: 'cscore', name: 'C-score', values: col.cscore,
   rule: 'C-score: the accuracy on the example of the models that did not train on it, averaged over the ratios. Low: unlike the rest of its class.'},
  {key: 'standard_error', name: 'standard error', values: col.standard_error,
   rule: 'Standard error of the C-score, from the runs that held the example out at each ratio.'},
  {key: 'memorization', name: 'memorization', values: col.memorization,
   rule: 'Memorization (Feldman & Zhang, 2020): how much more often a model gets the example right when it trained on it than when it did not.'},
  {key: 'learning_speed', name: 'learning speed', values: col.learning_speed,
   rule: 'Learning speed: the fraction of epochs in which the models that trained on the example classified it correctly. A cheap proxy of the C-score.'},
  {key: 'learning_confidence', name: 'learning confidence', values: col.learning_confidence,
   rule: 'Learning confidence: the mean probability of the label over the epochs, in the models that trained on the example. A cheap proxy of the C-score.'},
  {key: 'combined_score', name: 'combined score', values: col.combined_score,
   rule: 'Combined score: the C-score, shrunk toward the C-score that examples of its learning confidence have, by how noisy it is (more with few runs, less with many). The sharper ranking of the hard examples at a small budget.'},
  {key: 'speed_minus_cscore', name: 'learning speed \u2212 C-score', values: difference('learning_speed', 'cscore'),
   rule: 'Learning speed \u2212 C-score: high where the proxy finds the example easy and the C-score hard; low the other way round.'},
  {key: 'confidence_minus_cscore', name: 'learning confidence \u2212 C-score', values: difference('learning_confidence', 'cscore'),
   rule: 'Learning confidence \u2212 C-score: high where the proxy finds the example easy and the C-score hard; low the other way round.'},
  {key: 'memorization_minus_cscore', name: 'memorization \u2212 C-score (likely mislabeled)', values: difference('memorization', 'cscore'),
   rule: 'Likely mislabeled, highest first: memorization \u2212 C-score. A mislabeled example is learned only by heart: models get it right when they train on it (high memorization) and wrong when they do not (low C-score). The difference is highest, near 1, for those.'},
  {key: 'index', name: 'example #', values: Float64Array.from(index),
   rule: "Example #: the example's index in the data, from 0, as in cscores.npy."},
];
const KEY = Object.fromEntries(KEYS.map(k => [k.key, k]));
const state = {cls: -1, key: 'cscore', dir: 1, page: 0, rows: 100};
let view = new Uint32Array(0), unscoredInView = 0;

function esc(text) {
  return String(text).replace(/[&<>"']/g, c => ({'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;'}[c]));
}
function fmt(v, digits = 3) { return Number.isNaN(v) ? '<span class="none">no score</span>' : v.toFixed(digits); }
function picture(p, size) {
  if (!D.shape) return '';
  const [h, w] = D.shape, z = Math.max(1, Math.floor(size / Math.max(h, w))), slot = p % D.per_sheet;
  const r = Math.floor(slot / D.cols), c = slot % D.cols;
  return `<span class="pic s${Math.floor(p / D.per_sheet)}" style="width:${w * z}px;height:${h * z}px;` +
         `background-size:${D.cols * w * z}px auto;background-position:-${c * w * z}px -${r * h * z}px"></span>`;
}
function className(p) { return D.class_names[label[p]]; }

// The view: the chosen class, sorted by the chosen key; examples without a value last, in index order.
function computeView() {
  const values = KEY[state.key].values, dir = state.dir, scored = [], unscored = [];
  for (let p = 0; p < m; p++) {
    if (state.cls >= 0 && label[p] !== state.cls) continue;
    (Number.isNaN(values[p]) ? unscored : scored).push(p);
  }
  scored.sort((a, b) => dir * (values[a] - values[b]) || a - b);
  view = Uint32Array.from(scored.concat(unscored));
  unscoredInView = unscored.length;
}
const COLUMNS = [
  ['index', 'example #'], ['class', 'class'], ['cscore', 'C-score \u00b1 s.e.'], ['memorization', 'memorization'],
  ['learning_speed', 'learning speed'], ['learning_confidence', 'learning confidence'], ['combined_score', 'combined score']];
function renderHead() {
  $('table-head').innerHTML = (D.shape ? '<th></th>' : '') + COLUMNS.map(([key, name]) => {
    const sortable = key in KEY, arrow = key === state.key ? (state.dir > 0 ? ' \u25b2' : ' \u25bc') : '';
    return `<th${sortable ? ` data-key="${key}" title="sort by ${esc(name)}"` : ''}>${esc(name)}${arrow}</th>`;
  }).join('');
}
function row(p) {
  const cs = col.cscore[p];
  return `<tr class="ex" data-p="${p}" data-index="${index[p]}">` + (D.shape ? `<td>${picture(p, 56)}</td>` : '') +
    `<td>${index[p]}</td><td>${esc(className(p))}</td>` +
    `<td>${Number.isNaN(cs) ? fmt(cs) : `${cs.toFixed(3)} \u00b1 ${col.standard_error[p].toFixed(3)}`}</td>` +
    ['memorization', 'learning_speed', 'learning_confidence', 'combined_score'].map(k => `<td>${fmt(col[k][p])}</td>`).join('') + '</tr>';
}
function pages() { return Math.max(1, Math.ceil(view.length / state.rows)); }
function render() {
  state.page = Math.min(state.page, pages() - 1);
  const start = state.page * state.rows;
  $('table-body').innerHTML = Array.from(view.subarray(start, start + state.rows), row).join('');
  $('count').textContent = `${view.length.toLocaleString('en')} examples` +
    (unscoredInView ? `, ${unscoredInView.toLocaleString('en')} without a ${KEY[state.key].name.split(' (')[0]} (last)` : '');
  $('page').textContent = `page ${state.page + 1} of ${pages()}`;
  $('direction').textContent = state.dir > 0 ? 'lowest first' : 'highest first';
  $('key').value = state.key;
  $('rule').textContent = KEY[state.key].rule;
  renderHead();
}
function update(changes) {
  Object.assign(state, changes);
  computeView();
  render();
  histogram();
}

// CSV of the whole view, in its order.
const CSV_HEAD = ['index', 'label', 'class', 'cscore', 'standard_error', 'memorization', 'learning_speed', 'learning_confidence', 'combined_score'];
function csvField(text) {
  text = String(text);
  if (/^[=+\-@]/.test(text) && Number.isNaN(Number(text))) text = "'" + text;  // not a spreadsheet formula
  return /[",\n\r]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
}
function csvText() {
  const extra = CSV_HEAD.includes(state.key) ? null : state.key;  // a difference: its own column too
  const lines = [CSV_HEAD.concat(extra ? [extra] : []).join(',')];
  const number = x => Number.isNaN(x) ? 'nan' : x.toPrecision(7);
  for (const p of view) {
    const v = k => number(col[k][p]);
    lines.push([index[p], csvField(D.label_values[label[p]]), csvField(className(p)),
                v('cscore'), v('standard_error'), v('memorization'), v('learning_speed'), v('learning_confidence'), v('combined_score')]
               .concat(extra ? [number(KEY[extra].values[p])] : []).join(','));
  }
  return lines.join('\n') + '\n';
}
function downloadCsv() {
  const a = document.createElement('a');
  a.href = URL.createObjectURL(new Blob([csvText()], {type: 'text/csv'}));
  const which = state.cls >= 0 ? `-class-${String(D.class_names[state.cls]).replace(/[^\w.-]+/g, '_')}` : '';
  a.download = `${D.name}-cscores${which}-by-${state.key}-${state.dir > 0 ? 'ascending' : 'descending'}.csv`;
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
}

// Charts, as SVG.
const SVG = 'http://www.w3.org/2000/svg';
function svg(parent, tag, attrs, text) {
  const e = document.createElementNS(SVG, tag);
  for (const a in attrs) e.setAttribute(a, attrs[a]);
  if (text !== undefined) e.textContent = text;
  parent.appendChild(e);
  return e;
}
function axes(el, xs, ys, xlabel, ylabel, x0, x1, y0, y1) {
  el.innerHTML = '';
  const W = +el.getAttribute('width'), H = +el.getAttribute('height'), l = 58, r = 10, t = 10, b = 34;
  const X = v => l + (v - x0) / (x1 - x0) * (W - l - r), Y = v => H - b - (v - y0) / (y1 - y0) * (H - t - b);
  svg(el, 'line', {x1: l, y1: H - b, x2: W - r, y2: H - b, stroke: '#888'});
  svg(el, 'line', {x1: l, y1: t, x2: l, y2: H - b, stroke: '#888'});
  for (const v of xs) svg(el, 'text', {x: X(v), y: H - b + 14, 'text-anchor': 'middle'}, v);
  for (const v of ys) svg(el, 'text', {x: l - 5, y: Y(v) + 4, 'text-anchor': 'end'}, v);
  svg(el, 'text', {x: (l + W - r) / 2, y: H - 4, 'text-anchor': 'middle'}, xlabel);
  svg(el, 'text', {x: 12, y: (t + H - b) / 2, 'text-anchor': 'middle', transform: `rotate(-90 12 ${(t + H - b) / 2})`}, ylabel);
  return [X, Y];
}
function histogram() {
  const bins = new Array(20).fill(0);
  let scored = 0;
  for (let p = 0; p < m; p++) {
    const v = col.cscore[p];
    if ((state.cls >= 0 && label[p] !== state.cls) || Number.isNaN(v)) continue;
    bins[Math.min(19, Math.floor(v * 20))]++;
    scored++;
  }
  const top = Math.max(1, ...bins), el = $('histogram');
  const [X, Y] = axes(el, [0, 0.25, 0.5, 0.75, 1], [], 'C-score', 'examples (log)', 0, 1, 0, Math.log10(top) + 1);
  bins.forEach((count, i) => {
    if (!count) return;
    const y = Y(Math.log10(count) + 1);
    svg(el, 'rect', {x: X(i / 20) + 0.5, y, width: X(0.05) - X(0) - 1, height: Y(0) - y, fill: '#4a78b5'},
        undefined).appendChild(document.createElementNS(SVG, 'title')).textContent = `${(i / 20).toFixed(2)}\u2013${((i + 1) / 20).toFixed(2)}: ${count.toLocaleString('en')}`;
  });
  for (let e = 0; 10 ** e <= top; e++) svg(el, 'text', {x: 53, y: Y(e + 1) + 4, 'text-anchor': 'end'}, (10 ** e).toLocaleString('en'));
  $('histogram-caption').textContent = `Distribution of the C-scores of ${scored.toLocaleString('en')} examples` +
    (state.cls >= 0 ? ` of class ${D.class_names[state.cls]}` : '') + ' (log scale)';
}
function curve(el, xs, ys, ylabel, y0) {
  const points = xs.map((x, i) => [x, ys[i]]).filter(([, y]) => y !== null && !Number.isNaN(y));
  const low = Math.min(y0 ?? 1, ...points.map(([, y]) => y));
  const bottom = Math.min(0.9, Math.floor(low * 10) / 10);
  const ticks = [];
  for (let v = bottom; v <= 1.0001; v += (1 - bottom > 0.5 ? 0.25 : 0.1)) ticks.push(+v.toFixed(2));
  const [X, Y] = axes(el, [0.1, 0.3, 0.5, 0.7, 0.9], ticks, 'subset ratio', ylabel, 0.05, 0.95, bottom, 1);
  svg(el, 'polyline', {points: points.map(([x, y]) => `${X(x)},${Y(y)}`).join(' '), fill: 'none', stroke: '#4a78b5', 'stroke-width': 2});
  for (const [x, y] of points) svg(el, 'circle', {cx: X(x), cy: Y(y), r: 3, fill: '#4a78b5'}).appendChild(
      document.createElementNS(SVG, 'title')).textContent = `ratio ${x}: ${y.toFixed(4)}`;
}

// One example, large.
function showDetail(p) {
  const rows = D.ratios.map((r, j) => {
    const k = counts[j * m + p], h = hits[j * m + p];
    return `<tr><td>${r}</td><td>${k ? (h / k).toFixed(3) : '<span class="none">no score</span>'}</td>` +
           `<td>${k ? `${h} of ${k}` : 'none held it out'}</td></tr>`;
  }).join('');
  const v = k => fmt(col[k][p]);
  $('detail-body').innerHTML =
    `<h2>Example #${index[p]}: class ${esc(className(p))}` +
    (D.label_values[label[p]] !== className(p) ? ` (label ${esc(D.label_values[label[p]])})` : '') + '</h2>' +
    `<div class="row"><div>${picture(p, 256)}</div><div><table>` +
    `<tr><th>C-score</th><td>${v('cscore')}</td></tr><tr><th>standard error</th><td>${v('standard_error')}</td></tr>` +
    `<tr><th>memorization</th><td>${v('memorization')}</td></tr><tr><th>learning speed</th><td>${v('learning_speed')}</td></tr>` +
    `<tr><th>learning confidence</th><td>${v('learning_confidence')}</td></tr><tr><th>combined score</th><td>${v('combined_score')}</td></tr></table></div>` +
    `<div><table><tr><th>ratio</th><th>C<sub>r</sub></th><th>right, of the runs that held it out</th></tr>${rows}</table></div>` +
    `<div><svg id="detail-curve" width="320" height="180"></svg></div></div>` +
    '<p><button id="close" type="button">close</button> (or Esc, or click outside)</p>';
  curve($('detail-curve'), D.ratios, D.ratios.map((r, j) => counts[j * m + p] ? hits[j * m + p] / counts[j * m + p] : null), 'held-out accuracy', 0);
  $('detail').classList.add('open');
  $('close').onclick = closeDetail;
}
function closeDetail() { $('detail').classList.remove('open'); }
function find(text) {
  $('message').textContent = '';
  if (text === '') return;
  const i = Number(text);
  let lo = 0, hi = m;  // index is ascending
  while (lo < hi) { const mid = (lo + hi) >> 1; if (index[mid] < i) lo = mid + 1; else hi = mid; }
  if (lo < m && index[lo] === i) return showDetail(lo);
  $('message').textContent = Number.isInteger(i) && i >= 0 && i < D.n
    ? `#${i} is not in this page; its score is in cscores.npy` : `no example #${text}: the data hold 0 to ${D.n - 1}`;
}

// The page.
function setUp() {
  document.title = `C-scores of ${D.name}`;
  $('title').textContent = `C-scores of ${D.name}: ${D.n.toLocaleString('en')} examples, ${D.class_names.length} classes`;
  $('subtitle').textContent = D.left_out
    ? `This page shows ${m.toLocaleString('en')} of them, the lowest- and highest-scored of each class: all of them would make it too large. ` +
      `The scores of the other ${D.left_out.toLocaleString('en')} are in cscores.npy and cscores-details.npz.`
    : 'Every example is here. Sort, filter by class, click one to see it large, and download the view as CSV.';
  const unscored = D.unscored;
  $('facts').innerHTML = D.facts.concat(unscored ? [`${unscored.toLocaleString('en')} examples have no C-score: at every ratio, no run held them out (too few runs).` +
    (D.left_out ? ' They are among those left out of this page.' : ' They show "no score" and sort last.')] : [])
    .map(f => `<li>${esc(f)}</li>`).join('');
  curve($('curve'), D.ratios, D.heldout_accuracy, 'held-out accuracy');
  $('class').innerHTML = '<option value="-1">all</option>' + D.class_names.map((c, i) => `<option value="${i}">${esc(c)}</option>`).join('');
  $('key').innerHTML = KEYS.map(k => `<option value="${k.key}">${esc(k.name)}</option>`).join('');
  $('class').onchange = e => update({cls: +e.target.value, page: 0});
  $('key').onchange = e => update({key: e.target.value, page: 0});
  $('direction').onclick = () => update({dir: -state.dir, page: 0});
  $('mislabeled').onclick = () => update({key: 'memorization_minus_cscore', dir: -1, page: 0});
  $('rows').onchange = e => update({rows: +e.target.value, page: 0});
  $('first').onclick = () => { state.page = 0; render(); };
  $('prev').onclick = () => { state.page = Math.max(0, state.page - 1); render(); };
  $('next').onclick = () => { state.page = Math.min(pages() - 1, state.page + 1); render(); };
  $('last').onclick = () => { state.page = pages() - 1; render(); };
  $('csv').onclick = downloadCsv;
  $('find').onchange = e => find(e.target.value.trim());
  $('table-head').onclick = e => {
    const key = e.target.closest('th')?.dataset.key;
    if (key) update(key === state.key ? {dir: -state.dir, page: 0} : {key, page: 0});
  };
  $('table-body').onclick = e => { const tr = e.target.closest('tr.ex'); if (tr) showDetail(+tr.dataset.p); };
  $('detail').onclick = e => { if (e.target === $('detail')) closeDetail(); };
  document.addEventListener('keydown', e => { if (e.key === 'Escape') closeDetail(); });
  update({});
  window.cscoreReport = {firstRowsMs: performance.now(), view: () => view, csvText, update, state};
}
setUp();
</script>
</body>
</html>
'''


if __name__ == '__main__':  # after every definition above: main() uses the machinery too
  sys.exit(main())
