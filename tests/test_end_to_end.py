"""The whole script on the real MNIST, with a tiny protocol: outputs, resume, scores."""
import subprocess
import sys

import numpy as np
import pytest

import mnist
from conftest import ROOT, random_group, tiny_argv


def test_script_writes_scores_for_every_training_example(tiny_run):
  out, result = tiny_run
  assert result.returncode == 0, result.stderr
  scores = np.load(out / 'cscores.npy')
  assert scores.shape == (60000,) and scores.dtype == np.float32
  valid = scores[~np.isnan(scores)]
  assert ((valid >= 0) & (valid <= 1)).all()
  assert len(valid) > 50000  # at ratio 0.5, 4 runs leave out all but ~1/16 of the examples
  assert (valid > 0.9).mean() > 0.85  # most digits are easy


def test_script_writes_the_examples_figure(tiny_run):
  out, _ = tiny_run
  assert (out / 'mnist-examples.pdf').read_bytes()[:4] == b'%PDF'


def test_script_prints_a_summary_and_no_traceback(tiny_run):
  _, result = tiny_run
  assert 'held-out accuracy per ratio' in result.stdout and 'models/s' in result.stdout
  assert 'Traceback' not in result.stderr


def test_the_summary_prints_both_split_half_reliabilities_and_the_details_hold_the_combined_score(tiny_run):
  out, result = tiny_run
  assert 'split-half reliability: r = ' in result.stdout
  assert "learning confidence's split-half reliability: r = " in result.stdout
  assert 'combined score: each C-score shrunk' in result.stdout
  with np.load(out / 'cscores-details.npz') as details:
    combined, cscores = details['combined_score'], details['cscores']
    r, signal = float(details['confidence_split_half_r']), float(details['combined_signal'])
  assert 0 < r <= 1 and f"learning confidence's split-half reliability: r = {r:.3f}" in result.stdout
  assert 0 < signal <= 1 and f'the C-score weighs {signal:.2f} (the share' in result.stdout
  scored = ~np.isnan(cscores)
  assert scored.sum() > 50000 and not np.isnan(combined[scored]).any()


def test_models_are_accurate_on_the_examples_they_held_out(tiny_run):
  out, _ = tiny_run
  runs = mnist.load_runs(out / mnist.STORE_DIR)
  assert len(runs) == 8
  for ratio in (0.5, 0.9):
    held_out, correct = mnist.masks(mnist.finished_runs(runs, mnist.Config(ratios=(ratio,), runs=4), ratio))
    assert mnist.heldout_accuracy(held_out, correct) > 0.9


def test_an_interrupted_run_resumes_without_redoing_runs_and_gives_the_same_scores(
    tiny_run, mnist_data_dir, tmp_path, monkeypatch, capsys):
  uninterrupted, _ = tiny_run
  argv = tiny_argv(mnist_data_dir, tmp_path)
  trained = []
  real_train = mnist.train_run_group

  def train_then_stop(trainer, ratio, seeds, on_step=None, work=None):
    if len(trained) == 2:
      raise KeyboardInterrupt  # Ctrl-C during the third group
    trained.append((ratio, tuple(seeds)))
    return real_train(trainer, ratio, seeds, on_step, work)

  monkeypatch.setattr(mnist, 'train_run_group', train_then_stop)
  assert mnist.main(argv) == 130
  first = list(trained)
  assert first == [(0.5, (0, 1)), (0.9, (0, 1))]  # round-robin: both ratios covered early

  monkeypatch.setattr(mnist, 'train_run_group', lambda *a, **k: (trained.append(a[1:3]), real_train(*a, **k))[1])
  assert mnist.main(argv) == 0
  assert trained[2:] == [(0.5, [2, 3]), (0.9, [2, 3])]  # only the unfinished runs
  np.testing.assert_array_equal(np.load(tmp_path / 'cscores.npy'), np.load(uninterrupted / 'cscores.npy'))


# --- What a newcomer sees ------------------------------------------------------------------------

def test_a_first_run_says_it_prepares_mnist_in_one_line_of_its_own_and_none_of_tfds(first_run):
  _, data_dir, result = first_run
  assert result.stdout.splitlines()[0].startswith(f'preparing MNIST in {data_dir}')
  for tfds_line in ('Downloading and preparing', 'downloaded and prepared', 'Dataset mnist'):
    assert tfds_line not in result.stdout + result.stderr


def test_processes_starting_together_on_a_fresh_data_dir_prepare_mnist_once_and_all_read_it(manual_dir, tmp_path):
  # a job array's shards, started at once on a data dir where MNIST was never prepared
  code = (f'import sys; sys.path.insert(0, {str(ROOT)!r}); import mnist\n'
          f'x, y = mnist.load_mnist({str(tmp_path)!r}, {str(manual_dir)!r}); print(len(y), int(y[:100].sum()))')
  started = [subprocess.Popen([sys.executable, '-c', code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
  results = [(p.communicate(timeout=600), p.returncode) for p in started]
  assert [code for _, code in results] == [0, 0], [err for (_, err), _ in results]
  lines = [line for (out, _), _ in results for line in out.splitlines()]
  assert sum(line.startswith('preparing MNIST') for line in lines) == 1
  assert len({line for line in lines if not line.startswith('preparing')}) == 1  # one data set read


def test_the_opening_line_names_the_device_k_and_the_precision(tiny_run):
  opening = tiny_run[1].stdout.splitlines()[1]
  for words in ('60000 examples', '2 ratios x 4 runs', '8 to train', '2 at a time', 'CPU',
                f'{mnist.cpu_cores()} cores', 'float32', 'fp32 matmuls'):
    assert words in opening


def test_the_summary_ends_with_every_file_written_and_which_to_open_first(tiny_run):
  out, result = tiny_run
  lines = result.stdout.splitlines()
  listed = lines[lines.index('wrote:') + 1:-1]
  assert [line.split()[0] for line in listed] == [str(out / name) for name in mnist.OUTPUTS.values()]
  assert all((out / name).exists() for name in mnist.OUTPUTS.values())
  assert lines[-1].startswith(f'open first: {out / "mnist-examples.pdf"}')


def test_progress_counts_work_a_model_at_0_9_costing_about_6_5_models_at_0_1():
  config = mnist.Config()
  low, high = (np.array(mnist.model_work(config, 60000, r)) for r in (0.1, 0.9))
  assert 6 < high.sum() / low.sum() < 7
  assert high[0] / low[0] == pytest.approx(9) and high[1] == low[1]  # training grows, evaluation not


# The default MLP's matmuls: 784 x 512 + 512 x 256 + 256 x 10 = 535,040 multiply-adds forward.
FORWARD = 2 * 535_040                            # 1,070,080 FLOPs an example
TRAIN = 2 * FORWARD + 2 * (512 * 256 + 256 * 10)  # weight and input gradients: 2,407,424


def test_a_default_model_costs_2_4_mflop_per_example_trained_and_1_1_evaluated():
  assert mnist.flops_per_example(mnist.Config()) == (TRAIN, FORWARD)


def test_the_progress_steps_are_each_epoch_then_the_evaluation_in_whole_mflop():
  # 8 models x 54,000 examples x 3 epochs x 2,407,424 FLOPs = 3,120,021.5 MFLOP of training,
  # 3,120,022 in whole MFLOP, split over 3 epochs with the remainder in the last;
  # 8 models x 60,000 examples x 1,070,080 FLOPs = 513,638.4 MFLOP of evaluation.
  assert mnist.group_steps(mnist.Config(epochs=3), 60000, 0.9, 8) == [1_040_007, 1_040_007, 1_040_008, 513_638]


def test_progress_in_a_log_file_is_a_line_a_minute_and_at_the_end_with_its_eta(monkeypatch, capsys):
  now = [0.0]
  monkeypatch.setattr(mnist.time, 'perf_counter', lambda: now[0])
  log = mnist.LogLines(total=100)
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


def test_a_run_whose_stderr_is_a_file_logs_lines_without_carriage_returns(tiny_run):
  _, result = tiny_run
  assert '\r' not in result.stderr
  assert result.stderr.splitlines()[-1].startswith('ratio 0.90, 8/8 models done: 100% of the work, ')


def test_one_missing_seed_reads_seed_not_seeds():
  config = mnist.Config(ratios=(0.5,), runs=8)
  runs = {(0.5, s): None for s in range(8) if s != 7}
  assert mnist.missing_line(runs, config) == 'missing: 1 of the command\'s 8 runs are not stored yet (ratio 0.50: seed 7)'


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
    labels, hardware = np.zeros(100), ('CPU', 'fp32')
    def warm_up(self, k):
      pass
  Trainer.config = config

  def fake_group(trainer, ratio, seeds, on_step, work=None):  # reports its steps as the real one does
    for i in range(config.epochs + 1):
      on_step(i)
    return random_group(len(seeds), n=100)

  monkeypatch.setattr(mnist, 'progress_bar', Bar)
  monkeypatch.setattr(mnist, 'train_run_group', fake_group)
  store = mnist.open_store(str(tmp_path), mnist.store_settings(config, 'x'))
  mnist.train_missing_runs(Trainer(), store, {}, mnist.planned_groups(config, {}, 2))
  (bar,) = bars
  # 2 models x 3 epochs x 2,407,424 FLOPs on 10 examples (ratio 0.1): 144.4 MFLOP, 48 an epoch;
  # on 90 (ratio 0.9): 1,300.0, as 433, 433, 434; each group's evaluation of 100: 214.0 MFLOP
  assert bar.steps == [48, 48, 48, 214, 433, 433, 434, 214]
  assert bar.n == bar.total == 1872
