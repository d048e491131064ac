"""The results store: every finished run kept, nothing mixed, nothing redone; killed, interrupted,
corrupted or refused, nothing finished is lost and every error the user can cause is one clear
line."""
import os
import pathlib
import shutil
import signal

import numpy as np
import pytest

import mnist
from cscore import cli, errors, files, outputs, store
from conftest import A100_TF32, CPU, flipped, pick, random_group, start_and_signal_after_first_group, stored_files, tiny_argv

SETTINGS = store.store_settings(mnist.Config(), 'data-hash')


def save(store_dir, ratio, seeds, n=100):
  store.save_runs(store_dir, ratio, seeds, random_group(len(seeds), n), 3, CPU)


def error_line(stderr):
  """The one line of an error on stderr, no traceback."""
  assert 'Traceback' not in stderr
  lines = [l for l in stderr.splitlines() if l.strip()]
  assert len(lines) == 1, stderr
  return lines[0]


def test_saved_runs_load_back_bit_for_bit(tmp_path):
  store_dir = store.open_store(tmp_path, SETTINGS)
  group = random_group(3, n=101)
  store.save_runs(store_dir, 0.3, [5, 6, 7], group, 3, ('GPU name', 'tf32'))
  runs = store.load_runs(store_dir)
  assert sorted(runs) == [(0.3, 5), (0.3, 6), (0.3, 7)]
  for k, s in enumerate([5, 6, 7]):
    run, trained = runs[0.3, s], ~group.held_out[k]
    np.testing.assert_array_equal(run.held_out, group.held_out[k])
    np.testing.assert_array_equal(run.correct, group.correct[k])
    np.testing.assert_array_equal(run.hits, group.hits[k][trained])
    assert run.epochs == 3 and run.hardware == ('GPU name', 'tf32')


def test_the_stored_record_is_exact_for_hits_and_within_half_a_step_of_255_for_confidence(
    synthetic_data, tmp_path):
  images, labels = synthetic_data  # 600 examples: at ratio 0.5, a subset of 300
  config = mnist.Config(ratios=(0.5,), runs=2, epochs=3, hidden=(16,))
  group = mnist.train_run_group(mnist.EnsembleTrainer(images, labels, config), 0.5, [3, 4])
  store_dir = store.open_store(str(tmp_path), store.store_settings(config, 'x'))
  store.save_runs(store_dir, 0.5, [3, 4], group, config.epochs, CPU)
  runs = store.load_runs(store_dir)
  for k, seed in enumerate([3, 4]):
    run, trained = runs[0.5, seed], ~group.held_out[k]
    assert run.epochs == config.epochs and len(run.hits) == trained.sum() == 300
    np.testing.assert_array_equal(run.hits, group.hits[k][trained])
    assert np.abs(run.confidence / 255 - group.confidence[k][trained]).max() <= 0.5 / 255 + 1e-6


def test_store_files_load_without_pickle(tmp_path):
  store_dir = store.open_store(tmp_path, SETTINGS)
  save(store_dir, 0.5, [0])
  (name,) = [f for f in os.listdir(store_dir) if f.endswith('.npz')]
  with np.load(os.path.join(store_dir, name), allow_pickle=False) as f:
    assert all(f[key].dtype != object for key in f.files)


def test_a_write_leaves_no_temporary_file(tmp_path):
  store_dir = store.open_store(tmp_path, SETTINGS)
  save(store_dir, 0.5, [0, 1])
  assert not [f for f in os.listdir(store_dir) if f.startswith(files.TEMP_PREFIX)]


def test_store_made_with_other_settings_is_refused_naming_each_difference(tmp_path):
  store.open_store(tmp_path, SETTINGS)
  other = dict(SETTINGS, epochs=3, batch_size=64)
  with pytest.raises(errors.CScoreError, match='epochs: store has 10, this run 3.*batch_size'):
    store.open_store(tmp_path, other)


def test_other_data_is_refused(tmp_path):
  settings = store.store_settings(mnist.Config(), 'data-a')
  store.open_store(tmp_path, settings)
  with pytest.raises(errors.CScoreError, match="data: store has 'data-a', this run 'data-b'"):
    store.open_store(tmp_path, dict(settings, data='data-b'))


def test_a_store_of_the_papers_model_refuses_another_model(tmp_path):
  store.open_store(tmp_path, store.store_settings(mnist.Config(), 'x'))
  other, _ = cli.parse_args(['--hidden', '300,100', '--learning-rate', '0.2', '--momentum', '0.5'], mnist.Config())
  with pytest.raises(errors.CScoreError) as refused:
    store.open_store(tmp_path, store.store_settings(other, 'x'))
  for words in ('hidden', '[512, 256]', '[300, 100]', 'learning_rate', 'momentum'):
    assert words in str(refused.value)


def test_a_file_without_a_learning_record_is_refused_as_an_older_versions(tmp_path):
  store_dir = store.open_store(tmp_path, SETTINGS)
  np.savez(os.path.join(store_dir, 'runs-r0.500000-s000000-000000-k1.npz'), ratio=np.float64(0.5),
           seeds=np.array([0]), n=np.int64(8), held_out=np.packbits(np.ones((1, 8), bool), axis=1),
           correct=np.packbits(np.ones((1, 8), bool), axis=1))
  with pytest.raises(errors.CScoreError, match='runs-r0.500000-s000000-000000-k1.npz.*older'):
    store.load_runs(store_dir)


def test_fresh_discards_the_stored_runs(tmp_path):
  store_dir = store.open_store(tmp_path, SETTINGS)
  save(store_dir, 0.5, [0])
  store_dir = store.open_store(tmp_path, dict(SETTINGS, epochs=3), fresh=True)
  assert store.load_runs(store_dir) == {}


def test_a_corrupt_store_file_is_an_error_naming_it_and_fresh(tmp_path):
  store_dir = store.open_store(tmp_path, SETTINGS)
  save(store_dir, 0.5, [0])
  (name,) = [f for f in os.listdir(store_dir) if f.endswith('.npz')]
  path = os.path.join(store_dir, name)
  with open(path, 'r+b') as f:
    f.truncate(os.path.getsize(path) // 2)
  with pytest.raises(errors.CScoreError, match=f'{name}.*--fresh'):
    store.load_runs(store_dir)


def test_a_store_file_that_needs_pickle_is_refused_not_loaded(tmp_path):
  store_dir = store.open_store(tmp_path, store.store_settings(mnist.Config(), 'x'))
  np.savez(os.path.join(store_dir, 'runs-evil.npz'), ratio=np.array([object()], dtype=object))
  with pytest.raises(errors.CScoreError, match='runs-evil.npz'):
    store.load_runs(store_dir)


def test_a_store_with_runs_but_no_settings_is_refused(tmp_path):
  store_dir = store.open_store(tmp_path, store.store_settings(mnist.Config(), 'x'))
  store.save_runs(store_dir, 0.5, [0], random_group(1, n=8), 3, CPU)
  os.unlink(os.path.join(store_dir, store.SETTINGS_FILE))
  with pytest.raises(errors.CScoreError, match='no settings.json.*--fresh'):
    store.open_store(tmp_path, store.store_settings(mnist.Config(), 'x'))


def test_a_settings_file_that_is_not_an_object_is_an_error_naming_it(tmp_path):
  store_dir = store.open_store(tmp_path, store.store_settings(mnist.Config(), 'x'))
  pathlib.Path(store_dir, store.SETTINGS_FILE).write_text('[]')
  with pytest.raises(errors.CScoreError, match='settings.json is unreadable.*not a JSON object'):
    store.open_store(tmp_path, store.store_settings(mnist.Config(), 'x'))


def test_ratios_that_differ_in_the_sixth_decimal_get_their_own_files(tmp_path):
  store_dir = store.open_store(tmp_path, SETTINGS)
  save(store_dir, 0.12345, [0])
  save(store_dir, 0.12346, [0])
  assert sorted(store.load_runs(store_dir)) == [(0.12345, 0), (0.12346, 0)]


# --- Processes that share a store ----------------------------------------------------------------

def test_a_restarted_shard_clears_only_its_own_leftovers(tmp_path):
  settings = store.store_settings(mnist.Config(), 'x')
  store_dir = pathlib.Path(store.open_store(str(tmp_path), settings))
  mine, theirs = store_dir / f'{files.TEMP_PREFIX}shard-0-of-2-abc', store_dir / f'{files.TEMP_PREFIX}shard-1-of-2-def'
  mine.write_bytes(b'half'), theirs.write_bytes(b'in flight')
  store.open_store(str(tmp_path), settings, tag='shard-0-of-2')
  assert not mine.exists() and theirs.exists()


def test_a_shard_whose_settings_differ_from_the_store_made_by_another_refuses_naming_them(tmp_path):
  settings = store.store_settings(mnist.Config(), 'x')
  store.open_store(str(tmp_path), settings, tag='shard-0-of-2')
  with pytest.raises(errors.CScoreError, match='epochs: store has 10, this run 3'):
    store.open_store(str(tmp_path), dict(settings, epochs=3), tag='shard-1-of-2')


# --- The store's records ------------------------------------------------------------------------

def test_file_names_tell_apart_groups_of_non_contiguous_seeds(tmp_path):
  store_dir = store.open_store(str(tmp_path), store.store_settings(mnist.Config(), 'x'))
  group = random_group(6)
  a = store.save_runs(store_dir, 0.5, [0, 2, 5], pick(group, [0, 2, 5]), 3, CPU)
  b = store.save_runs(store_dir, 0.5, [0, 3, 5], pick(group, [0, 3, 5]), 3, CPU)
  assert a != b and store.run_files(store_dir) == sorted([a, b])
  assert sorted(store.load_runs(store_dir)) == [(0.5, 0), (0.5, 2), (0.5, 3), (0.5, 5)]


def test_a_run_stored_twice_identically_counts_once(tmp_path):
  store_dir = store.open_store(str(tmp_path), store.store_settings(mnist.Config(), 'x'))
  group = random_group(2)
  store.save_runs(store_dir, 0.5, [0, 1], group, 3, CPU)
  store.save_runs(store_dir, 0.5, [1], pick(group, [1]), 3, CPU)
  runs = store.load_runs(store_dir)
  assert sorted(runs) == [(0.5, 0), (0.5, 1)]
  est = mnist.estimate(runs, mnist.Config(ratios=(0.5,), runs=2), 64)
  assert est.runs.tolist() == [2]


def test_two_different_records_of_one_run_are_an_error_naming_both_files(tmp_path):
  store_dir = store.open_store(str(tmp_path), store.store_settings(mnist.Config(), 'x'))
  group = random_group(2)
  first = store.save_runs(store_dir, 0.5, [0, 1], group, 3, CPU)
  second = store.save_runs(store_dir, 0.5, [1], flipped(pick(group, [1])), 3, CPU)
  with pytest.raises(errors.CScoreError, match=f'{first}.*{second}|{second}.*{first}'):
    store.load_runs(store_dir)


def two_records(tmp_path, first, second):
  """A store holding runs 0 and 1 twice, with other results, from `first` and then `second`
  hardware; its loaded runs."""
  store_dir = store.open_store(str(tmp_path), store.store_settings(mnist.Config(), 'x'))
  group = random_group(2)
  store.save_runs(store_dir, 0.5, [0, 1], group, 3, first)
  store.save_runs(store_dir, 0.5, [1, 0], pick(flipped(group), [1, 0]), 3, second)
  return store.load_runs(store_dir)


def test_two_records_from_different_hardware_keep_the_cpus_in_either_order(tmp_path):
  for first, second in [(CPU, A100_TF32), (A100_TF32, CPU)]:
    runs = two_records(tmp_path / first[0], first, second)
    assert [runs[0.5, s].hardware for s in (0, 1)] == [CPU, CPU]
    assert [runs[0.5, s].alternates for s in (0, 1)] == [1, 1]


def test_two_records_from_the_same_hardware_that_differ_are_still_an_error(tmp_path):
  with pytest.raises(errors.CScoreError, match='same hardware'):
    two_records(tmp_path, A100_TF32, A100_TF32)


def test_each_run_records_its_device_and_matmul_precision_and_the_summary_lists_a_mix(tmp_path):
  store_dir = store.open_store(str(tmp_path), store.store_settings(mnist.Config(), 'x'))
  store.save_runs(store_dir, 0.5, [0, 1], random_group(2), 3, ('CPU', 'fp32'))
  store.save_runs(store_dir, 0.5, [2], random_group(1, seed=2), 3, ('NVIDIA A100-SXM4-80GB', 'tf32'))
  runs = store.load_runs(store_dir)
  assert runs[0.5, 2].hardware == ('NVIDIA A100-SXM4-80GB', 'tf32') and runs[0.5, 0].hardware == ('CPU', 'fp32')
  line = outputs.hardware_line(runs, mnist.Config(ratios=(0.5,), runs=3))
  assert 'mixed hardware' in line and '2 on CPU (fp32)' in line and '1 on NVIDIA A100-SXM4-80GB (tf32)' in line


def test_each_stored_group_records_its_training_seconds(tiny_run):
  out, _ = tiny_run
  paths = sorted((out / store.STORE_DIR).glob('runs-*.npz'))
  seconds = [float(np.load(f)['seconds']) for f in paths]
  assert len(paths) == 4 and all(0 < s < 600 for s in seconds)  # 8 runs, 2 at a time


# --- Resuming: killed, interrupted, corrupted, refused (the script on the real MNIST) ------------

@pytest.mark.usefixtures('mnist_loaded_once')
def test_killed_run_resumes_losing_at_most_the_group_in_flight_and_ends_with_the_same_runs_and_scores(
    tiny_run, mnist_data_dir, tmp_path, capsys):
  argv = tiny_argv(mnist_data_dir, tmp_path)
  proc = start_and_signal_after_first_group(argv, signal.SIGKILL)
  assert proc.returncode == -signal.SIGKILL
  kept = stored_files(tmp_path)
  assert 1 <= len(kept) < 4
  assert mnist.main(argv) == 0  # the same command again
  assert f'{2 * len(kept)} done, {8 - 2 * len(kept)} to train' in capsys.readouterr().out  # none redone
  # Every run, whichever process trained it, is the uninterrupted command's, bit for bit.
  again, first = store.load_runs(tmp_path / store.STORE_DIR), store.load_runs(tiny_run[0] / store.STORE_DIR)
  assert again.keys() == first.keys()
  for key in first:
    for field in ('held_out', 'correct', 'hits', 'confidence'):
      np.testing.assert_array_equal(getattr(again[key], field), getattr(first[key], field), err_msg=f'{key} {field}')
  np.testing.assert_array_equal(np.load(tmp_path / 'cscores.npy'), np.load(tiny_run[0] / 'cscores.npy'))


@pytest.mark.usefixtures('mnist_loaded_once')
def test_a_write_cut_short_by_a_kill_leaves_only_a_temporary_file_that_resume_clears(
    tiny_run, mnist_data_dir, tmp_path):
  shutil.copytree(tiny_run[0] / store.STORE_DIR, tmp_path / store.STORE_DIR)
  half_written = tmp_path / store.STORE_DIR / f'{files.TEMP_PREFIX}killed'
  half_written.write_bytes(b'PK\x03\x04 half a zip')
  users = tmp_path / '.tmp-notes'  # --out-dir may hold files of the user's own
  users.write_text('mine')
  assert mnist.main(tiny_argv(mnist_data_dir, tmp_path)) == 0
  assert not half_written.exists() and users.exists()
  np.testing.assert_array_equal(np.load(tmp_path / 'cscores.npy'),
                                np.load(tiny_run[0] / 'cscores.npy'))


def test_ctrl_c_keeps_finished_groups_writes_outputs_says_how_to_resume_and_exits_130(
    mnist_data_dir, tmp_path):
  proc = start_and_signal_after_first_group(tiny_argv(mnist_data_dir, tmp_path), signal.SIGINT)
  stderr = proc.stderr.read()
  assert proc.returncode == 130, stderr
  assert 'run the same command again to resume' in stderr and 'Traceback' not in stderr
  assert stored_files(tmp_path)
  assert (tmp_path / 'cscores.npy').exists() and (tmp_path / 'mnist-examples.pdf').exists()


@pytest.mark.usefixtures('mnist_loaded_once')
def test_ctrl_c_between_saving_a_group_and_recording_it_still_estimates_from_that_group(
    mnist_data_dir, tmp_path, monkeypatch):
  read = store.read_run_file
  calls = []
  def interrupted_once(path):  # Ctrl-C lands just after the first group's file is on disk
    calls.append(path)
    if len(calls) == 1:
      raise KeyboardInterrupt
    return read(path)
  monkeypatch.setattr(store, 'read_run_file', interrupted_once)
  assert mnist.main(tiny_argv(mnist_data_dir, tmp_path)) == 130
  assert len(stored_files(tmp_path)) == 1
  assert np.isfinite(np.load(tmp_path / 'cscores.npy')).any()


# The command's errors, run in this process: its whole output (capfd: native writes too) is one
# line on stderr, no traceback, exit code 1.

@pytest.mark.usefixtures('mnist_loaded_once')
def test_a_corrupt_store_file_stops_the_run_naming_it_and_is_not_overwritten(
    tiny_run, mnist_data_dir, tmp_path, capfd):
  shutil.copytree(tiny_run[0] / store.STORE_DIR, tmp_path / store.STORE_DIR)
  victim = tmp_path / store.STORE_DIR / stored_files(tmp_path)[0]
  victim.write_bytes(victim.read_bytes()[:100])
  assert mnist.main(tiny_argv(mnist_data_dir, tmp_path)) == 1
  line = error_line(capfd.readouterr().err)
  assert victim.name in line and '--fresh' in line
  assert len(victim.read_bytes()) == 100


@pytest.mark.usefixtures('mnist_loaded_once')
def test_a_corrupt_settings_file_stops_the_run_naming_it(tiny_run, mnist_data_dir, tmp_path, capfd):
  shutil.copytree(tiny_run[0] / store.STORE_DIR, tmp_path / store.STORE_DIR)
  (tmp_path / store.STORE_DIR / store.SETTINGS_FILE).write_text('{"epochs": ')
  assert mnist.main(tiny_argv(mnist_data_dir, tmp_path)) == 1
  line = error_line(capfd.readouterr().err)
  assert store.SETTINGS_FILE in line and '--fresh' in line


@pytest.mark.usefixtures('mnist_loaded_once')
def test_other_settings_are_refused_listing_each_difference(tiny_run, mnist_data_dir, tmp_path, capfd):
  shutil.copytree(tiny_run[0] / store.STORE_DIR, tmp_path / store.STORE_DIR)
  argv = tiny_argv(mnist_data_dir, tmp_path)
  argv[argv.index('--epochs') + 1] = '2'
  assert mnist.main([*argv, '--batch-size', '64', '--precision', 'bfloat16']) == 1
  line = error_line(capfd.readouterr().err)
  for difference in ('epochs: store has 1, this run 2', 'batch_size: store has 128, this run 64',
                     "precision: store has 'float32', this run 'bfloat16'"):
    assert difference in line
