"""The method, piece by piece, on small synthetic data: subsets, model, training, estimator."""
import dataclasses

import numpy as np
import pytest
import tensorflow as tf

import mnist
from conftest import sgd_by_hand

SMALL = mnist.Config(ratios=(0.5,), runs=3, epochs=2)


# --- Subsets and batches -------------------------------------------------------------------------

def test_subset_has_int_n_r_distinct_examples():
  for ratio in (0.1, 0.3, 0.7, 0.9):
    subset = mnist.training_subset(seed=4, n=60000, ratio=ratio)
    assert len(subset) == int(60000 * ratio) == len(np.unique(subset))


def test_subset_is_the_authors_randomstate_choice():
  expected = np.random.RandomState(7).choice(1000, size=300, replace=False)
  np.testing.assert_array_equal(mnist.training_subset(7, 1000, 0.3), expected)


def test_held_out_mask_is_the_complement_of_the_subset():
  mask = mnist.held_out_mask(3, 1000, 0.4)
  assert mask.sum() == 600
  assert not mask[mnist.training_subset(3, 1000, 0.4)].any()


def test_each_epoch_is_a_fresh_permutation_of_the_subset():
  order = mnist.batch_order(seed=1, n=1000, ratio=0.3, epochs=3, batch_size=128)
  subset = np.sort(mnist.training_subset(1, 1000, 0.3))
  epochs = order.reshape(3, -1)[:, :300]
  for epoch in epochs:
    np.testing.assert_array_equal(np.sort(epoch), subset)
  assert not np.array_equal(epochs[0], epochs[1])


def test_last_smaller_batch_is_trained_on_with_its_own_mean():
  weight = mnist.batch_weights(300, 128)
  assert weight.shape == (3, 128)
  np.testing.assert_array_equal(weight.sum(1), [128, 128, 44])


def test_a_batch_size_beyond_the_subset_trains_on_the_whole_subset_at_once():
  order = mnist.batch_order(seed=2, n=100, ratio=0.3, epochs=2, batch_size=128)
  assert order.shape == (2, 1, 30)
  np.testing.assert_array_equal(np.sort(order[0, 0]), np.sort(mnist.training_subset(2, 100, 0.3)))
  np.testing.assert_array_equal(mnist.batch_weights(30, 128), np.ones((1, 30)))


# --- Model ----------------------------------------------------------------------------------------

def test_init_is_glorot_normal_truncated_with_small_normal_biases():
  w1, b1, w2, *_ = mnist.init_mlp(0, (784, 512, 256, 10))
  assert w1.shape == (784, 512) and b1.shape == (1, 512)
  assert abs(w1.std() - np.sqrt(2 / (784 + 512))) < 0.02 * np.sqrt(2 / (784 + 512))
  assert abs(w1.mean()) < 1e-3
  assert np.abs(w1).max() <= 2 * np.sqrt(2 / (784 + 512)) / 0.87962566103423978 + 1e-6
  assert abs(b1.std() - 0.01) < 0.002
  assert abs(w2.std() - np.sqrt(2 / (512 + 256))) < 0.03 * np.sqrt(2 / (512 + 256))


def test_init_is_seeded_by_the_run_seed():
  a, b, c = (mnist.init_mlp(s, (784, 16, 10)) for s in (5, 5, 6))
  np.testing.assert_array_equal(a[0], b[0])
  assert not np.array_equal(a[0], c[0])


@pytest.mark.parametrize('stacked', [True, False])
def test_hand_written_gradients_equal_autodiff_of_the_mean_nll(stacked):
  rng = np.random.default_rng(1)
  models = [mnist.init_mlp(s, (784, 64, 32, 10)) for s in (1, 2)]
  params = [tf.constant(p) for p in (mnist.stack_models(models) if stacked else models[0])]
  shape = (2, 16) if stacked else (16,)
  x = tf.constant(rng.random((*shape, 784), dtype=np.float32))
  y = tf.constant(rng.integers(0, 10, shape).astype(np.int32))
  weight = tf.constant(np.r_[np.ones(11), np.zeros(5)].astype(np.float32))  # a padded last batch
  with tf.GradientTape() as tape:
    tape.watch(params)
    loss = mnist.mlp_loss(params, x, y, weight)
  expected = tape.gradient(loss, params)
  got, _ = mnist.mlp_gradients(params, x, y, weight)
  for g, e in zip(got, expected):
    np.testing.assert_allclose(g.numpy(), e.numpy(), rtol=1e-4, atol=1e-6)


def test_bfloat16_gradients_are_close_to_float32_ones():
  rng = np.random.default_rng(3)
  params = [tf.constant(p) for p in mnist.init_mlp(1, (784, 64, 32, 10))]
  x = tf.constant(rng.random((64, 784), dtype=np.float32))
  y = tf.constant(rng.integers(0, 10, 64).astype(np.int32))
  weight = tf.ones(64)
  exact, _ = mnist.mlp_gradients(params, x, y, weight)
  bf16, _ = mnist.mlp_gradients(params, x, y, weight, tf.bfloat16)
  for g, e in zip(bf16, exact):
    assert g.dtype == tf.float32
    assert np.linalg.norm(g.numpy() - e.numpy()) <= 0.05 * np.linalg.norm(e.numpy())  # ~3% seen


def test_padding_does_not_change_the_loss():
  params = [tf.constant(p) for p in mnist.init_mlp(0, (784, 32, 10))]
  rng = np.random.default_rng(2)
  x = rng.random((16, 784), dtype=np.float32)
  y = rng.integers(0, 10, 16).astype(np.int32)
  padded = mnist.mlp_loss(params, x, y, np.r_[np.ones(11), np.zeros(5)].astype(np.float32))
  real = mnist.mlp_loss(params, x[:11], y[:11], np.ones(11, np.float32))
  np.testing.assert_allclose(padded.numpy(), real.numpy(), rtol=1e-6)


# --- Training --------------------------------------------------------------------------------------

@pytest.mark.parametrize('per_model', [False, True], ids=['batched', 'per-model'])
def test_k_models_trained_together_equal_the_same_models_trained_one_by_one(synthetic_data, per_model):
  images, labels = synthetic_data
  trainer = mnist.EnsembleTrainer(images, labels, SMALL, per_model=per_model)
  together = trainer.train([10, 11, 12], 0.5)  # 2 epochs of 3 steps each
  for k, seed in enumerate([10, 11, 12]):
    alone = trainer.train([seed], 0.5)
    for a, t in zip(alone, together):
      np.testing.assert_allclose(a.numpy()[0], t.numpy()[k], rtol=1e-4, atol=1e-6)


def test_training_follows_sgd_with_momentum_on_the_runs_batches(synthetic_data):
  images, labels = synthetic_data
  config = dataclasses.replace(SMALL, epochs=1, hidden=(8,))
  seed, ratio = 3, 0.5
  params = sgd_by_hand(images, labels, seed, ratio, config)
  trained = mnist.EnsembleTrainer(images, labels, config).train([seed], ratio)
  for t, p in zip(trained, params):
    np.testing.assert_allclose(t.numpy()[0], p.numpy(), rtol=1e-4, atol=1e-6)


def test_trained_models_learn_and_report_correctness_on_every_example(synthetic_data):
  images, labels = synthetic_data
  held_out, correct, *_ = mnist.train_run_group(mnist.EnsembleTrainer(images, labels, SMALL), 0.5, [0, 1])
  assert held_out.shape == correct.shape == (2, 600) and correct.dtype == bool
  assert held_out.sum(1).tolist() == [300, 300]
  assert mnist.heldout_accuracy(held_out, correct) > 0.9
