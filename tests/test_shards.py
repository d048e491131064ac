"""Many processes, one protocol: shards that share a store (or merge theirs), never train a run
twice, refuse what would mix, and end with the outputs of one unsharded process, bit for bit."""
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import threading
import time
import zlib

import numpy as np
import pytest

import mnist
from conftest import CPU, TINY, random_group, run_script, script_command, start_and_signal_after_first_group, tiny_argv


def shard_argv(data_dir, out, shard, k):
  return tiny_argv(data_dir, out) + ['--shard', shard, '--models-at-once', str(k)]  # the last K counts


def start(argv):
  return subprocess.Popen(script_command(*argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def assert_same_outputs(out, expected):
  for name in ('cscores.npy', 'cscores-details.npz'):
    assert (out / name).read_bytes() == (expected / name).read_bytes(), name


def stored(out):
  """[(ratio, seed)] of every run in every store file, repeats kept."""
  store = out / mnist.STORE_DIR
  return [(mnist.ratio_key(r), s) for name in mnist.run_files(store) for r, s, _ in mnist.read_run_file(store / name)]


@pytest.fixture(scope='session')
def sharded(mnist_data_dir, tmp_path_factory):
  """An out-dir whose store two concurrent shards filled, with different K."""
  out = tmp_path_factory.mktemp('shared')
  shards = [start(shard_argv(mnist_data_dir, out, '0/2', k=1)), start(shard_argv(mnist_data_dir, out, '1/2', k=2))]
  results = [p.communicate(timeout=600) + (p.returncode,) for p in shards]
  return out, results


# --- The share ----------------------------------------------------------------------------------

@pytest.mark.parametrize('shards', [1, 2, 3, 7, 16])
@pytest.mark.parametrize('runs, seed', [(1, 0), (5, 0), (200, 0), (33, 17), (64, 1000)])
def test_shares_are_disjoint_complete_and_balanced_at_every_ratio(shards, runs, seed):
  config = mnist.Config(runs=runs, seed=seed)
  shares = [mnist.planned_groups(config, {}, 8, (i, shards)) for i in range(shards)]
  trained = [(r, s) for share in shares for r, seeds in share for s in seeds]
  assert sorted(trained) == sorted((r, s) for r in config.ratios for s in range(seed, seed + runs))
  for ratio in config.ratios:
    counts = [sum(len(g) for r, g in share if r == ratio) for share in shares]
    assert max(counts) - min(counts) <= 1


def test_the_share_depends_on_ratio_seed_and_n_alone_not_k_or_what_is_stored():
  config = mnist.Config(runs=40)
  share = lambda k, done: {(r, s) for r, g in mnist.planned_groups(config, done, k, (1, 3)) for s in g}
  everything = share(8, {})
  assert share(1, {}) == share(128, {}) == everything
  done = {(mnist.ratio_key(0.5), s): None for s in range(20)}
  assert share(8, done) == {(r, s) for r, s in everything if (mnist.ratio_key(r), s) not in done}


# --- Shards on one shared folder ----------------------------------------------------------------

def test_two_concurrent_shards_with_different_k_then_estimate_only_equal_one_unsharded_process(
    sharded, tiny_run, mnist_data_dir):
  out, results = sharded
  for stdout, stderr, code in results:
    assert code == 0, stderr
    assert 'runs trained now; 4 of its 4 runs stored, 0 left' in stdout
  assert not (out / 'cscores.npy').exists()  # a shard writes only the store
  assert sorted(stored(out)) == sorted({(r, s) for r in (0.5, 0.9) for s in range(4)})  # none twice
  result = run_script(*tiny_argv(mnist_data_dir, out), '--estimate-only')
  assert result.returncode == 0, result.stderr
  assert 'models trained now: 0' in result.stdout and 'missing' not in result.stdout
  assert_same_outputs(out, tiny_run[0])


def test_a_shard_killed_and_restarted_while_the_other_runs_loses_nothing_and_ends_identical(
    tiny_run, mnist_data_dir, tmp_path):
  store = tmp_path / mnist.STORE_DIR
  other = start(shard_argv(mnist_data_dir, tmp_path, '1/2', k=1))
  try:
    start_and_signal_after_first_group(shard_argv(mnist_data_dir, tmp_path, '0/2', k=1), signal.SIGKILL)
    (store / f'{mnist.TEMP_PREFIX}shard-0-of-2-killed').write_bytes(b'PK half a file')  # a kill mid-write
    restarted = run_script(*shard_argv(mnist_data_dir, tmp_path, '0/2', k=1))
    other_out, other_err = other.communicate(timeout=600)
  finally:
    if other.poll() is None:
      other.kill()
  assert restarted.returncode == 0 and other.returncode == 0, restarted.stderr + other_err
  assert 'shard 1/2: 4 runs trained now' in other_out  # the other shard: all of its runs, once
  assert sorted(stored(tmp_path)) == sorted({(r, s) for r in (0.5, 0.9) for s in range(4)})  # none twice
  assert not (store / f'{mnist.TEMP_PREFIX}shard-0-of-2-killed').exists()
  assert mnist.main([*tiny_argv(mnist_data_dir, tmp_path), '--estimate-only']) == 0
  assert_same_outputs(tmp_path, tiny_run[0])


@pytest.mark.parametrize('holder, argv, says', [
    ((0, 2), ['--shard', '0/2'], 'shard 0/2 is already running'),
    ((0, 2), [], 'another mnist.py is running'),
    (None, ['--shard', '1/2'], 'an unsharded mnist.py is training'),
    ((0, 3), ['--shard', '0/2'], 'shards of N = 3 are running'),
])
def test_processes_that_must_not_share_a_store_refuse_at_once_in_one_line(tmp_path, capsys, holder, argv, says):
  with mnist.lock_store(str(tmp_path), holder):
    started = time.perf_counter()
    no_data = ['--data-dir', str(tmp_path / 'no-data'), '--manual-dir', str(tmp_path / 'no-files')]
    assert mnist.main(['--out-dir', str(tmp_path), *no_data, *argv]) == 1
    assert time.perf_counter() - started < 5
  err = capsys.readouterr().err
  assert err.count('\n') == 1 and says in err


def test_shards_of_one_n_starting_together_beside_an_old_jobs_lock_file_all_start(tmp_path):
  (tmp_path / mnist.STORE_DIR).mkdir()
  (tmp_path / mnist.STORE_DIR / '.lock-shards-16').touch()  # left by an earlier job array of 16
  for attempt in range(20):
    together, failures = threading.Barrier(8), []

    def shard(i):
      try:
        together.wait()
        with mnist.lock_store(str(tmp_path), (i, 8)):
          time.sleep(0.01)
      except mnist.CScoreError as e:
        failures.append(str(e))

    threads = [threading.Thread(target=shard, args=(i,)) for i in range(8)]
    for t in threads:
      t.start()
    for t in threads:
      t.join()
    assert not failures, failures


def test_estimate_only_runs_beside_shards(tmp_path):
  with mnist.lock_store(str(tmp_path), (0, 2)), mnist.lock_store(str(tmp_path), (1, 2)):
    with mnist.lock_store(str(tmp_path), reader=True):
      pass


def test_a_restarted_shard_clears_only_its_own_leftovers(tmp_path):
  settings = mnist.store_settings(mnist.Config(), 'x')
  store = pathlib.Path(mnist.open_store(str(tmp_path), settings))
  mine, theirs = store / f'{mnist.TEMP_PREFIX}shard-0-of-2-abc', store / f'{mnist.TEMP_PREFIX}shard-1-of-2-def'
  mine.write_bytes(b'half'), theirs.write_bytes(b'in flight')
  mnist.open_store(str(tmp_path), settings, tag='shard-0-of-2')
  assert not mine.exists() and theirs.exists()


def test_a_file_created_exclusively_keeps_the_first_text_and_leaves_no_temporary(tmp_path):
  path = str(tmp_path / 'settings.json')
  assert mnist.create_exclusively(path, 'first')
  assert not mnist.create_exclusively(path, 'second')
  assert pathlib.Path(path).read_text() == 'first' and os.listdir(tmp_path) == ['settings.json']


def test_a_shard_whose_settings_differ_from_the_store_made_by_another_refuses_naming_them(tmp_path):
  settings = mnist.store_settings(mnist.Config(), 'x')
  mnist.open_store(str(tmp_path), settings, tag='shard-0-of-2')
  with pytest.raises(mnist.CScoreError, match='epochs: store has 10, this run 3'):
    mnist.open_store(str(tmp_path), dict(settings, epochs=3), tag='shard-1-of-2')


def test_files_written_atomically_get_the_permissions_of_the_umask_not_mkstemps_private_ones(tmp_path):
  # A lab's group reads the outputs and adds shards to a shared store: 0o600 would lock them out.
  code = ('import mnist, os, sys; p = os.path.join(sys.argv[1], "out.npy"); '
          'mnist.write_atomically(p, lambda f: f.write(b"x")); print(oct(os.stat(p).st_mode & 0o777))')
  mode = subprocess.run(['sh', '-c', f'umask 027 && exec "$0" -c \'{code}\' "$1"', sys.executable, str(tmp_path)],
                        capture_output=True, text=True, check=True, cwd=pathlib.Path(mnist.__file__).parent)
  assert mode.stdout.strip() == '0o640'


# --- The store's records ------------------------------------------------------------------------

def pick(group, rows):
  """The RunGroup of some of a group's runs."""
  return mnist.RunGroup(*(field[rows] for field in group))


def flipped(group):
  """The same runs with every correctness flipped: another record of them."""
  return group._replace(correct=~group.correct)


def test_file_names_tell_apart_groups_of_non_contiguous_seeds(tmp_path):
  store = mnist.open_store(str(tmp_path), mnist.store_settings(mnist.Config(), 'x'))
  group = random_group(6)
  a = mnist.save_runs(store, 0.5, [0, 2, 5], pick(group, [0, 2, 5]), 3, CPU)
  b = mnist.save_runs(store, 0.5, [0, 3, 5], pick(group, [0, 3, 5]), 3, CPU)
  assert a != b and mnist.run_files(store) == sorted([a, b])
  assert sorted(mnist.load_runs(store)) == [(0.5, 0), (0.5, 2), (0.5, 3), (0.5, 5)]


def test_a_run_stored_twice_identically_counts_once(tmp_path):
  store = mnist.open_store(str(tmp_path), mnist.store_settings(mnist.Config(), 'x'))
  group = random_group(2)
  mnist.save_runs(store, 0.5, [0, 1], group, 3, CPU)
  mnist.save_runs(store, 0.5, [1], pick(group, [1]), 3, CPU)
  runs = mnist.load_runs(store)
  assert sorted(runs) == [(0.5, 0), (0.5, 1)]
  est = mnist.estimate(runs, mnist.Config(ratios=(0.5,), runs=2), 64)
  assert est.runs.tolist() == [2]


def test_two_different_records_of_one_run_are_an_error_naming_both_files(tmp_path):
  store = mnist.open_store(str(tmp_path), mnist.store_settings(mnist.Config(), 'x'))
  group = random_group(2)
  first = mnist.save_runs(store, 0.5, [0, 1], group, 3, CPU)
  second = mnist.save_runs(store, 0.5, [1], flipped(pick(group, [1])), 3, CPU)
  with pytest.raises(mnist.CScoreError, match=f'{first}.*{second}|{second}.*{first}'):
    mnist.load_runs(store)


def test_each_run_records_its_device_and_matmul_precision_and_the_summary_lists_a_mix(tmp_path):
  store = mnist.open_store(str(tmp_path), mnist.store_settings(mnist.Config(), 'x'))
  mnist.save_runs(store, 0.5, [0, 1], random_group(2), 3, ('CPU', 'fp32'))
  mnist.save_runs(store, 0.5, [2], random_group(1, seed=2), 3, ('NVIDIA A100-SXM4-80GB', 'tf32'))
  runs = mnist.load_runs(store)
  assert runs[0.5, 2].hardware == ('NVIDIA A100-SXM4-80GB', 'tf32') and runs[0.5, 0].hardware == ('CPU', 'fp32')
  line = mnist.hardware_line(runs, mnist.Config(ratios=(0.5,), runs=3))
  assert 'mixed hardware' in line and '2 on CPU (fp32)' in line and '1 on NVIDIA A100-SXM4-80GB (tf32)' in line


# --- Estimate only, and merge -------------------------------------------------------------------

def test_estimate_only_writes_what_is_stored_and_lists_what_is_missing(sharded, mnist_data_dir, tmp_path, capsys):
  out, _ = sharded
  shutil.copytree(out / mnist.STORE_DIR, tmp_path / mnist.STORE_DIR)
  for name in mnist.run_files(tmp_path / mnist.STORE_DIR):
    if any(s in (1, 2) and r == 0.9 for r, s, _ in mnist.read_run_file(tmp_path / mnist.STORE_DIR / name)):
      os.unlink(tmp_path / mnist.STORE_DIR / name)
  assert mnist.main([*tiny_argv(mnist_data_dir, tmp_path), '--estimate-only']) == 0
  out_text = capsys.readouterr().out
  missing = [l for l in out_text.splitlines() if l.startswith('missing:')]
  assert len(missing) == 1 and 'ratio 0.90: seeds' in missing[0] and 'ratio 0.50' not in missing[0]
  assert (tmp_path / 'cscores.npy').exists()


def test_estimate_only_on_a_store_without_the_commands_runs_is_one_line_and_exit_1(
    sharded, mnist_data_dir, tmp_path, capsys):
  shutil.copytree(sharded[0] / mnist.STORE_DIR, tmp_path / mnist.STORE_DIR)
  for record in (tmp_path / mnist.STORE_DIR).glob('shards-*.json'):
    record.unlink()  # as an unsharded run's store: nothing says which runs it was meant to hold
  argv = [*tiny_argv(mnist_data_dir, tmp_path), '--estimate-only', '--seed', '100']
  assert mnist.main(argv) == 1
  err = capsys.readouterr().err
  assert err.count('\n') == 1 and 'holds none of the runs this command names' in err


# --- What the shards were started for, and which to run again -----------------------------------

def shard_by_spec(ratio, seed, n):
  """docs/scale.md: run s at ratio r belongs to shard (s + crc32(r)) mod N."""
  return (seed + zlib.crc32(f'{ratio:.6f}'.encode())) % n


def test_the_first_shard_records_n_and_the_protocol_in_the_store(sharded):
  out, _ = sharded
  (record,) = (out / mnist.STORE_DIR).glob('shards-*.json')
  assert record.name.startswith('shards-2-')
  assert json.loads(record.read_text()) == dict(shards=2, runs=4, ratios=[0.5, 0.9], seed=0)  # TINY's


@pytest.mark.parametrize('drift', [[], ['--runs', '8'], ['--ratios', '0.5,0.8'], ['--seed', '2']])
def test_an_estimate_naming_runs_the_shards_were_never_started_for_is_one_line(
    sharded, mnist_data_dir, tmp_path, capsys, drift):
  shutil.copytree(sharded[0] / mnist.STORE_DIR, tmp_path / mnist.STORE_DIR)
  argv = ['--data-dir', str(mnist_data_dir), '--out-dir', str(tmp_path), '--epochs', '1', '--estimate-only',
          *(['--runs', '4', '--ratios', '0.5,0.9'] if drift else []), *drift]  # []: the default 200 x 9
  assert mnist.main(argv) == 1
  err = capsys.readouterr().err
  assert err.count('\n') == 1
  assert 'were never started for' in err and 'started with --runs 4 --ratios 0.5,0.9 --seed 0 (N = 2)' in err
  assert not (tmp_path / 'cscores.npy').exists()


def test_an_estimate_of_fewer_runs_than_the_shards_were_started_for_is_not_refused(sharded, mnist_data_dir, tmp_path):
  shutil.copytree(sharded[0] / mnist.STORE_DIR, tmp_path / mnist.STORE_DIR)
  argv = [*tiny_argv(mnist_data_dir, tmp_path), '--estimate-only', '--runs', '2', '--ratios', '0.9']
  assert mnist.main(argv) == 0


def test_the_missing_runs_are_named_by_shard_and_rerunning_those_shards_completes_the_store(
    sharded, tiny_run, mnist_data_dir, tmp_path, capsys):
  shutil.copytree(sharded[0] / mnist.STORE_DIR, tmp_path / mnist.STORE_DIR)
  lost = [f for f in mnist.run_files(tmp_path / mnist.STORE_DIR)
          if any(r == 0.9 and s == 1 for r, s, _ in mnist.read_run_file(tmp_path / mnist.STORE_DIR / f))]
  for name in lost:  # the file holding run 1 at ratio 0.9, as if its shard had died before it
    os.unlink(tmp_path / mnist.STORE_DIR / name)
  gone = {(r, s) for r, s in [(0.5, s) for s in range(4)] + [(0.9, s) for s in range(4)]} - set(stored(tmp_path))
  expected = sorted({shard_by_spec(r, s, 2) for r, s in gone})
  assert mnist.main([*tiny_argv(mnist_data_dir, tmp_path), '--estimate-only']) == 0
  lines = capsys.readouterr().out.splitlines()
  by_shard = [line for line in lines if line.startswith('missing by shard')]
  shards = ','.join(map(str, expected))
  assert len(by_shard) == 1 and by_shard[0].startswith(f'missing by shard (N = 2): {shards.replace(",", ", ")}.')
  assert f'sbatch --array={shards} cscores.sbatch' in by_shard[0]
  for i in expected:  # run them again as the line says, then the estimate
    assert mnist.main(shard_argv(mnist_data_dir, tmp_path, f'{i}/2', k=2)) == 0
  capsys.readouterr()
  assert mnist.main([*tiny_argv(mnist_data_dir, tmp_path), '--estimate-only']) == 0
  assert not [line for line in capsys.readouterr().out.splitlines() if line.startswith('missing')]
  assert_same_outputs(tmp_path, tiny_run[0])


def test_a_shards_summary_names_the_commands_missing_runs_by_seed_and_by_shard(tmp_path):
  store = str(tmp_path)
  config = mnist.Config(ratios=(0.5,), runs=4)
  mnist.record_shards(store, config, 2)
  runs = {(0.5, s): None for s in (0, 1, 2)}  # run 3 is missing
  lines = mnist.shard_lines(store, runs, config, (0, 2), trained=2)
  assert 'missing: 1 of the command\'s 4 runs are not stored yet (ratio 0.50: seed 3)' in lines
  assert any(line.startswith(f'missing by shard (N = 2): {shard_by_spec(0.5, 3, 2)}.') for line in lines)


def test_estimate_only_without_a_store_is_one_line_and_exit_1(mnist_data_dir, tmp_path, capsys):
  assert mnist.main([*tiny_argv(mnist_data_dir, tmp_path), '--estimate-only']) == 1
  err = capsys.readouterr().err
  assert err.count('\n') == 1 and 'holds no results store' in err


def split_by_shard(sharded_out, root):
  """Two out-dirs, each with the settings and the files of one shard's runs, as two machines
  without a shared folder would have them."""
  dirs = []
  store = sharded_out / mnist.STORE_DIR
  for i in range(2):
    d = root / f'machine-{i}' / mnist.STORE_DIR
    d.mkdir(parents=True)
    shutil.copy(store / mnist.SETTINGS_FILE, d)
    for name in mnist.run_files(store):
      if all(mnist.shard_of(r, s, 2) == i for r, s, _ in mnist.read_run_file(store / name)):
        shutil.copy(store / name, d)
    dirs.append(d.parent)
  return dirs


def test_merge_of_one_out_dir_per_shard_equals_one_unsharded_process(sharded, tiny_run, mnist_data_dir, tmp_path):
  dirs = split_by_shard(sharded[0], tmp_path)
  final = tmp_path / 'final'
  argv = [*tiny_argv(mnist_data_dir, final), '--merge', *map(str, dirs)]
  assert mnist.main(argv) == 0
  assert_same_outputs(final, tiny_run[0])
  before = sorted(os.listdir(final / mnist.STORE_DIR))
  assert mnist.main(argv) == 0  # again: every run is present, nothing is copied
  assert sorted(os.listdir(final / mnist.STORE_DIR)) == before


def test_merge_refuses_a_run_that_both_stores_hold_with_different_results(tmp_path):
  settings = mnist.store_settings(mnist.Config(), 'x')
  here, there = (mnist.open_store(str(tmp_path / d), settings) for d in ('here', 'there'))
  group = random_group(2)
  mine = mnist.save_runs(here, 0.5, [0, 1], group, 3, CPU)
  theirs = mnist.save_runs(there, 0.5, [1], flipped(pick(group, [1])), 3, CPU)
  with pytest.raises(mnist.CScoreError, match=f'{mine}.*{theirs}'):
    mnist.merge_stores(here, [str(tmp_path / 'there')], settings)


def test_merge_refuses_other_settings_and_a_folder_without_a_store(sharded, mnist_data_dir, tmp_path, capsys):
  dirs = split_by_shard(sharded[0], tmp_path)
  argv = [*TINY, '--data-dir', str(mnist_data_dir), '--merge']
  other = [*argv[:argv.index('--epochs') + 1], '2', *argv[argv.index('--epochs') + 2:]]
  assert mnist.main(['--out-dir', str(tmp_path / 'a'), *other, str(dirs[0])]) == 1
  assert 'epochs: store has 1, this run 2' in capsys.readouterr().err
  assert mnist.main(['--out-dir', str(tmp_path / 'b'), *argv, str(dirs[0]), str(tmp_path / 'nothing-here')]) == 1
  err = capsys.readouterr().err
  assert err.count('\n') == 1 and 'nothing-here' in err and 'no results store' in err


# --- Bit for bit, whatever the layout and K -----------------------------------------------------

def test_a_runs_record_does_not_depend_on_k(synthetic_data, monkeypatch):
  images, labels = synthetic_data
  monkeypatch.setattr(mnist, 'EVAL_CHUNK', 128)  # evaluation over several chunks, 2 models a call
  trainer = mnist.EnsembleTrainer(images, labels, mnist.Config(epochs=2), eval_rows=256)
  together = mnist.train_run_group(trainer, 0.5, [0, 1, 2, 3])
  apart = [mnist.train_run_group(trainer, 0.5, seeds) for seeds in ([0], [1, 2], [3])]
  for field, array in zip(together._fields, together):
    np.testing.assert_array_equal(array, np.concatenate([getattr(g, field) for g in apart]), err_msg=field)


def test_compiling_ahead_does_not_change_a_run(synthetic_data):
  images, labels = synthetic_data
  config = mnist.Config(epochs=2)
  cold = mnist.train_run_group(mnist.EnsembleTrainer(images, labels, config), 0.5, [0, 1])
  warm_trainer = mnist.EnsembleTrainer(images, labels, config)
  warm_trainer.warm_up(2)
  warm = mnist.train_run_group(warm_trainer, 0.5, [0, 1])
  for field, a, b in zip(cold._fields, cold, warm):
    np.testing.assert_array_equal(a, b, err_msg=field)


def test_the_stacked_layouts_evaluation_equals_the_per_model_one(synthetic_data, monkeypatch):
  images, labels = synthetic_data
  monkeypatch.setattr(mnist, 'EVAL_CHUNK', 128)  # 5 chunks of examples, 3 models a call
  config = mnist.Config(epochs=1)
  per_model = mnist.EnsembleTrainer(images, labels, config, stacked=False, eval_rows=384)
  stacked = mnist.EnsembleTrainer(images, labels, config, stacked=True, eval_rows=384)
  params = per_model.train([0, 1, 2], 0.5)
  np.testing.assert_array_equal(stacked.correct(params), per_model.correct(params))


def test_estimate_only_on_a_mistyped_out_dir_creates_nothing(tmp_path, capsys):
  typo = tmp_path / 'reslts'
  assert mnist.main(['--out-dir', str(typo), '--estimate-only']) == 1
  assert not typo.exists() and 'holds no results store' in capsys.readouterr().err
