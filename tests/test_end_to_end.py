"""The whole script on the real MNIST, with a tiny protocol: outputs, resume, scores."""
import shutil
import subprocess
import sys
import time

import numpy as np

import mnist
from cscore import devices
from cscore import outputs
from cscore import store
from conftest import ROOT, TINY


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
  runs = store.load_runs(out / store.STORE_DIR)
  assert len(runs) == 8
  for ratio in (0.5, 0.9):
    held_out, correct = mnist.masks(store.finished_runs(runs, mnist.Config(ratios=(ratio,), runs=4), ratio))
    assert mnist.heldout_accuracy(held_out, correct) > 0.9


def test_an_interrupted_run_resumes_without_redoing_runs_and_gives_the_same_scores(
    synthetic_data, tmp_path, monkeypatch, capsys):
  # The resume is the store's, whatever the data: 600 images in an npz stand in for MNIST's
  # 60,000 (the tiny protocol, 4 groups of 2, in seconds rather than minutes).
  images, labels = synthetic_data
  data = tmp_path / 'digits.npz'
  np.savez(data, x=images.reshape(-1, 28, 28), y=labels)
  argv = lambda out: [*TINY, '--data', str(data), '--out-dir', str(tmp_path / out)]
  assert mnist.main(argv('uninterrupted')) == 0
  trained = []
  real_train = mnist.train_run_group

  def train_then_stop(trainer, ratio, seeds, on_step=None, work=None):
    if len(trained) == 2:
      raise KeyboardInterrupt  # Ctrl-C during the third group
    trained.append((ratio, tuple(seeds)))
    return real_train(trainer, ratio, seeds, on_step, work)

  monkeypatch.setattr(mnist, 'train_run_group', train_then_stop)
  assert mnist.main(argv('resumed')) == 130
  first = list(trained)
  assert first == [(0.5, (0, 1)), (0.9, (0, 1))]  # round-robin: both ratios covered early

  monkeypatch.setattr(mnist, 'train_run_group', lambda *a, **k: (trained.append(a[1:3]), real_train(*a, **k))[1])
  assert mnist.main(argv('resumed')) == 0
  assert trained[2:] == [(0.5, [2, 3]), (0.9, [2, 3])]  # only the unfinished runs
  np.testing.assert_array_equal(np.load(tmp_path / 'resumed' / 'cscores.npy'),
                                np.load(tmp_path / 'uninterrupted' / 'cscores.npy'))


# --- What a newcomer sees ------------------------------------------------------------------------

def test_a_first_run_says_it_prepares_mnist_in_one_line_of_its_own_and_none_of_tfds(first_run):
  _, data_dir, result = first_run
  assert result.stdout.splitlines()[0].startswith(f'preparing MNIST in {data_dir}')
  for tfds_line in ('Downloading and preparing', 'downloaded and prepared', 'Dataset mnist'):
    assert tfds_line not in result.stdout + result.stderr


def test_processes_starting_together_on_a_fresh_data_dir_prepare_mnist_once_and_all_read_it(manual_dir, tmp_path):
  # a job array's shards, started at once on a data dir where MNIST was never prepared
  code = (f'import sys; sys.path.insert(0, {str(ROOT)!r}); import mnist\n'
          f'y = mnist.load_mnist({str(tmp_path)!r}, {str(manual_dir)!r}).y; print(len(y), int(y[:100].sum()))')
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
                f'{devices.cpu_cores()} cores', 'float32', 'fp32 matmuls'):
    assert words in opening


def test_the_summary_ends_with_every_file_written_and_which_to_open_first(tiny_run):
  out, result = tiny_run
  lines = result.stdout.splitlines()
  listed = lines[lines.index('wrote:') + 1:-1]
  assert [line.split()[0] for line in listed] == [str(out / name) for name in outputs.OUTPUTS.values()]
  assert all((out / name).exists() for name in outputs.OUTPUTS.values())
  assert lines[-1].startswith(f'open first: {out / "mnist-examples.pdf"}')


def test_a_run_whose_stderr_is_a_file_logs_lines_without_carriage_returns(tiny_run):
  _, result = tiny_run
  assert '\r' not in result.stderr
  assert result.stderr.splitlines()[-1].startswith('ratio 0.90, 8/8 models done: 100% of the work, ')


def test_the_summarys_time_ends_before_the_outputs_are_written(tiny_run, mnist_data_dir, tmp_path, monkeypatch, capsys):
  uninterrupted, _ = tiny_run
  shutil.copytree(uninterrupted / store.STORE_DIR, tmp_path / store.STORE_DIR)
  now = [0.0]
  monkeypatch.setattr(time, 'perf_counter', lambda: now[0])
  write = outputs.write_outputs

  def slow_write(*args, **kwargs):  # an hour of writing: none of it is the command's own time
    now[0] += 3600.0
    return write(*args, **kwargs)

  monkeypatch.setattr(outputs, 'write_outputs', slow_write)
  assert mnist.main([*TINY, '--data-dir', str(mnist_data_dir), '--out-dir', str(tmp_path), '--estimate-only']) == 0
  assert 'models trained now: 0 in 0:00:00; models in the estimate: 8' in capsys.readouterr().out
