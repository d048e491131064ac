"""Checks that a change of the code changed no score: the outputs of this checkout against those
of another version of mnist.py (a git revision), on the same commands.

  python benchmarks/identity.py --base 87d45d7 --manual-dir ../shared/mnist --root /tmp/identity

For each version it runs, in its own out-dir (the base from a `git worktree` of the revision in
ROOT/base-src):
  runs4:   mnist.py --runs 4
  shards:  mnist.py --runs 2 --ratios 0.3,0.7 --shard 0/2, then --shard 1/2, then --estimate-only
  resumed: this checkout's --runs 4 --estimate-only on a copy of the base's runs4 store (a store
           the base wrote, read here), then --runs 5 --ratios 0.5 on a second copy (resumed:
           only run 4 at ratio 0.5 is trained), checked against the base's own --runs 5
and compares cscores.npy and every member of cscores-details.npz, bit for bit, and the report
page byte for byte but for the training time it reports (a wall time). --timing N then alternates
N runs of `--runs 4 --fresh` of each version, base first, and prints their wall times. Prints one
line per comparison; exits 1 on any difference."""
import argparse
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAINING_TIME = re.compile(r'training time: [^"]*')


def run(script, out, *argv, data_dir):
  """Runs a version's mnist.py into `out`; returns its wall time in seconds."""
  began = time.perf_counter()
  done = subprocess.run([sys.executable, script, *argv, '--data-dir', data_dir, '--out-dir', out],
                        capture_output=True, text=True)
  if done.returncode:
    sys.exit(f'{script} {" ".join(argv)} failed ({done.returncode}):\n{done.stderr}')
  return time.perf_counter() - began


def compare(name, a, b):
  """Differences between two out-dirs' scores, details and report; prints one line."""
  different = []
  if not np.array_equal(np.load(os.path.join(a, 'cscores.npy')), np.load(os.path.join(b, 'cscores.npy')), equal_nan=True):
    different.append('cscores.npy')
  with np.load(os.path.join(a, 'cscores-details.npz')) as x, np.load(os.path.join(b, 'cscores-details.npz')) as y:
    added = sorted(set(y.files) - set(x.files))  # members this checkout adds: new, not different
    for key in sorted(set(x.files) | set(y.files)):
      if key not in y.files:
        different.append(f'{key} (missing here)')
      elif key in added:
        continue
      elif not np.array_equal(x[key], y[key], equal_nan=x[key].dtype.kind in 'fc'):
        different.append(key)
    members = len(set(x.files) & set(y.files))
  with open(os.path.join(a, 'mnist-report.html'), encoding='utf-8') as f, open(os.path.join(b, 'mnist-report.html'), encoding='utf-8') as g:
    # The report's facts include the training time the store recorded: a wall time, not a score.
    pages = [TRAINING_TIME.sub('training time: (as recorded)', page.read()) for page in (f, g)]
    if pages[0] != pages[1]:
      different.append('mnist-report.html')
  print(f'{name}: ' + (f'identical (cscores.npy, {members} members of cscores-details.npz, the report but '
                       'for its training time)' if not different else f'DIFFERENT: {", ".join(different)}')
        + (f'; added here: {", ".join(added)}' if added else ''))
  return not different


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--base', required=True, help='the git revision to compare with')
  p.add_argument('--root', required=True, help='a folder for the worktree and the out-dirs')
  p.add_argument('--manual-dir', help="the four official MNIST files (offline)")
  p.add_argument('--data-dir', help="tensorflow-datasets' folder (default: ROOT/tfds)")
  p.add_argument('--timing', type=int, default=0, metavar='N', help='alternating --runs 4 timings of each')
  args = p.parse_args()
  root = os.path.abspath(args.root)
  data_dir = args.data_dir or os.path.join(root, 'tfds')
  base = os.path.join(root, 'base-src')
  if not os.path.isdir(base):
    subprocess.run(['git', '-C', ROOT, 'worktree', 'add', '--detach', base, args.base], check=True,
                   capture_output=True)
  scripts = dict(base=os.path.join(base, 'mnist.py'), new=os.path.join(ROOT, 'mnist.py'))
  out = lambda version, name: os.path.join(root, version, name)
  prepare = ['--manual-dir', args.manual_dir] if args.manual_dir else []
  for version, script in scripts.items():
    if not os.path.exists(os.path.join(out(version, 'runs4'), 'cscores.npy')):
      os.makedirs(out(version, 'runs4'), exist_ok=True)
      seconds = run(script, out(version, 'runs4'), '--runs', '4', *prepare, data_dir=data_dir)
      print(f'{version}: --runs 4 in {seconds:.0f} s')
    if not os.path.exists(os.path.join(out(version, 'shards'), 'cscores.npy')):
      os.makedirs(out(version, 'shards'), exist_ok=True)
      small = ['--runs', '2', '--ratios', '0.3,0.7']
      for flags in (['--shard', '0/2'], ['--shard', '1/2'], ['--estimate-only']):
        run(script, out(version, 'shards'), *small, *flags, data_dir=data_dir)
  ok = compare('--runs 4', out('base', 'runs4'), out('new', 'runs4'))
  ok &= compare('two shards of --runs 2 --ratios 0.3,0.7 and their estimate', out('base', 'shards'), out('new', 'shards'))
  for copy in ('read', 'resumed', 'base-resumed'):
    shutil.rmtree(out('new', copy), ignore_errors=True)
    shutil.copytree(os.path.join(out('base', 'runs4'), 'cscore-runs'), os.path.join(out('new', copy), 'cscore-runs'))
  run(scripts['new'], out('new', 'read'), '--runs', '4', '--estimate-only', data_dir=data_dir)
  ok &= compare("--estimate-only on the base's --runs 4 store", out('base', 'runs4'), out('new', 'read'))
  resume = ['--runs', '5', '--ratios', '0.5', '--models-at-once', '1']
  run(scripts['new'], out('new', 'resumed'), *resume, data_dir=data_dir)
  run(scripts['base'], out('new', 'base-resumed'), *resume, data_dir=data_dir)
  ok &= compare("--runs 5 --ratios 0.5 resumed from the base's store, by each", out('new', 'base-resumed'), out('new', 'resumed'))
  for i in range(args.timing):
    for version, script in scripts.items():
      seconds = run(script, out(version, 'timing'), '--runs', '4', '--fresh', data_dir=data_dir)
      print(f'timing {i + 1}: {version} --runs 4 --fresh in {seconds:.1f} s')
  return 0 if ok else 1


if __name__ == '__main__':
  sys.exit(main())
