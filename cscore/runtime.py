"""The process's runtime settings, in one place: what must be set before TensorFlow loads, the
settings that decide the bits of a CPU's results, and TensorFlow itself, loaded on first use.

  * TF_CPP_MIN_LOG_LEVEL=2 (unless set): no start-up log from TensorFlow's C++ side.
  * CUDA_DEVICE_ORDER=PCI_BUS_ID (unless set): CUDA numbers GPUs fastest first unless told
    otherwise, nvidia-smi by PCI bus; with this an index in CUDA_VISIBLE_DEVICES names the same
    GPU for both (cscore/devices.py reads nvidia-smi). A UUID names one device whatever the order.
  * deterministic(): op determinism and one thread per op, with as many ops at once as cores,
    on a CPU. These decide the bits: with them a rerun, a resume, a shard or another K gives the
    same scores bit for bit.

Both variables are set when this module is imported, which mnist.py does before anything loads
TensorFlow. `tf` is TensorFlow, imported on its first use: --help and a mistyped flag answer at
once instead of after the seconds TensorFlow takes to load."""

import contextlib
import os
import sys
import types

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('CUDA_DEVICE_ORDER', 'PCI_BUS_ID')


@contextlib.contextmanager
def native_stderr_silenced():
  """Hides what native libraries write to stderr (TensorFlow logs some lines before its own
  log level applies); Python's exceptions are raised as usual."""
  sys.stderr.flush()
  saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
  os.dup2(devnull, 2)
  try:
    yield
  finally:
    os.dup2(saved, 2)
    os.close(saved)
    os.close(devnull)


class LazyTensorFlow(types.ModuleType):
  """TensorFlow, imported on first use. Each attribute is looked up through here once, then kept
  on this object, so later uses cost what a module's attribute costs."""

  def __getattr__(self, name):
    if name.startswith('__') and name != '__version__':  # a probe (copy, inspect, mock), not a use
      raise AttributeError(name)
    with native_stderr_silenced():
      import tensorflow
    value = getattr(tensorflow, name)
    setattr(self, name, value)
    return value


tf = LazyTensorFlow('tensorflow')


def deterministic(cores):
  """A CPU's bit-identical results: deterministic ops, and one thread per op with `cores` ops at
  once (the per-model chains' parallelism: one chain per core). Measured at no cost (within
  noise) on the CPU. Call it before TensorFlow's first op; once the runtime has started, its
  thread settings stay as they are."""
  tf.config.experimental.enable_op_determinism()
  with contextlib.suppress(RuntimeError):  # the runtime has started: keep its settings
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(cores)
