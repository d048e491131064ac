"""The estimator (mnist.estimate): C_r, the C-score, memorization, the standard error and the
two halves' C-scores, each checked against a direct computation (plain loops over runs) on small
synthetic stores."""
import math

import numpy as np
import pytest

import mnist
from cscore import store
from conftest import bernoulli_store, masks_only_run


def synthetic_runs(ratios=(0.2, 0.5), runs=6, n=40, seed=0):
  """{(ratio, seed): Run} with per-example skill, as load_runs gives them."""
  rng = np.random.default_rng(seed)
  skill = rng.random(n)
  stored = {}
  for ratio in ratios:
    for s in range(runs):
      held_out = rng.random(n) > ratio
      correct = rng.random(n) < np.where(held_out, skill, 0.5 + skill / 2)
      stored[store.ratio_key(ratio), s] = masks_only_run(held_out, correct)
  return stored


def direct_scores(stored, ratios, runs, n):
  """C_r, counts and memorization per ratio by loops, the definitions written out."""
  per_ratio, counts, mem = np.full((len(ratios), n), np.nan), np.zeros((len(ratios), n)), np.full((len(ratios), n), np.nan)
  for j, r in enumerate(ratios):
    for i in range(n):
      out = [stored[r, s][1][i] for s in range(runs) if stored[r, s][0][i]]
      seen = [stored[r, s][1][i] for s in range(runs) if not stored[r, s][0][i]]
      counts[j, i] = len(out)
      if out:
        per_ratio[j, i] = sum(out) / len(out)
      if out and seen:
        mem[j, i] = sum(seen) / len(seen) - sum(out) / len(out)
  return per_ratio, counts, mem


def test_score_counts_only_the_runs_that_held_the_example_out():
  held_out = np.array([[1, 1, 0], [1, 0, 0], [0, 1, 0]], bool)
  correct = np.array([[1, 0, 1], [0, 1, 1], [1, 1, 1]], bool)
  score, count = mnist.fraction_correct(held_out, correct)
  np.testing.assert_array_equal(count, [2, 2, 0])
  np.testing.assert_array_equal(score[:2], [0.5, 0.5])
  assert np.isnan(score[2])


def test_cscore_is_the_mean_over_ratios_leaving_out_ratios_without_an_estimate():
  per_ratio = np.array([[1.0, 0.2, np.nan], [0.5, np.nan, np.nan]])
  scores = mnist.mean_over_ratios(per_ratio)
  np.testing.assert_allclose(scores[:2], [0.75, 0.2])
  assert np.isnan(scores[2])


def test_estimates_equal_the_direct_computation():
  ratios, runs, n = (0.2, 0.5), 6, 40
  stored = synthetic_runs(ratios, runs, n)
  est = mnist.estimate(stored, mnist.Config(ratios=ratios, runs=runs), n)
  per_ratio, counts, mem = direct_scores(stored, ratios, runs, n)
  np.testing.assert_allclose(est.per_ratio, per_ratio)
  np.testing.assert_array_equal(est.held_out_counts, counts)
  np.testing.assert_allclose(est.memorization_per_ratio, mem)
  for i in range(n):
    have = [p for p in per_ratio[:, i] if not math.isnan(p)]
    assert math.isclose(est.cscores[i], sum(have) / len(have))
    both = [m for m in mem[:, i] if not math.isnan(m)]
    assert math.isclose(est.memorization[i], sum(both) / len(both)) if both else math.isnan(est.memorization[i])
  assert est.runs.tolist() == [runs, runs]


def test_standard_error_combines_the_per_ratio_jeffreys_variances():
  ratios, runs, n = (0.2, 0.5), 6, 40
  stored = synthetic_runs(ratios, runs, n, seed=1)
  est = mnist.estimate(stored, mnist.Config(ratios=ratios, runs=runs), n)
  per_ratio, counts, _ = direct_scores(stored, ratios, runs, n)
  for i in range(n):
    var = []
    for j in range(len(ratios)):
      if counts[j, i]:
        a = per_ratio[j, i] * counts[j, i] + 0.5
        b = counts[j, i] - per_ratio[j, i] * counts[j, i] + 0.5
        var.append(a * b / ((a + b) ** 2 * (a + b + 1)))
    assert math.isclose(est.standard_error[i], math.sqrt(sum(var)) / len(var))


def test_heldout_accuracy_is_the_mean_of_each_runs_accuracy_on_what_it_held_out():
  held_out = np.array([[1, 1, 0, 0], [1, 1, 1, 1]], bool)
  correct = np.array([[1, 0, 0, 0], [1, 1, 1, 0]], bool)
  assert mnist.heldout_accuracy(held_out, correct) == (0.5 + 0.75) / 2


def test_estimate_uses_only_this_commands_runs():
  runs = {(0.5, s): masks_only_run([1, 1, 0, 0], [1, 0, 1, 1]) for s in range(3)}
  runs[0.5, 99] = masks_only_run([1, 1, 1, 1], [0, 0, 0, 0])  # another command's run
  est = mnist.estimate(runs, mnist.Config(ratios=(0.5,), runs=3), 4)
  np.testing.assert_array_equal(est.held_out_counts[0], [3, 3, 0, 0])
  np.testing.assert_array_equal(est.cscores[:2], [1.0, 0.0])
  assert est.runs.tolist() == [3] and est.heldout_accuracy.tolist() == [0.5]


def test_the_halves_are_the_even_and_the_odd_runs_in_seed_order():
  ratios, n = (0.3, 0.6), 50
  runs = bernoulli_store(np.linspace(0, 1, n), ratios, 5, held_out_share=0.5)
  est = mnist.estimate(runs, mnist.Config(ratios=ratios, runs=5), n)
  for half, seeds in enumerate(([0, 2, 4], [1, 3])):
    for i in range(n):  # the half's C-score: the mean over ratios of its held-out accuracy on i
      per_ratio = []
      for r in ratios:
        out = [runs[r, s].correct[i] for s in seeds if runs[r, s].held_out[i]]
        if out:
          per_ratio.append(sum(out) / len(out))
      expected = sum(per_ratio) / len(per_ratio) if per_ratio else math.nan
      assert est.split_half_cscores[half, i] == pytest.approx(expected, nan_ok=True)
