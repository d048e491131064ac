"""The estimator and what else the stored runs tell, each checked against a direct computation
(plain loops over runs) on small synthetic stores."""
import math
import types

import numpy as np

import mnist
from conftest import masks_only_run, mnist_like


def synthetic_runs(ratios=(0.2, 0.5), runs=6, n=40, seed=0):
  """{(ratio, seed): Run} with per-example skill, as load_runs gives them."""
  rng = np.random.default_rng(seed)
  skill = rng.random(n)
  store = {}
  for ratio in ratios:
    for s in range(runs):
      held_out = rng.random(n) > ratio
      correct = rng.random(n) < np.where(held_out, skill, 0.5 + skill / 2)
      store[mnist.ratio_key(ratio), s] = masks_only_run(held_out, correct)
  return store


def direct_scores(store, ratios, runs, n):
  """C_r, counts and memorization per ratio by loops, the definitions written out."""
  per_ratio, counts, mem = np.full((len(ratios), n), np.nan), np.zeros((len(ratios), n)), np.full((len(ratios), n), np.nan)
  for j, r in enumerate(ratios):
    for i in range(n):
      out = [store[r, s][1][i] for s in range(runs) if store[r, s][0][i]]
      seen = [store[r, s][1][i] for s in range(runs) if not store[r, s][0][i]]
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
  store = synthetic_runs(ratios, runs, n)
  est = mnist.estimate(store, mnist.Config(ratios=ratios, runs=runs), n)
  per_ratio, counts, mem = direct_scores(store, ratios, runs, n)
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
  store = synthetic_runs(ratios, runs, n, seed=1)
  est = mnist.estimate(store, mnist.Config(ratios=ratios, runs=runs), n)
  per_ratio, counts, _ = direct_scores(store, ratios, runs, n)
  for i in range(n):
    var = []
    for j in range(len(ratios)):
      if counts[j, i]:
        a = per_ratio[j, i] * counts[j, i] + 0.5
        b = counts[j, i] - per_ratio[j, i] * counts[j, i] + 0.5
        var.append(a * b / ((a + b) ** 2 * (a + b + 1)))
    assert math.isclose(est.standard_error[i], math.sqrt(sum(var)) / len(var))


def test_standard_error_shrinks_as_one_over_sqrt_runs():
  few = mnist.binomial_variance(np.array([0.9]), np.array([100]))
  many = mnist.binomial_variance(np.array([0.9]), np.array([400]))
  np.testing.assert_allclose(np.sqrt(few / many), 2, rtol=0.02)


def estimates_with_scores(p, runs=20, count=100, n=50):
  """Estimates of n examples, each with per-ratio score p from `count` held-out runs."""
  per_ratio = np.full((2, n), p)
  counts = np.full((2, n), count)
  return mnist.Estimates(
      ratios=np.array([0.3, 0.6]), runs=np.array([runs, runs]), heldout_accuracy=np.full(2, 0.9),
      per_ratio=per_ratio, held_out_counts=counts, cscores=per_ratio[0],
      standard_error=mnist.standard_error(per_ratio, counts),
      memorization_per_ratio=np.zeros((2, n)), memorization=np.zeros(n),
      split_half_r=np.nan, reliability=np.nan, reliability_200_runs=np.nan,
      split_half_cscores=np.full((2, n), np.nan), learning_speed=np.full(n, np.nan),
      learning_confidence=np.full(n, np.nan), confidence_split_half_r=np.nan,
      confidence_reliability=np.nan, split_half_confidence=np.full((2, n), np.nan),
      combined_score=per_ratio[0], combined_weight=np.ones(n), combined_signal=np.nan)


def test_runs_that_halve_the_standard_error_are_about_4x_for_middling_scores():
  assert 75 <= mnist.runs_to_halve_standard_error(estimates_with_scores(0.5)) <= 85


def test_runs_that_halve_the_standard_error_are_about_2x_where_every_run_was_right():
  assert 35 <= mnist.runs_to_halve_standard_error(estimates_with_scores(1.0)) <= 45


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


def test_outputs_are_written_from_a_store(tmp_path):
  rng = np.random.default_rng(0)
  ratios, runs, n = (0.2, 0.5), 6, 200
  labels = np.arange(n) % 10
  images = rng.integers(0, 256, (n, 784)).astype(np.uint8)
  store = synthetic_runs(ratios, runs, n)
  est = mnist.write_outputs(str(tmp_path), mnist_like(images, labels), store, mnist.Config(ratios=ratios, runs=runs))
  np.testing.assert_array_equal(np.load(tmp_path / 'cscores.npy'), est.cscores.astype(np.float32))
  with np.load(tmp_path / 'cscores-details.npz', allow_pickle=False) as details:
    assert details['per_ratio'].shape == details['held_out_counts'].shape == (2, n)
    np.testing.assert_array_equal(details['memorization'], est.memorization)
    np.testing.assert_array_equal(details['standard_error'], est.standard_error)
  for name in ('mnist-examples.pdf', 'mnist-cscores.pdf', 'mnist-memorized.pdf'):
    assert (tmp_path / name).read_bytes()[:4] == b'%PDF'


def test_outputs_are_written_when_few_examples_have_a_score(tmp_path):
  n = 200
  held_out = np.zeros(n, bool)
  held_out[:3] = True  # one run that held out 3 examples, all of class 0, 1 and 2
  store = {(0.99, 0): masks_only_run(held_out, np.ones(n, bool))}
  images = np.zeros((n, 784), np.uint8)
  est = mnist.write_outputs(str(tmp_path), mnist_like(images, np.arange(n) % 10), store,
                            mnist.Config(ratios=(0.99,), runs=1))
  assert (~np.isnan(est.cscores)).sum() == 3
  assert (tmp_path / 'mnist-cscores.pdf').exists()


# --- The plan: runs per ratio for a reliability of 0.99 and 0.999 -------------------------------

def test_the_plan_solves_spearman_brown_for_the_runs_and_times_them_at_this_runs_rate():
  # reliability 0.9 at 10 runs: k = t (1 - 0.9) / (0.9 (1 - t)) = 11 for 0.99, 111 for 0.999;
  # 2 ratios at 0.5 models/s: 220 models in 440 s, 2,220 in 4,440 s
  est = types.SimpleNamespace(reliability=0.9, runs=np.array([10, 10]))
  line = mnist.plan_line(est, mnist.Config(ratios=(0.3, 0.7)), trained=20, seconds=40)
  assert '0.99 takes --runs 110, 220 models, about 0:07:20' in line
  assert '0.999 takes --runs 1110, 2,220 models, about 1:14:00' in line


def test_without_training_the_plan_gives_the_runs_alone():
  est = types.SimpleNamespace(reliability=0.9, runs=np.array([10, 10]))
  line = mnist.plan_line(est, mnist.Config(ratios=(0.3, 0.7)), trained=0, seconds=12)
  assert line.endswith('0.99 takes --runs 110; of 0.999 takes --runs 1110')


def test_without_a_reliability_there_is_no_plan():
  est = types.SimpleNamespace(reliability=np.nan, runs=np.array([1]))
  assert mnist.plan_line(est, mnist.Config(), trained=9, seconds=9) is None
