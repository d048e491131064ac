"""The documented Slurm job array, run under a real Slurm: a one-node cluster of this machine's
own, started here and stopped at the end.

    sudo python benchmarks/slurm.py [--manual-dir ../shared/mnist] [--keep DIR]

What it does, and prints as it goes:
  1. installs Slurm and munge from the distribution's packages where they are missing (apt-get;
     it needs root, and without root it says so and stops);
  2. starts munged, slurmctld and slurmd with a configuration of its own, in a temporary folder
     (its own ports, state and logs; the node declares 8 CPUs, so that tasks of the script's
     --cpus-per-task=4 run as written on a smaller machine);
  3. prepares MNIST once, as the page's step 1 does (python mnist.py --prepare-only --data-dir,
     with --manual-dir: this machine is offline), so that the tasks never need the network;
     extracts cscores.sbatch, the CPU-only variant, from docs/scale.md, so that the tested text
     is the documented one, sets its "Edit" lines (this checkout, this Python's environment, the
     data folder, a tiny protocol: 4 runs at ratios 0.5 and 0.9, 1 epoch; N = 4) and saves it in
     a folder of its own;
  4. runs the page's submission lines (step 3) from another folder, with the script's path in
     script= and --array=0-3 given to sbatch; requeues one task while it runs (scontrol requeue)
     and cancels another before it starts (scancel);
  5. reads the estimate's log for the shards it says to run again, submits them as it says, then
     the estimate again;
  6. checks that the final cscores.npy and cscores-details.npz are bit-identical to one unsharded
     process's, that no run was stored twice, that the requeued task's log kept both attempts,
     and that no log holds a carriage return;
  7. stops the daemons it started, by their process ids.
The exit status is 1 if a check failed.
"""
import argparse
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from cscore import devices  # noqa: E402
from cscore import store  # noqa: E402

TINY = '--runs 4 --ratios 0.5,0.9 --epochs 1 --models-at-once 2'
N = 4


def say(text):
  print(text, flush=True)


def run(*argv, env=None, cwd=None, check=True):
  result = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=cwd)
  if check and result.returncode:
    raise RuntimeError(f'{" ".join(map(str, argv))} failed ({result.returncode}): {result.stderr.strip()}')
  return result.stdout.strip()


def install():
  """Slurm and munge, from the distribution's packages where missing."""
  missing = [tool for tool in ('slurmctld', 'slurmd', 'sbatch', 'munged') if not shutil.which(tool)]
  if not missing:
    say(f'1. Slurm and munge are installed ({run("slurmd", "-V")})')
    return
  say(f'1. installing slurm-wlm and munge (missing: {", ".join(missing)}) ...')
  run('apt-get', 'update', '-qq')
  run('apt-get', 'install', '-y', '-qq', 'slurm-wlm', 'munge', env=dict(os.environ, DEBIAN_FRONTEND='noninteractive'))
  say(f'   installed: {run("slurmd", "-V")}')


def slurm_conf(folder, host):
  cores = os.cpu_count()
  memory = devices.available_memory() // 2**20 // 2
  # The node says it has 8 CPUs whatever this machine has (config_overrides), so that tasks of
  # the script's --cpus-per-task=4 run as written, two at a time; TaskPlugin=task/none pins
  # nothing, so each sees this machine's cores.
  return f'''ClusterName=cscores-test
SlurmctldHost={host}
SlurmctldPort=16817
SlurmdPort=16818
AuthType=auth/munge
AuthInfo=socket={folder}/munge.socket
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
ReturnToService=2
JobRequeue=1
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
SlurmdParameters=config_overrides
NodeName={host} CPUs={max(cores, 8)} RealMemory={memory} State=UNKNOWN
PartitionName=test Nodes={host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
'''


def start_daemons(folder):
  """munged, slurmctld and slurmd, their configuration in `folder`; returns the environment
  that points Slurm's commands at them, and their pid files."""
  host = socket.gethostname()
  for sub in ('state', 'spool'):
    (folder / sub).mkdir(exist_ok=True)
  run('mungekey', '--create', '--keyfile', str(folder / 'munge.key'))
  os.chmod(folder / 'munge.key', 0o600)
  run('munged', '--force', f'--key-file={folder}/munge.key', f'--socket={folder}/munge.socket',
      f'--pid-file={folder}/munged.pid', f'--log-file={folder}/munged.log', f'--seed-file={folder}/munged.seed')
  (folder / 'slurm.conf').write_text(slurm_conf(folder, host))
  env = dict(os.environ, SLURM_CONF=str(folder / 'slurm.conf'))
  run('slurmctld', '-f', str(folder / 'slurm.conf'), env=env)
  run('slurmd', '-f', str(folder / 'slurm.conf'), env=env)
  deadline = time.time() + 60
  while time.time() < deadline:
    state = run('sinfo', '-h', '-o', '%t', env=env, check=False)
    if state in ('idle', 'mix', 'alloc'):
      say(f'2. started munged, slurmctld and slurmd on {host} ({folder}); node {state}')
      return env
    time.sleep(1)
  raise RuntimeError(f'the node did not come up: sinfo says {state!r}; see {folder}/slurmd.log')


def stop_daemons(folder, env):
  """Cancels what is left of the test's jobs, then stops the daemons it started, by the process
  ids in their pid files: SIGTERM, and SIGKILL for one still there 15 s later."""
  if env and (folder / 'slurmctld.pid').exists():
    run('scancel', '--partition=test', env=env, check=False)
    deadline = time.time() + 30
    while run('squeue', '-h', env=env, check=False) and time.time() < deadline:
      time.sleep(1)
  stopped = []
  for name in ('slurmd', 'slurmctld', 'munged'):
    pid_file = folder / f'{name}.pid'
    if not pid_file.exists():
      continue
    pid = int(pid_file.read_text().split()[0])
    try:
      os.kill(pid, signal.SIGTERM)
      for _ in range(150):
        os.kill(pid, 0)  # raises once it is gone
        time.sleep(0.1)
      os.kill(pid, signal.SIGKILL)
      stopped.append(f'{name} ({pid}, killed)')
    except ProcessLookupError:
      stopped.append(f'{name} ({pid})')
  say(f'7. stopped {", ".join(stopped) or "nothing: no daemon was running"}')


def documented(name):
  """A block of docs/scale.md, as the page shows it: 'cscores.sbatch' or 'submit'."""
  text = (ROOT / 'docs' / 'scale.md').read_text()
  block = re.search(rf'<!-- {re.escape(name)}[^>]*-->\s*```bash\n(.*?)```', text, re.S)
  if not block:
    raise RuntimeError(f'docs/scale.md has no {name} block')
  return block.group(1)


def edited(script, out, data_dir):
  """The documented script with its Edit lines set for this test, and nothing else changed."""
  values = dict(CODE=str(ROOT), VENV=sys.prefix, DATA=str(data_dir), OUT=str(out), PROTOCOL=f'"{TINY}"', N=str(N))
  for name, value in values.items():
    script, count = re.subn(rf'^{name}=("[^"]*"|\S+)', f'{name}={value}', script, count=1, flags=re.M)
    if count != 1:
      raise RuntimeError(f'the documented script has no {name}= line to edit')
  return script


def squeue(env, job):
  """{task: state} of an array job's tasks still known to squeue."""
  lines = run('squeue', '-h', '-r', '-j', job, '-o', '%K %T', env=env, check=False).splitlines()
  return {int(task): state for task, state in (line.split() for line in lines) if task.isdigit()}


def wait_for(env, job, timeout=1800):
  deadline = time.time() + timeout
  while run('squeue', '-h', '-j', job, env=env, check=False) and time.time() < deadline:
    time.sleep(1)


def submit(env, where, script, array):
  """The page's submission lines, run by bash in `where`, with `script` in script= and the
  array's tasks given to sbatch; returns the ids of the array job and of the estimate."""
  lines, count = re.subn(r'^script=\S+', f'script={script}', documented('submit'), count=1, flags=re.M)
  lines, more = re.subn(r'sbatch --parsable "\$script"', f'sbatch --parsable --array={array} "$script"', lines)
  if count != 1 or more != 1:
    raise RuntimeError('the submission lines of docs/scale.md have changed: no script= or sbatch "$script"')
  said = run('bash', '-euc', lines + 'echo "array job $jobid"\n', env=env, cwd=where)
  return re.search(r'array job (\d+)', said).group(1), re.search(r'Submitted batch job (\d+)', said).group(1)


def read(path):
  return path.read_text() if path.exists() else ''


def stored_runs(out):
  store_dir = out / store.STORE_DIR
  return [(store.ratio_key(r), s) for name in store.run_files(store_dir)
          for r, s, _ in store.read_run_file(store_dir / name)]


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--manual-dir', default=str(ROOT.parent / 'shared' / 'mnist'),
                      help="the four official MNIST files (default: ../shared/mnist)")
  parser.add_argument('--keep', help='do the work in this folder and keep it (default: a temporary one)')
  args = parser.parse_args()
  signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # killed: still stop the daemons
  if os.geteuid() != 0:
    sys.exit('slurm.py: it needs root, to install Slurm and to start its daemons; nothing was done')
  install()
  folder = pathlib.Path(args.keep or tempfile.mkdtemp(prefix='cscores-slurm-')).resolve()
  folder.mkdir(parents=True, exist_ok=True)
  os.chmod(folder, 0o755)
  failures, env = [], None
  def check(ok, text):
    say(f'   {"ok" if ok else "FAILED"}: {text}')
    if not ok:
      failures.append(text)
  try:
    (folder / 'slurm').mkdir(exist_ok=True)
    env = start_daemons(folder / 'slurm')
    where, scripts = folder / 'submit', folder / 'scripts'
    out, data_dir = folder / 'results', folder / 'tfds'
    where.mkdir(exist_ok=True)
    scripts.mkdir(exist_ok=True)
    said = run(sys.executable, str(ROOT / 'mnist.py'), '--prepare-only', '--data-dir', str(data_dir),
               '--manual-dir', args.manual_dir, cwd=ROOT)
    say(f'3. step 1, the data prepared once: {said.splitlines()[-1]}')
    script = scripts / 'cscores.sbatch'
    script.write_text(edited(documented('cscores.sbatch'), out, data_dir))
    say(f'   cscores.sbatch from docs/scale.md (CPU-only), its Edit lines set (N = {N}, {TINY}), in {scripts}')

    array, estimate = submit(env, where, script, f'0-{N - 1}')
    say(f'4. submitted from {where}: array job {array} (tasks 0-{N - 1}), estimate job {estimate} after it')
    requeued = cancelled = None
    deadline = time.time() + 900
    while (requeued is None or cancelled is None) and time.time() < deadline:
      tasks = squeue(env, array)
      if cancelled is None and tasks.get(N - 1) == 'PENDING':
        cancelled = N - 1
        run('scancel', f'{array}_{cancelled}', env=env)
        say(f'   cancelled task {cancelled} before it started (scancel {array}_{cancelled})')
      training = [t for t, state in tasks.items() if state == 'RUNNING'
                  and 'examples; shard' in read(where / f'cscores-{array}_{t}.out')]
      if requeued is None and training:
        requeued = training[0]
        time.sleep(2)
        answer = subprocess.run(['scontrol', 'requeue', f'{array}_{requeued}'], env=env, capture_output=True, text=True)
        say(f'   requeued task {requeued} while it trained (scontrol requeue {array}_{requeued}'
            + (f': {answer.stderr.strip()}' if answer.returncode else '') + ')')
      time.sleep(0.5)
    wait_for(env, array)
    wait_for(env, estimate)
    log = (where / f'cscores-estimate-{estimate}.out').read_text()
    rerun = re.search(r'sbatch --array=([\d,]+) cscores\.sbatch', log)
    say(f'5. the estimate says: {next((l for l in log.splitlines() if l.startswith("missing by shard")), "(nothing missing)")}')
    check(rerun is not None and cancelled is not None and str(cancelled) in rerun.group(1).split(','),
          f'the estimate names the cancelled task {cancelled} among the shards to run again')
    if rerun:
      again, final = submit(env, where, script, rerun.group(1))
      say(f'   submitted as it says, by the page\'s rerun lines: sbatch --array={rerun.group(1)} "$script" (job {again}), '
          f'then the estimate (job {final})')
      wait_for(env, again)
      wait_for(env, final)
      log = (where / f'cscores-estimate-{final}.out').read_text()
      check('missing' not in log, 'the second estimate lists nothing missing')

    say('6. one unsharded process, for comparison ...')
    unsharded = folder / 'unsharded'
    run(sys.executable, str(ROOT / 'mnist.py'), *TINY.split(), '--data-dir', str(data_dir), '--out-dir', str(unsharded))
    for name in ('cscores.npy', 'cscores-details.npz'):
      same = (out / name).exists() and (out / name).read_bytes() == (unsharded / name).read_bytes()
      check(same, f'{name} of the job array is bit-identical to one unsharded process\'s')
    runs = stored_runs(out)
    check(len(runs) == len(set(runs)) == 8, f'{len(set(runs))} runs stored, {len(runs) - len(set(runs))} of them twice')
    if requeued is not None:
      attempts = (where / f'cscores-{array}_{requeued}.out').read_text().count('examples; shard')
      check(attempts == 2, f'the requeued task\'s log kept both attempts ({attempts} openings)')
    logs = sorted(where.glob('cscores-*.out'))
    check(not any('\r' in p.read_text() for p in logs), f'no carriage return in the {len(logs)} logs')
  finally:
    stop_daemons(folder / 'slurm', env)
  say(f'{"all checks passed" if not failures else f"{len(failures)} checks FAILED"}; the files are in {folder}')
  return 1 if failures else 0


if __name__ == '__main__':
  sys.exit(main())
