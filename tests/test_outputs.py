"""Outputs (cscore/outputs.py): the files a command writes from the stored runs' estimate, and
the lines of its summary and of the report's facts."""
import numpy as np

import mnist
from cscore import datasets
from cscore import outputs
from cscore import store
from conftest import A100_TF32, CPU, masks_only_run, mnist_like
from test_analysis import estimate_known
from test_estimates import synthetic_runs
from test_report import page_data
from test_store import two_records


# --- The files ------------------------------------------------------------------------------------

def test_outputs_are_written_from_a_store(tmp_path):
  rng = np.random.default_rng(0)
  ratios, runs, n = (0.2, 0.5), 6, 200
  labels = np.arange(n) % 10
  images = rng.integers(0, 256, (n, 784)).astype(np.uint8)
  stored, config = synthetic_runs(ratios, runs, n), mnist.Config(ratios=ratios, runs=runs)
  est = mnist.estimate(stored, config, n)
  outputs.write_outputs(str(tmp_path), mnist_like(images, labels), est, stored, config, mnist.examples_figure)
  np.testing.assert_array_equal(np.load(tmp_path / 'cscores.npy'), est.cscores.astype(np.float32))
  with np.load(tmp_path / 'cscores-details.npz', allow_pickle=False) as details:
    assert details['per_ratio'].shape == details['held_out_counts'].shape == (2, n)
    np.testing.assert_array_equal(details['memorization'], est.memorization)
    np.testing.assert_array_equal(details['standard_error'], est.standard_error)
  for name in ('mnist-examples.pdf', 'mnist-cscores.pdf', 'mnist-memorized.pdf'):
    assert (tmp_path / name).read_bytes()[:4] == b'%PDF'


def test_the_details_name_each_examples_class_and_its_label_in_the_users_data(tmp_path):
  n = 200
  own = np.where(np.arange(n) % 3 == 0, 7, 3)  # the file's labels: 7 for every third example, else 3
  y = (own == 7).astype(np.int32)  # the classes as trained, in sorted order of the labels: 3 -> 0, 7 -> 1
  data = datasets.Data('mine', np.zeros((n, 4), np.float32), y, ('three', 'seven'), None, (3, 7))
  stored, config = synthetic_runs((0.5,), 2, n), mnist.Config(ratios=(0.5,), runs=2)
  outputs.write_outputs(str(tmp_path), data, mnist.estimate(stored, config, n), stored, config,
                        mnist.examples_figure)
  with np.load(tmp_path / 'cscores-details.npz', allow_pickle=False) as details:
    assert details['labels'].dtype.kind == 'i'
    np.testing.assert_array_equal(details['label_values'][details['labels']], own)
    assert list(details['class_names'][details['labels'][:4]]) == ['seven', 'three', 'three', 'seven']


def test_outputs_are_written_when_few_examples_have_a_score(tmp_path):
  n = 200
  held_out = np.zeros(n, bool)
  held_out[:3] = True  # one run that held out 3 examples, all of class 0, 1 and 2
  stored, config = {(0.99, 0): masks_only_run(held_out, np.ones(n, bool))}, mnist.Config(ratios=(0.99,), runs=1)
  images = np.zeros((n, 784), np.uint8)
  est = mnist.estimate(stored, config, n)
  outputs.write_outputs(str(tmp_path), mnist_like(images, np.arange(n) % 10), est, stored, config,
                        mnist.examples_figure)
  assert (~np.isnan(np.load(tmp_path / 'cscores.npy'))).sum() == 3
  assert (tmp_path / 'mnist-cscores.pdf').exists()


def test_the_details_hold_the_proxies_and_the_combined_score_and_the_figure_is_written(synthetic_data, tmp_path):
  images, labels = synthetic_data
  config = mnist.Config(ratios=(0.3, 0.7), runs=3, epochs=3, hidden=(16,))
  trainer = mnist.EnsembleTrainer(images, labels, config)
  store_dir = store.open_store(str(tmp_path), store.store_settings(config, 'x'))
  for ratio in config.ratios:
    store.save_runs(store_dir, ratio, [0, 1, 2], mnist.train_run_group(trainer, ratio, [0, 1, 2]), config.epochs, CPU)
  runs = store.load_runs(store_dir)
  est = mnist.estimate(runs, config, len(labels))
  outputs.write_outputs(str(tmp_path), mnist_like(images, labels), est, runs, config, mnist.examples_figure)
  with np.load(tmp_path / 'cscores-details.npz', allow_pickle=False) as details:
    np.testing.assert_array_equal(details['learning_speed'], est.learning_speed)
    np.testing.assert_array_equal(details['learning_confidence'], est.learning_confidence)
    np.testing.assert_array_equal(details['combined_score'], est.combined_score)
    np.testing.assert_array_equal(details['confidence_split_half_r'], est.confidence_split_half_r)  # (NaN too)
  assert np.nanmin(est.learning_speed) >= 0 and np.nanmax(est.learning_confidence) <= 1
  assert (tmp_path / 'mnist-proxies.pdf').read_bytes()[:4] == b'%PDF'


# --- The summary's lines, and the report's facts --------------------------------------------------

def test_the_summary_prints_both_reliabilities_and_the_weight():
  lines = outputs.combined_lines(estimate_known(8)[1])
  assert lines[0].startswith("learning confidence's split-half reliability: r = 0.9")
  assert lines[1].startswith('combined score: each C-score shrunk toward the one its learning confidence '
                             'predicts, by its own noise; the C-score weighs 0.')
  assert lines[1].endswith('over the 6,000 examples with both')


def test_the_summary_counts_the_runs_stored_twice_by_different_hardware(tmp_path):
  runs = two_records(tmp_path, CPU, A100_TF32)
  line = outputs.hardware_line(runs, mnist.Config(ratios=(0.5,), runs=2))
  assert '2 on CPU (fp32)' in line and '2 of them stored twice, by different hardware' in line


def test_the_summary_lists_the_report_with_its_size(tiny_run):
  out, result = tiny_run
  line = next(line for line in result.stdout.splitlines() if 'mnist-report.html' in line)
  size = (out / 'mnist-report.html').stat().st_size
  assert f'({size / 2**20:.1f} MB)' in line and 'browser' in line


def test_the_report_sums_the_stored_seconds_as_the_training_time(tiny_run):
  out, _ = tiny_run
  files = sorted((out / store.STORE_DIR).glob('runs-*.npz'))
  total = round(sum(float(np.load(f)['seconds']) for f in files))
  page, _ = page_data((out / 'mnist-report.html').read_text())
  hours, rest = divmod(total, 3600)
  assert f"training time: {hours}:{rest // 60:02d}:{rest % 60:02d}, the store's record for 8 runs" in ' '.join(page['facts'])


def test_runs_stored_without_seconds_say_their_time_was_not_recorded(tmp_path):
  store_dir = tmp_path / 'store'
  store_dir.mkdir()
  group = mnist.RunGroup(*(a[None] for a in (np.array([True, False]), np.array([True, True]),
                                             np.array([0., 1.]), np.array([0., 1.]))))
  name = store.save_runs(str(store_dir), 0.5, [0], group, 1, CPU, seconds=3.0)
  with np.load(store_dir / name) as f:  # as an mnist.py before the training time was recorded wrote it
    arrays = {k: f[k] for k in f.files if k != 'seconds'}
  np.savez_compressed(store_dir / name, **arrays)
  config = mnist.Config(runs=1, ratios=(0.5,))
  assert outputs.training_time_line(store.load_runs(str(store_dir)), config) == (
      'training time: not recorded for the 1 run in the estimate (stored by an older mnist.py)')
