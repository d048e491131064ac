"""Checks mnist.py on this machine's GPU, in one command: for a user with a GPU, and for whoever
first gets one (the project has never run on a GPU; see docs/gpu.md).

    python benchmarks/gpu_check.py [--out-dir DIR] [--manual-dir DIR] [--reference PATH] [--quick]

It prints, step by step:
  1. the GPUs nvidia-smi lists and those TensorFlow sees (with none: one line saying so, and
     it stops, exit status 0);
  2. one group of K = 200 models trained with TensorFlow's device placement logged: every op
     placed on the host is listed (there should be none). An op placed on the GPU may still keep
     an input in host memory; tests/test_gpu_kernels.py checks that, by construction;
  3. benchmarks/throughput.py's trainer slice: the epochs timed apart from the host's draws;
  4. two processes training at once on the one GPU, to show that they share it (memory growth);
  5. python mnist.py --runs 16, then benchmarks/agreement.py on its scores (--quick skips this
     step, about 144 models).
A step that fails says so and the check goes on; the exit status is 1 if any did.
"""
import argparse
import collections
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import mnist  # noqa: E402
from cscore import devices  # noqa: E402

# One line of TensorFlow's device placement log: "name: (OpType): /job:.../device:GPU:0".
PLACEMENT = re.compile(r'^(\S+): \((\w+)\): /job:[^\s]*/device:(CPU|GPU):\d+\s*$')

TRAIN_ONE_GROUP = '''
import sys; sys.path.insert(0, sys.argv[1])
import numpy as np, mnist
from cscore import devices
devices.configure_tensorflow()
mnist.tf.debugging.set_log_device_placement(True)
k = int(sys.argv[2])
rng = np.random.default_rng(0)
images = rng.integers(0, 256, (60000, 784)).astype(np.uint8)
labels = rng.integers(0, 10, 60000).astype(np.int32)
trainer = mnist.EnsembleTrainer(images, labels, mnist.Config(epochs=1))
group = mnist.train_run_group(trainer, 0.5, list(range(k)))
print(f'trained {k} models on {devices.device_kind()}; held-out accuracy {group.correct[group.held_out].mean():.3f}')
'''


# Placed on the host by design: a function's inputs and outputs, constants made from NumPy
# (each epoch's batch orders, copied over once an epoch), graph structure.
EXPECTED_ON_HOST = {'_Arg', '_Retval', '_EagerConst', 'Const', 'NoOp'}


def host_placed_ops(log):
  """{op type: count} of the ops a placement log puts on the CPU, but for EXPECTED_ON_HOST."""
  return collections.Counter(m[2] for line in log.splitlines()
                             if (m := PLACEMENT.match(line.strip())) and m[3] == 'CPU'
                             and m[2] not in EXPECTED_ON_HOST)


def python(*args, env=None, timeout=3600):
  return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True,
                        env=env, timeout=timeout)


def step(title):
  print(f'\n== {title}', flush=True)


def list_devices():
  """Step 1: the GPUs nvidia-smi lists and TensorFlow sees; False if TensorFlow sees none."""
  devices.configure_tensorflow()
  seen = devices.gpus_seen()
  if not seen:
    listed = [g.name for g in devices.nvidia_smi_gpus()]
    print('no GPU: TensorFlow sees none' + (
        f', though nvidia-smi lists {", ".join(listed)}: TensorFlow likely lacks its CUDA libraries '
        '(pip install "tensorflow[and-cuda]", docs/gpu.md) or CUDA_VISIBLE_DEVICES hides them' if listed
        else ' and nvidia-smi lists none: nothing to check on this machine'))
    return False
  step('1. devices')
  for gpu in devices.nvidia_smi_gpus():
    print(f'nvidia-smi: GPU {gpu.index}: {gpu.name} ({gpu.uuid}), '
          + (f'{gpu.free / 2**30:.1f} of {gpu.total / 2**30:.1f} GiB free' if gpu.total else 'memory unknown')
          + ''.join(f'\n  MIG slice {s.name} ({s.uuid})' for s in gpu.slices))
  print(f'TensorFlow sees {len(seen)} GPU(s): {", ".join(d.name for d in seen)}; mnist.py trains on '
        f'{devices.device_description(mnist.Config())}')
  print(f'compute capability {devices.gpu_compute_capability()}; TensorFlow {mnist.tf.__version__}')
  return True


def placement(k):
  """Step 2: one group of k models with device placement logged; True if no op ran on the host."""
  step(f'2. one group of K = {k} models, device placement logged')
  start = time.perf_counter()
  done = python('-c', TRAIN_ONE_GROUP, ROOT, k)
  log = done.stdout + done.stderr
  if done.returncode:
    print(f'FAILED (exit {done.returncode}):\n{log[-3000:]}')
    return False
  print(next((line for line in done.stdout.splitlines() if line.startswith('trained')), ''),
        f'in {time.perf_counter() - start:.0f} s (TensorFlow start and compilation included)')
  on_host = host_placed_ops(log)
  placed = sum(1 for line in log.splitlines() if PLACEMENT.match(line.strip()))
  if not placed:
    print('TensorFlow logged no placements: cannot tell (its log format may have changed)')
    return False
  if on_host:
    print(f'{sum(on_host.values())} of {placed} logged placements are on the host (not counting '
          f'{", ".join(sorted(EXPECTED_ON_HOST))}): '
          + ', '.join(f'{op} x{n}' for op, n in on_host.most_common()))
    return False
  print(f'all {placed} logged placements are on the GPU, but for {", ".join(sorted(EXPECTED_ON_HOST))}')
  return True


def throughput():
  """Step 3: the trainer's speed, epochs apart from the host's draws."""
  step('3. throughput (benchmarks/throughput.py, epochs timed apart from the host\'s draws)')
  bf16 = (devices.gpu_compute_capability() or (0, 0)) >= (8, 0)
  done = python(ROOT / 'benchmarks' / 'throughput.py', '--record-repeats', '0', '--backward-repeats', '0',
                *([] if bf16 else ['--skip-bf16']))
  print(done.stdout.rstrip() or done.stderr[-3000:])
  return done.returncode == 0


def two_processes(data_dir, manual_dir):
  """Step 4: two tiny runs at once on the one GPU; True if both finish."""
  step('4. two processes at once on one GPU')
  mnist.load_mnist(data_dir, manual_dir)  # prepared once, before two processes would both try
  with tempfile.TemporaryDirectory() as out:
    common = ['--runs', '16', '--epochs', '1', '--ratios', '0.5', '--models-at-once', '16']
    common += (['--data-dir', data_dir] if data_dir else []) + (['--manual-dir', manual_dir] if manual_dir else [])
    procs = [subprocess.Popen([sys.executable, ROOT / 'mnist.py', *common, '--out-dir', os.path.join(out, str(i))],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    results = []
    for p in procs:
      try:
        stdout, stderr = p.communicate(timeout=3600)
      except subprocess.TimeoutExpired:
        p.kill()
        stdout, stderr = p.communicate()
      results.append((p.returncode, stdout, stderr))
  for i, (code, stdout, stderr) in enumerate(results):
    print(f'process {i}: exit {code}' + ('' if code == 0 else f': {stderr.strip().splitlines()[-1:]}'))
  return all(code == 0 for code, *_ in results)


def agreement(out_dir, data_dir, manual_dir, reference):
  """Step 5: --runs 16 and its agreement with the published scores."""
  step(f'5. python mnist.py --runs 16 --out-dir {out_dir}, then benchmarks/agreement.py')
  start = time.perf_counter()
  run = python(ROOT / 'mnist.py', '--runs', '16', '--out-dir', out_dir,
               *(['--data-dir', data_dir] if data_dir else []), *(['--manual-dir', manual_dir] if manual_dir else []),
               timeout=24 * 3600)
  print('\n'.join(line for line in run.stdout.splitlines() if line.strip()))
  if run.returncode:
    print(f'FAILED (exit {run.returncode}): {run.stderr.strip().splitlines()[-1:]}')
    return False
  print(f'wall time {time.perf_counter() - start:.0f} s')
  done = python(ROOT / 'benchmarks' / 'agreement.py', os.path.join(out_dir, 'cscores.npy'),
                *(['--reference', reference] if reference else []))
  print(done.stdout.rstrip() or done.stderr.strip())
  return done.returncode == 0


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--out-dir', default='gpu-check', help='where step 5 writes (default: ./gpu-check)')
  p.add_argument('--data-dir', help="tensorflow-datasets' data folder, as mnist.py's")
  p.add_argument('--manual-dir', help="MNIST's four files, as mnist.py's (offline)")
  p.add_argument('--reference', help="the published scores, as agreement.py's (offline)")
  p.add_argument('--k', type=int, default=200, help='models of step 2 (default: 200)')
  p.add_argument('--quick', action='store_true', help='skip step 5')
  args = p.parse_args()
  if not list_devices():
    return 0
  checks = [placement(args.k), throughput(), two_processes(args.data_dir, args.manual_dir)]
  if not args.quick:
    checks.append(agreement(args.out_dir, args.data_dir, args.manual_dir, args.reference))
  print(f'\n{sum(checks)} of {len(checks)} steps passed')
  return 0 if all(checks) else 1


if __name__ == '__main__':
  sys.exit(main())
