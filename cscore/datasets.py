"""Data sets and files: which data a command scores (one place decides: MNIST, another image data
set of tensorflow-datasets, or the user's own .npz), tfds' preparation (once, quietly, MNIST
offline from the official files, processes starting together taking turns), .npz files read
without pickle, and every source checked, against the machine's memory too, before anything is
written. MNIST itself is loaded by mnist.py, in the authors' order; the loader here calls it."""

import contextlib
import io
import logging
import os
import socket
import time
import typing
import zipfile

import numpy as np

from cscore import devices
from cscore import errors
from cscore import locks
from cscore import runtime
from cscore import store


class Data(typing.NamedTuple):
  """The examples to score, in the scores' order."""
  name: str           # names the figures: mnist -> mnist-examples.pdf
  x: np.ndarray       # [n, inputs]: uint8 pixels, which the trainer scales to [0, 1], or
                      # float32 features, standardized
  y: np.ndarray       # [n] int32: the class of each, 0 .. C-1
  class_names: tuple  # C names, for the figures
  shape: tuple        # one example as a picture: (28, 28) for MNIST, (H, W, 3) in colour;
                      # None for features
  label_values: tuple = ()  # the file's own labels of classes 0 .. C-1 (an npz's), if not those
  fingerprint: str = ''     # of the arrays as read (an npz's), if not of x and y: standardized
                            # features may differ in their last bit from one NumPy to another


def loader(data, dataset, data_dir, mnist):
  """The one place that decides the data a command scores. Returns a function that loads them:
  the user's own arrays (`data`, FILE.npz), read and checked now, before anything is written; an
  image data set of tensorflow-datasets (`dataset`, a name), checked now and loaded when called;
  or MNIST: `mnist`, mnist.py's loader, called then. (Loading goes through TensorFlow, which must
  be configured first.)"""
  if data is not None:
    arrays = npz_data(data)
    return lambda: arrays
  if dataset not in (None, 'mnist'):
    builder, image, label = tfds_builder(dataset, data_dir)
    name = dataset.split(':')[0].replace('/', '_')  # emnist/digits -> emnist_digits
    return lambda: tfds_data(name, builder, image, label)
  return mnist


def prepared_lines(data, data_dir):
  """What --prepare-only prints: the data set, its size, and where later commands will find it."""
  where = (f'in {data_dir}' if data_dir else "in tensorflow-datasets' default data dir "
           '($TFDS_DATA_DIR, else ~/tensorflow_datasets)')
  return [f'{data.name}: {len(data.y):,} training examples of {len(data.class_names)} classes, ready '
          f'{where}; trained nothing. Commands with the same --data-dir now need no network.']


def npz_data(path):
  """The user's own arrays from an .npz, loaded without pickle, in the file's order: x [n, ...]
  and y [n] integer labels, with class_names optional (in the sorted order of y's values).
  uint8 x of shape [n, H, W] or [n, H, W, 1 or 3] are images, scaled as MNIST's; any other x
  are numeric features, flattened and standardized per feature (a constant one gives 0). Labels
  are mapped to 0 .. C-1 in sorted order."""
  arrays = read_npz(path, ('x', 'y'), optional=('class_names',))
  x, y = arrays['x'], arrays['y']
  if x.dtype.kind not in 'iufb' or x.ndim < 2 or 0 in x.shape:
    raise errors.CScoreError(f'{path}: x must be a numeric array of examples, [n, ...], none empty, not '
                             f'{x.dtype} shaped {list(x.shape)}')
  if y.ndim != 1 or len(x) != len(y):
    raise errors.CScoreError(f'{path}: x holds {len(x)} examples but y is shaped {list(y.shape)}: y must be '
                             'one label per example')
  if y.dtype.kind not in 'iu':
    raise errors.CScoreError(f'{path}: y must be integer labels, not {y.dtype}')
  if x.dtype.kind == 'f' and not np.isfinite(x).all():
    raise errors.CScoreError(f'{path}: x holds NaN or inf ({int((~np.isfinite(x)).sum())} values)')
  values, y = np.unique(y, return_inverse=True)
  if len(values) < 2:
    raise errors.CScoreError(f'{path}: y holds one class only ({values[0]}): a C-score needs at least two')
  if len(values) > len(y) // 2:
    raise errors.CScoreError(f'{path}: y holds {len(values)} classes for {len(y)} examples, more than half '
                             'as many: labels, not example indices, are needed')
  names = tuple(str(v) for v in values)
  if 'class_names' in arrays:
    given = arrays['class_names']
    if given.ndim != 1 or given.dtype.kind not in 'US' or len(given) != len(values):
      raise errors.CScoreError(f'{path}: class_names must be {len(values)} strings, one per class of y in '
                               f'sorted order, not {given.dtype} shaped {list(given.shape)}')
    names = tuple(v.decode() if isinstance(v, bytes) else str(v) for v in given)
  fingerprint = store.data_fingerprint(x, y)  # before any change: the file's own arrays
  pictures = x.dtype == np.uint8 and (x.ndim == 3 or x.ndim == 4 and x.shape[-1] in (1, 3))
  if pictures:  # grayscale [H, W] (a channel of 1 dropped), or colour [H, W, 3]
    shape, x = (x.shape[1:] if x.ndim == 4 and x.shape[-1] == 3 else x.shape[1:3]), x.reshape(len(x), -1)
  else:
    shape, x = None, standardized(x.reshape(len(x), -1))
  return Data(os.path.splitext(os.path.basename(path))[0], x, y.astype(np.int32), names, shape,
              tuple(values.tolist()), fingerprint)  # the file's labels, as Python ints of any size


def standardized(features):
  """Each feature to mean 0 and standard deviation 1, float32; a constant feature to 0."""
  features = features.astype(np.float64)
  std = features.std(0)
  return ((features - features.mean(0)) / np.where(std > 0, std, 1)).astype(np.float32)


MNIST_FILES = ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz',
               't10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz')
MNIST_HOST = 'storage.googleapis.com'  # where tfds downloads MNIST from


def prepare_once(builder, manual_dir):
  """Prepares the tfds builder's data set unless it is prepared: one line of ours instead of
  tfds' bars and notes, and a one-line error offline or on a bad file. Processes that start at
  once on a fresh data dir (a job array's shards) take turns: the first prepares it, the others
  wait and read it. Returns the builder to read: a new one if another process prepared it (a
  builder made before knows no splits)."""
  import tensorflow_datasets as tfds
  tfds.disable_progress_bar()
  logging.getLogger('absl').setLevel(logging.ERROR)
  if builder.is_prepared():
    return builder
  root = str(builder.data_dir)[:-len(builder.info.full_name) - 1]  # DATA_DIR/mnist/3.0.1
  os.makedirs(root, exist_ok=True)
  with open(os.path.join(root, '.cscore-prepare.lock'), 'a+') as turn:
    while not locks.try_lock(turn, True):  # the OS drops it with its holder, even on kill -9
      time.sleep(1)
    if builder.is_prepared():  # by another process, while this one waited
      name_and_config = builder.info.full_name.rsplit('/', 1)[0]
      return tfds.builder(f'{name_and_config}:{builder.version}', data_dir=root)
    prepare(builder, manual_dir)
  return builder


def tfds_name(builder):
  """The name --dataset takes for a builder: fashion_mnist, emnist/digits."""
  config = getattr(builder, 'builder_config', None)
  return f'{builder.name}/{config.name}' if config and builder.name != 'mnist' else builder.name


def prepare(builder, manual_dir):
  """Downloads and prepares the data set (MNIST from manual_dir's official files, if given)."""
  name = 'MNIST' if builder.name == 'mnist' else builder.name
  config = mnist_download_config(manual_dir)
  if manual_dir is None and not proxied() and not network_reachable():
    if builder.name != 'mnist':
      raise errors.CScoreError(
          f'{name} is not prepared in {builder.data_dir} and the network cannot be reached. Prepare '
          f'it on a machine online (python mnist.py --dataset {tfds_name(builder)} --prepare-only '
          '--data-dir DIR), copy DIR here and pass it as --data-dir.')
    raise errors.CScoreError(
        f'MNIST is not prepared in {builder.data_dir} and {MNIST_HOST} cannot be reached. '
        'Offline, pass --manual-dir DIR, a folder holding the four official MNIST files '
        f'({", ".join(MNIST_FILES)}).')
  print(f'preparing {name} in {builder.data_dir} (once)', flush=True)  # once the checks have passed
  try:
    with contextlib.redirect_stdout(io.StringIO()):  # tfds' own lines: ours above says it
      builder.download_and_prepare(download_config=config)
  except Exception as e:  # tfds' checksum and download errors: keep their first line
    raise errors.CScoreError(f'preparing {name} failed: {errors.first_line(e)}') from e


def mnist_download_config(manual_dir):
  """tfds download settings: the official files from manual_dir when given."""
  import tensorflow_datasets as tfds
  if manual_dir is None:
    return tfds.download.DownloadConfig()
  if not os.path.isdir(manual_dir):
    raise errors.CScoreError(f'--manual-dir {manual_dir} is not a folder')
  missing = [f for f in MNIST_FILES if not os.path.isfile(os.path.join(manual_dir, f))]
  if missing:
    raise errors.CScoreError(f'--manual-dir {manual_dir}: missing {", ".join(missing)} '
                             f'(it must hold the four official MNIST files: {", ".join(MNIST_FILES)})')
  return tfds.download.DownloadConfig(manual_dir=manual_dir)


def network_reachable(host=MNIST_HOST, timeout=5.0):
  """Whether the download host resolves and answers; tfds itself retries for minutes."""
  try:
    socket.create_connection((host, 443), timeout=timeout).close()
    return True
  except OSError:
    return False


def proxied():
  """Behind a proxy the host may not resolve here, yet tfds' download works."""
  return any(os.environ.get(v) for v in ('HTTPS_PROXY', 'https_proxy', 'ALL_PROXY', 'all_proxy'))


def tfds_builder(name, data_dir):
  """(builder, image feature, label feature) of an image classification data set of
  tensorflow-datasets, checked: known, with an image and a label feature, images of one shape,
  its train split small enough for this machine's memory."""
  with runtime.native_stderr_silenced():
    import tensorflow_datasets as tfds
  logging.getLogger('absl').setLevel(logging.ERROR)
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # DatasetNotFoundError, or a bad config name
    raise errors.CScoreError(f'--dataset {name}: {errors.first_line(e)} List the names with: python -c '
                             '"import tensorflow_datasets as tfds; print(tfds.list_builders())"') from e
  features = builder.info.features
  image, label = (features[k] if k in features.keys() else None for k in ('image', 'label'))
  if not isinstance(image, tfds.features.Image) or not isinstance(label, tfds.features.ClassLabel):
    raise errors.CScoreError(f'--dataset {name}: not an image classification data set: it needs an image '
                             f'and a label feature, and has {", ".join(features.keys())}')
  if None in image.shape:
    raise errors.CScoreError(f'--dataset {name}: its images vary in shape ({image.shape}); the MLP needs '
                             'one shape: resize them and pass them with --data FILE.npz')
  if image.np_dtype != np.uint8:
    raise errors.CScoreError(f'--dataset {name}: its images are {image.np_dtype}, not 8-bit pixels; pass them, '
                             'scaled as you need, with --data FILE.npz')
  check_train_split_fits(name, builder, image)  # known once prepared (metadata)
  return builder, image, label


def check_train_split_fits(name, builder, image):
  """Refuses a data set without a train split, or one too large for this machine's memory, if
  its splits are known (they are once it is prepared)."""
  if builder.info.splits and 'train' not in builder.info.splits:
    raise errors.CScoreError(f'--dataset {name}: it has no train split (only {", ".join(builder.info.splits)})')
  if 'train' in builder.info.splits:
    n = builder.info.splits['train'].num_examples
    check_fits_in_memory(f'--dataset {name}', 2 * n * (int(np.prod(image.shape)) + 8))  # loaded, then flattened


def tfds_data(name, builder, image, label):
  """The train split of a checked tfds builder, prepared once (downloaded), in tfds' order."""
  builder = prepare_once(builder, None)
  check_train_split_fits(name, builder, image)  # before loading it whole
  x, y = [], []
  for batch in builder.as_dataset(split='train', shuffle_files=False).batch(10_000).as_numpy_iterator():
    x.append(batch['image'].reshape(len(batch['image']), -1))
    y.append(batch['label'])
  shape = image.shape[:2] if image.shape[-1] == 1 else image.shape
  return Data(name, np.concatenate(x), np.concatenate(y).astype(np.int32), tuple(label.names), shape)


def read_npz(path, required, optional=()):
  """{name: array} of an .npz's required and optional members, read without pickle; one-line
  errors for a file that is missing, not an npz, lacks a member or needs pickle."""
  if not os.path.isfile(path):
    raise errors.CScoreError(f'{path}: cannot read it (no such file)')
  if not zipfile.is_zipfile(path):
    raise errors.CScoreError(f'{path} is not a NumPy .npz file of x and y (numpy.savez writes one)')
  check_fits_in_memory(path, npz_memory(npz_members(path)))
  try:
    with np.load(path, allow_pickle=False) as f:
      missing = [k for k in required if k not in f.files]
      if missing:
        raise errors.CScoreError(f'{path} has no {" or ".join(missing)} (it holds {", ".join(f.files) or "nothing"}); '
                                 'it needs x, the examples, and y, their labels')
      return {k: f[k] for k in (*required, *optional) if k in f.files}
  except ValueError as e:  # numpy's words for an object array: "Object arrays cannot be loaded..."
    if 'allow_pickle' in str(e):
      raise errors.CScoreError(f'{path} needs pickle to load (an array of Python objects); save plain '
                               'numeric arrays, and class_names as strings') from e
    raise errors.CScoreError(f'{path} is not a NumPy .npz file ({errors.first_line(e)})') from e
  except (OSError, EOFError, zipfile.BadZipFile) as e:
    raise errors.CScoreError(f'{path}: cannot read it ({errors.first_line(e)})') from e


def npz_members(path):
  """{name: (shape, dtype)} of an .npz's arrays, read from their headers (nothing is loaded);
  {} if it cannot tell (np.load then says what is wrong)."""
  try:
    members = {}
    with zipfile.ZipFile(path) as z:
      for name in z.namelist():
        with z.open(name) as f:
          header = {(1, 0): np.lib.format.read_array_header_1_0,
                    (2, 0): np.lib.format.read_array_header_2_0}[np.lib.format.read_magic(f)]
          shape, _, dtype = header(f)
        members[name.removesuffix('.npy')] = tuple(shape), dtype
    return members
  except Exception:  # not a zip, not .npy members, a header numpy cannot read
    return {}


def npz_memory(members):
  """Bytes that loading and preparing an .npz takes at its peak: its arrays, and for x one more
  copy of images, or, for features, the float64 and float32 copies that standardizing makes
  (about 28 bytes a value)."""
  size = lambda shape, dtype: int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
  total = sum(size(*m) for m in members.values())
  if 'x' in members:
    shape, dtype = members['x']
    pictures = dtype == np.uint8 and len(shape) in (3, 4)
    total += size(shape, dtype) if pictures else 28 * int(np.prod(shape, dtype=np.int64))
  return total


def check_fits_in_memory(what, nbytes):
  """Refuses data whose loading and preparing would take more than the memory available now
  (`nbytes`: their peak, copies included)."""
  available = devices.available_memory()
  if available and nbytes > available:
    raise errors.CScoreError(f'{what}: loading and preparing it takes about {size_text(nbytes)}; '
                             f'this machine has {size_text(available)} available')


def size_text(nbytes):
  """Bytes in MB or GB, for a line."""
  return f'{nbytes / 2**30:.1f} GB' if nbytes >= 2**30 else f'{nbytes / 2**20:.1f} MB'

