"""How close the trainer runs to this machine's limit, measured in one run.

    python benchmarks/throughput.py [--models-at-once K] [--epochs 2] [--skip-bf16] [--record-repeats 5]
                                    [--backward-repeats 7] [--host-groups 3]

On synthetic data of MNIST's shape (no download), it measures
  (a) the machine's matmul rate through TensorFlow: a 4096^3 matmul, fp32 (and bf16);
  (b) the trainer on a slice of the real protocol: one group of K models at ratio 0.5, then
      their evaluation on all 60,000 examples, in examples/s and GFLOP/s;
  (c) the same slice one model at a time (K = 1);
  (d) what recording the learning proxies costs: slices with and without it, interleaved;
  (e) the backward: TensorFlow's autodiff (mnist.py's) against the gradient written by hand
      (below), inside the same compiled loop, in the CPU's per-model layout and the stacked
      layout (a GPU's, here on the CPU), in float32 and bfloat16: interleaved pairs of training
      slices, the median of the per-pair ratios;
  (f) the host's preparation of a group (its runs' draws) apart from the training, and how
      much of it the thread that prepares the next group hides;
and prints (b)/(a), (b)/(c), bf16/fp32 and the full protocol's projected wall time. Only figures
from the same run are compared: this machine's speed varies from run to run.
"""
import argparse
import dataclasses
import json
import os
import pathlib
import platform
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import mnist  # noqa: E402  (its cscore.runtime sets TF_CPP_MIN_LOG_LEVEL before TensorFlow loads)
from cscore import devices  # noqa: E402
from cscore import progress  # noqa: E402
from cscore import runtime  # noqa: E402

import numpy as np  # noqa: E402
with runtime.native_stderr_silenced():  # TensorFlow's start-up lines
  import tensorflow as tf  # noqa: E402

N, RATIO = 60000, 0.5
MODEL = mnist.Config()  # the model's input width and classes; --input-shape and --classes set them


def config_of(**settings):
  """The benchmark's Config: MODEL's input width and classes, with `settings`."""
  return dataclasses.replace(MODEL, **settings)


def matmul_rate(dtype, size=4096, repeats=5):
  """Best GFLOP/s of a size^3 matmul over a few repeats."""
  a = tf.cast(tf.random.normal((size, size)), dtype)
  b = tf.cast(tf.random.normal((size, size)), dtype)
  mm = tf.function(tf.matmul)
  mm(a, b).numpy()
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    mm(a, b).numpy()
    best = min(best, time.perf_counter() - start)
  return 2 * size ** 3 / best / 1e9


def machine_matmul_rates(dtypes):
  """{dtype: GFLOP/s} of matmul_rate, measured in a fresh process with TensorFlow's default
  threading (every core on one op): the machine's rate, whatever this process sets."""
  out = subprocess.run([sys.executable, __file__, '--matmul-only', ','.join(dtypes)],
                       capture_output=True, text=True, check=True).stdout
  return json.loads(out.splitlines()[-1])


def synthetic_mnist(seed=0):
  """N random uint8 images of MODEL's input width and labels of its classes."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, MODEL.classes, N).astype(np.int32)
  images = rng.integers(0, 256, (N, MODEL.inputs)).astype(np.uint8)
  return images, labels


def hand_gradients(params, x, y, weight, dtype='float32'):
  """The gradient of mnist.mean_nll written by hand, as mnist.py had it before autodiff: no
  gradient for the inputs x, transposed matmuls instead of materialised transposes. Returns
  what mnist.loss_gradients returns: (gradients, the forward pass's probabilities)."""
  weights = [tf.cast(p, dtype) for p in params]  # cast once for forward and backward
  activations = [tf.cast(x, dtype)]  # each layer's input, then the logits
  for i in range(0, len(weights), 2):
    z = tf.matmul(activations[-1], weights[i]) + weights[i + 1]
    activations.append(tf.nn.relu(z) if i + 2 < len(weights) else z)
  probabilities = tf.nn.softmax(tf.cast(activations.pop(), tf.float32))
  delta = (probabilities - tf.one_hot(y, probabilities.shape[-1])) * (weight / tf.reduce_sum(weight))[:, None]
  delta = tf.cast(delta, dtype)
  grads = []
  for i in reversed(range(0, len(params), 2)):
    a = activations[i // 2]
    grads = [tf.cast(tf.matmul(a, delta, transpose_a=True), tf.float32),
             tf.reduce_sum(tf.cast(delta, tf.float32), -2, keepdims=True)] + grads
    if i > 0:
      delta = tf.matmul(delta, weights[i], transpose_b=True) * tf.cast(a > 0, dtype)
  return grads, probabilities


def seeds_of(k):
  return list(range(100, 100 + k))


def time_training(trainer, k):
  """Seconds to train one group of k models at RATIO, compiled ahead, its host preparation
  (draws) done before the clock starts."""
  work = mnist.group_work(trainer.config, N, RATIO, seeds_of(k))
  start = time.perf_counter()
  trainer.train(work)[0].numpy()
  return time.perf_counter() - start


def compare_backwards(images, labels, k, epochs, repeats, precisions):
  """(e): per layout and precision, the hand-written backward's training speed over autodiff's
  in `repeats` interleaved pairs, each pair in alternating order, so that drifts of this
  machine's speed hit both alike. Prints one line each."""
  for stacked in (False, True):
    for precision in precisions:
      config = config_of(epochs=epochs, precision=precision)
      layout = devices.layout(config, mnist.layer_sizes(config), stacked=stacked)
      trainers = [mnist.EnsembleTrainer(images, labels, config, layout=layout, gradients=g)
                  for g in (mnist.loss_gradients, hand_gradients)]
      for trainer in trainers:
        trainer.warm_up(k)
      ratios = []  # autodiff's time / the hand-written one's: > 1, the hand-written is faster
      for i in range(repeats):
        seconds = {}
        for j in ((0, 1) if i % 2 == 0 else (1, 0)):
          seconds[j] = time_training(trainers[j], k)
        ratios.append(seconds[0] / seconds[1])
      print(f'(e) backward, {"stacked" if stacked else "per-model"} layout, K={k} {precision}, '
            f'{repeats} interleaved pairs: hand-written / autodiff training speed '
            f'{np.median(ratios):.3f} (median; hand-written faster in {sum(r > 1 for r in ratios)} '
            f'of {repeats}; pairs {", ".join(f"{r:.3f}" for r in ratios)})', flush=True)


def time_slice(trainer, k, epochs):
  """(train examples/s, eval examples/s) of one group of k models at RATIO, compiled ahead as
  mnist.py does, so that the timed call neither traces nor compiles. The epochs alone are
  timed: the host's draws for the group are made before (see time_host_preparation)."""
  trainer.warm_up(k)
  work = mnist.group_work(trainer.config, N, RATIO, seeds_of(k))
  start = time.perf_counter()
  params = trainer.train(work)
  params[0].numpy()
  t_train = time.perf_counter() - start
  start = time.perf_counter()
  trainer.correct(params)
  t_eval = time.perf_counter() - start
  return k * mnist.subset_size(N, RATIO) * epochs / t_train, k * N / t_eval


def time_host_preparation(trainer, k, groups=3):
  """(f): the host's draws for a group (initial weights, subsets, batch orders) apart from its
  training, and how much of them mnist.py's thread hides: groups of k models at RATIO go through
  progress.prepared_ahead as in a run, and the main thread's wait for each group's draws is timed.
  The first group's draws have nothing to hide behind and are left out. Returns (seconds of
  draws per group, seconds the trainer waited for them per group, seconds of training per
  group)."""
  trainer.warm_up(k)
  prepare_seconds, waits, trains = [], [], []

  def prepare(ratio, seeds):
    start = time.perf_counter()
    work = mnist.group_work(trainer.config, N, ratio, seeds)
    prepare_seconds.append(time.perf_counter() - start)
    return work
  groups_ahead = progress.prepared_ahead([(RATIO, seeds_of(k)) for _ in range(groups)], prepare)
  while True:
    start = time.perf_counter()
    try:
      (ratio, seeds), work = next(groups_ahead)
    except StopIteration:
      break
    waits.append(time.perf_counter() - start)
    start = time.perf_counter()
    trainer.train(work)[0].numpy()
    trains.append(time.perf_counter() - start)
  return np.mean(prepare_seconds[1:]), np.mean(waits[1:]), np.mean(trains[1:])


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--models-at-once', type=int, default=0, help='K; 0: the default for this device')
  p.add_argument('--epochs', type=int, default=2, help='epochs of the timed slice; the first runs slower')
  p.add_argument('--skip-bf16', action='store_true')
  p.add_argument('--record-repeats', type=int, default=5,
                 help='pairs of slices with and without the learning record (0: skip)')
  p.add_argument('--backward-repeats', type=int, default=7,
                 help='pairs of slices with each backward, per layout and precision (0: skip)')
  p.add_argument('--host-groups', type=int, default=3,
                 help='groups trained one after another to time the host\'s draws (0 or 1: skip)')
  p.add_argument('--input-shape', default='28,28', help="one example's shape, e.g. 32,32,3 for "
                 "CIFAR's (default: MNIST's 28,28); the data are synthetic")
  p.add_argument('--classes', type=int, default=10, help='classes (default: 10)')
  p.add_argument('--matmul-only', help=argparse.SUPPRESS)  # (a), in its own process
  args = p.parse_args()
  if args.matmul_only:
    print(json.dumps({d: matmul_rate(getattr(tf, d)) for d in args.matmul_only.split(',')}))
    return
  global MODEL
  MODEL = mnist.Config(inputs=int(np.prod([int(d) for d in args.input_shape.split(',')])), classes=args.classes)
  devices.configure_tensorflow()  # as mnist.py does, before any TensorFlow op
  k = args.models_at_once or devices.default_models_at_once(200, mnist.layer_sizes(MODEL), MODEL.batch_size)
  train_flops, eval_flops = progress.flops_per_example(mnist.layer_sizes(MODEL))
  images, labels = synthetic_mnist()

  print(f'machine: {devices.cpu_name()} ({platform.machine()}), {os.cpu_count()} cores, '
        f'GPUs: {len(devices.accelerators())}; TensorFlow {tf.__version__}, Python {platform.python_version()}')
  print(f'model: {" -> ".join(map(str, mnist.layer_sizes(MODEL)))} (input {args.input_shape}), '
        f'{N:,} synthetic examples')
  peak = machine_matmul_rates(['float32'] + ([] if args.skip_bf16 else ['bfloat16']))
  for dtype, rate in peak.items():
    print(f'(a) matmul 4096^3 {dtype}: {rate:.0f} GFLOP/s')

  results = {}
  for name, kk, precision in [('(b)', k, 'float32'), ('(c)', 1, 'float32')] + \
      ([] if args.skip_bf16 else [('(b bf16)', k, 'bfloat16')]):
    config = config_of(epochs=args.epochs, precision=precision)
    train_rate, eval_rate = time_slice(mnist.EnsembleTrainer(images, labels, config), kk, args.epochs)
    results[name] = (train_rate, eval_rate)
    print(f'{name} trainer K={kk} {precision}, ratio {RATIO}, {args.epochs} epoch(s): '
          f'train {train_rate:,.0f} examples/s = {train_rate * train_flops / 1e9:.0f} GFLOP/s; '
          f'eval {eval_rate:,.0f} examples/s = {eval_rate * eval_flops / 1e9:.0f} GFLOP/s')

  if args.host_groups > 1:
    config = config_of(epochs=args.epochs)
    draws, waited, trained = time_host_preparation(mnist.EnsembleTrainer(images, labels, config), k,
                                                   args.host_groups)
    print(f'(f) host preparation, K={k} ratio {RATIO}, {args.epochs} epoch(s), {args.host_groups} groups: '
          f'draws {draws:.2f} s a group, apart from its training ({trained:.1f} s a group, '
          f'{draws / trained:.1%}); the trainer waited {waited:.2f} s a group for them: '
          f'{max(0.0, draws - waited):.2f} s a group hidden by the thread that prepares the next group')

  if args.record_repeats:
    # With and without the learning record, interleaved so that drifts of this machine's speed
    # hit both alike; the median of the per-pair ratios.
    config = config_of(epochs=args.epochs)
    trainers = [mnist.EnsembleTrainer(images, labels, config, record=r) for r in (True, False)]
    ratios = []
    for _ in range(args.record_repeats):
      with_record, without = (time_slice(t, k, args.epochs)[0] for t in trainers)
      ratios.append(with_record / without)
    print(f'(d) learning record, K={k}, {args.record_repeats} interleaved pairs: training throughput with / '
          f'without {np.median(ratios):.3f} (median; pairs {", ".join(f"{r:.3f}" for r in ratios)})')

  if args.backward_repeats:
    compare_backwards(images, labels, k, args.epochs, args.backward_repeats,
                      ['float32'] + ([] if args.skip_bf16 else ['bfloat16']))

  b, c = results['(b)'], results['(c)']
  print(f'(b)/(a) fp32 trainer / matmul rate: {b[0] * train_flops / 1e9 / peak["float32"]:.2f}')
  print(f'(b)/(c) K={k} / one at a time: {b[0] / c[0]:.2f}x')
  if '(b bf16)' in results:
    print(f'bf16 / fp32 trainer: {results["(b bf16)"][0] / b[0]:.2f}x')

  protocol = MODEL
  steps = sum(protocol.runs * mnist.subset_size(N, r) * protocol.epochs for r in protocol.ratios)
  evals = len(protocol.ratios) * protocol.runs * N
  for name, (train_rate, eval_rate) in results.items():
    hours = (steps / train_rate + evals / eval_rate) / 3600
    print(f'projected full protocol ({len(protocol.ratios)} ratios x {protocol.runs} runs x '
          f'{protocol.epochs} epochs) with {name}: {hours:.2f} h')
  try:  # POSIX only
    import resource
    print(f'peak resident memory: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB')
  except ImportError:
    pass


if __name__ == '__main__':
  main()
