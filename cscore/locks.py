"""Who may share a results store at once, by the operating system's own file locks, which end
with their process, even on kill -9:
  * one unsharded training run, alone: an exclusive lock on .lock;
  * shards of one N (--shard I/N), each I once, and --estimate-only or --merge beside them: a
    shared lock on .lock; a shard also holds an exclusive lock on .lock-shard-I-of-N and a
    shared one on .lock-shards-N, which a shard of another N probes.
flock on POSIX; on Windows msvcrt.locking, which is exclusive only."""

import contextlib
import os
import sys
import tempfile

from cscore import errors
from cscore import store


try:  # flock on POSIX, msvcrt.locking on Windows
  import fcntl
except ImportError:
  fcntl = None


try:
  import msvcrt
except ImportError:
  msvcrt = None


def try_lock(f, exclusive):
  """Locks an open file without waiting; returns whether it got the lock. flock on POSIX
  (shared or exclusive); on Windows msvcrt.locking, which is only exclusive."""
  if fcntl is not None:
    try:
      fcntl.flock(f, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
      return True
    except BlockingIOError:
      return False
  if msvcrt is not None:
    f.seek(0)
    try:
      msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
      return True
    except OSError:
      return False
  return True  # no OS lock on this platform: lock_store warned


def lock_file(folder, name, exclusive, refusal, stack):
  """Opens folder/name and locks it for the rest of `stack`, or raises CScoreError(refusal)."""
  f = stack.enter_context(open(os.path.join(folder, name), 'a+'))
  if not try_lock(f, exclusive):
    raise errors.CScoreError(refusal)
  return f


@contextlib.contextmanager
def lock_store(out_dir, shard=None, reader=False, existing=False):
  """Creates the store's folder and takes this process's locks on it (see above), so that
  processes that must not share a store refuse at once instead of interleaving runs. `shard` is
  (I, N); `reader`: --estimate-only or --merge; `existing`: the store must exist already."""
  path = os.path.join(out_dir, store.STORE_DIR)
  if existing and not os.path.isfile(os.path.join(path, store.SETTINGS_FILE)):
    raise errors.CScoreError(f'{out_dir} holds no results store ({os.path.join(path, store.SETTINGS_FILE)} is missing)')
  try:
    os.makedirs(path, exist_ok=True)
    tempfile.TemporaryFile(dir=out_dir).close()  # the outputs go to out_dir itself
  except OSError as e:
    raise errors.CScoreError(f'cannot write to --out-dir {out_dir}: {e.strerror or e}') from e
  if fcntl is None and msvcrt is None:
    print(f'mnist.py: warning: this platform has no file locks; nothing stops a second process '
          f'on {path}', file=sys.stderr)
  with contextlib.ExitStack() as stack:
    busy = f'another mnist.py is running on {path}'
    if shard is None and not reader:
      lock_file(path, '.lock', True, f'{busy}; wait for it to end, or use another --out-dir', stack)
    elif fcntl is None:  # msvcrt's locks are exclusive only
      lock_file(path, '.lock', True, f'{busy}; on this platform a store takes one process at a time', stack)
    else:
      lock_file(path, '.lock', False, f'an unsharded mnist.py is training on {path}; wait for it to '
                'end, or use another --out-dir', stack)
    if shard is not None:
      i, n = shard
      lock_file(path, f'.lock-shard-{i}-of-{n}', True, f'shard {i}/{n} is already running on {path}', stack)
      with open(os.path.join(path, '.lock-start'), 'a+') as start:
        # One starting shard at a time takes its N's lock and probes the other N's: two shards
        # starting together would otherwise collide on their probes and one refuse wrongly.
        if fcntl is not None:  # (on Windows the exclusive .lock above admits one process)
          fcntl.flock(start, fcntl.LOCK_EX)  # held for milliseconds; the OS drops it with its holder
        lock_file(path, f'.lock-shards-{n}', False, f'shards of another N are starting on {path}', stack)
        for other in sorted(os.listdir(path)):
          if other.startswith('.lock-shards-') and other != f'.lock-shards-{n}':
            with open(os.path.join(path, other), 'a+') as probe:
              if not try_lock(probe, True):
                raise errors.CScoreError(f'shards of N = {other.rsplit("-", 1)[1]} are running on {path}, and '
                                         f'this is shard {i}/{n}; a store takes shards of one N at a time')
    yield

