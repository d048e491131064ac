"""The results store: every finished run on disk, saved as it finishes, by one process or by
many, and read back as the estimator's input.

  OUT/cscore-runs/settings.json     what the runs depend on (training settings, data hash)
  OUT/cscore-runs/runs-*.npz        one file per group of runs: ratio, seeds, held-out and
                                    correct masks (bit-packed), the learning record, the
                                    device and matmul precision that trained them, and the
                                    seconds it took
  OUT/cscore-runs/shards-*.json     the protocol shards were started for (cscore/shards.py)
  OUT/cscore-runs/.lock*            the operating system's locks (cscore/locks.py)

Each file is written to a temporary name and renamed, so a killed process never leaves half a
file; settings.json is created exclusively, so two processes starting at once agree on it. A run
is keyed by (ratio, seed): its subset, batches and initialisation depend on nothing else."""

import contextlib
import hashlib
import json
import os
import time
import typing

import numpy as np

from cscore import errors
from cscore import files


# What a trained run depends on. A results store made with other values is refused, not mixed in.
# (The data, and with them the inputs and classes, are checked by their fingerprint.)
TRAINING_SETTINGS = ('epochs', 'batch_size', 'learning_rate', 'momentum', 'hidden', 'precision')


def run_seeds(config):
  """The seeds of the command's runs at each ratio: seed, seed + 1, ..., seed + runs - 1."""
  return range(config.seed, config.seed + config.runs)


def ratio_key(ratio):
  """A ratio as the key of its runs: 0.3 and 0.1 + 0.2 are one ratio."""
  return round(float(ratio), 6)


class Run(typing.NamedTuple):
  """One run as the results store keeps it and the estimator reads it."""
  held_out: np.ndarray    # [n] bool
  correct: np.ndarray     # [n] bool
  hits: np.ndarray        # [m] over the run's subset, in example order: epochs in which it was
                          # classified correctly while trained on
  confidence: np.ndarray  # [m] uint8: its mean probability of the label over the epochs, x 255
  epochs: int
  hardware: tuple         # the device kind and how its matmuls round, e.g. ('CPU', 'fp32')
  file: str = ''          # the store file it came from
  alternates: int = 0     # other records of this run, from other hardware, set aside
  seconds: float = float('nan')  # its share of its group's training time (NaN: not recorded)


def group_runs(group, epochs, hardware, seconds=float('nan')):
  """[Run] of a RunGroup that trained in `seconds`: the learning record kept only over each
  run's subset, its confidence quantized to 8 bits (round(255 p): within 0.002)."""
  return [Run(h, c, hits[~h].round().astype(np.min_scalar_type(epochs)),
              np.rint(p[~h] * 255).clip(0, 255).astype(np.uint8), epochs, hardware,
              seconds=seconds / len(group.held_out))
          for h, c, hits, p in zip(*group)]


def finished_runs(runs, config, ratio):
  """[Run] of the command's runs at `ratio` that are done, in seed order."""
  return [runs[ratio_key(ratio), s] for s in run_seeds(config) if (ratio_key(ratio), s) in runs]


STORE_DIR = 'cscore-runs'
SETTINGS_FILE = 'settings.json'


def store_settings(config, fingerprint):
  """What the store records, and checks, of the settings that made its runs."""
  s = {k: getattr(config, k) for k in TRAINING_SETTINGS}
  s['hidden'] = list(s['hidden'])
  s['data'] = fingerprint
  return s


def data_fingerprint(images, labels):
  """A short hash of the data, so that a store is never mixed with runs on other data."""
  h = hashlib.sha256()
  h.update(np.ascontiguousarray(images).tobytes())
  h.update(np.ascontiguousarray(labels).astype(np.int64).tobytes())
  return f'{len(labels)}:{h.hexdigest()[:16]}'


def clear_leftovers(out_dir, path, tag):
  """Deletes what killed writes left: every temporary file when this process has the store to
  itself (tag ''), else only those of its own tag (a restarted shard's)."""
  for folder in ((path,) if tag else (out_dir, path)):
    for name in os.listdir(folder):
      if name.startswith(f'{files.TEMP_PREFIX}{tag}-' if tag else files.TEMP_PREFIX):
        with contextlib.suppress(FileNotFoundError):
          os.unlink(os.path.join(folder, name))


def read_settings(path):
  """The store's settings.json, as a dict; one line if it is unreadable."""
  settings_path = os.path.join(path, SETTINGS_FILE)
  for attempt in range(3):
    try:
      with open(settings_path) as f:
        text = f.read()
      if text or attempt == 2:  # empty: another process is still writing it (no hard links)
        settings = json.loads(text)
        if not isinstance(settings, dict):
          raise ValueError(f'not a JSON object but {type(settings).__name__}')
        return settings
    except (OSError, ValueError) as e:
      raise errors.CScoreError(f'{settings_path} is unreadable ({errors.first_line(e)}); fix or delete it, or start over: an unsharded run with --fresh discards the store') from e
    time.sleep(1)


def check_settings(path, settings):
  """Refuses a store made with other settings, naming each difference."""
  stored = read_settings(path)
  diffs = [f'{k}: store has {stored.get(k)!r}, this run {v!r}'
           for k, v in settings.items() if stored.get(k) != v]
  if diffs:
    raise errors.CScoreError(f'the results store {path} was made with other settings '
                             f'({"; ".join(diffs)}); use them, another --out-dir, or --fresh')


def open_store(out_dir, settings, fresh=False, tag=''):
  """The store's folder, created or checked against `settings`; `fresh` empties it first.
  tag: '' for a process that has the store to itself, else its own (a shard's)."""
  path = os.path.join(out_dir, STORE_DIR)
  settings_path = os.path.join(path, SETTINGS_FILE)
  os.makedirs(path, exist_ok=True)
  clear_leftovers(out_dir, path, tag)
  if fresh:
    for name in os.listdir(path):
      if name.endswith('.npz') or name == SETTINGS_FILE or name.startswith('shards-'):
        os.unlink(os.path.join(path, name))
  if not os.path.exists(settings_path):
    if any(name.startswith('runs-') for name in os.listdir(path)):
      raise errors.CScoreError(f'{path} holds runs but no {SETTINGS_FILE}: their settings are unknown; '
                               'use another --out-dir, or start over: an unsharded run with --fresh discards the store')
    if files.create_exclusively(settings_path, json.dumps(settings, indent=1), tag):
      return path
  check_settings(path, settings)  # made before, or just now by a process that started with us
  return path


def run_file_name(ratio, seeds):
  """runs-r<ratio>-s<lowest>-<highest>-k<K>-<hash of the seeds>.npz: the hash tells apart groups
  whose seeds are not contiguous (a shard's share)."""
  digest = hashlib.sha256(np.asarray(seeds, np.int64).tobytes()).hexdigest()[:8]
  return f'runs-r{ratio_key(ratio):.6f}-s{min(seeds):06d}-{max(seeds):06d}-k{len(seeds)}-{digest}.npz'


def write_run_file(store_dir, ratio, seeds, runs, tag=''):
  """Saves runs of one ratio (all of one device) as one file; returns its name. Masks are
  bit-packed (7.5 KB each). The file's seconds are its runs' (NaN if any has none recorded)."""
  arrays = dict(ratio=np.float64(ratio), seeds=np.asarray(seeds, np.int64), n=np.int64(len(runs[0].held_out)),
                held_out=np.packbits([r.held_out for r in runs], axis=1),
                correct=np.packbits([r.correct for r in runs], axis=1),
                device=np.str_(runs[0].hardware[0]), matmul=np.str_(runs[0].hardware[1]),
                epochs=np.int64(runs[0].epochs), hits=np.stack([r.hits for r in runs]),
                confidence=np.stack([r.confidence for r in runs]),
                seconds=np.float64(sum(r.seconds for r in runs)))
  name = run_file_name(ratio, seeds)
  files.write_atomically(os.path.join(store_dir, name), lambda f: np.savez_compressed(f, **arrays), tag)
  return name


def save_runs(store_dir, ratio, seeds, group, epochs, hardware, tag='', seconds=float('nan')):
  """Saves a RunGroup that trained in `seconds`; returns the file's name."""
  return write_run_file(store_dir, ratio, seeds, group_runs(group, epochs, hardware, seconds), tag)


def read_run_file(path):
  """The runs of one store file, [(ratio, seed, Run)]; a file that is not one is an error
  naming it."""
  try:
    with np.load(path, allow_pickle=False) as f:
      if 'hits' not in f or 'device' not in f:
        raise ValueError('it has no learning record or no device: an mnist.py older than this one '
                         'wrote it; its runs must be trained again')
      ratio, seeds, n, epochs = float(f['ratio']), f['seeds'], int(f['n']), int(f['epochs'])
      held_out = np.unpackbits(f['held_out'], axis=1, count=n).astype(bool)
      correct = np.unpackbits(f['correct'], axis=1, count=n).astype(bool)
      hardware = (str(f['device']), str(f['matmul']))
      hits, confidence = f['hits'], f['confidence']
      seconds = float(f['seconds']) / len(seeds) if 'seconds' in f else np.nan  # (older files: none)
    if not len(seeds) == len(held_out) == len(correct) == len(hits) == len(confidence):
      raise ValueError('its arrays disagree on the number of runs')
    if not all(len(h) == len(c) == (~o).sum() for h, c, o in zip(hits, confidence, held_out)):
      raise ValueError('its learning record does not match the runs\' subsets')
  except Exception as e:
    raise errors.CScoreError(f'{path} is corrupt or unreadable ({type(e).__name__}: {e}); '
                             'delete it to retrain its runs (an unsharded run with --fresh discards the whole store)') from e
  return [(ratio, int(s), Run(*record, epochs, hardware, str(path), seconds=seconds))
          for s, *record in zip(seeds, held_out, correct, hits, confidence)]


def same_record(a, b):
  """Whether two records of one run agree."""
  return all(np.array_equal(getattr(a, f), getattr(b, f)) for f in ('held_out', 'correct', 'hits', 'confidence'))


def run_files(store_dir):
  """The names of the store's run files, sorted."""
  return sorted(name for name in os.listdir(store_dir) if name.startswith('runs-') and name.endswith('.npz'))


def add_run(runs, ratio, seed, run):
  """Adds a stored run to {(ratio, seed): Run}: once if stored twice identically. Two records
  that differ because different devices or precisions trained them (a CPU's bits are not a
  GPU's) are both valid: the first by (device, precision) is kept, whatever order the files
  come in, and the other counted. Two that differ from the same hardware are an error naming
  both files."""
  key = ratio_key(ratio), seed
  if key not in runs or same_record(runs[key], run):
    runs.setdefault(key, run)
    return
  held = runs[key]
  if held.hardware == run.hardware:
    raise errors.CScoreError(f'run {seed} at ratio {key[0]} is stored twice with different results by the '
                             f'same hardware ({" ".join(run.hardware)}), in {held.file} and {run.file}: '
                             'delete the one to distrust')
  kept = min(held, run, key=lambda r: (r.hardware[0] != 'CPU', r.hardware))  # a CPU's first
  runs[key] = kept._replace(alternates=held.alternates + run.alternates + 1)


def load_runs(store_dir):
  """{(ratio, seed): Run} of every run in the store."""
  runs = {}
  for name in run_files(store_dir):
    for ratio, seed, run in read_run_file(os.path.join(store_dir, name)):
      add_run(runs, ratio, seed, run)
  return runs



def stored_runs(store_dir, name):
  """{(ratio, seed): Run} of one file of the store, as a resume will read them."""
  return {(ratio_key(ratio), seed): run for ratio, seed, run in read_run_file(os.path.join(store_dir, name))}
