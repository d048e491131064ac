"""Many processes, one protocol: shards that share a store (or merge theirs), never train a run
twice, refuse what would mix, and end with the outputs of one unsharded process, bit for bit."""
import json
import os
import shutil
import signal
import subprocess
import zlib

import pytest

import mnist
from cscore import errors, files, shards, store
from conftest import A100_TF32, CPU, TINY, flipped, pick, random_group, script_command, start_and_signal_after_first_group, tiny_argv


def shard_argv(data_dir, out, shard, k):
  return tiny_argv(data_dir, out) + ['--shard', shard, '--models-at-once', str(k)]  # the last K counts


def start(argv):
  return subprocess.Popen(script_command(*argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def assert_same_outputs(out, expected):
  for name in ('cscores.npy', 'cscores-details.npz'):
    assert (out / name).read_bytes() == (expected / name).read_bytes(), name


def stored(out):
  """[(ratio, seed)] of every run in every store file, repeats kept."""
  store_dir = out / store.STORE_DIR
  return [(store.ratio_key(r), s) for name in store.run_files(store_dir)
          for r, s, _ in store.read_run_file(store_dir / name)]


@pytest.fixture(scope='session')
def sharded(mnist_data_dir, tmp_path_factory):
  """An out-dir whose store two concurrent shards filled, with different K."""
  out = tmp_path_factory.mktemp('shared')
  processes = [start(shard_argv(mnist_data_dir, out, '0/2', k=1)), start(shard_argv(mnist_data_dir, out, '1/2', k=2))]
  results = [p.communicate(timeout=600) + (p.returncode,) for p in processes]
  return out, results


# --- The share ----------------------------------------------------------------------------------

@pytest.mark.parametrize('n', [1, 2, 3, 7, 16])
@pytest.mark.parametrize('runs, seed', [(1, 0), (5, 0), (200, 0), (33, 17), (64, 1000)])
def test_shares_are_disjoint_complete_and_balanced_at_every_ratio(n, runs, seed):
  config = mnist.Config(runs=runs, seed=seed)
  shares = [shards.planned_groups(config, {}, 8, (i, n)) for i in range(n)]
  trained = [(r, s) for share in shares for r, seeds in share for s in seeds]
  assert sorted(trained) == sorted((r, s) for r in config.ratios for s in range(seed, seed + runs))
  for ratio in config.ratios:
    counts = [sum(len(g) for r, g in share if r == ratio) for share in shares]
    assert max(counts) - min(counts) <= 1


def test_the_share_depends_on_ratio_seed_and_n_alone_not_k_or_what_is_stored():
  config = mnist.Config(runs=40)
  share = lambda k, done: {(r, s) for r, g in shards.planned_groups(config, done, k, (1, 3)) for s in g}
  everything = share(8, {})
  assert share(1, {}) == share(128, {}) == everything
  done = {(store.ratio_key(0.5), s): None for s in range(20)}
  assert share(8, done) == {(r, s) for r, s in everything if (store.ratio_key(r), s) not in done}


def test_groups_skip_finished_runs_and_go_round_robin_over_ratios():
  config = mnist.Config(ratios=(0.1, 0.2), runs=5, seed=10)
  done = {(0.1, 10): None, (0.1, 11): None}
  groups = shards.planned_groups(config, done, k=2)
  assert groups == [(0.1, [12, 13]), (0.2, [10, 11]), (0.1, [14]), (0.2, [12, 13]), (0.2, [14])]


def test_a_larger_runs_only_adds_runs():
  done = {(r, s): None for r in (0.1, 0.2) for s in range(4)}
  groups = shards.planned_groups(mnist.Config(ratios=(0.1, 0.2), runs=6), done, k=4)
  assert groups == [(0.1, [4, 5]), (0.2, [4, 5])]


# --- Shards on one shared folder ----------------------------------------------------------------

@pytest.mark.usefixtures('mnist_loaded_once')
def test_two_concurrent_shards_with_different_k_then_estimate_only_equal_one_unsharded_process(
    sharded, tiny_run, mnist_data_dir, capsys):
  out, results = sharded
  for stdout, stderr, code in results:
    assert code == 0, stderr
    assert 'runs trained now; 4 of its 4 runs stored, 0 left' in stdout
  assert not (out / 'cscores.npy').exists()  # a shard writes only the store
  assert sorted(stored(out)) == sorted({(r, s) for r in (0.5, 0.9) for s in range(4)})  # none twice
  assert mnist.main([*tiny_argv(mnist_data_dir, out), '--estimate-only']) == 0
  stdout = capsys.readouterr().out
  assert 'models trained now: 0' in stdout and 'missing' not in stdout
  assert_same_outputs(out, tiny_run[0])


@pytest.mark.usefixtures('mnist_loaded_once')
def test_a_shard_killed_and_restarted_while_the_other_runs_loses_nothing_and_ends_identical(
    tiny_run, mnist_data_dir, tmp_path):
  store_dir = tmp_path / store.STORE_DIR
  other = start(shard_argv(mnist_data_dir, tmp_path, '1/2', k=1))
  try:
    start_and_signal_after_first_group(shard_argv(mnist_data_dir, tmp_path, '0/2', k=1), signal.SIGKILL)
    (store_dir / f'{files.TEMP_PREFIX}shard-0-of-2-killed').write_bytes(b'PK half a file')  # a kill mid-write
    restarted = mnist.main(shard_argv(mnist_data_dir, tmp_path, '0/2', k=1))  # while the other runs
    other_out, other_err = other.communicate(timeout=600)
  finally:
    if other.poll() is None:
      other.kill()
  assert restarted == 0 and other.returncode == 0, other_err
  assert 'shard 1/2: 4 runs trained now' in other_out  # the other shard: all of its runs, once
  assert sorted(stored(tmp_path)) == sorted({(r, s) for r in (0.5, 0.9) for s in range(4)})  # none twice
  assert not (store_dir / f'{files.TEMP_PREFIX}shard-0-of-2-killed').exists()
  assert mnist.main([*tiny_argv(mnist_data_dir, tmp_path), '--estimate-only']) == 0
  assert_same_outputs(tmp_path, tiny_run[0])


# --- Estimate only, and merge -------------------------------------------------------------------

@pytest.mark.usefixtures('mnist_loaded_once')
def test_estimate_only_writes_what_is_stored_and_lists_what_is_missing(sharded, mnist_data_dir, tmp_path, capsys):
  out, _ = sharded
  shutil.copytree(out / store.STORE_DIR, tmp_path / store.STORE_DIR)
  for name in store.run_files(tmp_path / store.STORE_DIR):
    if any(s in (1, 2) and r == 0.9 for r, s, _ in store.read_run_file(tmp_path / store.STORE_DIR / name)):
      os.unlink(tmp_path / store.STORE_DIR / name)
  assert mnist.main([*tiny_argv(mnist_data_dir, tmp_path), '--estimate-only']) == 0
  out_text = capsys.readouterr().out
  missing = [l for l in out_text.splitlines() if l.startswith('missing:')]
  assert len(missing) == 1 and 'ratio 0.90: seeds' in missing[0] and 'ratio 0.50' not in missing[0]
  assert (tmp_path / 'cscores.npy').exists()


@pytest.mark.usefixtures('mnist_loaded_once')
def test_estimate_only_on_a_store_without_the_commands_runs_is_one_line_and_exit_1(
    sharded, mnist_data_dir, tmp_path, capsys):
  shutil.copytree(sharded[0] / store.STORE_DIR, tmp_path / store.STORE_DIR)
  for record in (tmp_path / store.STORE_DIR).glob('shards-*.json'):
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
  (record,) = (out / store.STORE_DIR).glob('shards-*.json')
  assert record.name.startswith('shards-2-')
  assert json.loads(record.read_text()) == dict(shards=2, runs=4, ratios=[0.5, 0.9], seed=0)  # TINY's


@pytest.mark.usefixtures('mnist_loaded_once')
@pytest.mark.parametrize('drift', [[], ['--runs', '8'], ['--ratios', '0.5,0.8'], ['--seed', '2']])
def test_an_estimate_naming_runs_the_shards_were_never_started_for_is_one_line(
    sharded, mnist_data_dir, tmp_path, capsys, drift):
  shutil.copytree(sharded[0] / store.STORE_DIR, tmp_path / store.STORE_DIR)
  argv = ['--data-dir', str(mnist_data_dir), '--out-dir', str(tmp_path), '--epochs', '1', '--estimate-only',
          *(['--runs', '4', '--ratios', '0.5,0.9'] if drift else []), *drift]  # []: the default 200 x 9
  assert mnist.main(argv) == 1
  err = capsys.readouterr().err
  assert err.count('\n') == 1
  assert 'were never started for' in err and 'started with --runs 4 --ratios 0.5,0.9 --seed 0 (N = 2)' in err
  assert not (tmp_path / 'cscores.npy').exists()


@pytest.mark.usefixtures('mnist_loaded_once')
def test_an_estimate_of_fewer_runs_than_the_shards_were_started_for_is_not_refused(sharded, mnist_data_dir, tmp_path):
  shutil.copytree(sharded[0] / store.STORE_DIR, tmp_path / store.STORE_DIR)
  argv = [*tiny_argv(mnist_data_dir, tmp_path), '--estimate-only', '--runs', '2', '--ratios', '0.9']
  assert mnist.main(argv) == 0


@pytest.mark.usefixtures('mnist_loaded_once')
def test_the_missing_runs_are_named_by_shard_and_rerunning_those_shards_completes_the_store(
    sharded, tiny_run, mnist_data_dir, tmp_path, capsys):
  shutil.copytree(sharded[0] / store.STORE_DIR, tmp_path / store.STORE_DIR)
  lost = [f for f in store.run_files(tmp_path / store.STORE_DIR)
          if any(r == 0.9 and s == 1 for r, s, _ in store.read_run_file(tmp_path / store.STORE_DIR / f))]
  for name in lost:  # the file holding run 1 at ratio 0.9, as if its shard had died before it
    os.unlink(tmp_path / store.STORE_DIR / name)
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
  store_dir = str(tmp_path)
  config = mnist.Config(ratios=(0.5,), runs=4)
  shards.record_shards(store_dir, config, 2)
  runs = {(0.5, s): None for s in (0, 1, 2)}  # run 3 is missing
  lines = shards.shard_lines(store_dir, runs, config, (0, 2), trained=2)
  assert 'missing: 1 of the command\'s 4 runs are not stored yet (ratio 0.50: seed 3)' in lines
  assert any(line.startswith(f'missing by shard (N = 2): {shard_by_spec(0.5, 3, 2)}.') for line in lines)


def test_one_missing_seed_reads_seed_not_seeds(tmp_path):
  config = mnist.Config(ratios=(0.5,), runs=8)
  runs = {(0.5, s): None for s in range(8) if s != 7}
  assert shards.missing_lines(str(tmp_path), runs, config) == [
      'missing: 1 of the command\'s 8 runs are not stored yet (ratio 0.50: seed 7)']


@pytest.mark.usefixtures('mnist_loaded_once')
def test_estimate_only_without_a_store_is_one_line_and_exit_1(mnist_data_dir, tmp_path, capsys):
  assert mnist.main([*tiny_argv(mnist_data_dir, tmp_path), '--estimate-only']) == 1
  err = capsys.readouterr().err
  assert err.count('\n') == 1 and 'holds no results store' in err


def split_by_shard(sharded_out, root):
  """Two out-dirs, each with the settings and the files of one shard's runs, as two machines
  without a shared folder would have them."""
  dirs = []
  source = sharded_out / store.STORE_DIR
  for i in range(2):
    d = root / f'machine-{i}' / store.STORE_DIR
    d.mkdir(parents=True)
    shutil.copy(source / store.SETTINGS_FILE, d)
    for name in store.run_files(source):
      if all(shards.shard_of(r, s, 2) == i for r, s, _ in store.read_run_file(source / name)):
        shutil.copy(source / name, d)
    dirs.append(d.parent)
  return dirs


@pytest.mark.usefixtures('mnist_loaded_once')
def test_merge_of_one_out_dir_per_shard_equals_one_unsharded_process(sharded, tiny_run, mnist_data_dir, tmp_path):
  dirs = split_by_shard(sharded[0], tmp_path)
  final = tmp_path / 'final'
  argv = [*tiny_argv(mnist_data_dir, final), '--merge', *map(str, dirs)]
  assert mnist.main(argv) == 0
  assert_same_outputs(final, tiny_run[0])
  before = sorted(os.listdir(final / store.STORE_DIR))
  assert mnist.main(argv) == 0  # again: every run is present, nothing is copied
  assert sorted(os.listdir(final / store.STORE_DIR)) == before


def test_merge_refuses_a_run_that_both_stores_hold_with_different_results(tmp_path):
  settings = store.store_settings(mnist.Config(), 'x')
  here, there = (store.open_store(str(tmp_path / d), settings) for d in ('here', 'there'))
  group = random_group(2)
  mine = store.save_runs(here, 0.5, [0, 1], group, 3, CPU)
  theirs = store.save_runs(there, 0.5, [1], flipped(pick(group, [1])), 3, CPU)
  with pytest.raises(errors.CScoreError, match=f'{mine}.*{theirs}'):
    shards.merge_stores(here, [str(tmp_path / 'there')], settings)


def test_merge_of_a_run_trained_on_other_hardware_keeps_the_stores_own_and_counts_it(tmp_path):
  settings = store.store_settings(mnist.Config(), 'x')
  here, there = (store.open_store(str(tmp_path / d), settings) for d in ('here', 'there'))
  group = random_group(3)
  store.save_runs(here, 0.5, [0, 1], pick(group, [0, 1]), 3, A100_TF32)
  store.save_runs(there, 0.5, [1, 2], pick(flipped(group), [1, 2]), 3, CPU)
  assert shards.merge_stores(here, [str(tmp_path / 'there')], settings) == (1, 1)  # run 2 copied
  runs = store.load_runs(here)
  assert runs[0.5, 1].hardware == A100_TF32 and runs[0.5, 2].hardware == CPU


@pytest.mark.usefixtures('mnist_loaded_once')
def test_merge_refuses_other_settings_and_a_folder_without_a_store(sharded, mnist_data_dir, tmp_path, capsys):
  dirs = split_by_shard(sharded[0], tmp_path)
  argv = [*TINY, '--data-dir', str(mnist_data_dir), '--merge']
  other = [*argv[:argv.index('--epochs') + 1], '2', *argv[argv.index('--epochs') + 2:]]
  assert mnist.main(['--out-dir', str(tmp_path / 'a'), *other, str(dirs[0])]) == 1
  assert 'epochs: store has 1, this run 2' in capsys.readouterr().err
  assert mnist.main(['--out-dir', str(tmp_path / 'b'), *argv, str(dirs[0]), str(tmp_path / 'nothing-here')]) == 1
  err = capsys.readouterr().err
  assert err.count('\n') == 1 and 'nothing-here' in err and 'no results store' in err


def test_an_unreadable_shard_record_is_an_error_even_when_no_run_is_missing(tmp_path):
  (tmp_path / 'shards-2-00000000.json').write_text('{')  # cut short
  config = mnist.Config(ratios=(0.5,), runs=1)
  with pytest.raises(errors.CScoreError, match='is unreadable'):
    shards.missing_lines(str(tmp_path), {(0.5, 0): None}, config)
