"""Files written whole or not at all (cscore/files.py): the store's and the outputs'."""
import os
import pathlib
import subprocess
import sys

from cscore import files
from conftest import ROOT


def test_a_file_created_exclusively_keeps_the_first_text_and_leaves_no_temporary(tmp_path):
  path = str(tmp_path / 'settings.json')
  assert files.create_exclusively(path, 'first')
  assert not files.create_exclusively(path, 'second')
  assert pathlib.Path(path).read_text() == 'first' and os.listdir(tmp_path) == ['settings.json']


def test_files_written_atomically_get_the_permissions_of_the_umask_not_mkstemps_private_ones(tmp_path):
  # A lab's group reads the outputs and adds shards to a shared store: 0o600 would lock them out.
  code = ('import os, sys; from cscore import files; p = os.path.join(sys.argv[1], "out.npy"); '
          'files.write_atomically(p, lambda f: f.write(b"x")); print(oct(os.stat(p).st_mode & 0o777))')
  mode = subprocess.run(['sh', '-c', f'umask 027 && exec "$0" -c \'{code}\' "$1"', sys.executable, str(tmp_path)],
                        capture_output=True, text=True, check=True, cwd=ROOT)
  assert mode.stdout.strip() == '0o640'
