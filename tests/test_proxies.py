"""The learning proxies: recorded while training at no extra forward pass, stored beside each
run, and averaged over the runs that trained on an example."""
import dataclasses
import math

import numpy as np
import pytest

import mnist
from conftest import CPU, mnist_like, numpy_logits, numpy_softmax, sgd_by_hand

# 600 examples at ratio 0.5: a subset of 300, batches of 128, 128 and a padded 44.
CONFIG = mnist.Config(ratios=(0.5,), runs=2, epochs=3, hidden=(16,))


def direct_record(images, labels, seed, ratio, config):
  """(hits [n], mean p(label) over the epochs [n]): the run's model stepped one batch at a time
  in NumPy, each batch evaluated before its update."""
  hits, confidence = np.zeros(len(labels)), np.zeros(len(labels))  # summed over the epochs

  def evaluate(idx, weight, x, params):
    probabilities = numpy_softmax(numpy_logits(params, x))
    for i, real, p in zip(idx, weight, probabilities):
      if real:
        hits[i] += p.argmax() == labels[i]
        confidence[i] += p[labels[i]]

  sgd_by_hand(images, labels, seed, ratio, config, evaluate)
  return hits, confidence / config.epochs


@pytest.mark.parametrize('stacked', [True, False], ids=['stacked', 'per-model'])
def test_the_record_equals_evaluating_each_batch_before_its_update(synthetic_data, stacked):
  images, labels = synthetic_data
  trainer = mnist.EnsembleTrainer(images, labels, CONFIG, stacked=stacked)
  group = mnist.train_run_group(trainer, 0.5, [3, 4])
  for k, seed in enumerate([3, 4]):
    hits, confidence = direct_record(images, labels, seed, 0.5, CONFIG)
    np.testing.assert_array_equal(group.hits[k], hits)
    np.testing.assert_allclose(group.confidence[k], confidence, atol=1e-4)
    assert (group.hits[k][group.held_out[k]] == 0).all() and 0 < hits.mean() < CONFIG.epochs


def test_the_stored_record_is_exact_for_hits_and_within_half_a_step_of_255_for_confidence(
    synthetic_data, tmp_path):
  images, labels = synthetic_data
  group = mnist.train_run_group(mnist.EnsembleTrainer(images, labels, CONFIG), 0.5, [3, 4])
  store = mnist.open_store(str(tmp_path), mnist.store_settings(CONFIG, 'x'))
  mnist.save_runs(store, 0.5, [3, 4], group, CONFIG.epochs, CPU)
  runs = mnist.load_runs(store)
  for k, seed in enumerate([3, 4]):
    run, trained = runs[0.5, seed], ~group.held_out[k]
    assert run.epochs == CONFIG.epochs and len(run.hits) == trained.sum() == 300
    np.testing.assert_array_equal(run.hits, group.hits[k][trained])
    assert np.abs(run.confidence / 255 - group.confidence[k][trained]).max() <= 0.5 / 255 + 1e-6


def random_run(rng, n, epochs):
  held_out = rng.random(n) < 0.5
  m = int((~held_out).sum())
  return mnist.Run(held_out, rng.random(n) < 0.8, rng.integers(0, epochs + 1, m).astype(np.uint8),
                   rng.integers(0, 256, m).astype(np.uint8), epochs, CPU)


def test_the_proxies_are_the_means_over_the_runs_that_trained_on_each_example():
  rng, n, epochs = np.random.default_rng(0), 30, 4
  runs = [random_run(rng, n, epochs) for _ in range(5)]
  speed, confidence = mnist.learning_proxies(runs, n)
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
  run = mnist.Run(held_out, np.ones(3, bool), np.array([2, 1], np.uint8), np.array([255, 0], np.uint8), 2, CPU)
  speed, confidence = mnist.learning_proxies([run], 3)
  assert math.isnan(speed[0]) and math.isnan(confidence[0])
  np.testing.assert_allclose(speed[1:], [1, 0.5])
  np.testing.assert_allclose(confidence[1:], [1, 0])


def test_the_details_hold_the_proxies_and_the_combined_score_and_the_figure_is_written(synthetic_data, tmp_path):
  images, labels = synthetic_data
  config = dataclasses.replace(CONFIG, ratios=(0.3, 0.7), runs=3)
  trainer = mnist.EnsembleTrainer(images, labels, config)
  store = mnist.open_store(str(tmp_path), mnist.store_settings(config, 'x'))
  for ratio in config.ratios:
    mnist.save_runs(store, ratio, [0, 1, 2], mnist.train_run_group(trainer, ratio, [0, 1, 2]), config.epochs, CPU)
  est = mnist.write_outputs(str(tmp_path), mnist_like(images, labels), mnist.load_runs(store), config)
  with np.load(tmp_path / 'cscores-details.npz', allow_pickle=False) as details:
    np.testing.assert_array_equal(details['learning_speed'], est.learning_speed)
    np.testing.assert_array_equal(details['learning_confidence'], est.learning_confidence)
    np.testing.assert_array_equal(details['combined_score'], est.combined_score)
    np.testing.assert_array_equal(details['confidence_split_half_r'], est.confidence_split_half_r)  # (NaN too)
  assert np.nanmin(est.learning_speed) >= 0 and np.nanmax(est.learning_confidence) <= 1
  assert (tmp_path / 'mnist-proxies.pdf').read_bytes()[:4] == b'%PDF'
