"""The learning record the proxies are made of: recorded while training, at no extra forward
pass, it equals evaluating each batch before its update. (The store keeps it: test_store.py; the
proxies are its means over the runs: test_analysis.py.)"""
import numpy as np
import pytest

import mnist
from cscore import devices
from conftest import numpy_logits, numpy_softmax, sgd_by_hand

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
  layout = devices.layout(CONFIG, mnist.layer_sizes(CONFIG), stacked=stacked)
  trainer = mnist.EnsembleTrainer(images, labels, CONFIG, layout=layout)
  group = mnist.train_run_group(trainer, 0.5, [3, 4])
  for k, seed in enumerate([3, 4]):
    hits, confidence = direct_record(images, labels, seed, 0.5, CONFIG)
    np.testing.assert_array_equal(group.hits[k], hits)
    np.testing.assert_allclose(group.confidence[k], confidence, atol=1e-4)
    assert (group.hits[k][group.held_out[k]] == 0).all() and 0 < hits.mean() < CONFIG.epochs
