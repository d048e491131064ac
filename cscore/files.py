"""Files written whole or not at all: every output and every store file goes to a temporary file
beside its name, is synced, then renamed (or hard-linked, to create a file only once), with the
permissions a plain open() would give it."""

import contextlib
import os
import tempfile


TEMP_PREFIX = '.cscore-tmp-'  # distinctive: --out-dir may be a folder of the user's own


def mode_of_new_files():
  """The permissions open() gives a new file, 0o666 less the umask. mkstemp's own 0o600 would
  hide the outputs and the store from the rest of a lab's group on a shared filesystem. Read
  once, at import, while no other thread can create a file under the umask briefly set to 0."""
  umask = os.umask(0)
  os.umask(umask)
  return 0o666 & ~umask


NEW_FILE_MODE = mode_of_new_files()


@contextlib.contextmanager
def temporary_file(folder, tag=''):
  """(file, path) of a new temporary file in folder, named .cscore-tmp-<tag>-...: a process
  clears only the leftovers of its own tag. Written, flushed and synced on leaving; deleted on
  an error."""
  fd, tmp = tempfile.mkstemp(dir=folder or '.', prefix=f'{TEMP_PREFIX}{tag}-' if tag else TEMP_PREFIX)
  try:
    os.chmod(tmp, NEW_FILE_MODE)
    with os.fdopen(fd, 'wb') as f:
      yield f, tmp
      f.flush()
      os.fsync(f.fileno())
  except BaseException:
    with contextlib.suppress(OSError):
      os.unlink(tmp)
    raise


def write_atomically(path, write, tag=''):
  """Calls write(file) on a temporary file beside path, then renames it to path."""
  with temporary_file(os.path.dirname(path), tag) as (f, tmp):
    write(f)
  try:
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.unlink(tmp)
    raise


def create_exclusively(path, text, tag=''):
  """Creates path holding text unless it exists; returns whether this call created it. The text
  goes to a temporary file first, then is hard-linked to path (atomic, and it fails if path
  exists), so a reader never sees it half written."""
  with temporary_file(os.path.dirname(path), tag) as (f, tmp):
    f.write(text.encode())
  try:
    os.link(tmp, path)
    return True
  except FileExistsError:
    return False
  except OSError:  # a filesystem without hard links: exclusive creation, then the text
    try:
      with open(path, 'x') as f:
        f.write(text)
      return True
    except FileExistsError:
      return False
  finally:
    os.unlink(tmp)

