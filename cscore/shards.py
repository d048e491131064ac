"""Shards and merge: N processes (a Slurm job array, a Kubernetes Indexed Job, one per GPU) each
train the runs whose shard number is theirs, into one store or stores merged afterwards; and the
lines that say which runs are missing, by seed and by shard, with the commands that train them.

Which shard trains a run depends on (ratio, seed, N) alone, never on K, the device or the
store, so shards on any hardware, restarted at any moment, never train a run twice; at every
ratio consecutive seeds go round-robin, so each shard gets its share +-1 there. The first shard
of each N records the protocol it was started for (shards-<N>-<hash>.json in the store): later
commands then know N, name missing runs by shard, and refuse an estimate whose --runs, --ratios
or --seed drifted from the shards'."""

import collections
import hashlib
import json
import os
import socket
import zlib

from cscore import errors
from cscore import files
from cscore import store


def seed_ranges(seeds):
  """'0-3, 7, 9-10' for [0, 1, 2, 3, 7, 9, 10]."""
  spans = []
  for s in seeds:
    if spans and s == spans[-1][1] + 1:
      spans[-1][1] = s
    else:
      spans.append([s, s])
  return ', '.join(f'{a}-{b}' if b > a else f'{a}' for a, b in spans)


def missing_lines(store_dir, runs, config):
  """The command's runs not stored yet, per ratio as seed ranges, and (when shards were started
  on the store) by shard with the commands that train them; [] if none are missing."""
  records, missing = shard_records(store_dir), missing_runs(runs, config)  # (a bad record: an error)
  if not missing:
    return []
  count, total = sum(len(s) for s in missing.values()), len(config.ratios) * config.runs
  lines = [f'missing: {count} of the command\'s {total} runs are not stored yet ('
           + '; '.join(f'ratio {r:.2f}: seed{"s" if len(s) > 1 else ""} {seed_ranges(s)}'
                       for r, s in missing.items()) + ')']
  if records:
    n = records[-1]['shards']  # the last N started on the store
    shards = ','.join(map(str, sorted({shard_of(r, s, n) for r, seeds in missing.items() for s in seeds})))
    lines.append(f'missing by shard (N = {n}): {shards.replace(",", ", ")}. If they are not running, run '
                 f'them again: in the job array of docs/scale.md, sbatch --array={shards} cscores.sbatch; '
                 f'by hand, the same command with --shard I/{n} for each. Then the estimate again, after '
                 'them (with sbatch, a new dependency on the new job)')
  return lines


def shard_lines(store_dir, runs, config, shard, trained):
  """A shard's summary: its own runs done and left, and the whole command's: which are missing,
  by seeds and by shard."""
  i, n = shard
  share = len(runs_named(config, shard))
  left = sum(len(s) for s in missing_runs(runs, config, shard).values())
  total = len(config.ratios) * config.runs
  stored = total - sum(len(s) for s in missing_runs(runs, config).values())
  return [f'shard {i}/{n}: {trained} runs trained now; {share - left} of its {share} runs stored, '
          f'{left} left{" (run the same command again to train them)" if left else ""}',
          f'the command\'s runs stored by all shards: {stored} of {total}; when all are, the same '
          f'command with --estimate-only in place of --shard {i}/{n} writes the outputs',
          *missing_lines(store_dir, runs, config)]


def process_tag(shard, reader):
  """The temporary-file tag of this process: '' when it has the store to itself, a shard's own
  (a restart clears its leftovers), or one unique to this process (a reader: --estimate-only,
  --merge)."""
  if shard:
    return f'shard-{shard[0]}-of-{shard[1]}'
  if reader:
    return f'{socket.gethostname()}-{os.getpid()}'
  return ''


def open_and_load_store(out_dir, config, data, fresh=False, merge=None, tag='', reader=False):
  """The store in out_dir, created or checked (`fresh`: emptied first; `merge`: the out-dirs
  whose stores are copied in), and its runs {(ratio, seed): Run}. A reader's command (an
  estimate or a merge) is checked against the protocol the store's shards were started for."""
  fingerprint = data.fingerprint or store.data_fingerprint(data.x, data.y)  # MNIST's as before
  settings = store.store_settings(config, fingerprint if data.name == 'mnist' else f'{data.name} {fingerprint}')
  store_dir = store.open_store(out_dir, settings, fresh=fresh, tag=tag)
  if merge:
    copied, elsewhere = merge_stores(store_dir, merge, settings, tag)
    print(f'merged {copied} runs into {store_dir}' + (
        f'; {elsewhere} runs it held were trained again on other hardware there: its own records '
        'are kept' if elsewhere else ''))
  runs = store.load_runs(store_dir)
  if reader:
    check_protocol(store_dir, runs, config)
  return store_dir, runs


def shard_of(ratio, seed, shards):
  """The shard (0 .. shards - 1) that trains run `seed` at `ratio`. The round-robin starts at an
  offset of the ratio's own, so that the odd runs left over at each ratio fall to different
  shards."""
  return (seed + zlib.crc32(f'{store.ratio_key(ratio):.6f}'.encode())) % shards


def runs_named(config, shard=None):
  """[(ratio, seed)] of the runs the command names (its ratios x seeds); with shard = (I, N),
  only shard I's share of them."""
  return [(ratio, s) for ratio in config.ratios for s in store.run_seeds(config)
          if shard is None or shard_of(ratio, s, shard[1]) == shard[0]]


def missing_runs(runs, config, shard=None):
  """{ratio: [seeds]} of the runs the command names (of `shard`, if given) that are not stored."""
  missing = collections.defaultdict(list)
  for ratio, s in runs_named(config, shard):
    if (store.ratio_key(ratio), s) not in runs:
      missing[ratio].append(s)
  return dict(missing)


def planned_groups(config, done, k, shard=None):
  """The (ratio, seeds) groups still to train (of `shard` = (I, N), if given), round-robin over
  ratios: a run stopped early has runs at every ratio, so its partial scores mean something."""
  per_ratio = [[(ratio, seeds[i:i + k]) for i in range(0, len(seeds), k)]
               for ratio, seeds in missing_runs(done, config, shard).items()]
  rounds = max((len(g) for g in per_ratio), default=0)
  return [g[j] for j in range(rounds) for g in per_ratio if j < len(g)]


def shard_protocol(config, n):
  """What shards of N = n were started for: the command's runs, ratios and first seed."""
  return dict(shards=n, runs=config.runs, ratios=[store.ratio_key(r) for r in config.ratios], seed=config.seed)


def record_shards(store_dir, config, n, tag=''):
  """Records that shards of N = n were started on the store for the command's runs; once."""
  protocol = shard_protocol(config, n)
  digest = hashlib.sha256(json.dumps(protocol, sort_keys=True).encode()).hexdigest()[:8]
  files.create_exclusively(os.path.join(store_dir, f'shards-{n}-{digest}.json'), json.dumps(protocol), tag)


def shard_records(store_dir):
  """[protocol] of the shards started on the store_dir, in the order they were recorded."""
  records = []
  for name in os.listdir(store_dir):
    if name.startswith('shards-') and name.endswith('.json'):
      path = os.path.join(store_dir, name)
      try:
        with open(path) as f:
          records.append((os.path.getmtime(path), name, json.load(f)))
      except (OSError, ValueError) as e:
        raise errors.CScoreError(f'{path} is unreadable ({errors.first_line(e)}); delete it: the next shard writes it again') from e
  return [protocol for *_, protocol in sorted(records, key=lambda r: r[:2])]


def protocol_flags(protocol):
  """The flags that name a protocol's runs."""
  return (f'--runs {protocol["runs"]} --ratios {",".join(f"{r:g}" for r in protocol["ratios"])} '
          f'--seed {protocol["seed"]}')


def check_protocol(store_dir, runs, config):
  """Refuses, in one line, an --estimate-only or --merge that names runs neither stored nor asked
  of the store's shards: another --runs, --ratios or --seed than theirs."""
  records = shard_records(store_dir)
  asked = {(store.ratio_key(r), s) for p in records for r in p['ratios'] for s in range(p['seed'], p['seed'] + p['runs'])}
  stray = [(r, s) for r, s in runs_named(config) if (store.ratio_key(r), s) not in asked and (store.ratio_key(r), s) not in runs]
  if records and stray:
    started = '; '.join(f'{protocol_flags(p)} (N = {p["shards"]})' for p in records)
    raise errors.CScoreError(f'this command names {len(stray)} runs that the store\'s shards were never started '
                             f'for ({protocol_flags(shard_protocol(config, 0))}), but they were started with '
                             f'{started}: give it the shards\' --runs, --ratios and --seed')


def merge_stores(store_dir, sources, settings, tag=''):
  """Copies into `store_dir` the runs of other out-dirs' stores that it lacks, each file landing
  atomically; returns (runs copied, runs both hold from different hardware: the store keeps its
  own record). Their settings and data must be this run's, and a run both hold from the same
  hardware must be the same in both."""
  have, copied, elsewhere = store.load_runs(store_dir), 0, 0
  for source in sources:
    path = os.path.join(source, store.STORE_DIR)
    if not os.path.isfile(os.path.join(path, store.SETTINGS_FILE)):
      raise errors.CScoreError(f'--merge {source}: no results store there '
                               f'({os.path.join(path, store.SETTINGS_FILE)} is missing)')
    store.check_settings(path, settings)
    for name in os.listdir(path):  # the protocols its shards were started for
      if name.startswith('shards-') and name.endswith('.json'):
        with open(os.path.join(path, name)) as f:
          files.create_exclusively(os.path.join(store_dir, name), f.read(), tag)
    for name in store.run_files(path):
      found = store.read_run_file(os.path.join(path, name))
      new = [(ratio, seed, run) for ratio, seed, run in found if (store.ratio_key(ratio), seed) not in have]
      for ratio, seed, run in found:
        key = store.ratio_key(ratio), seed
        elsewhere += key in have and have[key].hardware != run.hardware and not store.same_record(have[key], run)
        store.add_run(have, ratio, seed, run)
      if new:
        store.write_run_file(store_dir, new[0][0], [seed for _, seed, _ in new], [run for *_, run in new], tag)
        copied += len(new)
  return copied, elsewhere

