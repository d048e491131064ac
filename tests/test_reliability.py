"""Reliability: killed, interrupted, corrupted, refused, locked; nothing finished is lost and
every error the user can cause is one clear line."""
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import mnist
from conftest import (CPU, MANUAL_DIR, ROOT, random_group, run_script,
                      start_and_signal_after_first_group, stored_files, tiny_argv)


def error_line(result):
  assert 'Traceback' not in result.stderr
  lines = [l for l in result.stderr.splitlines() if l.strip()]
  assert len(lines) == 1, result.stderr
  return lines[0]


# 1. kill -9
def test_killed_run_resumes_losing_at_most_the_group_in_flight_and_ends_identical(
    tiny_run, mnist_data_dir, tmp_path):
  argv = tiny_argv(mnist_data_dir, tmp_path)
  proc = start_and_signal_after_first_group(argv, signal.SIGKILL)
  assert proc.returncode == -signal.SIGKILL
  kept = stored_files(tmp_path)
  assert 1 <= len(kept) < 4
  result = run_script(*argv)
  assert result.returncode == 0, result.stderr
  assert f'{2 * len(kept)} done, {8 - 2 * len(kept)} to train' in result.stdout  # none redone
  np.testing.assert_array_equal(np.load(tmp_path / 'cscores.npy'),
                                np.load(tiny_run[0] / 'cscores.npy'))


def test_a_write_cut_short_by_a_kill_leaves_only_a_temporary_file_that_resume_clears(
    tiny_run, mnist_data_dir, tmp_path):
  shutil.copytree(tiny_run[0] / mnist.STORE_DIR, tmp_path / mnist.STORE_DIR)
  half_written = tmp_path / mnist.STORE_DIR / f'{mnist.TEMP_PREFIX}killed'
  half_written.write_bytes(b'PK\x03\x04 half a zip')
  users = tmp_path / '.tmp-notes'  # --out-dir may hold files of the user's own
  users.write_text('mine')
  assert mnist.main(tiny_argv(mnist_data_dir, tmp_path)) == 0
  assert not half_written.exists() and users.exists()
  np.testing.assert_array_equal(np.load(tmp_path / 'cscores.npy'),
                                np.load(tiny_run[0] / 'cscores.npy'))


# 2. Ctrl-C
def test_ctrl_c_keeps_finished_groups_writes_outputs_says_how_to_resume_and_exits_130(
    mnist_data_dir, tmp_path):
  proc = start_and_signal_after_first_group(tiny_argv(mnist_data_dir, tmp_path), signal.SIGINT)
  stderr = proc.stderr.read()
  assert proc.returncode == 130, stderr
  assert 'run the same command again to resume' in stderr and 'Traceback' not in stderr
  assert stored_files(tmp_path)
  assert (tmp_path / 'cscores.npy').exists() and (tmp_path / 'mnist-examples.pdf').exists()


def test_ctrl_c_between_saving_a_group_and_recording_it_still_estimates_from_that_group(
    mnist_data_dir, tmp_path, monkeypatch):
  read = mnist.read_run_file
  calls = []
  def interrupted_once(path):  # Ctrl-C lands just after the first group's file is on disk
    calls.append(path)
    if len(calls) == 1:
      raise KeyboardInterrupt
    return read(path)
  monkeypatch.setattr(mnist, 'read_run_file', interrupted_once)
  assert mnist.main(tiny_argv(mnist_data_dir, tmp_path)) == 130
  assert len(stored_files(tmp_path)) == 1
  assert np.isfinite(np.load(tmp_path / 'cscores.npy')).any()


# 3. corrupt store
def test_a_corrupt_store_file_stops_the_run_naming_it_and_is_not_overwritten(
    tiny_run, mnist_data_dir, tmp_path):
  shutil.copytree(tiny_run[0] / mnist.STORE_DIR, tmp_path / mnist.STORE_DIR)
  victim = tmp_path / mnist.STORE_DIR / stored_files(tmp_path)[0]
  victim.write_bytes(victim.read_bytes()[:100])
  result = run_script(*tiny_argv(mnist_data_dir, tmp_path))
  assert result.returncode == 1
  line = error_line(result)
  assert victim.name in line and '--fresh' in line
  assert len(victim.read_bytes()) == 100


def test_a_corrupt_settings_file_stops_the_run_naming_it(tiny_run, mnist_data_dir, tmp_path):
  shutil.copytree(tiny_run[0] / mnist.STORE_DIR, tmp_path / mnist.STORE_DIR)
  (tmp_path / mnist.STORE_DIR / mnist.SETTINGS_FILE).write_text('{"epochs": ')
  result = run_script(*tiny_argv(mnist_data_dir, tmp_path))
  assert result.returncode == 1
  line = error_line(result)
  assert mnist.SETTINGS_FILE in line and '--fresh' in line


# 4. other settings
def test_other_settings_are_refused_listing_each_difference(tiny_run, mnist_data_dir, tmp_path):
  shutil.copytree(tiny_run[0] / mnist.STORE_DIR, tmp_path / mnist.STORE_DIR)
  argv = tiny_argv(mnist_data_dir, tmp_path)
  argv[argv.index('--epochs') + 1] = '2'
  result = run_script(*argv, '--batch-size', '64', '--precision', 'bfloat16')
  assert result.returncode == 1
  line = error_line(result)
  for difference in ('epochs: store has 1, this run 2', 'batch_size: store has 128, this run 64',
                     "precision: store has 'float32', this run 'bfloat16'"):
    assert difference in line


def test_other_data_is_refused(tmp_path):
  settings = mnist.store_settings(mnist.Config(), 'data-a')
  mnist.open_store(tmp_path, settings)
  with pytest.raises(mnist.CScoreError, match="data: store has 'data-a', this run 'data-b'"):
    mnist.open_store(tmp_path, dict(settings, data='data-b'))


# 5. unwritable out-dir
def test_an_out_dir_that_cannot_be_written_is_an_error_before_training(tmp_path, capsys):
  blocker = tmp_path / 'a-file'
  blocker.write_text('')
  assert mnist.main(['--out-dir', str(blocker / 'out'), '--manual-dir', str(MANUAL_DIR)]) == 1
  err = capsys.readouterr()
  assert 'cannot write to --out-dir' in err.err and 'to train' not in err.out


# 7. manual dir with a wrong file
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


# 8. no pickle
def test_a_store_file_that_needs_pickle_is_refused_not_loaded(tmp_path):
  store = mnist.open_store(tmp_path, mnist.store_settings(mnist.Config(), 'x'))
  np.savez(os.path.join(store, 'runs-evil.npz'), ratio=np.array([object()], dtype=object))
  with pytest.raises(mnist.CScoreError, match='runs-evil.npz'):
    mnist.load_runs(store)


# 9. two processes
def test_a_second_process_on_the_same_out_dir_refuses_at_once(tmp_path, capsys):
  with mnist.lock_store(str(tmp_path)):
    start = time.perf_counter()
    assert mnist.main(['--out-dir', str(tmp_path), '--manual-dir', str(MANUAL_DIR)]) == 1
    assert time.perf_counter() - start < 5
  assert 'another mnist.py is running' in capsys.readouterr().err


def test_the_lock_ends_with_the_process_holding_it_even_on_kill_9(tmp_path):
  holder = subprocess.Popen(
      [sys.executable, '-c', 'import sys, time, mnist; held = mnist.lock_store(sys.argv[1]); held.__enter__(); '
       'print("locked", flush=True); time.sleep(600)', str(tmp_path)],
      cwd=ROOT, stdout=subprocess.PIPE, text=True)
  assert holder.stdout.readline().strip() == 'locked'
  with pytest.raises(mnist.CScoreError, match='another mnist.py is running'):
    with mnist.lock_store(str(tmp_path)):
      pass
  holder.kill()
  holder.wait()
  with mnist.lock_store(str(tmp_path)):
    pass


def test_a_store_with_runs_but_no_settings_is_refused(tmp_path):
  store = mnist.open_store(tmp_path, mnist.store_settings(mnist.Config(), 'x'))
  mnist.save_runs(store, 0.5, [0], random_group(1, n=8), 3, CPU)
  os.unlink(os.path.join(store, mnist.SETTINGS_FILE))
  with pytest.raises(mnist.CScoreError, match='no settings.json.*--fresh'):
    mnist.open_store(tmp_path, mnist.store_settings(mnist.Config(), 'x'))


# 10. reproducible
def test_the_same_command_gives_the_same_runs_and_scores(tiny_run, mnist_data_dir, tmp_path):
  result = run_script(*tiny_argv(mnist_data_dir, tmp_path))
  assert result.returncode == 0, result.stderr
  again, first = mnist.load_runs(tmp_path / mnist.STORE_DIR), mnist.load_runs(tiny_run[0] / mnist.STORE_DIR)
  assert again.keys() == first.keys()
  for key in first:
    np.testing.assert_array_equal(again[key][0], first[key][0])
    np.testing.assert_array_equal(again[key][1], first[key][1])
  np.testing.assert_array_equal(np.load(tmp_path / 'cscores.npy'), np.load(tiny_run[0] / 'cscores.npy'))


def test_a_settings_file_that_is_not_an_object_is_an_error_naming_it(tmp_path):
  store = mnist.open_store(tmp_path, mnist.store_settings(mnist.Config(), 'x'))
  pathlib.Path(store, mnist.SETTINGS_FILE).write_text('[]')
  with pytest.raises(mnist.CScoreError, match='settings.json is unreadable.*not a JSON object'):
    mnist.open_store(tmp_path, mnist.store_settings(mnist.Config(), 'x'))


def test_a_ratio_whose_subset_would_be_empty_is_one_line_before_training(mnist_data_dir, tmp_path, capsys):
  assert mnist.main(['--ratios', '0.00001', '--data-dir', str(mnist_data_dir), '--out-dir', str(tmp_path)]) == 1
  err = capsys.readouterr().err
  assert err.count('\n') == 1 and 'a subset of int(60000 x 1e-05) = 0 examples' in err
