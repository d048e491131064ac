"""Progress (cscore/progress.py): the work counted in FLOPs, the bar's steps, the lines a log
file gets in place of a bar, and the next group's draws prepared while a group trains; and the
training loop's call of train_run_group, which benchmarks/shards.py's stand-in must take."""
import functools
import importlib.util
import sys
import threading
import time
import types

import numpy as np
import pytest

import mnist
from cscore import progress
from cscore import shards
from cscore import store
from conftest import ROOT, random_group


# --- The work, in FLOPs, and the bar's steps ------------------------------------------------------

def test_progress_counts_work_a_model_at_0_9_costing_about_6_5_models_at_0_1():
  config, n = mnist.Config(), 60000
  low, high = (np.array(progress.model_work(mnist.layer_sizes(config), config.epochs, mnist.subset_size(n, r), n))
               for r in (0.1, 0.9))
  assert 6 < high.sum() / low.sum() < 7
  assert high[0] / low[0] == pytest.approx(9) and high[1] == low[1]  # training grows, evaluation not


# The default MLP's matmuls: 784 x 512 + 512 x 256 + 256 x 10 = 535,040 multiply-adds forward.
FORWARD = 2 * 535_040                            # 1,070,080 FLOPs an example


TRAIN = 2 * FORWARD + 2 * (512 * 256 + 256 * 10)  # weight and input gradients: 2,407,424


def test_a_default_model_costs_2_4_mflop_per_example_trained_and_1_1_evaluated():
  assert progress.flops_per_example(mnist.layer_sizes(mnist.Config())) == (TRAIN, FORWARD)


def test_the_progress_steps_are_each_epoch_then_the_evaluation_in_whole_mflop():
  # 8 models x 54,000 examples x 3 epochs x 2,407,424 FLOPs = 3,120,021.5 MFLOP of training,
  # 3,120,022 in whole MFLOP, split over 3 epochs with the remainder in the last;
  # 8 models x 60,000 examples x 1,070,080 FLOPs = 513,638.4 MFLOP of evaluation.
  steps = progress.group_steps(mnist.layer_sizes(mnist.Config()), 3, 54000, 60000, 8)
  assert steps == [1_040_007, 1_040_007, 1_040_008, 513_638]


def test_progress_in_a_log_file_is_a_line_a_minute_and_at_the_end_with_its_eta(monkeypatch, capsys):
  now = [0.0]
  monkeypatch.setattr(progress.time, 'perf_counter', lambda: now[0])
  log = progress.LogLines(total=100)
  for group, end in enumerate([10.0, 40.0, 75.0, 80.0]):  # the seconds at which each group ends
    log.set_description(f'group {group}')
    log.update(25)
    now[0] = end
    log.set_description(f'{group + 1} groups done')
  lines = capsys.readouterr().err.splitlines()
  # the first group's end; the second's only 30 s later is skipped; the third's 65 s after the
  # first's, 75% done in 75 s, so 25 s left; the last always.
  assert lines == ['1 groups done: 25% of the work, 0:00:10 elapsed, about 0:00:30 left',
                   '3 groups done: 75% of the work, 0:01:15 elapsed, about 0:00:25 left',
                   '4 groups done: 100% of the work, 0:01:20 elapsed, about 0:00:00 left']


def test_the_progress_bar_advances_by_each_step_and_ends_at_its_total(tmp_path, monkeypatch):
  config = mnist.Config(ratios=(0.1, 0.9), runs=2, epochs=3)
  bars = []

  class Bar:  # records what the real bar is told
    def __init__(self, total, **kwargs):
      self.total, self.n, self.steps = total, 0, []
      bars.append(self)
    def __enter__(self):
      return self
    def __exit__(self, *exc):
      return False
    def set_description(self, text):
      pass
    def update(self, amount):
      self.n += amount
      self.steps.append(amount)

  class Trainer:  # trains nothing
    labels, layout = np.zeros(100), types.SimpleNamespace(hardware=('CPU', 'fp32'))
    def warm_up(self, k):
      pass
  Trainer.config = config

  def fake_group(trainer, ratio, seeds, on_step, work=None):  # reports its steps as the real one does
    for i in range(config.epochs + 1):
      on_step(i)
    return random_group(len(seeds), n=100)

  monkeypatch.setattr(progress, 'progress_bar', Bar)
  monkeypatch.setattr(mnist, 'train_run_group', fake_group)
  store_dir = store.open_store(str(tmp_path), store.store_settings(config, 'x'))
  mnist.train_missing_runs(Trainer(), store_dir, {}, shards.planned_groups(config, {}, 2))
  (bar,) = bars
  # 2 models x 3 epochs x 2,407,424 FLOPs on 10 examples (ratio 0.1): 144.4 MFLOP, 48 an epoch;
  # on 90 (ratio 0.9): 1,300.0, as 433, 433, 434; each group's evaluation of 100: 214.0 MFLOP
  assert bar.steps == [48, 48, 48, 214, 433, 433, 434, 214]
  assert bar.n == bar.total == 1872


# --- The host's draws overlap the training --------------------------------------------------------

def test_the_next_groups_draws_are_prepared_while_the_current_group_trains():
  started = {i: threading.Event() for i in range(3)}

  def prepare(ratio, seeds):
    started[seeds[0]].set()
    return f'work of {seeds[0]}'
  groups = [(0.5, [i]) for i in range(3)]
  got = []
  for group, work in progress.prepared_ahead(groups, prepare):
    if group[1][0] < 2:  # the consumer "trains": the next group is being prepared meanwhile
      assert started[group[1][0] + 1].wait(timeout=10)
    got.append((group, work))
  assert got == [((0.5, [i]), f'work of {i}') for i in range(3)]


def test_a_closed_loop_does_not_wait_for_the_next_groups_draws():
  release = threading.Event()

  def prepare(ratio, seeds):
    if seeds[0] == 1:  # the next group's draws: slow
      release.wait(timeout=60)
    return seeds[0]
  loop = progress.prepared_ahead([(0.5, [0]), (0.5, [1])], prepare)
  assert next(loop) == ((0.5, [0]), 0)
  start = time.perf_counter()
  loop.close()  # as Ctrl-C leaves the training loop
  assert time.perf_counter() - start < 1
  release.set()


def test_draws_prepared_on_the_thread_are_the_runs_own(synthetic_data):
  config = mnist.Config(epochs=2, hidden=(16,), batch_size=32)
  groups = [(0.5, [3, 4]), (0.9, [5])]
  for (ratio, seeds), work in progress.prepared_ahead(groups, functools.partial(mnist.group_work, config, 600)):
    for j, seed in enumerate(seeds):
      rs = np.random.RandomState(seed)  # the authors' draw: the subset, then a permutation an epoch
      subset = rs.choice(600, size=int(600 * ratio), replace=False)
      for epoch in range(2):
        rows = work.orders[epoch, j].ravel()[:len(subset)]
        np.testing.assert_array_equal(rows, subset[rs.permutation(len(subset))])
      np.testing.assert_array_equal(np.flatnonzero(~work.held_out[j]), np.sort(subset))
      for stacked, own in zip(work.initial, mnist.init_mlp(seed, mnist.layer_sizes(config))):
        np.testing.assert_array_equal(stacked[j], own)


# --- What the training loop passes to train_run_group: benchmarks/shards.py's stand-in takes it ---

def test_the_shards_benchmarks_stand_in_for_train_run_group_takes_what_the_training_loop_passes(
    tmp_path, monkeypatch):
  # benchmarks/shards.py runs each shard as its SHARD code: mnist.main with train_run_group
  # replaced by `logged`, which logs each group and trains it. Run here as the benchmark runs it,
  # on 40 examples: every call mnist.train_missing_runs makes must reach the real training.
  spec = importlib.util.spec_from_file_location('shards_benchmark', ROOT / 'benchmarks' / 'shards.py')
  benchmark = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(benchmark)
  np.savez(tmp_path / 'small.npz', x=np.eye(40, 4) * 10, y=np.arange(40) % 2)
  log = tmp_path / 'started.log'
  monkeypatch.setattr(mnist, 'train_run_group', mnist.train_run_group)  # the stand-in replaces it: undone after
  monkeypatch.setattr(sys, 'path', list(sys.path))
  monkeypatch.setattr(sys, 'argv', ['-c', '--data', str(tmp_path / 'small.npz'), '--out-dir', str(tmp_path / 'out'),
                                    '--runs', '2', '--epochs', '1', '--ratios', '0.5', '--hidden', '8',
                                    '--models-at-once', '1'])
  with pytest.raises(SystemExit) as exit:
    exec(benchmark.SHARD.format(root=str(ROOT), log=str(log)), {'__name__': '__main__'})
  assert exit.value.code == 0
  assert sorted(line.split()[1:] for line in log.read_text().splitlines()) == [['0.5', '0'], ['0.5', '1']]
  assert np.load(tmp_path / 'out' / 'cscores.npy').shape == (40,)
