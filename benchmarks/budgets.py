"""What a budget of trained models buys: the C-score estimate against the cheap proxies.

    python benchmarks/budgets.py --root DIR [--manual-dir M] [--reference PATH] [--budgets 1,4,9]

For each budget it runs mnist.py in its own out-dir, DIR/<models>-models (a budget whose out-dir
already holds a finished run is not run again: its recorded wall time is reused), then compares
three scores of the same runs with the published C-scores (benchmarks/agreement.py):
  (a) the C-score estimate from those runs (scores only the examples some run held out);
  (b) learning speed: the fraction of epochs in which a model classified the example correctly,
      before the step that trained on it (scores only the examples some run trained on);
  (c) learning confidence: its mean probability of the label, likewise.
For each, Spearman's rho over all examples it scores and over the hard ones (published < 0.99),
with the counts, and rho on the examples all three score. The wall time is the whole command's,
start-up, evaluation and figures included, on this machine.
"""
import argparse
import json
import pathlib
import subprocess
import sys
import time

import numpy as np
import scipy.stats

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import agreement  # noqa: E402

mnist = agreement.mnist

ROOT = pathlib.Path(__file__).resolve().parents[1]

# models: (what it is, mnist.py flags)
BUDGETS = {
    1: ('1 run at ratio 0.9', ['--runs', '1', '--ratios', '0.9']),
    4: ('4 runs at ratio 0.9', ['--runs', '4', '--ratios', '0.9']),
    9: ('1 run per ratio', ['--runs', '1']),
    36: ('4 runs per ratio', ['--runs', '4']),
    144: ('16 runs per ratio', ['--runs', '16']),
    576: ('64 runs per ratio', ['--runs', '64']),
    1800: ('200 runs per ratio (the full protocol)', []),
}
SCORES = (('C-score estimate', 'cscores'), ('learning speed', 'learning_speed'),
          ('learning confidence', 'learning_confidence'))
TIMING = 'wall-time.json'


def run_budget(models, out_dir, extra):
  """Runs the budget's mnist.py command in out_dir unless done before; returns its timing."""
  timing = out_dir / TIMING
  if timing.exists():
    return json.loads(timing.read_text())
  command = [sys.executable, str(ROOT / 'mnist.py'), *BUDGETS[models][1], '--out-dir', str(out_dir), *extra]
  print(f'running {models} models: {" ".join(command[1:])}', flush=True)
  start = time.perf_counter()
  subprocess.run(command, check=True)
  record = dict(models=models, seconds=time.perf_counter() - start, command=command[1:])
  timing.write_text(json.dumps(record, indent=1))
  return record


def rho(a, b, where):
  """Spearman's rho over `where`; NaN for fewer than 3 examples (a budget of one run has none in
  common)."""
  return float(scipy.stats.spearmanr(a[where], b[where]).statistic) if where.sum() > 2 else float('nan')


def compare(details, reference):
  """{score name: (rho all, rho hard, count all, count hard, rho all common, rho hard common)},
  count common, count common hard."""
  try:
    with np.load(details, allow_pickle=False) as d:
      scores = {name: d[key] for name, key in SCORES}
  except (OSError, KeyError, ValueError) as e:
    raise mnist.CScoreError(f'{details}: {mnist.first_line(e)}; rerun its mnist.py command, or '
                            'delete its folder to start that budget over') from e
  hard = reference < agreement.HARD
  common = np.logical_and.reduce([~np.isnan(s) for s in scores.values()])
  out = {}
  for name, s in scores.items():
    a = agreement.agreement(s, reference)  # over the examples this score covers
    out[name] = (a['spearman'], a['spearman_hard'], a['examples'], a['hard'],
                 rho(s, reference, common), rho(s, reference, common & hard))
  return out, int(common.sum()), int((common & hard).sum())


def wall_time(seconds):
  minutes, seconds = divmod(round(seconds), 60)
  return f'{minutes} min {seconds} s' if minutes else f'{seconds} s'


def table(rows):
  """The README's table: per score, rho all / hard (examples; hard ones)."""
  lines = ['| budget | models | wall time | ' + ' | '.join(f'{name}: rho all / hard (examples; hard ones)' for name, _ in SCORES)
           + ' | on the examples all three cover: ' + ' / '.join(name for name, _ in SCORES) + ' (examples) |',
           '| --- ' * (4 + len(SCORES)) + '|']
  for models, seconds, (result, common, common_hard) in rows:
    cells = [f'{r[0]:.2f} / {r[1]:.2f} ({r[2]:,}; {r[3]:,})' for r in (result[name] for name, _ in SCORES)]
    shared = (', '.join(f'{result[name][4]:.2f} / {result[name][5]:.2f}' for name, _ in SCORES)
              + f' ({common:,}; {common_hard:,})' if common
              else "none: one run's held-out and trained examples differ")
    lines.append(f'| {BUDGETS[models][0]} | {models} | {wall_time(seconds)} | ' + ' | '.join(cells) + f' | {shared} |')
  return '\n'.join(lines)


def parse_budgets(text):
  try:
    budgets = [int(b) for b in text.split(',')]
  except ValueError:
    raise argparse.ArgumentTypeError(f'not a comma-separated list of whole numbers: {text!r}')
  if unknown := [b for b in budgets if b not in BUDGETS]:
    raise argparse.ArgumentTypeError(f'unknown budget {unknown[0]}: one of {", ".join(map(str, BUDGETS))}')
  return budgets


def main():
  p = mnist.OneLineErrorParser(prog='budgets.py', description=__doc__.splitlines()[0])
  p.add_argument('--root', required=True, type=pathlib.Path, help='a folder for the out-dirs')
  p.add_argument('--budgets', type=parse_budgets, default=[1, 4, 9, 36, 144, 576],
                 help=f'models, comma-separated, out of {", ".join(map(str, BUDGETS))} (default: 1,4,9,36,144,576)')
  p.add_argument('--reference', help='the published mnist-cscores.npy (default: download it)')
  p.add_argument('--manual-dir', help="passed to mnist.py")
  p.add_argument('--data-dir', help="passed to mnist.py")
  args = p.parse_args()
  extra = [x for flag, value in (('--manual-dir', args.manual_dir), ('--data-dir', args.data_dir))
           if value for x in (flag, value)]
  try:
    reference = agreement.load_scores(args.reference or agreement.download_reference(), 'published scores')
    rows = []
    for models in args.budgets:
      out_dir = args.root / f'{models}-models'
      record = run_budget(models, out_dir, extra)
      rows.append((models, record['seconds'], compare(out_dir / mnist.OUTPUTS['details'], reference)))
  except mnist.CScoreError as e:
    sys.exit(f'budgets.py: error: {e}')
  except subprocess.CalledProcessError as e:
    sys.exit(f'budgets.py: error: {" ".join(e.cmd[1:])} failed (exit {e.returncode}); its own message is above')
  print(table(rows))


if __name__ == '__main__':
  main()
