"""cscore/analysis.py: what the estimate adds to the C-scores, each checked against a direct
computation or a store whose truth is known: the standard error, the split-half reliability and
the plan it gives, the learning proxies, and the combined score, each C-score shrunk toward the
C-score its learning confidence predicts, by its own noise, with weights from the runs' own
halves."""
import math
import types

import numpy as np
import pytest
import scipy.stats

import mnist
from cscore import analysis, outputs, store
from conftest import CPU, bernoulli_store


# --- The standard error, and the runs that would halve it -----------------------------------------

def test_standard_error_shrinks_as_one_over_sqrt_runs():
  few = analysis.binomial_variance(np.array([0.9]), np.array([100]))
  many = analysis.binomial_variance(np.array([0.9]), np.array([400]))
  np.testing.assert_allclose(np.sqrt(few / many), 2, rtol=0.02)


def estimates_with_scores(p, runs=20, count=100, n=50):
  """Estimates of n examples, each with per-ratio score p from `count` held-out runs."""
  per_ratio = np.full((2, n), p)
  counts = np.full((2, n), count)
  return analysis.Estimates(
      ratios=np.array([0.3, 0.6]), runs=np.array([runs, runs]), heldout_accuracy=np.full(2, 0.9),
      per_ratio=per_ratio, held_out_counts=counts, cscores=per_ratio[0],
      standard_error=analysis.standard_error(per_ratio, counts),
      memorization_per_ratio=np.zeros((2, n)), memorization=np.zeros(n),
      split_half_r=np.nan, reliability=np.nan, reliability_200_runs=np.nan,
      split_half_cscores=np.full((2, n), np.nan), learning_speed=np.full(n, np.nan),
      learning_confidence=np.full(n, np.nan), confidence_split_half_r=np.nan,
      confidence_reliability=np.nan, split_half_confidence=np.full((2, n), np.nan),
      combined_score=per_ratio[0], combined_weight=np.ones(n), combined_signal=np.nan)


def test_runs_that_halve_the_standard_error_are_about_4x_for_middling_scores():
  assert 75 <= analysis.runs_to_halve_standard_error(estimates_with_scores(0.5)) <= 85


def test_runs_that_halve_the_standard_error_are_about_2x_where_every_run_was_right():
  assert 35 <= analysis.runs_to_halve_standard_error(estimates_with_scores(1.0)) <= 45


# --- Split-half reliability, and the plan: runs per ratio for a reliability of 0.99 and 0.999 -----

def test_split_half_reliability_matches_the_truth_of_a_known_store():
  skill = np.random.default_rng(5).beta(2, 0.5, 20000)
  ratios, runs = (0.2, 0.5), 8
  est = mnist.estimate(bernoulli_store(skill, ratios, runs), mnist.Config(ratios=ratios, runs=runs), 20000)
  # Each half is a mean of len(ratios) x runs/2 Bernoulli draws per example.
  noise = np.mean(skill * (1 - skill)) / (len(ratios) * runs / 2)
  truth = skill.var() / (skill.var() + noise)
  assert est.split_half_r == pytest.approx(truth, abs=0.015)
  assert est.reliability == pytest.approx(2 * truth / (1 + truth), abs=0.01)
  k = 400 / runs
  assert est.reliability_200_runs == pytest.approx(k * truth / (1 + (k - 1) * truth), abs=0.005)


def test_split_half_reliability_is_not_available_when_a_ratio_has_no_runs_yet():
  runs = bernoulli_store(np.linspace(0, 1, 30), (0.2,), 4)
  est = mnist.estimate(runs, mnist.Config(ratios=(0.2, 0.5), runs=4), 30)
  assert np.isnan([est.split_half_r, est.reliability, est.reliability_200_runs]).all()


def test_split_half_reliability_is_not_available_with_one_run_at_a_ratio():
  runs = bernoulli_store(np.linspace(0, 1, 30), (0.2, 0.5), 2)
  del runs[0.5, 1]
  est = mnist.estimate(runs, mnist.Config(ratios=(0.2, 0.5), runs=2), 30)
  assert np.isnan([est.split_half_r, est.reliability, est.reliability_200_runs]).all()
  assert outputs.reliability_line(est).endswith('not available (it needs at least 2 runs at every ratio)')


def test_the_plan_solves_spearman_brown_for_the_runs_and_times_them_at_this_runs_rate():
  # reliability 0.9 at 10 runs: k = t (1 - 0.9) / (0.9 (1 - t)) = 11 for 0.99, 111 for 0.999;
  # 2 ratios at 0.5 models/s: 220 models in 440 s, 2,220 in 4,440 s
  est = types.SimpleNamespace(reliability=0.9, runs=np.array([10, 10]))
  line = analysis.plan_line(est, mnist.Config(ratios=(0.3, 0.7)), trained=20, seconds=40)
  assert '0.99 takes --runs 110, 220 models, about 0:07:20' in line
  assert '0.999 takes --runs 1110, 2,220 models, about 1:14:00' in line


def test_without_training_the_plan_gives_the_runs_alone():
  est = types.SimpleNamespace(reliability=0.9, runs=np.array([10, 10]))
  line = analysis.plan_line(est, mnist.Config(ratios=(0.3, 0.7)), trained=0, seconds=12)
  assert line.endswith('0.99 takes --runs 110; of 0.999 takes --runs 1110')


def test_without_a_reliability_there_is_no_plan():
  est = types.SimpleNamespace(reliability=np.nan, runs=np.array([1]))
  assert analysis.plan_line(est, mnist.Config(), trained=9, seconds=9) is None


def test_the_plan_projects_from_the_mean_runs_per_ratio_the_reliability_was_measured_at():
  # 3 and 4 runs: the halves' correlation is measured at 3.5 runs per ratio on average, so
  # reliability 0.9 there takes 3.5 x 11 = 38.5 -> 39 runs for 0.99, 3.5 x 111 = 388.5 -> 389 for 0.999
  est = types.SimpleNamespace(reliability=0.9, runs=np.array([3, 4]))
  line = analysis.plan_line(est, mnist.Config(ratios=(0.3, 0.7)), trained=0, seconds=12)
  assert '(0.900 at 3.5 runs per ratio, Spearman-Brown)' in line
  assert line.endswith('0.99 takes --runs 39; of 0.999 takes --runs 389')


# --- The learning proxies: means over the runs that trained on each example -----------------------

def random_run(rng, n, epochs):
  held_out = rng.random(n) < 0.5
  m = int((~held_out).sum())
  return store.Run(held_out, rng.random(n) < 0.8, rng.integers(0, epochs + 1, m).astype(np.uint8),
                   rng.integers(0, 256, m).astype(np.uint8), epochs, CPU)


def test_the_proxies_are_the_means_over_the_runs_that_trained_on_each_example():
  rng, n, epochs = np.random.default_rng(0), 30, 4
  runs = [random_run(rng, n, epochs) for _ in range(5)]
  speed, confidence = analysis.learning_proxies(runs, n)
  for i in range(n):
    # a run's record lists the examples it trained on in example order: i is the j-th of them
    seen = [(r.hits[j], r.confidence[j]) for r in runs if not r.held_out[i]
            for j in [np.count_nonzero(~r.held_out[:i])]]
    if not seen:
      assert math.isnan(speed[i]) and math.isnan(confidence[i])
      continue
    assert math.isclose(speed[i], sum(h / epochs for h, _ in seen) / len(seen))
    assert math.isclose(confidence[i], sum(c / 255 for _, c in seen) / len(seen))


def test_an_example_no_run_trained_on_has_no_proxy():
  held_out = np.array([True, False, False])
  run = store.Run(held_out, np.ones(3, bool), np.array([2, 1], np.uint8), np.array([255, 0], np.uint8), 2, CPU)
  speed, confidence = analysis.learning_proxies([run], 3)
  assert math.isnan(speed[0]) and math.isnan(confidence[0])
  np.testing.assert_allclose(speed[1:], [1, 0.5])
  np.testing.assert_allclose(confidence[1:], [1, 0])


# --- The combined score, and learning confidence's split-half reliability -------------------------

def known_store(truth, proxy, ratios, runs, seed=0):
  """Runs whose truth is known: each holds an example out with probability 1 - ratio, classifies
  a held-out one correctly with probability truth[i], and reports, for each one it trained on,
  a confidence of proxy[i] plus a run's noise (sd 0.05), quantized as the store does."""
  rng = np.random.default_rng(seed)
  n = len(truth)
  stored = {}
  for r in ratios:
    for s in range(runs):
      held_out = rng.random(n) > r
      correct = rng.random(n) < truth
      confidence = np.clip(proxy + rng.normal(0, 0.05, n), 0, 1)[~held_out]
      stored[store.ratio_key(r), s] = store.Run(
          held_out, correct, np.zeros((~held_out).sum(), np.uint8),
          np.rint(confidence * 255).astype(np.uint8), 1, CPU)
  return stored


def known_truth(n=6000, seed=1):
  """(truth, proxy): true C-scores spread like a data set's (most near 1), and a proxy that
  follows them with a systematic error of its own (sd 0.1) that no number of runs removes."""
  rng = np.random.default_rng(seed)
  truth = rng.beta(3, 0.6, n)
  return truth, np.clip(0.3 + 0.6 * truth + rng.normal(0, 0.1, n), 0, 1)


RATIOS = (0.2, 0.5, 0.8)


def estimate_known(runs, n=6000):
  truth, proxy = known_truth(n)
  est = mnist.estimate(known_store(truth, proxy, RATIOS, runs), mnist.Config(ratios=RATIOS, runs=runs), n)
  return truth, est


def test_the_weight_on_the_cscore_rises_toward_1_as_runs_are_added():
  estimates = [estimate_known(runs)[1] for runs in (2, 8, 32, 128)]
  medians = [np.median(est.combined_weight) for est in estimates]
  assert medians == sorted(medians) and medians[0] < 0.5 and 0.9 < medians[-1] <= 1, medians
  signal = [est.combined_signal for est in estimates]  # the C-score's weight on the whole
  assert signal == sorted(signal) and signal[0] < 0.5 and 0.9 < signal[-1] <= 1, signal


def test_with_few_runs_the_combined_score_is_nearer_the_truth_than_the_cscore_and_ranks_it_best():
  truth, est = estimate_known(4)
  both = ~np.isnan(est.cscores) & ~np.isnan(est.learning_confidence)
  assert both.sum() > 5900
  def error(values):
    return np.sqrt(np.mean((values[both] - truth[both]) ** 2))
  assert error(est.combined_score) < 0.8 * error(est.cscores)
  rho = {name: scipy.stats.spearmanr(values[both], truth[both]).statistic for name, values in
         (('C-score', est.cscores), ('confidence', est.learning_confidence), ('combined', est.combined_score))}
  assert rho['combined'] > max(rho['C-score'], rho['confidence']), rho


def test_noise_units_are_a_mean_of_means_over_the_ratios_that_held_an_example_out():
  counts = np.array([[1, 2, 0], [0, 4, 0], [2, 2, 0]])  # 3 ratios x 3 examples
  u = analysis.noise_units(counts)
  assert u[0] == pytest.approx((1 / 1 + 1 / 2) / 2 ** 2)          # held out at 2 ratios
  assert u[1] == pytest.approx((1 / 2 + 1 / 4 + 1 / 2) / 3 ** 2)  # at all 3
  assert math.isnan(u[2])


def hand_store(n=40, seed=3):
  """2 ratios x 4 runs whose masks are drawn at random, every confidence 200/255: the curve is
  flat, one group."""
  rng = np.random.default_rng(seed)
  skill = np.linspace(0.05, 0.95, n)
  stored = {}
  for r in (0.3, 0.6):
    for s in range(4):
      held_out = rng.random(n) < 0.5
      stored[r, s] = store.Run(held_out, rng.random(n) < skill, np.zeros((~held_out).sum(), np.uint8),
                              np.full((~held_out).sum(), 200, np.uint8), 1, CPU)
  return stored


def test_the_combined_score_is_kelleys_estimate_computed_by_hand():
  stored, n = hand_store(), 40
  def held(r, seeds, i):
    return [stored[r, s].correct[i] for s in seeds if stored[r, s].held_out[i]]
  def cscore(seeds, i):  # the mean over the ratios that held i out of their fraction right
    rights = [held(r, seeds, i) for r in (0.3, 0.6) if held(r, seeds, i)]
    return sum(sum(x) / len(x) for x in rights) / len(rights) if rights else math.nan
  def units(seeds, i):  # (1 / L_i^2) sum over those ratios of 1 / count
    counts = [len(held(r, seeds, i)) for r in (0.3, 0.6) if held(r, seeds, i)]
    return sum(1 / k for k in counts) / len(counts) ** 2 if counts else math.nan
  c = [cscore(range(4), i) for i in range(n)]
  u = [units(range(4), i) for i in range(n)]
  trained = [i for i in range(n) if any(not stored[r, s].held_out[i] for r in (0.3, 0.6) for s in range(4))]
  scored = [i for i in trained if not math.isnan(c[i])]
  measured = [i for i in scored if not math.isnan(cscore([0, 2], i)) and not math.isnan(cscore([1, 3], i))]
  m = sum(c[i] for i in scored) / len(scored)  # the flat curve: the mean C-score
  s2 = (sum((cscore([0, 2], i) - cscore([1, 3], i)) ** 2 for i in measured) / len(measured)
        / (sum(units([0, 2], i) + units([1, 3], i) for i in measured) / len(measured)))
  spread = sum((c[i] - m) ** 2 for i in scored)
  tau2 = spread / len(scored) - s2 * sum(u[i] for i in scored) / len(scored)
  assert tau2 > 0 and len(measured) >= 3
  est = mnist.estimate(stored, mnist.Config(ratios=(0.3, 0.6), runs=4), n)
  for i in scored:
    w = tau2 / (tau2 + s2 * u[i])
    assert est.combined_weight[i] == pytest.approx(w)
    assert est.combined_score[i] == pytest.approx(m + w * (c[i] - m))
  assert est.combined_signal == pytest.approx(tau2 * len(scored) / spread)


def test_an_example_with_learning_confidence_only_gets_the_cscore_its_confidence_predicts():
  # Two groups of two: confidence medians 0.15 and 0.85, mean C-scores 0.1 and 0.9; the line
  # between them passes 0.5 at confidence 0.5.
  cscores = np.array([0.0, 0.2, 0.8, 1.0, np.nan, np.nan])
  confidence = np.array([0.1, 0.2, 0.8, 0.9, 0.5, np.nan])
  counts = np.array([[1, 1, 1, 1, 0, 0]])
  combined, weight, _ = analysis.combined_score(cscores, confidence, counts, None, None, curve_group=2)
  assert combined[4] == pytest.approx(0.5) and weight[4] == 0
  assert math.isnan(combined[5]) and math.isnan(weight[5])


def test_the_curve_never_falls_as_confidence_rises_so_it_keeps_confidences_order():
  # Groups of two by confidence with mean C-scores 0.2, 0.6, 0.4, 0.8: the middle two are pooled
  # to their mean, 0.5 (isotonic regression), so 0.6 and 0.4 do not reverse the proxy's order.
  confidence = np.array([0.1, 0.1, 0.3, 0.3, 0.5, 0.5, 0.7, 0.7])
  cscores = np.array([0.1, 0.3, 0.5, 0.7, 0.3, 0.5, 0.7, 0.9])
  curve = analysis.confidence_curve(cscores, confidence, group=2)
  np.testing.assert_allclose(curve(np.array([0.1, 0.3, 0.5, 0.7])), [0.2, 0.5, 0.5, 0.8])
  assert curve(0.2) == pytest.approx(0.35)


def test_an_example_with_a_cscore_only_keeps_it_with_weight_1():
  cscores = np.array([0.3, 0.6, 0.9, 0.2])
  confidence = np.array([0.5, 0.6, 0.7, np.nan])
  combined, weight, _ = analysis.combined_score(cscores, confidence, np.ones((1, 4), int), None, None, curve_group=2)
  assert combined[3] == 0.2 and weight[3] == 1


def test_with_one_run_at_some_ratio_the_noise_is_measured_at_the_others():
  truth, proxy = known_truth(2000)
  stored = known_store(truth, proxy, RATIOS, 8)
  for s in range(1, 8):  # a run stopped part way: 0.5 has one run
    del stored[store.ratio_key(0.5), s]
  est = mnist.estimate(stored, mnist.Config(ratios=RATIOS, runs=8), 2000)
  assert math.isnan(est.reliability)  # the C-score's own split-half needs every ratio
  assert 0.3 < est.combined_signal < 1 and np.median(est.combined_weight) > 0.3
  assert 'the C-score weighs 0.' in outputs.combined_lines(est)[1]


def test_with_one_run_at_every_ratio_the_weights_are_0_not_nan():
  truth, proxy = known_truth(600)
  est = mnist.estimate(known_store(truth, proxy, RATIOS, 1), mnist.Config(ratios=RATIOS, runs=1), 600)
  both = ~np.isnan(est.cscores) & ~np.isnan(est.learning_confidence)
  assert both.sum() > 100 and (est.combined_weight[both] == 0).all() and math.isnan(est.combined_signal)
  assert not np.isnan(est.combined_score[both]).any()
  assert 'the C-score weighs 0 (its noise is not measurable: no ratio has 2 runs)' in outputs.combined_lines(est)[1]
  assert math.isnan(est.confidence_split_half_r) and math.isnan(est.confidence_reliability)


def test_with_no_example_scored_both_ways_the_combined_score_is_the_cscore():
  held_out = np.array([True, True, False, False])
  run = store.Run(held_out, np.array([True, False, True, True]), np.zeros(2, np.uint8),
                  np.array([200, 100], np.uint8), 1, CPU)
  est = mnist.estimate({(0.5, 0): run}, mnist.Config(ratios=(0.5,), runs=1), 4)
  np.testing.assert_array_equal(est.combined_score, [1.0, 0.0, np.nan, np.nan])
  assert outputs.combined_lines(est)[1] == ('combined score: the C-score alone; no example has both a C-score '
                                          'and learning confidence, so the 2 with learning confidence only '
                                          'have none (see learning_confidence)')


def test_learning_confidence_halves_are_the_even_and_the_odd_runs_in_seed_order():
  truth, proxy = known_truth(40)
  stored = known_store(truth, proxy, (0.3, 0.7), 5)
  est = mnist.estimate(stored, mnist.Config(ratios=(0.3, 0.7), runs=5), 40)
  for half, seeds in enumerate(([0, 2, 4], [1, 3])):
    for i in range(40):
      seen = [stored[r, s].confidence[np.count_nonzero(~stored[r, s].held_out[:i])] / 255
              for r in (0.3, 0.7) for s in seeds if not stored[r, s].held_out[i]]
      expected = sum(seen) / len(seen) if seen else math.nan
      assert est.split_half_confidence[half, i] == pytest.approx(expected, nan_ok=True)
  both = ~np.isnan(est.split_half_confidence).any(0)
  r = np.corrcoef(*est.split_half_confidence[:, both])[0, 1]
  assert est.confidence_split_half_r == pytest.approx(r)
  assert est.confidence_reliability == pytest.approx(2 * r / (1 + r))
