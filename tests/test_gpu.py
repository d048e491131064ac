"""The GPU path around the training, checked without a GPU: which device nvidia-smi is asked
about and what it answers (a fake nvidia-smi on PATH), K and the evaluation chunk from its free
memory, the warnings and one-line errors, the records of one run from two kinds of hardware.
The last test trains on a real GPU, only where there is one and only when asked."""
import functools
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import tensorflow as tf

import mnist
from conftest import CPU, ROOT, USERS_CUDA_VISIBLE_DEVICES, random_group, script_command

A100 = 'GPU-a100a100-0000-1111-2222-333333333333'
V100 = 'GPU-b100b100-0000-1111-2222-333333333333'
SLICE_5GB = 'MIG-5a5a5a5a-0000-1111-2222-333333333333'
SLICE_20GB = 'MIG-20202020-0000-1111-2222-333333333333'

# What nvidia-smi -L and --query-gpu=uuid,memory.free,memory.total print (MiB), per machine.
ONE_GPU = (f'GPU 0: NVIDIA A100-SXM4-80GB (UUID: {A100})\n',
           f'{A100}, 61440, 81920\n')
TWO_GPUS = (f'GPU 0: Tesla V100-SXM2-16GB (UUID: {V100})\nGPU 1: NVIDIA A100-SXM4-80GB (UUID: {A100})\n',
            f'{V100}, 16000, 16384\n{A100}, 40960, 81920\n')
MIG = (f'GPU 0: NVIDIA A100-SXM4-40GB (UUID: {A100})\n'
       f'  MIG 1g.5gb      Device  0: (UUID: {SLICE_5GB})\n'
       f'  MIG 3g.20gb     Device  1: (UUID: {SLICE_20GB})\n',
       f'{A100}, 30000, 40960\n')
GARBAGE = ('NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver.\n',
           'No devices were found\n')


@pytest.fixture
def machine(tmp_path, monkeypatch):
  """machine(listing, query, visible=None): puts a fake nvidia-smi answering with `listing` (-L)
  and `query` (anything else) first on PATH, sets CUDA_VISIBLE_DEVICES (None: unset), and
  forgets what the script had found out about the devices."""
  def setup(listing=None, query=None, visible=None):
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir(exist_ok=True)
    if listing is not None:
      (tmp_path / 'listing').write_text(listing)
      (tmp_path / 'query').write_text(query)
      script = bin_dir / 'nvidia-smi'
      script.write_text(f'#!/bin/sh\nif [ "$1" = "-L" ]; then cat {tmp_path / "listing"}; '
                        f'else cat {tmp_path / "query"}; fi\n')
      script.chmod(0o755)
    monkeypatch.setenv('PATH', str(bin_dir) + (os.pathsep + '/bin' if listing is not None else ''))
    if visible is None:
      monkeypatch.delenv('CUDA_VISIBLE_DEVICES', raising=False)
    else:
      monkeypatch.setenv('CUDA_VISIBLE_DEVICES', visible)
    mnist.visible_gpu.cache_clear()
  yield setup
  mnist.visible_gpu.cache_clear()  # the next test's PATH and environment are the real ones


# --- Which GPU, and its memory ------------------------------------------------------------------

def test_one_gpu_is_found_with_its_free_and_total_memory(machine):
  machine(*ONE_GPU)
  gpu = mnist.visible_gpu()
  assert (gpu.name, gpu.uuid, gpu.free, gpu.total) == ('NVIDIA A100-SXM4-80GB', A100, 60 * 2**30, 80 * 2**30)


def test_importing_the_script_sets_cudas_order_to_nvidia_smis_unless_the_user_chose_one():
  code = 'import os, sys; sys.path.insert(0, sys.argv[1]); import mnist; print(os.environ["CUDA_DEVICE_ORDER"])'
  for preset, expected in [(None, 'PCI_BUS_ID'), ('FASTEST_FIRST', 'FASTEST_FIRST')]:
    env = {k: v for k, v in os.environ.items() if k != 'CUDA_DEVICE_ORDER'}
    env.update({'CUDA_DEVICE_ORDER': preset} if preset else {})
    out = subprocess.run([sys.executable, '-c', code, str(ROOT)], env=env, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    assert out.strip() == expected


def test_cuda_visible_devices_1_is_nvidia_smis_gpu_1_in_pci_bus_order(machine, monkeypatch):
  monkeypatch.setenv('CUDA_DEVICE_ORDER', 'PCI_BUS_ID')
  machine(*TWO_GPUS, visible='1')
  gpu = mnist.visible_gpu()
  assert (gpu.name, gpu.free) == ('NVIDIA A100-SXM4-80GB', 40 * 2**30)


def test_under_cudas_own_fastest_first_order_an_index_is_not_guessed(machine, monkeypatch):
  monkeypatch.setenv('CUDA_DEVICE_ORDER', 'FASTEST_FIRST')
  machine(*TWO_GPUS, visible='1')
  assert mnist.visible_gpu() is None


def test_a_gpu_named_by_its_uuid_is_found_whatever_the_order(machine, monkeypatch):
  monkeypatch.setenv('CUDA_DEVICE_ORDER', 'FASTEST_FIRST')
  machine(*TWO_GPUS, visible=V100[:12])  # CUDA accepts a UUID's unique start
  assert mnist.visible_gpu().name == 'Tesla V100-SXM2-16GB'


def test_a_mig_slice_has_its_profiles_memory_not_the_whole_gpus(machine):
  machine(*MIG, visible=SLICE_20GB)
  gpu = mnist.visible_gpu()
  assert (gpu.name, gpu.free, gpu.total) == ('NVIDIA A100-SXM4-40GB MIG 3g.20gb', 20 * 10**9, 20 * 10**9)


def test_on_a_gpu_split_by_mig_cuda_gets_its_first_slice(machine):
  machine(*MIG)
  assert mnist.visible_gpu().uuid == SLICE_5GB


def test_mig_slices_of_compute_instances_and_old_drivers_uuids_are_read(machine):
  old_uuid = f'MIG-{A100}/1/0'  # drivers before R470 named slices by their GPU
  machine(f'GPU 0: NVIDIA A100-SXM4-40GB (UUID: {A100})\n'
          f'  MIG 1c.3g.20gb  Device  0: (UUID: {old_uuid})\n'
          f'  MIG 1g.10gb+me  Device  1: (UUID: {SLICE_5GB})\n', MIG[1], visible=old_uuid)
  assert (mnist.visible_gpu().name, mnist.visible_gpu().total) == ('NVIDIA A100-SXM4-40GB MIG 1c.3g.20gb', 20 * 10**9)
  machine(*MIG)
  assert mnist.nvidia_smi_gpus()[0].slices[1].name.endswith('MIG 3g.20gb')


@pytest.mark.parametrize('setup', [dict(), dict(listing=GARBAGE[0], query=GARBAGE[1]),
                                   dict(listing=ONE_GPU[0], query=ONE_GPU[1], visible='')],
                         ids=['no nvidia-smi', 'garbage', 'hidden by CUDA_VISIBLE_DEVICES'])
def test_without_a_readable_visible_gpu_there_is_none(machine, setup):
  machine(**setup)
  assert mnist.visible_gpu() is None


# --- K and the evaluation chunk follow the free memory -------------------------------------------

@pytest.fixture
def on_a_gpu(monkeypatch):
  """TensorFlow, for the script, sees one GPU."""
  monkeypatch.setattr(mnist, 'accelerators', lambda: ['GPU:0'])


def test_a_default_model_takes_about_10_mb_to_train():
  # 4 bytes x (weights, momentum and gradients: 3 x 535,818; a batch's activations, forward and
  # backward: 4 x 128 x 1,562; the record: 2 x 60,000) = 4 x 2,527,198
  assert mnist.per_model_bytes(mnist.Config()) == 10_108_792


def test_on_a_gpu_k_is_what_a_quarter_of_its_free_memory_holds(machine, on_a_gpu):
  machine(*ONE_GPU)  # 60 GiB free of 80
  assert mnist.default_models_at_once(2000) == 1593  # 15 GiB / 10,108,792 bytes = 1,593.3
  assert mnist.default_models_at_once(200) == 200  # every run of a ratio at once


def test_k_follows_the_visible_gpus_memory_not_the_first_ones(machine, on_a_gpu):
  machine(*TWO_GPUS, visible='0')  # 16,000 MiB free
  assert mnist.default_models_at_once(2000) == 414  # 4,000 MiB / 10,108,792 bytes = 414.9
  machine(*TWO_GPUS, visible='1')  # 40 GiB free
  assert mnist.default_models_at_once(2000) == 1062  # 10 GiB / 10,108,792 bytes = 1,062.2


def test_without_nvidia_smi_a_gpu_is_sized_as_8_gib(machine, on_a_gpu):
  machine()
  assert mnist.default_models_at_once(2000) == 212  # 2 GiB / 10,108,792 bytes = 212.4


def test_the_evaluation_chunk_is_an_eighth_of_free_memory_and_capped(machine, on_a_gpu):
  machine(*MIG, visible=SLICE_5GB)
  assert mnist.default_eval_rows() == 100_032  # 5e9 / 8 / (4 bytes x 1,562 units) = 100,032.0
  machine(*ONE_GPU)  # an eighth of 60 GiB would be 1,288,902 rows
  assert mnist.default_eval_rows() == 320_000


def test_on_a_gpu_the_opening_line_names_it_its_free_memory_and_the_gpus_left_alone(machine, on_a_gpu, monkeypatch):
  machine(*TWO_GPUS, visible='1,0')
  monkeypatch.setattr(mnist, 'gpus_seen', lambda: ['GPU:0', 'GPU:1'])
  monkeypatch.setattr(mnist, 'device_kind', lambda: 'NVIDIA A100-SXM4-80GB')
  monkeypatch.setattr(mnist, 'matmul_precision', lambda config: 'tf32')
  line = mnist.device_description(mnist.Config())
  assert line.startswith('the GPU NVIDIA A100-SXM4-80GB') and '40.0 of 80.0 GiB free' in line
  assert 'first of 2 visible' in line and 'tf32' in line


# --- Warnings and one-line errors ---------------------------------------------------------------

def test_a_gpu_that_tensorflow_cannot_see_is_one_warning_naming_the_fix(machine):
  machine(*ONE_GPU)  # nvidia-smi lists it; this machine's TensorFlow sees no GPU
  warning = mnist.gpu_unseen_warning()
  assert 'NVIDIA A100-SXM4-80GB' in warning and 'tensorflow[and-cuda]' in warning and '\n' not in warning


def test_no_warning_when_the_user_hid_the_gpus_or_there_is_none(machine):
  machine(*ONE_GPU, visible='')
  assert mnist.gpu_unseen_warning() is None
  machine()
  assert mnist.gpu_unseen_warning() is None


def test_a_run_with_a_gpu_tensorflow_cannot_see_warns_once_and_trains_on_the_cpu(machine, mnist_data_dir, tmp_path):
  machine(*ONE_GPU, visible=A100)  # the fake GPU's UUID: a real GPU of a test host stays hidden
  argv = ['--runs', '1', '--epochs', '1', '--ratios', '0.5', '--data-dir', str(mnist_data_dir),
          '--out-dir', str(tmp_path)]
  result = subprocess.run(script_command(*argv), capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr
  warnings = [line for line in result.stderr.splitlines() if 'warning' in line]
  assert len(warnings) == 1 and 'tensorflow[and-cuda]' in warnings[0]
  assert 'on the CPU' in next(line for line in result.stdout.splitlines() if 'to train' in line)


def test_estimate_only_and_merge_hide_the_gpus_before_cuda_starts():
  env = {k: v for k, v in os.environ.items() if k != 'CUDA_VISIBLE_DEVICES'}
  code = ('import os, sys; sys.path.insert(0, sys.argv[1]); import mnist\n'
          'mnist.configure_tensorflow(train=False)\n'
          'print(repr(os.environ.get("CUDA_VISIBLE_DEVICES")), mnist.accelerators())\n')
  out = subprocess.run([sys.executable, '-c', code, str(ROOT)], env=env, capture_output=True,
                       text=True, timeout=300, check=True).stdout
  assert out.split() == ["''", '[]']


@pytest.mark.parametrize('flag', ['--estimate-only', '--merge'])
def test_commands_that_train_nothing_configure_tensorflow_without_a_gpu(flag, tmp_path, monkeypatch):
  asked = []

  def stop(train=True):
    asked.append(train)
    raise mnist.CScoreError('stop here')
  monkeypatch.setattr(mnist, 'configure_tensorflow', stop)
  mnist.open_store(str(tmp_path), mnist.store_settings(mnist.Config(), 'x'))
  argv = ['--out-dir', str(tmp_path), flag] + ([str(tmp_path / 'other')] if flag == '--merge' else [])
  assert mnist.main(argv) == 1 and asked == [False]


def test_bf16_below_compute_capability_8_is_refused_in_one_line(monkeypatch):
  monkeypatch.setattr(mnist, 'gpu_compute_capability', lambda: (7, 0))
  monkeypatch.setattr(mnist, 'device_kind', lambda: 'Tesla V100-SXM2-16GB')
  with pytest.raises(mnist.CScoreError, match='compute capability 8.0 or newer; Tesla V100-SXM2-16GB has 7.0'):
    mnist.check_gpu_precision(mnist.Config(precision='bfloat16'))
  mnist.check_gpu_precision(mnist.Config(precision='float32'))  # fp32 is fine there
  monkeypatch.setattr(mnist, 'gpu_compute_capability', lambda: (8, 0))
  mnist.check_gpu_precision(mnist.Config(precision='bfloat16'))


def failing_with(monkeypatch, error):
  def fail(*args, **kwargs):
    raise error
  monkeypatch.setattr(mnist, 'load_mnist', fail)


def test_cuda_failing_to_start_is_one_line_with_what_to_do(tmp_path, capsys, monkeypatch):
  failing_with(monkeypatch, tf.errors.InternalError(
      None, None, 'CUDA runtime implicit initialization on GPU:0 failed. Status: all CUDA-capable '
      'devices are busy or unavailable\nmore detail'))
  assert mnist.main(['--out-dir', str(tmp_path)]) == 1
  err = capsys.readouterr().err
  assert err.count('\n') == 1 and 'GPU failed to start' in err and 'busy or unavailable' in err
  assert 'nvidia-smi' in err and 'CUDA_VISIBLE_DEVICES=""' in err


def test_a_gpu_out_of_memory_is_one_line_pointing_at_k(tmp_path, capsys, monkeypatch, on_a_gpu):
  failing_with(monkeypatch, tf.errors.ResourceExhaustedError(None, None, 'OOM when allocating tensor'))
  assert mnist.main(['--out-dir', str(tmp_path)]) == 1
  err = capsys.readouterr().err
  assert err.count('\n') == 1 and 'GPU ran out of memory' in err and '--models-at-once' in err


def test_the_hosts_memory_running_out_on_a_gpu_machine_is_not_blamed_on_the_gpu(tmp_path, capsys, monkeypatch, on_a_gpu):
  failing_with(monkeypatch, MemoryError())
  assert mnist.main(['--out-dir', str(tmp_path)]) == 1
  err = capsys.readouterr().err
  assert err.count('\n') == 1 and 'GPU' not in err and '--batch-size' in err


def test_a_cuda_error_after_the_start_keeps_its_traceback(tmp_path, monkeypatch):
  failing_with(monkeypatch, tf.errors.InternalError(None, None, 'cuBLAS call failed on GPU:0'))
  with pytest.raises(tf.errors.InternalError):
    mnist.main(['--out-dir', str(tmp_path)])


# --- Records of one run from different hardware ---------------------------------------------------

A100_TF32 = ('A100-SXM4-80GB', 'tf32')  # as older drivers name it: before 'CPU' in sort order


def two_records(tmp_path, first, second):
  """A store holding runs 0 and 1 twice, with other results, from `first` and then `second`
  hardware; its loaded runs."""
  store = mnist.open_store(str(tmp_path), mnist.store_settings(mnist.Config(), 'x'))
  group = random_group(2)
  mnist.save_runs(store, 0.5, [0, 1], group, 3, first)
  mnist.save_runs(store, 0.5, [1, 0], pick_rows(group._replace(correct=~group.correct), [1, 0]), 3, second)
  return mnist.load_runs(store)


def test_two_records_from_different_hardware_keep_the_cpus_in_either_order(tmp_path):
  for first, second in [(CPU, A100_TF32), (A100_TF32, CPU)]:
    runs = two_records(tmp_path / first[0], first, second)
    assert [runs[0.5, s].hardware for s in (0, 1)] == [CPU, CPU]
    assert [runs[0.5, s].alternates for s in (0, 1)] == [1, 1]


def test_the_summary_counts_the_runs_stored_twice_by_different_hardware(tmp_path):
  runs = two_records(tmp_path, CPU, A100_TF32)
  line = mnist.hardware_line(runs, mnist.Config(ratios=(0.5,), runs=2))
  assert '2 on CPU (fp32)' in line and '2 of them stored twice, by different hardware' in line


def test_two_records_from_the_same_hardware_that_differ_are_still_an_error(tmp_path):
  with pytest.raises(mnist.CScoreError, match='same hardware'):
    two_records(tmp_path, A100_TF32, A100_TF32)


def test_merge_of_a_run_trained_on_other_hardware_keeps_the_stores_own_and_counts_it(tmp_path):
  settings = mnist.store_settings(mnist.Config(), 'x')
  here, there = (mnist.open_store(str(tmp_path / d), settings) for d in ('here', 'there'))
  group = random_group(3)
  mnist.save_runs(here, 0.5, [0, 1], pick_rows(group, [0, 1]), 3, A100_TF32)
  mnist.save_runs(there, 0.5, [1, 2], pick_rows(group._replace(correct=~group.correct), [1, 2]), 3, CPU)
  assert mnist.merge_stores(here, [str(tmp_path / 'there')], settings) == (1, 1)  # run 2 copied
  runs = mnist.load_runs(here)
  assert runs[0.5, 1].hardware == A100_TF32 and runs[0.5, 2].hardware == CPU


def pick_rows(group, rows):
  return mnist.RunGroup(*(field[rows] for field in group))


# --- The host's draws overlap the training --------------------------------------------------------

def test_the_next_groups_draws_are_prepared_while_the_current_group_trains():
  started = {i: threading.Event() for i in range(3)}

  def prepare(ratio, seeds):
    started[seeds[0]].set()
    return f'work of {seeds[0]}'
  groups = [(0.5, [i]) for i in range(3)]
  got = []
  for group, work in mnist.prepared_ahead(groups, prepare):
    if group[1][0] < 2:  # the consumer "trains": the next group is being prepared meanwhile
      assert started[group[1][0] + 1].wait(timeout=10)
    got.append((group, work))
  assert got == [((0.5, [i]), f'work of {i}') for i in range(3)]


def test_a_closed_loop_does_not_wait_for_the_next_groups_draws():
  release = threading.Event()

  def prepare(ratio, seeds):
    if seeds[0] == 1:  # the next group's draws: slow
      release.wait(timeout=60)
    return seeds[0]
  loop = mnist.prepared_ahead([(0.5, [0]), (0.5, [1])], prepare)
  assert next(loop) == ((0.5, [0]), 0)
  start = time.perf_counter()
  loop.close()  # as Ctrl-C leaves the training loop
  assert time.perf_counter() - start < 1
  release.set()


def test_draws_prepared_on_the_thread_are_the_runs_own(synthetic_data):
  config = mnist.Config(epochs=2, hidden=(16,), batch_size=32)
  groups = [(0.5, [3, 4]), (0.9, [5])]
  for (ratio, seeds), work in mnist.prepared_ahead(groups, functools.partial(mnist.group_work, config, 600)):
    for j, seed in enumerate(seeds):
      rs = np.random.RandomState(seed)  # the authors' draw: the subset, then a permutation an epoch
      subset = rs.choice(600, size=int(600 * ratio), replace=False)
      for epoch in range(2):
        rows = work.orders[epoch, j].ravel()[:len(subset)]
        np.testing.assert_array_equal(rows, subset[rs.permutation(len(subset))])
      np.testing.assert_array_equal(np.flatnonzero(~work.held_out[j]), np.sort(subset))
      for stacked, own in zip(work.initial, mnist.init_mlp(seed, mnist.layer_sizes(config))):
        np.testing.assert_array_equal(stacked[j], own)


# --- On a real GPU (opt in) -----------------------------------------------------------------------

GPU_SMOKE = '''
import sys; sys.path.insert(0, sys.argv[1])
import numpy as np, mnist
mnist.configure_tensorflow()
assert mnist.accelerators(), 'TensorFlow sees no GPU'
rng = np.random.default_rng(0)
labels = rng.integers(0, 10, 2000).astype(np.int32)
images = rng.integers(0, 60, (2000, 784)).astype(np.uint8)
for digit in range(10):
  images[labels == digit, digit * 78:(digit + 1) * 78] = 255
config = mnist.Config(epochs=2)
gpu = mnist.train_run_group(mnist.EnsembleTrainer(images, labels, config), 0.5, list(range(8)))
with mnist.tf.device('/CPU:0'):
  cpu = mnist.train_run_group(mnist.EnsembleTrainer(images, labels, config, stacked=False), 0.5, list(range(8)))
assert (gpu.held_out == cpu.held_out).all()
agree = (gpu.correct == cpu.correct)[gpu.held_out].mean()
print(f'{mnist.device_kind()}: held-out correctness agrees with the CPU on {agree:.4f}')
assert agree > 0.98, agree
assert np.abs(gpu.confidence - cpu.confidence).max() < 0.05
'''


@pytest.mark.gpu
@pytest.mark.skipif(os.environ.get('CSCORE_GPU_TESTS') != '1', reason='opt-in: CSCORE_GPU_TESTS=1 on a GPU host')
def test_a_tiny_group_trained_on_the_gpu_matches_the_cpus_within_tolerance():
  env = {k: v for k, v in os.environ.items() if k != 'CUDA_VISIBLE_DEVICES'}
  if USERS_CUDA_VISIBLE_DEVICES is not None:
    env['CUDA_VISIBLE_DEVICES'] = USERS_CUDA_VISIBLE_DEVICES
  if not mnist.nvidia_smi('-L').strip():
    pytest.skip('no GPU: nvidia-smi lists none')
  result = subprocess.run([sys.executable, '-c', GPU_SMOKE, str(ROOT)], env=env,
                          capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr
