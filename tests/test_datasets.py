"""Data sets (cscore/datasets.py): C-scores of the user's own arrays (--data FILE.npz), images or
features, any integer labels, and one line for each bad input, with nothing written; a data set
of tensorflow-datasets (--dataset)."""
import os
import shutil

import numpy as np
import pytest

import mnist
from cscore import cli, datasets, devices, errors
from conftest import ROOT

DIGITS_NPZ = ROOT / 'tests' / 'data' / 'digits.npz'  # see tests/data/README.md


def save(tmp_path, name='data.npz', **arrays):
  path = tmp_path / name
  np.savez(path, **arrays)
  return str(path)


def run(tmp_path, data, *flags):
  out = tmp_path / 'out'
  return mnist.main(['--data', data, '--out-dir', str(out), '--runs', '2', '--epochs', '1',
                     '--ratios', '0.5', '--hidden', '32', *flags]), out


# --- Reading the file --------------------------------------------------------------------------

def test_uint8_images_of_one_channel_are_grayscale_pictures(tmp_path):
  x = np.arange(4 * 5 * 6, dtype=np.uint8).reshape(4, 5, 6, 1)
  data = datasets.npz_data(save(tmp_path, x=x, y=[0, 1, 0, 1]))
  assert data.shape == (5, 6) and data.x.shape == (4, 30) and data.x.dtype == np.uint8
  np.testing.assert_array_equal(data.x[1], np.arange(30, 60))  # pixels as they are


def test_uint8_images_of_three_channels_are_colour_pictures(tmp_path):
  data = datasets.npz_data(save(tmp_path, x=np.zeros((4, 2, 3, 3), np.uint8), y=[0, 1, 0, 1]))
  assert data.shape == (2, 3, 3) and data.x.shape == (4, 18)


def test_features_are_standardized_per_feature_and_a_constant_one_is_zero(tmp_path):
  x = np.array([[1000.0, 0.1, 7], [3000.0, 0.3, 7]] * 2)
  data = datasets.npz_data(save(tmp_path, x=x, y=[0, 1, 0, 1]))
  # each column: (v - mean) / std, std of values a, b, a, b being |a - b| / 2
  np.testing.assert_array_equal(data.x, np.float32([[-1, -1, 0], [1, 1, 0]] * 2))
  assert data.shape is None and data.x.dtype == np.float32


def test_labels_are_mapped_to_classes_in_sorted_order_with_their_names(tmp_path):
  data = datasets.npz_data(save(tmp_path, 'cats.npz', x=np.zeros((4, 2)), y=[5, 3, 5, 5]))
  assert data.y.tolist() == [1, 0, 1, 1] and data.label_values == (3, 5)
  assert data.class_names == ('3', '5') and data.name == 'cats'
  named = datasets.npz_data(save(tmp_path, x=np.zeros((4, 2)), y=[5, 3, 5, 5], class_names=['cat', 'dog']))
  assert named.class_names == ('cat', 'dog')
  as_bytes = datasets.npz_data(save(tmp_path, x=np.zeros((4, 2)), y=[5, 3, 5, 5], class_names=np.array([b'cat', b'dog'])))
  assert as_bytes.class_names == ('cat', 'dog')


# --- Runs on it --------------------------------------------------------------------------------

def test_the_digits_npz_gets_a_score_per_example_and_its_own_figures(tmp_path, capsys):
  code, out = run(tmp_path, str(DIGITS_NPZ), '--epochs', '5')
  printed = capsys.readouterr().out
  assert code == 0
  scores = np.load(out / 'cscores.npy')
  assert scores.shape == (1797,) and np.nanmean(scores) > 0.8  # 8x8 digits are easy
  assert (out / 'digits-examples.pdf').read_bytes()[:4] == b'%PDF' and not (out / 'mnist-examples.pdf').exists()
  assert printed.startswith('1797 examples; 1 ratios x 2 runs') and '\nplan: ' in printed


def test_labels_3_and_5_train_two_classes_and_the_details_record_the_mapping(tmp_path):
  rng = np.random.default_rng(0)
  y = np.where(rng.random(300) < 0.5, 3, 5)
  x = np.where(y == 3, 40, 200).astype(np.uint8)[:, None, None] * np.ones((1, 6, 6), np.uint8)
  code, out = run(tmp_path, save(tmp_path, x=x, y=y), '--epochs', '5')
  assert code == 0
  with np.load(out / 'cscores-details.npz') as details:
    assert details['label_values'].tolist() == [3, 5] and details['class_names'].tolist() == ['3', '5']
  assert np.nanmean(np.load(out / 'cscores.npy')) > 0.9  # two flat grey levels: learned


def test_features_on_very_different_scales_give_finite_sensible_scores(tmp_path, capsys):
  rng = np.random.default_rng(1)
  y = rng.integers(0, 2, 400)
  # the class shows in a feature in the thousands; beside it, one below 1 and one constant
  x = np.stack([2000 + 1000 * y + rng.normal(0, 100, 400), rng.random(400) * 1e-3, np.full(400, 5.0)], 1)
  code, out = run(tmp_path, save(tmp_path, 'table.npz', x=x, y=y), '--epochs', '3')
  printed = capsys.readouterr().out
  scores = np.load(out / 'cscores.npy')
  assert code == 0 and np.isfinite(scores[~np.isnan(scores)]).all() and np.nanmean(scores) > 0.9
  assert (out / 'table-cscores.pdf').exists() and not (out / 'table-examples.pdf').exists()
  assert 'x holds features, not images' in printed


# --- Bad input: one line, exit 1, nothing written ---------------------------------------------------

def bad_files(tmp_path):
  x, y = np.zeros((4, 3)), np.array([0, 1, 0, 1])
  not_npz = tmp_path / 'text.npz'
  not_npz.write_text('x,y\n1,2\n')
  objects = tmp_path / 'objects.npz'
  np.savez(objects, x=np.array([[1], 'a', None], dtype=object), y=y[:3])
  return {
      'no x': (save(tmp_path, 'a.npz', y=y), 'has no x'),
      'lengths differ': (save(tmp_path, 'b.npz', x=x, y=y[:3]), 'x holds 4 examples'),
      'labels not integers': (save(tmp_path, 'c.npz', x=x, y=y + 0.5), 'integer labels'),
      'x not numeric': (save(tmp_path, 'd.npz', x=np.array([['a'], ['b'], ['c'], ['d']]), y=y), 'numeric array'),
      'x with NaN': (save(tmp_path, 'e.npz', x=np.where(np.eye(4, 3) > 0, np.nan, 0), y=y), 'NaN or inf'),
      'one class': (save(tmp_path, 'f.npz', x=x, y=np.zeros(4, int)), 'one class only'),
      'needs pickle': (str(objects), 'needs pickle'),
      'not an npz': (str(not_npz), 'not a NumPy .npz'),
      'missing': (str(tmp_path / 'nowhere.npz'), 'cannot read it'),
      'class names': (save(tmp_path, 'g.npz', x=x, y=y, class_names=['a', 'b', 'c']), 'class_names must be 2 strings'),
      'no examples': (save(tmp_path, 'h.npz', x=np.zeros((0, 3)), y=np.zeros(0, int)), 'none empty'),
      'zero-width x': (save(tmp_path, 'i.npz', x=np.zeros((4, 0)), y=y), 'none empty'),
      'one label, not an array': (save(tmp_path, 'j.npz', x=x, y=np.int64(1)), 'one label per example'),
      'indices for labels': (save(tmp_path, 'k.npz', x=x, y=np.arange(4)), '4 classes for 4 examples'),
  }


@pytest.mark.parametrize('case', ['no x', 'lengths differ', 'labels not integers', 'x not numeric',
                                  'x with NaN', 'one class', 'needs pickle', 'not an npz', 'missing',
                                  'class names', 'no examples', 'zero-width x', 'one label, not an array',
                                  'indices for labels'])
def test_a_bad_npz_is_one_line_and_nothing_is_written(case, tmp_path, capsys):
  path, says = bad_files(tmp_path)[case]
  code, out = run(tmp_path, path)
  err = capsys.readouterr().err
  assert code == 1 and err.count('\n') == 1 and says in err, err
  assert not out.exists()


def test_data_too_large_for_this_machines_memory_is_refused_before_loading(tmp_path, capsys, monkeypatch):
  # 800,000 + 8,000 bytes of arrays, and 28 bytes a feature value to standardize: 3,608,000 bytes
  path = save(tmp_path, x=np.zeros((1000, 100)), y=np.arange(1000) % 2)
  monkeypatch.setattr(devices, 'available_memory', lambda: 2_000_000)
  monkeypatch.setattr(np, 'load', None)  # nothing may be loaded
  code, out = run(tmp_path, path)
  err = capsys.readouterr().err
  assert code == 1 and err.count('\n') == 1 and 'takes about 3.4 MB; this machine has 1.9 MB available' in err
  assert not out.exists()


def test_the_memory_needed_is_read_from_the_headers(tmp_path):
  path = save(tmp_path, x=np.zeros((10, 7), np.float32), y=np.zeros(10, np.int16))
  members = datasets.npz_members(path)
  assert members == {'x': ((10, 7), np.float32), 'y': ((10,), np.int16)}
  assert datasets.npz_memory(members) == 10 * 7 * 4 + 10 * 2 + 28 * 70  # features: standardized
  images = {'x': ((10, 8, 8), np.dtype(np.uint8))}
  assert datasets.npz_memory(images) == 2 * 640  # images: one copy more


@pytest.mark.parametrize('argv, says', [
    (['--data', 'd.npz', '--manual-dir', 'files'], "--manual-dir holds MNIST's files"),
    (['--data', 'd.npz', '--dataset', 'cifar10'], 'use one of them'),
    (['--data', ''], '--data needs a file name'),
    (['--data-d', 'somewhere'], 'unrecognized arguments: --data-d'),  # no prefix matching
])
def test_flags_that_mix_data_sources_or_abbreviate_are_refused(argv, says, capsys):
  with pytest.raises(SystemExit) as exit:
    cli.parse_args(argv, mnist.Config())
  assert exit.value.code == 2 and says in capsys.readouterr().err


def test_a_store_refuses_another_data_sets_runs_naming_both(tmp_path, capsys):
  x, y = np.eye(40, 4) * 10, np.arange(40) % 2
  out = tmp_path / 'out'
  argv = ['--out-dir', str(out), '--runs', '1', '--epochs', '1', '--ratios', '0.5', '--hidden', '8']
  assert mnist.main(['--data', save(tmp_path, 'first.npz', x=x, y=y), *argv]) == 0
  capsys.readouterr()
  assert mnist.main(['--data', save(tmp_path, 'second.npz', x=x, y=1 - y), *argv]) == 1
  err = capsys.readouterr().err
  assert err.count('\n') == 1 and "store has 'first 40:" in err and "this run 'second 40:" in err


# --- A data set of tensorflow-datasets (mock data: no download) -----------------------------------

@pytest.mark.parametrize('name, first_class', [('fashion_mnist', 'T-shirt/top'), ('cifar10', None)])
def test_a_tfds_image_data_set_is_scored_from_mock_data(name, first_class, tmp_path, capsys, monkeypatch):
  tfds = pytest.importorskip('tensorflow_datasets')
  monkeypatch.setattr(datasets, 'network_reachable', lambda *args, **kwargs: True)  # mock_data downloads nothing
  with tfds.testing.mock_data(num_examples=60, policy=tfds.testing.MockPolicy.USE_CODE):
    out = tmp_path / 'out'
    code = mnist.main(['--dataset', name, '--data-dir', str(tmp_path / 'tfds'), '--out-dir', str(out),
                       '--runs', '2', '--epochs', '1', '--ratios', '0.5', '--hidden', '16'])
  printed, err = capsys.readouterr()
  assert code == 0, err
  assert np.load(out / 'cscores.npy').shape == (60,)
  assert '60 examples;' in printed and (out / f'{name}-examples.pdf').read_bytes()[:4] == b'%PDF'
  with np.load(out / 'cscores-details.npz') as details:
    assert len(details['class_names']) == 10
    assert first_class is None or details['class_names'][0] == first_class


@pytest.mark.parametrize('name, says', [('no_such_data_set', 'tfds.list_builders()'),
                                        ('squad', 'not an image classification data set'),
                                        ('caltech101', 'its images vary in shape')])
def test_a_tfds_name_that_cannot_be_scored_is_one_line_and_nothing_is_written(name, says, tmp_path, capsys):
  out = tmp_path / 'out'
  code = mnist.main(['--dataset', name, '--data-dir', str(tmp_path / 'tfds'), '--out-dir', str(out)])
  err = capsys.readouterr().err
  assert code == 1 and err.count('\n') == 1 and says in err and not out.exists()


def test_a_tfds_train_split_too_large_for_this_machine_is_refused(mnist_data_dir, monkeypatch):
  monkeypatch.setattr(devices, 'available_memory', lambda: 50 * 2**20)
  with pytest.raises(errors.CScoreError, match='this machine has 50.0 MB available'):
    datasets.tfds_builder('mnist', str(mnist_data_dir))  # 60,000 x (784 + 8) bytes, x 2


def test_a_resume_accepts_the_same_file_even_if_standardizing_rounds_otherwise(tmp_path, monkeypatch, capsys):
  path = save(tmp_path, 'table.npz', x=np.eye(40, 4) * 10, y=np.arange(40) % 2)
  out = tmp_path / 'out'
  argv = ['--data', path, '--out-dir', str(out), '--epochs', '1', '--ratios', '0.5', '--hidden', '8']
  assert mnist.main([*argv, '--runs', '1']) == 0
  capsys.readouterr()
  as_here = datasets.standardized  # another NumPy or CPU: the last bit of each value differs
  monkeypatch.setattr(datasets, 'standardized', lambda x: np.nextafter(as_here(x), np.float32(np.inf)))
  assert mnist.main([*argv, '--runs', '2']) == 0, capsys.readouterr().err
  assert 'models in the estimate: 2' in capsys.readouterr().out


# --- MNIST from its official files (--manual-dir) -------------------------------------------------

def test_manual_dir_missing_a_file_is_an_error_naming_it(tmp_path, capsys):
  manual = tmp_path / 'manual'
  manual.mkdir()
  for name in datasets.MNIST_FILES[:3]:
    (manual / name).write_bytes(b'')
  code = mnist.main(['--manual-dir', str(manual), '--data-dir', str(tmp_path / 'tfds'),
                     '--out-dir', str(tmp_path / 'out')])
  err = capsys.readouterr().err
  assert code == 1 and err.count('\n') == 1 and datasets.MNIST_FILES[3] in err


def test_no_data_and_no_network_says_how_to_use_manual_dir(tmp_path, capsys, monkeypatch):
  monkeypatch.setattr(datasets, 'network_reachable', lambda *a, **k: False)
  monkeypatch.setattr(datasets, 'proxied', lambda: False)
  code = mnist.main(['--data-dir', str(tmp_path / 'tfds'), '--out-dir', str(tmp_path / 'out')])
  err = capsys.readouterr().err
  assert code == 1 and err.count('\n') == 1 and '--manual-dir' in err


def test_offline_the_script_does_not_say_it_is_preparing_what_it_cannot(tmp_path, capsys, monkeypatch):
  monkeypatch.setattr(datasets, 'network_reachable', lambda *a, **k: False)
  monkeypatch.setattr(datasets, 'proxied', lambda: False)
  assert mnist.main(['--data-dir', str(tmp_path / 'tfds'), '--out-dir', str(tmp_path / 'out')]) == 1
  assert 'preparing' not in capsys.readouterr().out


def test_a_manual_dir_that_is_not_a_folder_is_an_error_saying_so(tmp_path, capsys):
  code = mnist.main(['--manual-dir', str(tmp_path / 'nowhere'), '--data-dir', str(tmp_path / 'tfds'),
                     '--out-dir', str(tmp_path / 'out')])
  err = capsys.readouterr().err
  assert code == 1 and err.count('\n') == 1 and 'is not a folder' in err


def test_a_manual_dir_file_with_a_wrong_checksum_is_an_error_naming_it(tmp_path, capsys, manual_dir):
  manual = tmp_path / 'manual'
  shutil.copytree(manual_dir, manual)
  bad = manual / 't10k-labels-idx1-ubyte.gz'
  os.chmod(bad, 0o644)
  bad.write_bytes(bad.read_bytes()[:1000])
  code = mnist.main(['--manual-dir', str(manual), '--data-dir', str(tmp_path / 'tfds'),
                     '--out-dir', str(tmp_path / 'out')])
  err = capsys.readouterr().err
  assert code == 1 and err.count('\n') == 1
  assert 't10k-labels-idx1-ubyte.gz' in err and 'checksum' in err


# --- --prepare-only: the data once, before an offline job array ----------------------------------

def test_prepare_only_prepares_mnist_in_the_data_dir_trains_nothing_and_writes_no_outputs(manual_dir, tmp_path, capsys):
  data_dir, out = tmp_path / 'tfds', tmp_path / 'out'
  assert mnist.main(['--prepare-only', '--data-dir', str(data_dir), '--manual-dir', str(manual_dir),
                     '--out-dir', str(out)]) == 0
  printed = capsys.readouterr().out
  assert f'mnist: 60,000 training examples of 10 classes, ready in {data_dir}; trained nothing' in printed
  assert (data_dir / 'mnist').is_dir() and not out.exists()


def test_after_prepare_only_a_command_without_network_or_manual_dir_reads_the_prepared_data(
    mnist_data_dir, tmp_path, capsys, monkeypatch):
  monkeypatch.setattr(datasets, 'network_reachable', lambda *a, **k: False)  # a compute node offline
  monkeypatch.setattr(datasets, 'proxied', lambda: False)
  assert mnist.main(['--prepare-only', '--data-dir', str(mnist_data_dir)]) == 0
  assert 'preparing' not in capsys.readouterr().out  # it was prepared: nothing to fetch


@pytest.mark.parametrize('name', ['fashion_mnist', 'emnist/digits'])
def test_a_tfds_data_set_not_prepared_offline_names_the_command_that_prepares_it(name, tmp_path, capsys, monkeypatch):
  monkeypatch.setattr(datasets, 'network_reachable', lambda *a, **k: False)
  monkeypatch.setattr(datasets, 'proxied', lambda: False)
  code = mnist.main(['--dataset', name, '--data-dir', str(tmp_path / 'tfds'), '--out-dir', str(tmp_path / 'out')])
  err = capsys.readouterr().err
  assert code == 1 and err.count('\n') == 1
  assert f'python mnist.py --dataset {name} --prepare-only --data-dir DIR' in err
