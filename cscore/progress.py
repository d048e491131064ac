"""Progress and ETA: the bar over the groups a command trains, counted in FLOPs, not models (a
model at ratio 0.9 costs about 6.5 times one at 0.1, so counting models would make the ETA swing
from group to group); plain lines, one a minute, where stderr is a file (a batch job's log);
Ctrl-C, which stops training and keeps what is finished; and the host's draws for the next group
made on a thread while the current one trains."""

import concurrent.futures
import datetime
import sys
import time

from tqdm import tqdm

from cscore import devices
from cscore import shards


def flops_per_example(sizes):
  """(training step, forward pass) FLOPs of one example through an MLP of layer `sizes`: forward
  2 sum(in out); backward the weight gradients 2 sum(in out) plus the input gradients of all
  layers but the first."""
  forward = 2 * sum(i * o for i, o in zip(sizes[:-1], sizes[1:]))
  return 2 * forward + 2 * sum(i * o for i, o in zip(sizes[1:-1], sizes[2:])), forward


def model_work(sizes, epochs, m, n):
  """(training, evaluation) FLOPs of one model: `epochs` on its subset of m examples, then all
  n examples."""
  train, forward = flops_per_example(sizes)
  return train * m * epochs, forward * n


def group_steps(sizes, epochs, m, n, k):
  """The progress steps of a group of k models on subsets of m of n examples, in MFLOP (whole
  numbers, so that they add up exactly): one per epoch, then the evaluation."""
  train, evaluate = (round(k * flops / 1e6) for flops in model_work(sizes, epochs, m, n))
  steps = [train // epochs] * epochs
  steps[-1] += train - sum(steps)
  return steps + [evaluate]


class Progress:
  """The progress of training `groups` [(ratio, seeds)], whose steps are `steps` [[MFLOP]] (see
  group_steps): a bar on a terminal, lines in a file. Ctrl-C inside it stops the training and is
  not raised: `interrupted` says so, and `trained` counts the models finished.

      with Progress(groups, steps) as progress:
        for ratio, seeds in groups:
          progress.begin(ratio)
          ... train, calling progress.step(i) after each epoch i and the evaluation ...
          progress.end(ratio, len(seeds))
  """

  def __init__(self, groups, steps):
    self.models, self.trained, self.interrupted = sum(len(seeds) for _, seeds in groups), 0, False
    self.steps, self.group = steps, 0
    self.bar = progress_bar(sum(map(sum, steps)))

  def __enter__(self):
    self.bar.__enter__()
    return self

  def __exit__(self, kind, error, trace):
    self.bar.__exit__(kind, error, trace)
    self.interrupted = kind is KeyboardInterrupt
    return self.interrupted  # Ctrl-C: handled, what is finished is kept

  def begin(self, ratio):
    self.bar.set_description(f'ratio {ratio:.2f}, {self.trained}/{self.models} models done')

  def step(self, i):
    """Step i of the current group is done: epoch i, or (i = epochs) the evaluation."""
    self.bar.update(self.steps[self.group][i])

  def end(self, ratio, k):
    self.trained, self.group = self.trained + k, self.group + 1
    self.bar.set_description(f'ratio {ratio:.2f}, {self.trained}/{self.models} models done')


def prepared_ahead(groups, draw):
  """Yields ((ratio, seeds), draw(ratio, seeds)) for each group, preparing the next group on a
  thread while the caller trains the current one (TensorFlow releases the GIL while an epoch
  runs), so that a GPU does not wait for the host's draws: at K = 200 and ratio 0.9 they take
  seconds and the batch orders 430 MB. The draws are the runs' own, whichever thread makes them."""
  pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix='group-work')
  try:
    ahead = [pool.submit(draw, *group) for group in groups[:1]]
    for i, group in enumerate(groups):
      work = ahead.pop().result()
      if i + 1 < len(groups):
        ahead.append(pool.submit(draw, *groups[i + 1]))
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



def opening_line(config, n, groups, k, shard=None):
  """The line that opens training: the data, the runs done and to train, K and the device."""
  todo, planned = sum(len(seeds) for _, seeds in groups), len(shards.runs_named(config, shard))
  whose = f"shard {shard[0]}/{shard[1]}'s share of " if shard else ''
  return (f'{n} examples; {whose}{len(config.ratios)} ratios x {config.runs} runs: '
          f'{planned - todo} done, {todo} to train, {k} at a time on {devices.device_description(config)}')
