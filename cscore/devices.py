"""Devices: where the models train and how they are laid out there, decided in one place.

  * configure_tensorflow(): one GPU per process (the first visible, its memory grown as needed),
    or the CPU with the settings that make its results bit-identical (cscore/runtime.py).
  * layout(): the trainer's layout on this device, as a small object: K models stacked in one
    chain (a GPU's) or K chains of one model (a CPU's); the evaluation's size; the hardware
    each stored run records.
  * K (models trained at once) and the evaluation's chunks, from the cores or from the GPU's
    free memory; the line that says where a run trains.
  * GPUs by nvidia-smi, numbered as CUDA numbers them (CUDA_DEVICE_ORDER, cscore/runtime.py):
    which one, its free memory, MIG slices; bf16's limit; the warnings and failures.
  * The host: its cores, its name, its available memory."""

import contextlib
import functools
import os
import platform
import re
import sys
import typing

from cscore import errors
from cscore import runtime


class Layout(typing.NamedTuple):
  """How the trainer lays out and evaluates K models on this process's device (see layout())."""
  stacked: bool      # one chain of all K models, weights stacked [K, ...] (a GPU's), or K chains
                     # of one model each (a CPU's)
  eval_rows: int     # models x examples per evaluation call: bounds its memory
  eval_chunk: int    # examples per evaluation call, whatever K
  hardware: tuple    # (device kind, matmul precision), as each stored run records it


# Evaluation goes EVAL_CHUNK examples at a time, whatever K: in per-model chains (a CPU's) a
# model's predictions, hence its stored correctness, are then the same bit for bit however many
# models trained beside it, on whichever shard.
EVAL_CHUNK = 10_000
# More rows per call gain nothing: at 32 models x 10,000 examples a call is about 0.3 TFLOP,
# milliseconds on any GPU, against tens of microseconds to launch it; its activations take 2 GB.
MAX_EVAL_ROWS = 320_000
# Assumed for a GPU whose memory nvidia-smi cannot tell (none on PATH, an order it cannot map).
UNKNOWN_GPU_MEMORY = 8 * 2**30


def layout(config, sizes, stacked=None, eval_rows=None, eval_chunk=EVAL_CHUNK):
  """The trainer's Layout on this device, for an MLP of layer `sizes`. On a GPU one batched
  matmul per layer for all K models keeps the device busy; on a CPU, TensorFlow's batched matmul
  uses its cores poorly for these small shapes (about 120-140 GFLOP/s on a Zen 4 core pair,
  against 217 for a large matmul), and K independent chains of plain matmuls, one thread each
  and one chain per core at a time, reach 155-180. `stacked`, `eval_rows` and `eval_chunk`
  override the device's choice: to measure a layout (benchmarks/throughput.py) or to test one."""
  return Layout(bool(accelerators()) if stacked is None else stacked,
                eval_rows or default_eval_rows(sizes), eval_chunk,
                (device_kind(), matmul_precision(config)))


def per_model_bytes(sizes, batch_size, n=60000):
  """Training memory of one model of layer `sizes`: weights, momentum and gradients, a batch's
  activations, and its learning record (two floats per example)."""
  weights = sum(i * o + o for i, o in zip(sizes[:-1], sizes[1:]))
  return 4 * (3 * weights + 4 * batch_size * sum(sizes) + 2 * n)


def gpu_free_bytes():
  """Free memory of the GPU this process trains on, as nvidia-smi reads it before TensorFlow
  takes any (memory growth is on, so TensorFlow takes only what it uses)."""
  gpu = visible_gpu()
  return gpu.free if gpu and gpu.free else UNKNOWN_GPU_MEMORY


def default_models_at_once(runs, sizes, batch_size, n=60000):
  """K. On a CPU: enough chains to keep every core busy (8 is as fast as 16 on 2 cores). On a
  GPU: as many as a quarter of its free memory holds (about 10 MB a model: 2,000 on an idle
  80 GB GPU, so there every run of a ratio trains at once)."""
  if accelerators():
    k = gpu_free_bytes() // 4 // per_model_bytes(sizes, batch_size, n)
  else:
    k = max(8, 2 * cpu_cores())
  return int(max(1, min(k, runs)))


def default_eval_rows(sizes):
  """Models x examples per evaluation call: its activations take 4 bytes x sum(layer sizes) a
  row, about 1 GB for 160,000 rows; on a GPU, an eighth of its free memory (with K's quarter,
  the data and TensorFlow's own, well inside it), at most MAX_EVAL_ROWS."""
  if accelerators():
    return int(min(MAX_EVAL_ROWS, gpu_free_bytes() // 8 // (4 * sum(sizes))))
  return 160_000


def device_description(config):
  """Where the models train, for the line that opens a run."""
  if accelerators():
    gpu, count = visible_gpu(), len(gpus_seen())
    notes = [f'{gpu.free / 2**30:.1f} of {gpu.total / 2**30:.1f} GiB free'] if gpu and gpu.free and gpu.total else []
    notes += [f'the first of {count} visible, the others left free'] if count > 1 else []
    where = f'the GPU {gpu.name if gpu else device_kind()}' + (f' ({"; ".join(notes)})' if notes else '')
  else:
    where = f'the CPU ({cpu_name()}, {cpu_cores()} cores)'
  return f'{where}, {config.precision} ({matmul_precision(config)} matmuls)'


class Gpu(typing.NamedTuple):
  """A GPU, or a MIG slice of one, as nvidia-smi lists it; memory in bytes, None if unknown."""
  index: int             # the GPU's nvidia-smi index (the slice's GPU's, for a slice)
  name: str              # e.g. 'NVIDIA A100-SXM4-80GB', or 'NVIDIA A100-SXM4-80GB MIG 1g.10gb'
  uuid: str
  free: typing.Optional[int]
  total: typing.Optional[int]
  slices: tuple = ()     # its MIG slices, each a Gpu


def nvidia_smi(*args):
  """nvidia-smi's output, or '' where it is missing, fails or hangs."""
  import subprocess
  try:
    done = subprocess.run(['nvidia-smi', *args], capture_output=True, text=True, timeout=10)
  except (OSError, subprocess.SubprocessError):
    return ''
  return done.stdout if done.returncode == 0 else ''


NVIDIA_SMI_GPU = re.compile(r'GPU (\d+): (.+?) \(UUID: (GPU-[\w-]+)\)')
NVIDIA_SMI_MIG = re.compile(r'\s+MIG ((?:\d+c\.)?\d+g\.(\d+)gb\S*)\s+Device\s+\d+: \(UUID: (MIG-[\w/-]+)\)')


def nvidia_smi_gpus():
  """[Gpu] that nvidia-smi lists (-L), with their free and total memory (--query-gpu); lines it
  cannot read are left out, so garbage gives []."""
  memory = {}
  for line in nvidia_smi('--query-gpu=uuid,memory.free,memory.total',
                         '--format=csv,noheader,nounits').splitlines():
    fields = [f.strip() for f in line.split(',')]
    if len(fields) == 3 and fields[1].isdigit() and fields[2].isdigit():
      memory[fields[0]] = int(fields[1]) * 2**20, int(fields[2]) * 2**20  # MiB
  gpus = []
  for line in nvidia_smi('-L').splitlines():
    if match := NVIDIA_SMI_GPU.fullmatch(line.strip()):
      index, name, uuid = int(match[1]), match[2], match[3]
      gpus.append(Gpu(index, name, uuid, *memory.get(uuid, (None, None))))
    elif gpus and (match := NVIDIA_SMI_MIG.fullmatch(line.rstrip())):
      gpu, size = gpus[-1], int(match[2]) * 10**9
      mig = Gpu(gpu.index, f'{gpu.name} MIG {match[1]}', match[3], size, size)
      gpus[-1] = gpu._replace(slices=gpu.slices + (mig,))
  return gpus


@functools.cache  # one look, however many ask
def visible_gpu():
  """The device CUDA gives this process first (see cscore/runtime.py), as nvidia-smi knows it: a Gpu, or
  None if there is none or it cannot be told which it is (an index under CUDA's own order on a
  machine of several GPUs)."""
  visible = os.environ.get('CUDA_VISIBLE_DEVICES')
  first = '0' if visible is None else visible.split(',')[0].strip()
  gpus = nvidia_smi_gpus()
  if first.isdigit():
    if len(gpus) > 1 and os.environ.get('CUDA_DEVICE_ORDER') != 'PCI_BUS_ID':
      return None
    found = [g for g in gpus if g.index == int(first)]
  else:  # a UUID or its unique start, as CUDA accepts; '' or -1 hide every GPU
    found = [d for g in gpus for d in (g, *g.slices) if first.startswith(('GPU-', 'MIG-')) and d.uuid.startswith(first)]
  if len(found) != 1:
    return None
  return found[0].slices[0] if found[0].slices else found[0]


@functools.cache  # the devices do not change within a process
def gpus_seen():
  """The GPUs TensorFlow sees. Its first device query also starts its runtime, which logs
  (e.g. a failed CUDA init on a CPU machine) past TF_CPP_MIN_LOG_LEVEL: hence the silence."""
  with runtime.native_stderr_silenced():
    return runtime.tf.config.list_physical_devices('GPU')


@functools.cache
def accelerators():
  """The GPU this process trains on, as a list of one (or none): the first TensorFlow may use,
  the others hidden from it, so that a process holds no memory of GPUs it does not use. Memory
  growth is on, so that TensorFlow takes what it uses, not nearly all of the GPU: a second
  process, or an --estimate-only beside running shards, still finds room. Call it before
  TensorFlow's first op (configure_tensorflow does), when both settings can still be made."""
  gpus = runtime.tf.config.get_visible_devices('GPU')[:1] if gpus_seen() else []
  with contextlib.suppress(RuntimeError):  # the runtime has started (tests): keep its settings
    for gpu in gpus:
      runtime.tf.config.experimental.set_memory_growth(gpu, True)
    runtime.tf.config.set_visible_devices(gpus, 'GPU')
  return gpus


def hide_gpus():
  """For a command that trains nothing (--estimate-only, --merge): no GPU, not even CUDA
  started, so that it takes no GPU memory beside running shards."""
  os.environ['CUDA_VISIBLE_DEVICES'] = ''  # read when CUDA starts, and by visible_gpu()
  if 'tensorflow' in sys.modules:  # loaded already (tests): hide them from it too
    with contextlib.suppress(RuntimeError):
      runtime.tf.config.set_visible_devices([], 'GPU')
  for cached in (accelerators, visible_gpu, device_kind):
    cached.cache_clear()


def gpu_unseen_warning():
  """One line when nvidia-smi lists a GPU for this process but TensorFlow sees none (so the run
  would train on the CPU without a word); None otherwise."""
  if accelerators() or (gpu := visible_gpu()) is None:
    return None
  return (f'mnist.py: warning: nvidia-smi lists {gpu.name} but TensorFlow sees no GPU, so this run '
          'trains on the CPU. Most likely TensorFlow lacks its CUDA libraries (pip install '
          '"tensorflow[and-cuda]") or the driver is older than its CUDA needs; see docs/gpu.md. '
          'CUDA_VISIBLE_DEVICES="" silences this')


def check_gpu_precision(config):
  """bf16 needs a GPU of compute capability 8.0 (Ampere) or newer: older ones have no bf16
  matmul units, and TensorFlow runs it slowly or not at all."""
  capability = gpu_compute_capability()
  if config.precision == 'bfloat16' and capability and capability < (8, 0):
    raise errors.CScoreError(f'--precision bfloat16 needs a GPU of compute capability 8.0 or newer; '
                             f'{device_kind()} has {capability[0]}.{capability[1]}: use float32')


def gpu_compute_capability():
  """(major, minor) of the GPU this process trains on; None on a CPU, or if TensorFlow does not
  say."""
  gpus = accelerators()
  capability = gpus and runtime.tf.config.experimental.get_device_details(gpus[0]).get('compute_capability')
  return tuple(capability) if capability else None


def failure_line(error):
  """What to do when the device fails: out of memory, or CUDA failing to start."""
  if gpu_failed_to_start(error):
    return (f'the GPU failed to start ({errors.first_line(error)}); check it with nvidia-smi (another '
            'process holding it, a driver older than TensorFlow\'s CUDA needs), or train on the CPU '
            'with CUDA_VISIBLE_DEVICES=""')
  if not isinstance(error, MemoryError) and accelerators():  # a device's: TensorFlow is loaded
    return ('the GPU ran out of memory (nvidia-smi shows who else uses it); use a smaller '
            '--models-at-once')
  return 'out of memory; use a smaller --models-at-once or --batch-size'


# What TensorFlow's errors say when CUDA fails to initialise (a driver too old for TensorFlow's
# CUDA, a GPU in a bad state or held exclusively by another process), not later CUDA errors.
CUDA_START_FAILURES = ('cuInit', 'implicit initialization', 'CUDA_ERROR_', 'cudaSetDevice', 'cudaGetDevice')


def gpu_failed_to_start(error):
  """Whether an error is CUDA failing to initialise: an InternalError that says so."""
  tensorflow = sys.modules.get('tensorflow')
  return (tensorflow is not None and isinstance(error, tensorflow.errors.InternalError)
          and any(words in str(error) for words in CUDA_START_FAILURES))


def available_memory():
  """Bytes of memory available now (Linux's MemAvailable; elsewhere the free pages), or None."""
  with contextlib.suppress(OSError, ValueError, IndexError):
    with open('/proc/meminfo') as f:
      for line in f:
        if line.startswith('MemAvailable:'):
          return int(line.split()[1]) * 1024
  with contextlib.suppress(OSError, ValueError, AttributeError):
    return os.sysconf('SC_AVPHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')
  return None


def cpu_cores():
  """The cores this process may run on."""
  return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()


def cpu_name():
  """The CPU's model name, as lscpu gives it."""
  with contextlib.suppress(OSError):
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  return platform.processor() or platform.machine()


def configure_tensorflow(train=True):
  """Call it before TensorFlow's first op. A command that trains nothing (train=False) hides the
  GPUs. On a GPU: one, its memory grown as needed (accelerators()). On a CPU: the settings that
  make its results bit-identical (runtime.deterministic)."""
  if not train:
    hide_gpus()
  runtime.tf.get_logger().setLevel('ERROR')  # not its retracing notes
  if accelerators():
    visible_gpu()  # its free memory, read before TensorFlow takes any
    return
  runtime.deterministic(cpu_cores())


@functools.cache
def device_kind():
  """What trains here, as each stored run records it: 'CPU', or the first GPU's name."""
  gpus = accelerators()
  if not gpus:
    return 'CPU'
  return runtime.tf.config.experimental.get_device_details(gpus[0]).get('device_name', 'GPU')


def matmul_precision(config):
  """How the matmuls round: 'bf16', 'tf32' (float32 on an Ampere or newer GPU, where TensorFlow
  uses TensorFloat-32 by default) or 'fp32'."""
  if config.precision == 'bfloat16':
    return 'bf16'
  capability = gpu_compute_capability()
  if capability and capability >= (8, 0) and runtime.tf.config.experimental.is_tensor_float_32_execution_enabled():
    return 'tf32'
  return 'fp32'

