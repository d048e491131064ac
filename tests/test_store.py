"""The results store: every finished run kept, nothing mixed, nothing redone."""
import os

import numpy as np
import pytest

import mnist
from conftest import CPU, random_group

SETTINGS = mnist.store_settings(mnist.Config(), 'data-hash')


def save(store, ratio, seeds, n=100):
  mnist.save_runs(store, ratio, seeds, random_group(len(seeds), n), 3, CPU)


def test_saved_runs_load_back_bit_for_bit(tmp_path):
  store = mnist.open_store(tmp_path, SETTINGS)
  group = random_group(3, n=101)
  mnist.save_runs(store, 0.3, [5, 6, 7], group, 3, ('GPU name', 'tf32'))
  runs = mnist.load_runs(store)
  assert sorted(runs) == [(0.3, 5), (0.3, 6), (0.3, 7)]
  for k, s in enumerate([5, 6, 7]):
    run, trained = runs[0.3, s], ~group.held_out[k]
    np.testing.assert_array_equal(run.held_out, group.held_out[k])
    np.testing.assert_array_equal(run.correct, group.correct[k])
    np.testing.assert_array_equal(run.hits, group.hits[k][trained])
    assert run.epochs == 3 and run.hardware == ('GPU name', 'tf32')


def test_store_files_load_without_pickle(tmp_path):
  store = mnist.open_store(tmp_path, SETTINGS)
  save(store, 0.5, [0])
  (name,) = [f for f in os.listdir(store) if f.endswith('.npz')]
  with np.load(os.path.join(store, name), allow_pickle=False) as f:
    assert all(f[key].dtype != object for key in f.files)


def test_a_write_leaves_no_temporary_file(tmp_path):
  store = mnist.open_store(tmp_path, SETTINGS)
  save(store, 0.5, [0, 1])
  assert not [f for f in os.listdir(store) if f.startswith(mnist.TEMP_PREFIX)]


def test_store_made_with_other_settings_is_refused_naming_each_difference(tmp_path):
  mnist.open_store(tmp_path, SETTINGS)
  other = dict(SETTINGS, epochs=3, batch_size=64)
  with pytest.raises(mnist.CScoreError, match='epochs: store has 10, this run 3.*batch_size'):
    mnist.open_store(tmp_path, other)


def test_a_file_without_a_learning_record_is_refused_as_an_older_versions(tmp_path):
  store = mnist.open_store(tmp_path, SETTINGS)
  np.savez(os.path.join(store, 'runs-r0.500000-s000000-000000-k1.npz'), ratio=np.float64(0.5),
           seeds=np.array([0]), n=np.int64(8), held_out=np.packbits(np.ones((1, 8), bool), axis=1),
           correct=np.packbits(np.ones((1, 8), bool), axis=1))
  with pytest.raises(mnist.CScoreError, match='runs-r0.500000-s000000-000000-k1.npz.*older'):
    mnist.load_runs(store)


def test_fresh_discards_the_stored_runs(tmp_path):
  store = mnist.open_store(tmp_path, SETTINGS)
  save(store, 0.5, [0])
  store = mnist.open_store(tmp_path, dict(SETTINGS, epochs=3), fresh=True)
  assert mnist.load_runs(store) == {}


def test_a_corrupt_store_file_is_an_error_naming_it_and_fresh(tmp_path):
  store = mnist.open_store(tmp_path, SETTINGS)
  save(store, 0.5, [0])
  (name,) = [f for f in os.listdir(store) if f.endswith('.npz')]
  path = os.path.join(store, name)
  with open(path, 'r+b') as f:
    f.truncate(os.path.getsize(path) // 2)
  with pytest.raises(mnist.CScoreError, match=f'{name}.*--fresh'):
    mnist.load_runs(store)


def test_groups_skip_finished_runs_and_go_round_robin_over_ratios():
  config = mnist.Config(ratios=(0.1, 0.2), runs=5, seed=10)
  done = {(0.1, 10): None, (0.1, 11): None}
  groups = mnist.planned_groups(config, done, k=2)
  assert groups == [(0.1, [12, 13]), (0.2, [10, 11]), (0.1, [14]), (0.2, [12, 13]), (0.2, [14])]


def test_a_larger_runs_only_adds_runs():
  done = {(r, s): None for r in (0.1, 0.2) for s in range(4)}
  groups = mnist.planned_groups(mnist.Config(ratios=(0.1, 0.2), runs=6), done, k=4)
  assert groups == [(0.1, [4, 5]), (0.2, [4, 5])]


def test_ratios_that_differ_in_the_sixth_decimal_get_their_own_files(tmp_path):
  store = mnist.open_store(tmp_path, SETTINGS)
  save(store, 0.12345, [0])
  save(store, 0.12346, [0])
  assert sorted(mnist.load_runs(store)) == [(0.12345, 0), (0.12346, 0)]
