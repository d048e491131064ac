"""The command line: its flags, checked as they are parsed (a bad one is one line, exit 2), the
settings they give, and how a command ends: its lines printed, or one line for what a user can
fix (exit 1), and Ctrl-C (exit 130), which keeps every finished run in the store. Needs no
TensorFlow: --help and a mistyped flag answer at once."""

import argparse
import contextlib
import dataclasses
import sys

import numpy as np

from cscore import devices
from cscore import errors
from cscore import store


INTERRUPTED = 'interrupted: finished runs are kept in the store; run the same command again to resume'


def parse_ratios(text):
  """'0.1,0.5' -> (0.1, 0.5): subset ratios, each strictly between 0 and 1, none repeated."""
  try:
    ratios = tuple(float(r) for r in text.split(','))
  except ValueError:
    raise argparse.ArgumentTypeError(f'not a comma-separated list of numbers: {text!r}')
  bad = [r for r in ratios if not 0 < r < 1]
  if bad:
    raise argparse.ArgumentTypeError(f'ratios must lie strictly between 0 and 1, got {bad[0]}')
  if len(set(map(store.ratio_key, ratios))) != len(ratios):
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
  """An argument parser whose errors are one line, with a pointer to --help."""

  def error(self, message):
    self.exit(2, f'{self.prog}: error: {message} (see --help)\n')


def parse_args(argv, defaults):
  """(settings, argparse namespace with the paths and modes): the settings are `defaults` (the
  paper's, mnist.Config()) with the flags' values in place."""
  d = defaults
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
                      'loss and updates, faster on CPUs with native bf16 (see docs/agreement.md)')
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
  p.add_argument('--prepare-only', action='store_true',
                 help='prepare the data set in --data-dir (downloaded, or from --manual-dir) and '
                      'exit, training nothing: on a machine with internet, before a job array on '
                      'compute nodes without it (default: prepare when first needed)')
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
  if args.prepare_only and args.data:
    p.error('--data is read from its file by every command: there is nothing to prepare')
  if args.prepare_only and (together or args.fresh):
    p.error(f'--prepare-only trains and writes nothing, unlike {(together or ["--fresh"])[0]}: use them in separate commands')
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
  config = dataclasses.replace(
      defaults, ratios=args.ratios, runs=args.runs, seed=args.seed, epochs=args.epochs,
      batch_size=args.batch_size, learning_rate=args.learning_rate, momentum=args.momentum,
      hidden=args.hidden, precision=args.precision, models_at_once=args.models_at_once)
  return config, args


def run(command):
  """Runs a command, command() -> (lines to print, interrupted), as the script's main; returns
  its exit code. What a user can fix (an error of ours, a file the system refuses), a missing
  package, running out of memory and a GPU that fails to start are one line on stderr, exit 1;
  Ctrl-C is one line, exit 130, the finished runs kept. Any other error is a bug: its traceback."""
  with contextlib.suppress(AttributeError, ValueError):  # each line as it is printed, in a log file too
    sys.stdout.reconfigure(line_buffering=True)
  try:
    lines, interrupted = command()
  except KeyboardInterrupt:
    print(f'mnist.py: {INTERRUPTED}', file=sys.stderr)
    return 130
  except (errors.CScoreError, OSError) as e:
    print(f'mnist.py: error: {e}', file=sys.stderr)
    return 1
  except ImportError as e:  # TensorFlow, tensorflow-datasets, matplotlib or scipy
    print(f'mnist.py: error: {errors.first_line(e)}; install what the script needs: '
          'pip install -r requirements.txt', file=sys.stderr)
    return 1
  except Exception as e:
    if not (errors.out_of_memory(e) or devices.gpu_failed_to_start(e)):
      raise
    print(f'mnist.py: error: {devices.failure_line(e)}', file=sys.stderr)
    return 1
  for line in lines:
    print(line)
  if interrupted:
    print(f'mnist.py: {INTERRUPTED}', file=sys.stderr)
    return 130
  return 0

