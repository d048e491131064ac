"""Ways to combine the C-score with learning confidence, and how each ranks the hard examples.

    python benchmarks/weightings.py FULL [--reference PATH] [--runs 4@0.9,4,16,32,64,200] [--seed S]

FULL is the out-dir of a run whose store holds the runs of each budget (the full protocol's).
For each --runs R it estimates from R seeds per ratio from --seed on (default 0: the first), as
`mnist.py --runs R --seed S --estimate-only` would (R@0.9: at ratio 0.9 alone), and prints
Spearman's rho against the published scores over the hard examples (published < 0.99) that both
parts score, for the two parts and for each weighting below. Every weighting takes its weights
from the runs alone; the last line, the best of the fixed weights 0, 0.05, ..., 1 picked by
looking at the published scores, is what a fixed weight could reach, not a method.

  C-score, learning confidence        the two parts alone
  equal ranks                         the mean of their normal scores (ranks mapped to N(0, 1))
  linear, values / normal scores      the best linear predictor of the true C-score from both:
                                      weights Sigma^-1 (cov(c_even, c_odd), cov(c_even, q_odd)),
                                      Sigma the two scores' covariance (the second term averaged
                                      with its odd-even twin); on the values or on normal scores
  linear, lowest 17.5/20/22.5%        the same on normal scores, its statistics taken over the
                                      examples of the lowest learning confidence
  groups, one noise each              m + w (c - m) in groups of like learning confidence, one w a
                                      group: cov(c_even - m, c_odd - m) / mean (c - m)^2
  groups, binomial noise              m + w (c - m), w = tau^2 / (tau^2 + se^2), se the C-score's
                                      standard error (Jeffreys) instead of the halves
  mnist.py's combined score           w = tau^2 / (tau^2 + s^2 u), s^2 from the halves (docs/proxies.md)
"""
import argparse
import pathlib
import sys

import numpy as np
import scipy.special
import scipy.stats

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / 'benchmarks'), str(ROOT)]
import agreement  # noqa: E402
import mnist  # noqa: E402
from cscore import analysis  # noqa: E402
from cscore import cli  # noqa: E402
from cscore import errors  # noqa: E402
from cscore import store  # noqa: E402


def normal_scores(x):
  """Ranks mapped to N(0, 1) quantiles, NaN kept."""
  out, ok = np.full(len(x), np.nan), ~np.isnan(x)
  out[ok] = scipy.special.ndtri((scipy.stats.rankdata(x[ok]) - 0.5) / ok.sum())
  return out


def cov(a, b):
  ok = ~np.isnan(a) & ~np.isnan(b)
  return float(np.cov(a[ok], b[ok])[0, 1])


def linear(c, q, halves, q_halves, where=None):
  """The best linear predictor of the true C-score from (c, q), its statistics over `where`:
  the true scores' covariances are those across halves, whose noises are independent."""
  where = np.ones(len(c), bool) if where is None else where
  both = where & ~np.isnan(c) & ~np.isnan(q)
  sigma = np.cov(c[both], q[both])
  (c0, c1), (q0, q1) = ([np.where(where, h, np.nan) for h in hs] for hs in (halves, q_halves))
  w = np.linalg.solve(sigma, [cov(c0, c1), (cov(c0, q1) + cov(c1, q0)) / 2])
  return w[0] * (c - np.nanmean(c[both])) + w[1] * (q - np.nanmean(q[both]))


def lowest_confidence(c, q, halves, q_halves, share):
  z = [normal_scores(x) for x in (c, q, *halves, *q_halves)]
  return linear(z[0], z[1], z[2:4], z[4:], where=z[1] < np.nanquantile(z[1], share))


def groups(c, q, noise_of):
  """m + w (c - m) in groups of like learning confidence, m the curve of mnist.py's combined score
  and w = tau^2 / (tau^2 + noise); noise_of(g, m) gives the noise variance of each of group g's
  C-scores, m the curve there."""
  m = np.full(len(c), np.nan)
  m[~np.isnan(q)] = analysis.confidence_curve(c, q)(q[~np.isnan(q)])
  both = np.flatnonzero(~np.isnan(c) & ~np.isnan(q))
  group = analysis.group_size(len(both))
  out = np.full(len(c), np.nan)
  for g in np.array_split(both[np.argsort(q[both], kind='stable')], max(1, len(both) // group)):
    noise = noise_of(g, m[g])
    tau2 = max(float(np.mean((c[g] - m[g]) ** 2) - np.mean(noise)), 0.0)
    w = np.divide(tau2, tau2 + noise, out=np.ones(len(g)), where=tau2 + noise > 0)
    out[g] = m[g] + w * (c[g] - m[g])
  return out


def one_noise(c, halves):
  """Each group's noise, one for all its examples: the C-scores' spread about the curve less the
  halves' covariance about it (which is the true scores' spread)."""
  def noise_of(g, m):
    ok = ~np.isnan(halves[:, g]).any(0)
    if ok.sum() < 3:
      return np.full(len(g), np.inf)
    true = float(np.mean((halves[0, g[ok]] - m[ok]) * (halves[1, g[ok]] - m[ok])))
    return np.full(len(g), max(float(np.mean((c[g] - m) ** 2)) - true, 0.0))
  return noise_of


def binomial_noise(se):
  return lambda g, m: se[g] ** 2


def weightings(est):
  """{name: scores} of each way of combining this estimate's C-score and learning confidence."""
  c, q, halves, q_halves = est.cscores, est.learning_confidence, est.split_half_cscores, est.split_half_confidence
  return {
      'C-score': c, 'learning confidence': q,
      'equal ranks: the mean of the two normal scores': normal_scores(c) + normal_scores(q),
      'linear, on the values': linear(c, q, halves, q_halves),
      'linear, on normal scores': linear(*(normal_scores(x) for x in (c, q)), *([normal_scores(h) for h in hs] for hs in (halves, q_halves))),
      **{f'linear, on normal scores, over the lowest {share:.1%} by learning confidence':
         lowest_confidence(c, q, halves, q_halves, share) for share in (0.175, 0.2, 0.225)},
      'groups of like confidence, one noise each': groups(c, q, one_noise(c, halves)),
      "groups, each example's noise its binomial standard error": groups(c, q, binomial_noise(est.standard_error)),
      "groups, each example's noise s^2 u from the halves (mnist.py's combined score)": est.combined_score}


def parse_budgets(text):
  """[(runs per ratio, ratios or None)] of '4@0.9,16'."""
  try:
    return [(int(r), (float(ratio),) if ratio else None)
            for r, _, ratio in (b.partition('@') for b in text.split(','))]
  except ValueError:
    raise argparse.ArgumentTypeError(f'not a comma-separated list of R or R@RATIO: {text!r}')


def main():
  p = cli.OneLineErrorParser(prog='weightings.py', description=__doc__.splitlines()[0])
  p.add_argument('full', type=pathlib.Path, help="the out-dir whose store holds the budgets' runs")
  p.add_argument('--reference', help='the published mnist-cscores.npy (default: download it)')
  p.add_argument('--runs', default='4@0.9,4,16,32,64,200', type=parse_budgets,
                 help='runs per ratio, comma-separated; R@0.9: R runs at ratio 0.9 alone (default: 4@0.9,4,16,32,64,200)')
  p.add_argument('--seed', type=int, default=0, help='the first run seed of each budget (default 0)')
  args = p.parse_args()
  try:
    reference = agreement.load_scores(args.reference or agreement.download_reference(), 'published scores')
    runs = store.load_runs(str(args.full / store.STORE_DIR))
    budgets = args.runs
    table = {}
    for r, ratios in budgets:
      config = mnist.Config(runs=r, seed=args.seed, **(dict(ratios=ratios) if ratios else {}))
      est = mnist.estimate(runs, config, len(reference))
      if int(est.runs.min()) < config.runs:
        raise errors.CScoreError(f'{args.full} holds {int(est.runs.min())} of seeds {args.seed}.. at some ratio, fewer than {r}')
      hard = (reference < agreement.HARD) & ~np.isnan(est.cscores) & ~np.isnan(est.learning_confidence)
      for name, scores in weightings(est).items():
        table.setdefault(name, []).append(scipy.stats.spearmanr(scores[hard], reference[hard]).statistic)
      best = max((scipy.stats.spearmanr((w * normal_scores(est.cscores) + (1 - w) * normal_scores(est.learning_confidence))[hard],
                                        reference[hard]).statistic, w) for w in np.linspace(0, 1, 21))
      table.setdefault('the best fixed weight on the normal scores, picked with the published scores (not a method)', []).append(best)
  except errors.CScoreError as e:
    sys.exit(f'weightings.py: error: {e}')
  except (np.linalg.LinAlgError, TypeError, ValueError) as e:  # (too few runs for some weighting)
    sys.exit(f'weightings.py: error: a weighting cannot be computed at these runs ({errors.first_line(e)}); '
             'use more runs per ratio')
  print(f"Spearman's rho over the hard examples both parts score, by runs per ratio (seeds from {args.seed})\n")
  print('| weighting | ' + ' | '.join(f'{r} runs at ratio {ratios[0]:g}' if ratios else f'{r} runs per ratio'
                                      for r, ratios in budgets) + ' |')
  print('| --- ' * (len(budgets) + 1) + '|')
  for name, cells in table.items():
    print(f'| {name} | ' + ' | '.join(f'{c[0]:.4f} (w {c[1]:.2f})' if isinstance(c, tuple) else f'{c:.4f}' for c in cells) + ' |')


if __name__ == '__main__':
  main()
