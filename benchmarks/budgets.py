"""What a budget of trained models buys: the C-score estimate against the cheap proxies.

    python benchmarks/budgets.py --root DIR [--manual-dir M] [--reference PATH] [--budgets 1,4,9]
    python benchmarks/budgets.py --root DIR --store FULL [--budgets 1,4,9,36,144,576,1800]

For each budget it runs mnist.py in its own out-dir, DIR/<models>-models (a budget whose out-dir
already holds a finished run is not trained again: its recorded wall time is reused, and its
outputs are rewritten from its stored runs by this mnist.py), then compares
four scores of the same runs with the published C-scores (benchmarks/agreement.py):
  (a) the C-score estimate from those runs (scores only the examples some run held out);
  (b) learning speed: the fraction of epochs in which a model classified the example correctly,
      before the step that trained on it (scores only the examples some run trained on);
  (c) learning confidence: its mean probability of the label, likewise;
  (d) the combined score of (a) and (c), whose weights come from the runs alone (docs/proxies.md).
For each, Spearman's rho over all examples it scores and over the hard ones (published < 0.99),
with the counts, and rho on the examples all of them score. The wall time is the whole
command's, start-up, evaluation and figures included, on this machine.

With --store FULL (the out-dir of a run that holds every budget's runs, such as the full
protocol's), nothing is trained: each budget's out-dir merges FULL's store (a copy of it on
disk) and estimates from the runs its command names, the first seeds (mnist.py --merge FULL,
with the budget's flags). Its wall time is then not measured ("from a store").

Then the combined score against the better of its two parts, on the hard examples both score,
budget by budget, and the issue's two criteria: rho (hard) of at least 0.95 at 144 models, and
nowhere more than 0.003 below the better part.
"""
import argparse
import json
import pathlib
import subprocess
import sys
import time

import numpy as np
import scipy.stats

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / 'benchmarks'), str(ROOT)]
import agreement  # noqa: E402
from cscore import cli  # noqa: E402
from cscore import errors  # noqa: E402
from cscore import outputs  # noqa: E402

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
          ('learning confidence', 'learning_confidence'), ('combined score', 'combined_score'))
PARTS = ('C-score estimate', 'learning confidence')  # what the combined score combines
AT_LEAST, AT_MODELS, BELOW_BETTER = 0.95, 144, 0.003  # the criteria: rho (hard) at a budget, and
                                                       # how far below its better part it may be
TIMING = 'wall-time.json'


def run_budget(models, out_dir, extra, store=None):
  """Runs the budget's mnist.py command in out_dir; returns its wall time, in seconds. A budget
  trained before keeps its recorded time, and its outputs are rewritten by this mnist.py from
  its stored runs (--estimate-only). From `store`, it trains nothing, and its time is NaN."""
  timing = out_dir / TIMING
  command = [sys.executable, str(ROOT / 'mnist.py'), *BUDGETS[models][1], '--out-dir', str(out_dir), *extra]
  if store or timing.exists():
    command += ['--merge', str(store)] if store else ['--estimate-only']
    print(f'estimating {models} models: {" ".join(command[1:])}', flush=True)
    subprocess.run(command, check=True)
    return float('nan') if store else json.loads(timing.read_text())['seconds']
  print(f'running {models} models: {" ".join(command[1:])}', flush=True)
  start = time.perf_counter()
  subprocess.run(command, check=True)
  seconds = time.perf_counter() - start
  timing.write_text(json.dumps(dict(models=models, seconds=seconds, command=command[1:]), indent=1))
  return seconds


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
    raise errors.CScoreError(f'{details}: {errors.first_line(e)}; rerun its mnist.py command, or '
                            'delete its folder to start that budget over') from e
  hard = reference < agreement.HARD
  common = np.logical_and.reduce([~np.isnan(s) for s in scores.values()])
  out = {}
  for name, s in scores.items():
    a = agreement.agreement(s, reference)  # over the examples this score covers
    out[name] = (a['spearman'], a['spearman_hard'], a['examples'], a['hard'],
                 rho(s, reference, common), rho(s, reference, common & hard))
  return out, int(common.sum()), int((common & hard).sum())


def combined_against_parts(details, reference):
  """{name: rho (hard)} of the combined score and its two parts over the hard examples both
  parts score (the same examples for all three), and their count."""
  with np.load(details, allow_pickle=False) as d:
    scores = {name: d[key] for name, key in SCORES if name in PARTS + ('combined score',)}
  both = (reference < agreement.HARD) & np.logical_and.reduce([~np.isnan(scores[p]) for p in PARTS])
  return {name: rho(s, reference, both) for name, s in scores.items()}, int(both.sum())


def wall_time(seconds):
  if np.isnan(seconds):
    return 'from a store'
  minutes, seconds = divmod(round(seconds), 60)
  return f'{minutes} min {seconds} s' if minutes else f'{seconds} s'


def table(rows):
  """docs/proxies.md's table: per score, rho all / hard (examples; hard ones)."""
  lines = ['| budget | models | wall time | ' + ' | '.join(f'{name}: rho all / hard (examples; hard ones)' for name, _ in SCORES)
           + ' | on the examples all of them cover: ' + ' / '.join(name for name, _ in SCORES) + ' (examples) |',
           '| --- ' * (4 + len(SCORES)) + '|']
  for models, seconds, (result, common, common_hard) in rows:
    cells = [f'{r[0]:.2f} / {r[1]:.2f} ({r[2]:,}; {r[3]:,})' for r in (result[name] for name, _ in SCORES)]
    shared = (', '.join(f'{result[name][4]:.2f} / {result[name][5]:.2f}' for name, _ in SCORES)
              + f' ({common:,}; {common_hard:,})' if common
              else "none: one run's held-out and trained examples differ")
    lines.append(f'| {BUDGETS[models][0]} | {models} | {wall_time(seconds)} | ' + ' | '.join(cells) + f' | {shared} |')
  return '\n'.join(lines)


def criteria_table(rows):
  """The combined score against the better of its parts, budget by budget, and the verdicts."""
  lines = ['| budget | models | hard examples both parts score | C-score estimate | learning confidence '
           '| combined score | combined minus the better part |', '| --- ' * 7 + '|']
  short = []
  for models, (result, count) in rows:
    c, p, l = (result[name] for name in ('combined score',) + PARTS)
    if not count:
      lines.append(f'| {BUDGETS[models][0]} | {models} | none | | | | (no example has both) |')
      continue
    margin = c - max(p, l)
    if np.isnan([c, p, l]).any():  # (too few examples for a rho: not a pass)
      short.append(f'{models} models: not measured (too few hard examples)')
    elif margin < -BELOW_BETTER:
      short.append(f'{models} models: {-margin:.4f} below the better part')
    lines.append(f'| {BUDGETS[models][0]} | {models} | {count:,} | {p:.4f} | {l:.4f} | {c:.4f} | {margin:+.4f} |')
  at = dict(rows).get(AT_MODELS)
  value = at[0]['combined score'] if at else np.nan
  first = (f'rho (hard) at {AT_MODELS} models: not measured' if np.isnan(value) else
           f'rho (hard) at {AT_MODELS} models: {value:.4f}, '
           + ('met' if value >= AT_LEAST else f'short of {AT_LEAST} by {AT_LEAST - value:.4f}'))
  second = (f'within {BELOW_BETTER} of the better part at every budget: '
            + ('met' if not short else 'not met: ' + '; '.join(short)))
  return '\n'.join(lines + ['', first, second])


def parse_budgets(text):
  try:
    budgets = [int(b) for b in text.split(',')]
  except ValueError:
    raise argparse.ArgumentTypeError(f'not a comma-separated list of whole numbers: {text!r}')
  if unknown := [b for b in budgets if b not in BUDGETS]:
    raise argparse.ArgumentTypeError(f'unknown budget {unknown[0]}: one of {", ".join(map(str, BUDGETS))}')
  return budgets


def main():
  p = cli.OneLineErrorParser(prog='budgets.py', description=__doc__.splitlines()[0])
  p.add_argument('--root', required=True, type=pathlib.Path, help='a folder for the out-dirs')
  p.add_argument('--budgets', type=parse_budgets, default=[1, 4, 9, 36, 144, 576],
                 help=f'models, comma-separated, out of {", ".join(map(str, BUDGETS))} (default: 1,4,9,36,144,576)')
  p.add_argument('--reference', help='the published mnist-cscores.npy (default: download it)')
  p.add_argument('--store', type=pathlib.Path,
                 help="estimate each budget from this out-dir's stored runs (its first seeds) instead of training")
  p.add_argument('--manual-dir', help="passed to mnist.py")
  p.add_argument('--data-dir', help="passed to mnist.py")
  args = p.parse_args()
  extra = [x for flag, value in (('--manual-dir', args.manual_dir), ('--data-dir', args.data_dir))
           if value for x in (flag, value)]
  try:
    reference = agreement.load_scores(args.reference or agreement.download_reference(), 'published scores')
    rows, parts = [], []
    for models in args.budgets:
      out_dir = args.root / f'{models}-models'
      seconds = run_budget(models, out_dir, extra, args.store)
      details = out_dir / outputs.OUTPUTS['details']
      rows.append((models, seconds, compare(details, reference)))
      parts.append((models, combined_against_parts(details, reference)))
  except errors.CScoreError as e:
    sys.exit(f'budgets.py: error: {e}')
  except subprocess.CalledProcessError as e:
    sys.exit(f'budgets.py: error: {" ".join(e.cmd[1:])} failed (exit {e.returncode}); its own message is above')
  print(table(rows))
  print()
  print(criteria_table(parts))


if __name__ == '__main__':
  main()
