"""The whole script on the real MNIST, with a tiny protocol: outputs, resume, scores."""
import numpy as np

import mnist
from conftest import TINY


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


def test_models_are_accurate_on_the_examples_they_held_out(tiny_run):
  out, _ = tiny_run
  runs = mnist.load_runs(out / mnist.STORE_DIR)
  assert len(runs) == 8
  for ratio in (0.5, 0.9):
    held_out, correct = mnist.runs_at_ratio(runs, mnist.Config(ratios=(ratio,), runs=4), ratio)
    assert mnist.heldout_accuracy(held_out, correct) > 0.9


def test_an_interrupted_run_resumes_without_redoing_runs_and_gives_the_same_scores(
    tiny_run, mnist_data_dir, tmp_path, monkeypatch, capsys):
  uninterrupted, _ = tiny_run
  argv = [*TINY, '--data-dir', str(mnist_data_dir), '--out-dir', str(tmp_path)]
  trained = []
  real_train = mnist.train_run_group

  def train_then_stop(trainer, ratio, seeds, on_epoch=None):
    if len(trained) == 2:
      raise KeyboardInterrupt  # Ctrl-C during the third group
    trained.append((ratio, tuple(seeds)))
    return real_train(trainer, ratio, seeds, on_epoch)

  monkeypatch.setattr(mnist, 'train_run_group', train_then_stop)
  assert mnist.main(argv) == 130
  first = list(trained)
  assert first == [(0.5, (0, 1)), (0.9, (0, 1))]  # round-robin: both ratios covered early

  monkeypatch.setattr(mnist, 'train_run_group', lambda *a, **k: (trained.append(a[1:3]), real_train(*a, **k))[1])
  assert mnist.main(argv) == 0
  assert trained[2:] == [(0.5, [2, 3]), (0.9, [2, 3])]  # only the unfinished runs
  np.testing.assert_array_equal(np.load(tmp_path / 'cscores.npy'), np.load(uninterrupted / 'cscores.npy'))
