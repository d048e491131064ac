"""Many shards on one store, some killed and restarted: the result is one unsharded process's.

    python benchmarks/shards.py --root DIR [--shards 8] [--kills 3] [--manual-dir M] [--data-dir D]

A small Slurm job array, simulated on one machine: N shards of a tiny protocol (1 epoch, ratios
0.5 and 0.9, 16 runs each, one model at a time) start together on one out-dir; `--kills` of them,
chosen at random, are killed with SIGKILL at a random moment and started again at once, as a
scheduler requeues a failed task. When all are done, --estimate-only writes the outputs, which must
equal those of one unsharded process byte for byte. It prints the wall time, the runs stored
twice (must be 0) and the runs trained again after the kills (at most the group in flight, one
run here, per kill). Each shard logs the groups it starts to DIR/started.log.
"""
import argparse
import pathlib
import random
import signal
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import mnist  # noqa: E402
from cscore import cli  # noqa: E402
from cscore import shards  # noqa: E402
from cscore import store  # noqa: E402

TINY = ['--runs', '16', '--epochs', '1', '--ratios', '0.5,0.9', '--models-at-once', '1']

# A shard as the scheduler starts it, plus one line per group it starts training, appended to a
# log (O_APPEND: lines of concurrent shards do not interleave). The stand-in takes what
# mnist.train_missing_runs passes to mnist.train_run_group: the group's work drawn ahead too.
SHARD = '''
import os, sys
sys.path.insert(0, {root!r})
import mnist
train = mnist.train_run_group
def logged(trainer, ratio, seeds, on_step=None, work=None):
  with open({log!r}, 'a') as f:
    f.write(f'{{os.getpid()}} {{ratio}} {{" ".join(map(str, seeds))}}\\n')
  return train(trainer, ratio, seeds, on_step, work)
mnist.train_run_group = logged
sys.exit(mnist.main(sys.argv[1:]))
'''


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--root', required=True, type=pathlib.Path, help='an empty folder for the out-dirs')
  p.add_argument('--shards', type=int, default=8)
  p.add_argument('--kills', type=int, default=3)
  p.add_argument('--seed', type=int, default=0, help='for the choice of victims and moments')
  p.add_argument('--manual-dir')
  p.add_argument('--data-dir')
  args = p.parse_args()
  data = [x for flag, value in (('--manual-dir', args.manual_dir), ('--data-dir', args.data_dir))
          if value for x in (flag, value)]
  shared, alone, log = args.root / 'shared', args.root / 'unsharded', args.root / 'started.log'
  args.root.mkdir(parents=True, exist_ok=True)
  code = SHARD.format(root=str(ROOT), log=str(log))

  def start(i):
    argv = [*TINY, *data, '--out-dir', str(shared), '--shard', f'{i}/{args.shards}']
    with open(args.root / f'shard-{i}.err', 'a') as err:  # a file: a pipe nobody reads could fill
      return subprocess.Popen([sys.executable, '-c', code, *argv], stdout=subprocess.DEVNULL, stderr=err)

  rng = random.Random(args.seed)
  victims = {i: rng.uniform(5, 60) for i in rng.sample(range(args.shards), args.kills)}
  started = time.perf_counter()
  procs = {i: start(i) for i in range(args.shards)}
  killed = []
  while any(p.poll() is None for p in procs.values()):
    now = time.perf_counter() - started
    for i, moment in list(victims.items()):
      if now >= moment:
        del victims[i]
        if procs[i].poll() is None:
          procs[i].send_signal(signal.SIGKILL)
          procs[i].wait()
          killed.append((i, now))
          procs[i] = start(i)  # requeued at once
    time.sleep(0.05)
  wall = time.perf_counter() - started  # a kill planned after every shard ended does not happen
  failed = [i for i, p in procs.items() if p.returncode != 0]
  if failed:
    sys.exit(f'shard(s) {failed} failed; see {args.root}/shard-{failed[0]}.err')
  estimate = subprocess.run([sys.executable, str(ROOT / 'mnist.py'), *TINY, *data, '--out-dir', str(shared),
                             '--estimate-only'], capture_output=True, text=True)
  reference = subprocess.run([sys.executable, str(ROOT / 'mnist.py'), *TINY, *data, '--out-dir', str(alone)],
                             capture_output=True, text=True)
  if estimate.returncode or reference.returncode:
    sys.exit(estimate.stderr + reference.stderr)

  store_dir = shared / store.STORE_DIR
  stored = [(store.ratio_key(r), s) for name in store.run_files(store_dir)
            for r, s, _ in store.read_run_file(store_dir / name)]
  starts = [(store.ratio_key(float(r)), int(s)) for line in log.read_text().splitlines()
            for _, r, *seeds in [line.split()] for s in seeds]
  same = all((shared / name).read_bytes() == (alone / name).read_bytes()
             for name in ('cscores.npy', 'cscores-details.npz'))
  expected = len(shards.runs_named(cli.parse_args(TINY, mnist.Config())[0]))  # every run of the protocol
  print(f'{args.shards} shards of {expected} runs (1 epoch, ratios 0.5 and 0.9, K = 1) on one out-dir')
  print(f'killed and restarted: {", ".join(f"shard {i} at {t:.0f} s" for i, t in killed) or "none (all finished first)"}')
  print(f'wall time, all shards: {wall:.0f} s')
  print(f'runs stored: {len(set(stored))} of {expected}; stored twice: {len(stored) - len(set(stored))}')
  print(f'runs trained again after the kills: {len(starts) - len(set(starts))} '
        f'(at most {len(killed)}, one group of one run in flight per kill)')
  print(f'cscores.npy and cscores-details.npz equal to one unsharded process: {"yes" if same else "NO"}')
  ok = (same and len(set(stored)) == expected and len(stored) == expected
        and len(starts) - len(set(starts)) <= len(killed))
  sys.exit(0 if ok else 1)


if __name__ == '__main__':
  main()
