"""Analysis: what the runs tell beyond the C-score, at no extra training, and the Estimates that
hold it all (saved as cscores-details.npz).

  * standard errors (Jeffreys), and the --runs that would halve them;
  * split-half reliability (even against odd runs by seed order), projected by Spearman-Brown to
    the whole estimate, to 200 runs per ratio, and to the runs a target reliability needs (the
    plan line);
  * the paper's learning proxies, how fast and how confidently each example is learned while it
    is trained on, from the record the training step keeps;
  * the combined score: the C-score shrunk toward what learning confidence predicts, by its own
    noise.

mnist.py's estimator computes the held-out counts, C_r and C, and from the same masks in the
same pass the memorization and the halves' C_r; estimates() here derives the rest."""

import dataclasses
import datetime

import numpy as np


def binomial_variance(p, count):
  """Variance of a per-ratio score p measured on `count` held-out runs: the Jeffreys posterior
  variance a b / ((a + b)^2 (a + b + 1)), a = hits + 1/2, b = misses + 1/2. Unlike p (1 - p) / count
  it is not 0 at p = 0 or 1, where most examples sit. NaN where count is 0."""
  a, b = p * count + 0.5, (1 - p) * count + 0.5
  return a * b / ((a + b) ** 2 * (a + b + 1))


def standard_error(per_ratio, counts):
  """Standard error of the C-score, the mean of L independent per-ratio scores:
  sqrt(sum_r var_r) / L, over the ratios with an estimate."""
  var = binomial_variance(per_ratio, counts)
  counted = ~np.isnan(per_ratio)
  with np.errstate(invalid='ignore', divide='ignore'):
    return np.where(counted.any(0), np.sqrt(np.where(counted, var, 0).sum(0)) / counted.sum(0), np.nan)


def runs_to_halve_standard_error(est):
  """The --runs at which the median standard error would be half today's, if each example's
  per-ratio scores stayed as they are. Not simply 4x: at a score of 1, the Jeffreys variance
  falls about as 1/count^2, so there 2x the runs halve it."""
  runs = int(est.runs.max())
  target = np.nanmedian(est.standard_error) / 2
  for factor in np.arange(1.25, 16.01, 0.25):
    if np.nanmedian(standard_error(est.per_ratio, est.held_out_counts * factor)) <= target:
      return int(np.ceil(runs * factor))
  return 16 * runs


def spearman_brown(r, factor):
  """The reliability of an estimate `factor` times as large as one of reliability r (NaN for a
  negative r: no reliability to project)."""
  return factor * r / (1 + (factor - 1) * r) if r >= 0 else np.nan


def runs_for_reliability(est, target):
  """Runs per ratio whose estimate would reach reliability `target`: Spearman-Brown solved for
  the factor, from this estimate's reliability at the mean number of runs per ratio it was
  measured at (as split_half_reliability projects it); None if it has none to project."""
  r, runs = est.reliability, runs_per_ratio(est.runs)
  if not 0 < r < 1:
    return None
  factor = target * (1 - r) / (r * (1 - target))
  return max(2, int(np.ceil(round(runs * factor, 6))))  # (rounded: 110.00000000000001 is 110)


def pearson(a, b):
  """Pearson's r over the examples both score; NaN for fewer than 2 or a constant one."""
  both = ~np.isnan(a) & ~np.isnan(b)
  if both.sum() < 2 or not np.ptp(a[both]) or not np.ptp(b[both]):
    return np.nan
  return float(np.corrcoef(a[both], b[both])[0, 1])


def split_half_reliability(halves, runs):
  """How reproducible a score is, from the runs themselves: r, the Pearson correlation of its
  values from the even and from the odd runs (`halves` [2, n]). The Spearman-Brown formula
  projects it to the whole estimate, 2r / (1 + r), and to 200 runs per ratio (the published
  scores' size), k r / (1 + (k - 1) r) with k = 400 / runs. Returns (r, whole, at 200 runs);
  NaN (not available) without halves."""
  r = pearson(*halves)
  return r, spearman_brown(r, 2), spearman_brown(r, 400 / runs)


def runs_per_ratio(done):
  """The runs per ratio a reliability is measured at: the mean over the ratios (at least 1)."""
  return max(1, float(np.mean(done)))


def learning_proxies(found, n):
  """Per example, the mean over the runs that trained on it of the fraction of epochs in which
  it was classified correctly before its step's update, and of its confidence (mean probability
  of the label): how fast and how confidently it is learned. NaN where no run trained on it."""
  return proxy_means(*proxy_sums(found, n))


def proxy_sums(found, n):
  """(speed, confidence, count) [n] each: the learning record summed over the runs that trained
  on each example, and how many did."""
  speed, confidence = np.zeros(n), np.zeros(n)
  count = np.zeros(n, dtype=np.int64)
  for run in found:
    trained = ~run.held_out
    speed[trained] += run.hits / run.epochs
    confidence[trained] += run.confidence / 255
    count[trained] += 1
  return speed, confidence, count


def proxy_means(speed, confidence, count):
  """(speed, confidence) per example from their sums over `count` runs; NaN where there are none."""
  with np.errstate(invalid='ignore', divide='ignore'):
    return np.where(count > 0, speed / count, np.nan), np.where(count > 0, confidence / count, np.nan)


# The combined score. Learning confidence ranks the hard examples better than a C-score of few
# runs, and worse than one of many (its own ceiling, about rho 0.94 against the published scores
# on MNIST's hard examples, is what it measures, not noise). So each example's C-score is
# shrunk toward the C-score that examples of its learning confidence have, by how noisy it is:
# Kelley's true-score estimate, with each example's own noise. Among the examples of like
# learning confidence (a group), an example's C-score is c = t + e: its true C-score t scatters
# around the group's curve m with variance tau^2, and its noise e, of variance s^2 u, comes from
# the finite runs that held it out (u below). The best linear estimate of t is
#     m + w (c - m),   w = tau^2 / (tau^2 + s^2 u),
# and the runs measure both unknowns: the even and the odd runs' C-scores differ by noise alone,
# so mean (c_even - c_odd)^2 = s^2 mean (u_even + u_odd), and tau^2 = mean (c - m)^2 - s^2 mean u.
# As runs are added, u falls and w rises to 1: the C-score alone. The published scores set
# nothing here. See docs/combined.md.

NOISE_GROUP = 500  # examples whose halves both score them, a group for s^2 and tau^2: within ~6%


def group_size(count):
  """Examples a group of like learning confidence for the curve m, of `count` with both scores:
  1% of them, so that 100 groups follow the curve, and at least 50 (each mean within about
  +-0.01 on MNIST's hard examples)."""
  return max(50, count // 100)


def noise_units(counts):
  """[n] the variance of each example's C-score in units of one held-out run's: a mean over the
  L_i ratios that held it out of means over k_ir runs, (1 / L_i^2) sum_r 1 / k_ir; NaN where no
  run held it out. counts: [L, n] runs that held each example out, per ratio."""
  held = counts > 0
  with np.errstate(invalid='ignore', divide='ignore'):
    return np.where(held.any(0), np.where(held, 1 / np.maximum(counts, 1), 0).sum(0) / held.sum(0) ** 2, np.nan)


def confidence_curve(cscores, confidence, group=None):
  """The C-score that examples of a learning confidence have, as a function: the mean C-score of
  each group of `group` examples (default: group_size) by confidence, made never to fall as
  confidence rises (isotonic regression: an example learned more confidently is not predicted
  harder, and the curve keeps learning confidence's order), interpolated between the groups'
  median confidences. None if no example has both scores."""
  from scipy.optimize import isotonic_regression
  both = np.flatnonzero(~np.isnan(cscores) & ~np.isnan(confidence))
  if not len(both):
    return None
  group = group or group_size(len(both))
  groups = np.array_split(both[np.argsort(confidence[both], kind='stable')], max(1, len(both) // group))
  medians, means = (np.array([f(values[g]) for g in groups])
                    for f, values in ((np.median, confidence), (np.mean, cscores)))
  at, where = np.unique(medians, return_inverse=True)  # (groups of one tied confidence: one point)
  sizes = np.bincount(where, [len(g) for g in groups])
  curve = isotonic_regression(np.bincount(where, means * [len(g) for g in groups]) / sizes, weights=sizes).x
  return lambda x: np.interp(x, at, curve)


def combined_score(cscores, confidence, counts, halves, half_counts, curve_group=None):
  """(combined [n], weight [n], signal): per example, m + w (c - m) with c its C-score and m the
  C-score its learning confidence predicts (see above); w the weight on the C-score, 1 where it
  has no learning confidence and 0 where it has no C-score. signal: the share of the C-scores'
  spread about m that is signal, sum tau^2 / sum mean (c - m)^2 over the groups, the C-score's
  weight overall (NaN: not measured). halves: [2, n] the C-scores of the even and the odd runs,
  half_counts [2, L, n] their held-out counts, at the ratios with 2 runs or more (halves None,
  or NaN everywhere: the noise is not measurable, w = 0). The curve m is drawn in groups of
  curve_group examples (default: group_size), the noise measured in groups of NOISE_GROUP.
  Examples with neither score, or with learning confidence only when none has both, are NaN."""
  combined, weight = cscores.copy(), np.where(np.isnan(cscores), np.nan, 1.0)
  curve = confidence_curve(cscores, confidence, curve_group)
  if curve is None:
    return combined, weight, np.nan
  has = ~np.isnan(confidence)
  prior = np.full(len(cscores), np.nan)
  prior[has] = curve(confidence[has])
  combined[has], weight[has] = prior[has], 0.0  # no C-score: the one its confidence predicts
  both = np.flatnonzero(has & ~np.isnan(cscores))
  both = both[np.argsort(confidence[both], kind='stable')]
  u = noise_units(counts)
  measured = (np.zeros(len(both), bool) if halves is None
              else ~np.isnan(halves[:, both]).any(0))  # noise measured here: both halves score it
  k = max(1, int(measured.sum()) // NOISE_GROUP)  # groups of NOISE_GROUP measured examples
  of = np.minimum(np.cumsum(measured) * k // max(measured.sum(), 1), k - 1)  # each one's group
  signal, spread = 0.0, 0.0
  for j in range(k):
    g, h = both[of == j], both[(of == j) & measured]  # the group, and where its halves both score
    if len(h) < 3:
      continue  # (the noise is not measurable: w stays 0)
    half_units = noise_units(half_counts[0][:, h]) + noise_units(half_counts[1][:, h])
    s2 = np.mean((halves[0, h] - halves[1, h]) ** 2) / np.mean(half_units)
    deviation = cscores[g] - prior[g]
    tau2 = max(float(np.mean(deviation ** 2) - s2 * np.mean(u[g])), 0.0)
    noise = s2 * u[g]
    w = np.divide(tau2, tau2 + noise, out=np.ones(len(g)), where=tau2 + noise > 0)
    combined[g], weight[g] = prior[g] + w * deviation, w
    signal, spread = signal + len(g) * tau2, spread + float(np.sum(deviation ** 2))
  return combined, weight, signal / spread if spread > 0 else np.nan


@dataclasses.dataclass
class Estimates:
  """All that is estimated from the runs; saved as cscores-details.npz."""
  ratios: np.ndarray            # [L]
  runs: np.ndarray              # [L] runs done per ratio
  heldout_accuracy: np.ndarray  # [L] mean accuracy of a run on the examples it held out
  per_ratio: np.ndarray         # [L, n] C_r: accuracy on the example of the runs that held it out
  held_out_counts: np.ndarray   # [L, n] how many runs held the example out
  cscores: np.ndarray           # [n] mean of per_ratio over ratios
  standard_error: np.ndarray    # [n] of cscores
  memorization_per_ratio: np.ndarray  # [L, n] P(correct | trained on it) - P(correct | held out)
  memorization: np.ndarray      # [n] its mean over ratios (Feldman & Zhang, 2020)
  split_half_r: float           # Pearson r of the C-scores of the even and the odd runs
  reliability: float            # the whole estimate's, 2r / (1 + r); NaN: not available
  reliability_200_runs: float   # projected to 200 runs per ratio
  split_half_cscores: np.ndarray  # [2, n] the C-scores of each half
  learning_speed: np.ndarray    # [n] mean over runs trained on it: epochs right / epochs
  learning_confidence: np.ndarray  # [n] and its mean probability of the label while trained on
  confidence_split_half_r: float  # learning confidence's r between the even and the odd runs
  confidence_reliability: float   # and its whole estimate's, 2r / (1 + r)
  split_half_confidence: np.ndarray  # [2, n] the learning confidence of each half
  combined_score: np.ndarray    # [n] the C-score shrunk toward what learning confidence predicts
  combined_weight: np.ndarray   # [n] the weight on the C-score in it (1: the C-score alone)
  combined_signal: float        # the share of the C-scores' spread about its curve that is signal


def plan_line(est, config, trained, seconds):
  """How many runs per ratio this data needs for a reliability of 0.99 and of 0.999, and, when
  this command trained, how long each protocol would take at its rate (models a second); None
  without a reliability to project. It sits beside the standard-error line, which says what
  halves the error; this one says what reaches a reliability."""
  targets = {t: runs_for_reliability(est, t) for t in (0.99, 0.999)}
  if None in targets.values():
    return None
  rate = trained / seconds if trained and seconds > 0 else None
  def plan(target, runs):
    models = runs * len(config.ratios)
    took = f', {models:,} models, about {datetime.timedelta(seconds=round(models / rate))}' if rate else ''
    return f'{target} takes --runs {runs}{took}'
  return (f'plan: from this estimate\'s reliability ({est.reliability:.3f} at {runs_per_ratio(est.runs):g} runs '
          f'per ratio, Spearman-Brown), a reliability of ' + '; of '.join(plan(t, r) for t, r in targets.items())
          + (' at this run\'s rate' if rate else ''))



def estimates(ratios, found, done, accuracy, per_ratio, counts, cscores, memorization_per_ratio,
              memorization, halves, half_counts):
  """The Estimates of a command's runs, from what the estimator computed in its one pass over
  them: found [L] lists of the runs done per ratio, in seed order, done [L] their number and
  accuracy [L] their mean held-out accuracy; per_ratio and counts [L, n], C_r and the held-out
  counts; cscores [n]; memorization_per_ratio [L, n] and its mean over ratios [n]; halves [2, n]
  the C-scores of the even and the odd runs, at the ratios with 2 runs or more, and half_counts
  [2, L, n] their held-out counts (the combined score's noise)."""
  n = len(cscores)
  # The split-half reliabilities need halves at every ratio; the whole's proxies are then the
  # halves' records added up (the order of the sums decides the bits).
  if min(done) >= 2:
    sums = [proxy_sums([run for f in found for run in f[half::2]], n) for half in (0, 1)]
    scores_of_halves, confidence_of_halves = halves, np.stack([proxy_means(*s)[1] for s in sums])
    speed, confidence = proxy_means(*(a + b for a, b in zip(*sums)))
  else:
    scores_of_halves = confidence_of_halves = np.full((2, n), np.nan)
    speed, confidence = learning_proxies([run for f in found for run in f], n)
  runs = runs_per_ratio(done)
  r, whole, at_200_runs = split_half_reliability(scores_of_halves, runs)
  confidence_r, confidence_whole, _ = split_half_reliability(confidence_of_halves, runs)
  combined, weight, signal = combined_score(cscores, confidence, counts, halves, half_counts)
  return Estimates(
      ratios=np.array(ratios), runs=done, heldout_accuracy=accuracy,
      per_ratio=per_ratio, held_out_counts=counts, cscores=cscores,
      standard_error=standard_error(per_ratio, counts),
      memorization_per_ratio=memorization_per_ratio, memorization=memorization,
      split_half_r=r, reliability=whole, reliability_200_runs=at_200_runs,
      split_half_cscores=scores_of_halves, learning_speed=speed, learning_confidence=confidence,
      confidence_split_half_r=confidence_r, confidence_reliability=confidence_whole,
      split_half_confidence=confidence_of_halves, combined_score=combined, combined_weight=weight,
      combined_signal=signal)
