"""The GPU layout's compiled epoch and evaluation, audited op by op against TensorFlow's kernel
registry, which the CPU wheel holds too: every op must have a GPU kernel for its dtypes that
keeps its data in device memory, so that nothing crosses to the host and back in a step.
There is no GPU here; this checks by construction what a GPU would run."""
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.framework import kernels

import mnist
from cscore import devices

DEVICE_KINDS = {'GPU', 'DEFAULT'}  # DEFAULT kernels run on any device, a GPU's included
# Graph structure, not computation: the runtime places these itself.
STRUCTURE = {'NoOp', 'Placeholder', 'While', 'StatelessWhile', '_Arg', '_Retval'}
# A host-memory input or output of at most this many elements is a shape, an axis, a slice bound
# or the loop's step counter: TensorFlow keeps those on the host by design, at no cost.
SHAPE_LIMIT = 8


def all_ops(graph):
  """The ops of a graph and of the functions it calls (the while loop's body and condition)."""
  ops = list(graph.get_operations())
  for function in graph._functions.values():  # no public API lists a FuncGraph's functions
    ops += all_ops(function.graph)
  return ops


def type_attrs(op):
  return {a.name: op.get_attr(a.name) for a in op.op_def.attr if a.type == 'type'}


def gpu_kernel(op):
  """The GPU (or any-device) kernel registered for op with its dtypes, or None."""
  attrs = type_attrs(op)
  for kernel in kernels.get_registered_kernels_for_op(op.type).kernel:
    if kernel.device_type in DEVICE_KINDS and all(
        c.name not in attrs or attrs[c.name].as_datatype_enum in c.allowed_values.list.type
        for c in kernel.constraint):
      return kernel
  return None


def tensors_by_arg(op, args, tensors):
  """{argument name: its tensors} for op's inputs or outputs."""
  named, i = {}, 0
  for arg in args:
    count = (op.get_attr(arg.number_attr) if arg.number_attr else
             len(op.get_attr(arg.type_list_attr)) if arg.type_list_attr else 1)
    named[arg.name], i = tensors[i:i + count], i + count
  return named


def is_data(tensor):
  """A tensor that holds data rather than a shape: more than SHAPE_LIMIT elements, or unknown."""
  if tensor.dtype == tf.resource:  # a variable's handle; its buffer is where the variable is
    return False
  n = tensor.shape.num_elements()
  return n is None or n > SHAPE_LIMIT


def host_bound(ops):
  """'op type (dtypes): why' for each op that would run on the host or hold data there, sorted
  (pytest -vv prints the whole list when a test fails)."""
  found = set()
  for op in ops:
    if op.type in STRUCTURE:
      continue
    dtypes = ', '.join(f'{k}={v.name}' for k, v in sorted(type_attrs(op).items()))
    kernel = gpu_kernel(op)
    if kernel is None:
      found.add(f'{op.type} ({dtypes}): no GPU kernel')
      continue
    tensors = {**tensors_by_arg(op, op.op_def.input_arg, list(op.inputs)),
               **tensors_by_arg(op, op.op_def.output_arg, list(op.outputs))}
    for arg in kernel.host_memory_arg:
      if any(is_data(t) for t in tensors.get(arg, [])):
        found.add(f'{op.type} ({dtypes}): {arg} in host memory')
  return sorted(found)


@pytest.fixture(scope='module', params=['float32', 'bfloat16'])
def gpu_layout(request):
  """A trainer in the GPU's layout (K models stacked), compiled for K = 2, and its op types."""
  rng = np.random.RandomState(0)
  images, labels = rng.randint(0, 256, (300, 784)).astype(np.uint8), rng.randint(0, 10, 300)
  config = mnist.Config(runs=2, hidden=(16, 8), batch_size=32, precision=request.param)  # small:
  layout = devices.layout(config, mnist.layer_sizes(config), stacked=True)  # the ops are the same
  trainer = mnist.EnsembleTrainer(images, labels, config, layout=layout)
  trainer.warm_up(2)
  return trainer


def compiled_ops(function):
  return [op for concrete in function._list_all_concrete_functions() for op in all_ops(concrete.graph)]


def test_the_gpu_layouts_training_epoch_keeps_every_op_and_its_data_on_the_gpu(gpu_layout):
  ops = compiled_ops(gpu_layout._state(2)[3])
  audited = {op.type for op in ops}
  assert {'BatchMatMulV2', 'ResourceApplyMomentum', 'ResourceScatterNdAdd'} <= audited  # the loop's body
  assert host_bound(ops) == []


def test_the_gpu_layouts_evaluation_keeps_every_op_and_its_data_on_the_gpu(gpu_layout):
  ops = compiled_ops(gpu_layout._predict)
  assert 'BatchMatMulV2' in {op.type for op in ops}
  assert host_bound(ops) == []


def test_the_audit_finds_an_op_without_a_gpu_kernel_and_int32_data_held_on_the_host():
  @tf.function
  def f(table, rows, labels, guesses):
    return tf.gather(table, rows), guesses == labels
  concrete = f.get_concrete_function(tf.zeros((100, 4), tf.uint8), tf.zeros((64,), tf.int64),
                                     tf.zeros((64,), tf.int32), tf.zeros((64,), tf.int32))
  assert host_bound(all_ops(concrete.graph)) == [
      'Equal (T=int32): x in host memory', 'Equal (T=int32): y in host memory',
      'Equal (T=int32): z in host memory',  # z: the output
      'GatherV2 (Taxis=int32, Tindices=int64, Tparams=uint8): no GPU kernel']
