"""The command line: flags map onto the settings; every mistake is one line and an exit code."""
import subprocess
import sys

import pytest
import tensorflow as tf

import mnist
from cscore import cli
from conftest import ROOT, run_main_without


def parse_args(argv):
  """The command line's (settings, namespace), over the paper's defaults (mnist.Config())."""
  return cli.parse_args(argv, mnist.Config())


def parse_error(capsys, *argv):
  with pytest.raises(SystemExit) as e:
    parse_args(list(argv))
  err = capsys.readouterr().err
  return e.value.code, err


def test_defaults_are_the_papers_protocol():
  config, args = parse_args([])
  assert config.ratios == (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
  assert (config.runs, config.epochs, config.batch_size, config.seed) == (200, 10, 128, 0)
  assert (config.learning_rate, config.momentum, config.hidden) == (0.1, 0.9, (512, 256))
  assert args.out_dir == '.' and not args.fresh


def test_flags_override_the_defaults():
  config, args = parse_args(['--runs', '4', '--ratios', '0.1,0.5', '--epochs', '2',
                                   '--batch-size', '64', '--seed', '3', '--out-dir', 'x', '--fresh'])
  assert (config.runs, config.ratios, config.epochs, config.batch_size, config.seed) == (4, (0.1, 0.5), 2, 64, 3)
  assert args.out_dir == 'x' and args.fresh


def test_the_models_flags_override_the_papers_model():
  config, _ = parse_args(['--hidden', '100', '--learning-rate', '0.05', '--momentum', '0'])
  assert (config.hidden, config.learning_rate, config.momentum) == ((100,), 0.05, 0.0)


@pytest.mark.parametrize('argv, says', [
    (['--ratios', '0'], 'between 0 and 1'),
    (['--ratios', '0.5,1.0'], 'between 0 and 1'),
    (['--ratios', '0.5,-0.2'], 'between 0 and 1'),
    (['--ratios', '0.5,0.5'], 'repeated ratio'),
    (['--ratios', 'half'], 'not a comma-separated list of numbers'),
    (['--runs', '0'], 'at least 1'),
    (['--epochs', '0'], 'at least 1'),
    (['--batch-size', '-3'], 'at least 1'),
    (['--runs', 'many'], 'not a whole number'),
    (['--seed', str(2**32 - 1), '--runs', '2'], 'below 2^32'),
    (['--shard', '2/2'], 'needs 0 <= I < N'),
    (['--shard', '0/0'], 'needs 0 <= I < N'),
    (['--shard=-1/2'], 'expected I/N'),
    (['--shard', '-1/2'], 'expected one argument'),
    (['--shard', 'a/b'], 'expected I/N'),
    (['--shard', '1/2/3'], 'expected I/N'),
    (['--fresh', '--shard', '0/2'], '--fresh would discard runs'),
    (['--fresh', '--estimate-only'], '--fresh would discard runs'),
    (['--shard', '0/2', '--merge', 'elsewhere'], 'use them in separate commands'),
    (['--prepare-only', '--shard', '0/2'], '--prepare-only trains and writes nothing, unlike --shard'),
    (['--prepare-only', '--estimate-only'], 'unlike --estimate-only'),
    (['--prepare-only', '--fresh'], 'unlike --fresh'),
    (['--prepare-only', '--data', 'own.npz'], 'nothing to prepare'),
    (['--hidden', '512,0'], 'at least 1 unit'),
    (['--hidden', 'wide'], 'not a comma-separated list of whole numbers'),
    (['--learning-rate', '0'], 'above 0'),
    (['--learning-rate', 'fast'], 'not a number'),
    (['--learning-rate', 'inf'], 'not a finite number'),
    (['--momentum', '1'], 'below 1'),
    (['--momentum', '-0.1'], 'at least 0'),
])
def test_bad_flags_are_one_line_and_exit_2(capsys, argv, says):
  code, err = parse_error(capsys, *argv)
  assert code == 2
  assert err.count('\n') == 1 and says in err and err.startswith('mnist.py: error:')


def test_running_out_of_memory_is_one_line_suggesting_smaller_settings(tmp_path, capsys, monkeypatch):
  def no_memory(*args, **kwargs):
    raise MemoryError
  monkeypatch.setattr(mnist, 'load_mnist', no_memory)
  assert mnist.main(['--out-dir', str(tmp_path)]) == 1
  err = capsys.readouterr().err
  assert err.count('\n') == 1 and '--models-at-once' in err


def test_running_out_of_a_devices_memory_is_one_line_too(tmp_path, capsys, monkeypatch):
  def no_memory(*args, **kwargs):
    raise tf.errors.ResourceExhaustedError(None, None, 'OOM when allocating tensor')
  monkeypatch.setattr(mnist, 'load_mnist', no_memory)
  assert mnist.main(['--out-dir', str(tmp_path)]) == 1
  err = capsys.readouterr().err
  assert err.count('\n') == 1 and 'out of memory' in err


def test_an_error_that_is_not_the_users_keeps_its_traceback(tmp_path, monkeypatch):
  def broken(*args, **kwargs):
    raise RuntimeError('a bug')
  monkeypatch.setattr(mnist, 'load_mnist', broken)
  with pytest.raises(RuntimeError, match='a bug'):
    mnist.main(['--out-dir', str(tmp_path)])


def test_tensorflow_that_cannot_be_imported_is_one_line_without_a_traceback(tmp_path):
  result = run_main_without('tensorflow', ['--out-dir', str(tmp_path)])  # as if not installed
  assert result.returncode == 1 and 'Traceback' not in result.stderr
  assert result.stderr.count('\n') == 1 and 'tensorflow' in result.stderr and 'pip install -r requirements.txt' in result.stderr


# --- Fast answers: no TensorFlow before the flags are read ---------------------------------------

def tensorflow_loaded_after(*argv):
  """(exit code, stdout, whether TensorFlow was imported) of mnist.py run as a script."""
  code = ('import runpy, sys\n'
          f'sys.argv = ["mnist.py", *{list(argv)!r}]\n'
          'try:\n  runpy.run_path("mnist.py", run_name="__main__")\n'
          'except SystemExit as e:\n  print("exit", e.code, "tensorflow" in sys.modules)\n')
  result = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, timeout=120)
  last = result.stdout.strip().splitlines()[-1].split()
  return int(last[1]), result.stdout, last[2] == 'True'


def test_help_answers_without_loading_tensorflow():
  code, out, loaded = tensorflow_loaded_after('--help')
  assert code == 0 and not loaded and '--shard I/N' in out


def test_a_bad_flag_answers_without_loading_tensorflow():
  code, _, loaded = tensorflow_loaded_after('--runs', 'many')
  assert code == 2 and not loaded


def test_every_flag_says_what_it_does_and_its_default_in_words(capsys):
  with pytest.raises(SystemExit):
    parse_args(['--help'])
  entries = {}  # flag -> its help text, from the lines of the options section
  for line in capsys.readouterr().out.split('options:')[1].splitlines():
    if line.startswith('  -'):
      flag = line.split()[0]
      entries[flag] = line
    elif line.strip():
      entries[flag] += ' ' + line.strip()
  assert {'--runs', '--ratios', '--epochs', '--batch-size', '--learning-rate', '--momentum', '--hidden', '--seed',
          '--precision', '--models-at-once', '--out-dir', '--data-dir', '--manual-dir', '--fresh', '--shard',
          '--estimate-only', '--merge'} <= set(entries)
  for flag, text in entries.items():
    if flag not in ('-h,', '--merge'):  # --merge has no default: it names folders
      assert 'default' in text, flag
    assert 'None' not in text and '(0.1, 0.2' not in text, flag
