"""Platforms without POSIX locks: Windows has msvcrt's (exclusive only), some have none."""
import os

import pytest

import mnist
from conftest import run_main_without


def test_without_fcntl_the_script_imports_warns_once_and_completes_a_tiny_protocol(mnist_data_dir, tmp_path):
  argv = ['--runs', '2', '--epochs', '1', '--ratios', '0.5', '--data-dir', str(mnist_data_dir),
          '--out-dir', str(tmp_path)]
  result = run_main_without('fcntl', argv)  # as on Windows
  assert result.returncode == 0, result.stderr
  warnings = [line for line in result.stderr.splitlines() if 'warning' in line]
  assert len(warnings) == 1 and 'no file locks' in warnings[0]
  assert (tmp_path / 'cscores.npy').exists() and 'Traceback' not in result.stderr


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
  monkeypatch.setattr(mnist, 'fcntl', None)
  monkeypatch.setattr(mnist, 'msvcrt', ExclusiveOnlyLocks())
  with mnist.lock_store(str(tmp_path), (0, 2)):
    for other in [dict(shard=(1, 2)), dict(reader=True), dict()]:
      with pytest.raises(mnist.CScoreError, match='another mnist.py is running'):
        with mnist.lock_store(str(tmp_path), **other):
          pass
