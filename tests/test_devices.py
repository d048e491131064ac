"""Devices (cscore/devices.py): the GPU path around the training, checked without a GPU: which
device nvidia-smi is asked about and what it answers (a fake nvidia-smi on PATH), K and the
evaluation chunk from its free memory, the warnings and one-line errors. The last test trains on
a real GPU, only where there is one and only when asked. (The records of one run from two kinds of
hardware are in test_store.py.)"""
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import mnist
from cscore import devices, errors, store
from conftest import ROOT, USERS_CUDA_VISIBLE_DEVICES, script_command

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
    devices.visible_gpu.cache_clear()
  yield setup
  devices.visible_gpu.cache_clear()  # the next test's PATH and environment are the real ones


# --- Which GPU, and its memory ------------------------------------------------------------------

def test_one_gpu_is_found_with_its_free_and_total_memory(machine):
  machine(*ONE_GPU)
  gpu = devices.visible_gpu()
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
  gpu = devices.visible_gpu()
  assert (gpu.name, gpu.free) == ('NVIDIA A100-SXM4-80GB', 40 * 2**30)


def test_under_cudas_own_fastest_first_order_an_index_is_not_guessed(machine, monkeypatch):
  monkeypatch.setenv('CUDA_DEVICE_ORDER', 'FASTEST_FIRST')
  machine(*TWO_GPUS, visible='1')
  assert devices.visible_gpu() is None


def test_a_gpu_named_by_its_uuid_is_found_whatever_the_order(machine, monkeypatch):
  monkeypatch.setenv('CUDA_DEVICE_ORDER', 'FASTEST_FIRST')
  machine(*TWO_GPUS, visible=V100[:12])  # CUDA accepts a UUID's unique start
  assert devices.visible_gpu().name == 'Tesla V100-SXM2-16GB'


def test_a_mig_slice_has_its_profiles_memory_not_the_whole_gpus(machine):
  machine(*MIG, visible=SLICE_20GB)
  gpu = devices.visible_gpu()
  assert (gpu.name, gpu.free, gpu.total) == ('NVIDIA A100-SXM4-40GB MIG 3g.20gb', 20 * 10**9, 20 * 10**9)


def test_on_a_gpu_split_by_mig_cuda_gets_its_first_slice(machine):
  machine(*MIG)
  assert devices.visible_gpu().uuid == SLICE_5GB


def test_mig_slices_of_compute_instances_and_old_drivers_uuids_are_read(machine):
  old_uuid = f'MIG-{A100}/1/0'  # drivers before R470 named slices by their GPU
  machine(f'GPU 0: NVIDIA A100-SXM4-40GB (UUID: {A100})\n'
          f'  MIG 1c.3g.20gb  Device  0: (UUID: {old_uuid})\n'
          f'  MIG 1g.10gb+me  Device  1: (UUID: {SLICE_5GB})\n', MIG[1], visible=old_uuid)
  assert (devices.visible_gpu().name, devices.visible_gpu().total) == ('NVIDIA A100-SXM4-40GB MIG 1c.3g.20gb', 20 * 10**9)
  machine(*MIG)
  assert devices.nvidia_smi_gpus()[0].slices[1].name.endswith('MIG 3g.20gb')


@pytest.mark.parametrize('setup', [dict(), dict(listing=GARBAGE[0], query=GARBAGE[1]),
                                   dict(listing=ONE_GPU[0], query=ONE_GPU[1], visible='')],
                         ids=['no nvidia-smi', 'garbage', 'hidden by CUDA_VISIBLE_DEVICES'])
def test_without_a_readable_visible_gpu_there_is_none(machine, setup):
  machine(**setup)
  assert devices.visible_gpu() is None


# --- K and the evaluation chunk follow the free memory -------------------------------------------

SIZES = mnist.layer_sizes(mnist.Config())  # the paper's MLP: 784 -> 512 -> 256 -> 10


@pytest.fixture
def on_a_gpu(monkeypatch):
  """TensorFlow, for the script, sees one GPU."""
  monkeypatch.setattr(devices, 'accelerators', lambda: ['GPU:0'])


def test_a_default_model_takes_about_10_mb_to_train():
  # 4 bytes x (weights, momentum and gradients: 3 x 535,818; a batch's activations, forward and
  # backward: 4 x 128 x 1,562; the record: 2 x 60,000) = 4 x 2,527,198
  assert devices.per_model_bytes(SIZES, 128) == 10_108_792


def test_on_a_gpu_k_is_what_a_quarter_of_its_free_memory_holds(machine, on_a_gpu):
  machine(*ONE_GPU)  # 60 GiB free of 80
  assert devices.default_models_at_once(2000, SIZES, 128) == 1593  # 15 GiB / 10,108,792 bytes = 1,593.3
  assert devices.default_models_at_once(200, SIZES, 128) == 200  # every run of a ratio at once


def test_k_follows_the_visible_gpus_memory_not_the_first_ones(machine, on_a_gpu):
  machine(*TWO_GPUS, visible='0')  # 16,000 MiB free
  assert devices.default_models_at_once(2000, SIZES, 128) == 414  # 4,000 MiB / 10,108,792 bytes = 414.9
  machine(*TWO_GPUS, visible='1')  # 40 GiB free
  assert devices.default_models_at_once(2000, SIZES, 128) == 1062  # 10 GiB / 10,108,792 bytes = 1,062.2


def test_without_nvidia_smi_a_gpu_is_sized_as_8_gib(machine, on_a_gpu):
  machine()
  assert devices.default_models_at_once(2000, SIZES, 128) == 212  # 2 GiB / 10,108,792 bytes = 212.4


def test_the_evaluation_chunk_is_an_eighth_of_free_memory_and_capped(machine, on_a_gpu):
  machine(*MIG, visible=SLICE_5GB)
  assert devices.default_eval_rows(SIZES) == 100_032  # 5e9 / 8 / (4 bytes x 1,562 units) = 100,032.0
  machine(*ONE_GPU)  # an eighth of 60 GiB would be 1,288,902 rows
  assert devices.default_eval_rows(SIZES) == 320_000


def test_on_a_gpu_the_opening_line_names_it_its_free_memory_and_the_gpus_left_alone(machine, on_a_gpu, monkeypatch):
  machine(*TWO_GPUS, visible='1,0')
  monkeypatch.setattr(devices, 'gpus_seen', lambda: ['GPU:0', 'GPU:1'])
  monkeypatch.setattr(devices, 'device_kind', lambda: 'NVIDIA A100-SXM4-80GB')
  monkeypatch.setattr(devices, 'matmul_precision', lambda config: 'tf32')
  line = devices.device_description(mnist.Config())
  assert line.startswith('the GPU NVIDIA A100-SXM4-80GB') and '40.0 of 80.0 GiB free' in line
  assert 'first of 2 visible' in line and 'tf32' in line


# --- Warnings and one-line errors ---------------------------------------------------------------

def test_a_gpu_that_tensorflow_cannot_see_is_one_warning_naming_the_fix(machine):
  machine(*ONE_GPU)  # nvidia-smi lists it; this machine's TensorFlow sees no GPU
  warning = devices.gpu_unseen_warning()
  assert 'NVIDIA A100-SXM4-80GB' in warning and 'tensorflow[and-cuda]' in warning and '\n' not in warning


def test_no_warning_when_the_user_hid_the_gpus_or_there_is_none(machine):
  machine(*ONE_GPU, visible='')
  assert devices.gpu_unseen_warning() is None
  machine()
  assert devices.gpu_unseen_warning() is None


def test_a_run_with_a_gpu_tensorflow_cannot_see_warns_once_and_trains_on_the_cpu(machine, tmp_path):
  machine(*ONE_GPU, visible=A100)  # the fake GPU's UUID: a real GPU of a test host stays hidden
  np.savez(tmp_path / 'small.npz', x=np.eye(40, 4) * 10, y=np.arange(40) % 2)  # any data: seconds, not MNIST's
  argv = ['--runs', '1', '--epochs', '1', '--ratios', '0.5', '--hidden', '8', '--data', str(tmp_path / 'small.npz'),
          '--out-dir', str(tmp_path / 'out')]
  result = subprocess.run(script_command(*argv), capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr
  warnings = [line for line in result.stderr.splitlines() if 'warning' in line]
  assert len(warnings) == 1 and 'tensorflow[and-cuda]' in warnings[0]
  assert 'on the CPU' in next(line for line in result.stdout.splitlines() if 'to train' in line)


def test_estimate_only_and_merge_hide_the_gpus_before_cuda_starts():
  env = {k: v for k, v in os.environ.items() if k != 'CUDA_VISIBLE_DEVICES'}
  code = ('import os, sys; sys.path.insert(0, sys.argv[1]); import mnist\n'
          'from cscore import devices\n'
          'devices.configure_tensorflow(train=False)\n'
          'print(repr(os.environ.get("CUDA_VISIBLE_DEVICES")), devices.accelerators())\n')
  out = subprocess.run([sys.executable, '-c', code, str(ROOT)], env=env, capture_output=True,
                       text=True, timeout=300, check=True).stdout
  assert out.split() == ["''", '[]']


@pytest.mark.parametrize('flag', ['--estimate-only', '--merge'])
def test_commands_that_train_nothing_configure_tensorflow_without_a_gpu(flag, tmp_path, monkeypatch):
  asked = []

  def stop(train=True):
    asked.append(train)
    raise errors.CScoreError('stop here')
  monkeypatch.setattr(devices, 'configure_tensorflow', stop)
  store.open_store(str(tmp_path), store.store_settings(mnist.Config(), 'x'))
  argv = ['--out-dir', str(tmp_path), flag] + ([str(tmp_path / 'other')] if flag == '--merge' else [])
  assert mnist.main(argv) == 1 and asked == [False]


def test_bf16_below_compute_capability_8_is_refused_in_one_line(monkeypatch):
  monkeypatch.setattr(devices, 'gpu_compute_capability', lambda: (7, 0))
  monkeypatch.setattr(devices, 'device_kind', lambda: 'Tesla V100-SXM2-16GB')
  with pytest.raises(errors.CScoreError, match='compute capability 8.0 or newer; Tesla V100-SXM2-16GB has 7.0'):
    devices.check_gpu_precision(mnist.Config(precision='bfloat16'))
  devices.check_gpu_precision(mnist.Config(precision='float32'))  # fp32 is fine there
  monkeypatch.setattr(devices, 'gpu_compute_capability', lambda: (8, 0))
  devices.check_gpu_precision(mnist.Config(precision='bfloat16'))


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


# --- On a real GPU (opt in) -----------------------------------------------------------------------

GPU_SMOKE = '''
import sys; sys.path.insert(0, sys.argv[1])
import numpy as np, mnist
from cscore import devices
devices.configure_tensorflow()
assert devices.accelerators(), 'TensorFlow sees no GPU'
rng = np.random.default_rng(0)
labels = rng.integers(0, 10, 2000).astype(np.int32)
images = rng.integers(0, 60, (2000, 784)).astype(np.uint8)
for digit in range(10):
  images[labels == digit, digit * 78:(digit + 1) * 78] = 255
config = mnist.Config(epochs=2)
gpu = mnist.train_run_group(mnist.EnsembleTrainer(images, labels, config), 0.5, list(range(8)))
with mnist.tf.device('/CPU:0'):
  per_model_chains = devices.layout(config, mnist.layer_sizes(config), stacked=False)
  cpu = mnist.train_run_group(mnist.EnsembleTrainer(images, labels, config, per_model_chains), 0.5, list(range(8)))
assert (gpu.held_out == cpu.held_out).all()
agree = (gpu.correct == cpu.correct)[gpu.held_out].mean()
print(f'{devices.device_kind()}: held-out correctness agrees with the CPU on {agree:.4f}')
assert agree > 0.98, agree
assert np.abs(gpu.confidence - cpu.confidence).max() < 0.05
'''


@pytest.mark.gpu
@pytest.mark.skipif(os.environ.get('CSCORE_GPU_TESTS') != '1', reason='opt-in: CSCORE_GPU_TESTS=1 on a GPU host')
def test_a_tiny_group_trained_on_the_gpu_matches_the_cpus_within_tolerance():
  env = {k: v for k, v in os.environ.items() if k != 'CUDA_VISIBLE_DEVICES'}
  if USERS_CUDA_VISIBLE_DEVICES is not None:
    env['CUDA_VISIBLE_DEVICES'] = USERS_CUDA_VISIBLE_DEVICES
  if not devices.nvidia_smi('-L').strip():
    pytest.skip('no GPU: nvidia-smi lists none')
  result = subprocess.run([sys.executable, '-c', GPU_SMOKE, str(ROOT)], env=env,
                          capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr
