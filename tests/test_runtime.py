"""The runtime (cscore/runtime.py): what is set before TensorFlow loads, and TensorFlow loaded on
its first use."""
import os
import subprocess
import sys

import pytest
import tensorflow

from cscore import runtime
from conftest import ROOT


def test_the_variables_tensorflow_reads_as_it_starts_are_set_on_import_unless_the_user_set_them():
  code = ('import os, sys\nsys.path.insert(0, %r)\nfrom cscore import runtime\n'
          'print(os.environ["TF_CPP_MIN_LOG_LEVEL"], os.environ["CUDA_DEVICE_ORDER"], "tensorflow" in sys.modules)')
  env = {k: v for k, v in os.environ.items() if k not in ('TF_CPP_MIN_LOG_LEVEL', 'CUDA_DEVICE_ORDER')}
  done = subprocess.run([sys.executable, '-c', code % str(ROOT)], env=env, capture_output=True, text=True, timeout=60)
  assert done.stdout.split() == ['2', 'PCI_BUS_ID', 'False']
  mine = subprocess.run([sys.executable, '-c', code % str(ROOT)], capture_output=True, text=True, timeout=60,
                        env=dict(env, TF_CPP_MIN_LOG_LEVEL='0', CUDA_DEVICE_ORDER='FASTEST_FIRST'))
  assert mine.stdout.split() == ['0', 'FASTEST_FIRST', 'False']


def test_the_lazy_tensorflow_is_tensorflow_and_gives_its_version():
  assert runtime.tf.matmul is tensorflow.matmul
  assert runtime.tf.__version__ == tensorflow.__version__


def test_the_lazy_tensorflow_answers_other_probes_without_importing_for_them():
  with pytest.raises(AttributeError):
    runtime.tf.__wrapped__  # noqa: B018: what inspect and mock look for
