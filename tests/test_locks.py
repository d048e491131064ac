"""Locks (cscore/locks.py): an out-dir that cannot be written, who may share a results store at
once (a second process is refused at once; a lock ends with its process, even on kill -9), and
platforms without POSIX locks: Windows has msvcrt's (exclusive only), some have none."""
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import mnist
from cscore import errors, locks, store
from conftest import MANUAL_DIR, ROOT, run_main_without


# --- One process per out-dir, refused at once; the lock ends with its holder ----------------------

def test_an_out_dir_that_cannot_be_written_is_an_error_before_training(tmp_path, capsys):
  blocker = tmp_path / 'a-file'
  blocker.write_text('')
  assert mnist.main(['--out-dir', str(blocker / 'out'), '--manual-dir', str(MANUAL_DIR)]) == 1
  err = capsys.readouterr()
  assert 'cannot write to --out-dir' in err.err and 'to train' not in err.out


def test_a_second_process_on_the_same_out_dir_refuses_at_once(tmp_path, capsys):
  with locks.lock_store(str(tmp_path)):
    start = time.perf_counter()
    assert mnist.main(['--out-dir', str(tmp_path), '--manual-dir', str(MANUAL_DIR)]) == 1
    assert time.perf_counter() - start < 5
  assert 'another mnist.py is running' in capsys.readouterr().err


def test_the_lock_ends_with_the_process_holding_it_even_on_kill_9(tmp_path):
  holder = subprocess.Popen(
      [sys.executable, '-c', 'import sys, time; from cscore import locks; held = locks.lock_store(sys.argv[1]); held.__enter__(); '
       'print("locked", flush=True); time.sleep(600)', str(tmp_path)],
      cwd=ROOT, stdout=subprocess.PIPE, text=True)
  assert holder.stdout.readline().strip() == 'locked'
  with pytest.raises(errors.CScoreError, match='another mnist.py is running'):
    with locks.lock_store(str(tmp_path)):
      pass
  holder.kill()
  holder.wait()
  with locks.lock_store(str(tmp_path)):
    pass


# --- Who may share a store: shards of one N, readers beside them, one unsharded run alone --------

@pytest.mark.parametrize('holder, argv, says', [
    ((0, 2), ['--shard', '0/2'], 'shard 0/2 is already running'),
    ((0, 2), [], 'another mnist.py is running'),
    (None, ['--shard', '1/2'], 'an unsharded mnist.py is training'),
    ((0, 3), ['--shard', '0/2'], 'shards of N = 3 are running'),
])
def test_processes_that_must_not_share_a_store_refuse_at_once_in_one_line(tmp_path, capsys, holder, argv, says):
  with locks.lock_store(str(tmp_path), holder):
    started = time.perf_counter()
    no_data = ['--data-dir', str(tmp_path / 'no-data'), '--manual-dir', str(tmp_path / 'no-files')]
    assert mnist.main(['--out-dir', str(tmp_path), *no_data, *argv]) == 1
    assert time.perf_counter() - started < 5
  err = capsys.readouterr().err
  assert err.count('\n') == 1 and says in err


def test_shards_of_one_n_starting_together_beside_an_old_jobs_lock_file_all_start(tmp_path):
  (tmp_path / store.STORE_DIR).mkdir()
  (tmp_path / store.STORE_DIR / '.lock-shards-16').touch()  # left by an earlier job array of 16
  for attempt in range(20):
    together, failures = threading.Barrier(8), []

    def shard(i):
      try:
        together.wait()
        with locks.lock_store(str(tmp_path), (i, 8)):
          time.sleep(0.01)
      except errors.CScoreError as e:
        failures.append(str(e))

    threads = [threading.Thread(target=shard, args=(i,)) for i in range(8)]
    for t in threads:
      t.start()
    for t in threads:
      t.join()
    assert not failures, failures


def test_estimate_only_runs_beside_shards(tmp_path):
  with locks.lock_store(str(tmp_path), (0, 2)), locks.lock_store(str(tmp_path), (1, 2)):
    with locks.lock_store(str(tmp_path), reader=True):
      pass


def test_estimate_only_on_a_mistyped_out_dir_creates_nothing(tmp_path, capsys):
  typo = tmp_path / 'reslts'
  assert mnist.main(['--out-dir', str(typo), '--estimate-only']) == 1
  assert not typo.exists() and 'holds no results store' in capsys.readouterr().err


# --- Platforms without POSIX locks ----------------------------------------------------------------

def test_without_fcntl_the_script_imports_warns_once_and_completes_a_tiny_protocol(tmp_path):
  np.savez(tmp_path / 'small.npz', x=np.eye(40, 4) * 10, y=np.arange(40) % 2)  # any data: seconds, not MNIST's
  argv = ['--runs', '2', '--epochs', '1', '--ratios', '0.5', '--hidden', '8', '--data', str(tmp_path / 'small.npz'),
          '--out-dir', str(tmp_path / 'out')]
  result = run_main_without('fcntl', argv)  # as on Windows
  assert result.returncode == 0, result.stderr
  warnings = [line for line in result.stderr.splitlines() if 'warning' in line]
  assert len(warnings) == 1 and 'no file locks' in warnings[0]
  assert (tmp_path / 'out' / 'cscores.npy').exists() and 'Traceback' not in result.stderr


class ExclusiveOnlyLocks:
  """msvcrt's locking() as Windows has it: exclusive byte-range locks, per open file."""
  LK_NBLCK, LK_UNLCK = 2, 0

  def __init__(self):
    self.held = {}

  def locking(self, fd, mode, nbytes):
    key = os.path.realpath(f'/proc/self/fd/{fd}')
    if mode == self.LK_UNLCK:
      self.held.pop(key, None)
    elif key in self.held and self.held[key] != fd:
      raise OSError(36, 'Resource deadlock avoided')
    else:
      self.held[key] = fd


@pytest.mark.skipif(not os.path.isdir('/proc/self/fd'), reason='the stand-in for msvcrt reads /proc')
def test_with_exclusive_locks_only_a_store_takes_one_process_at_a_time(tmp_path, monkeypatch):
  monkeypatch.setattr(locks, 'fcntl', None)
  monkeypatch.setattr(locks, 'msvcrt', ExclusiveOnlyLocks())
  with locks.lock_store(str(tmp_path), (0, 2)):
    for other in [dict(shard=(1, 2)), dict(reader=True), dict()]:
      with pytest.raises(errors.CScoreError, match='another mnist.py is running'):
        with locks.lock_store(str(tmp_path), **other):
          pass
