"""The method, piece by piece, on small synthetic data: subsets, model, training, and a run's
record bit for bit whatever the layout and K. (The estimator is in test_estimates.py.)"""
import dataclasses
import math

import numpy as np
import pytest
import tensorflow as tf

import mnist
from cscore import devices, store
from conftest import numpy_gradients, numpy_logits, numpy_softmax, sgd_by_hand

SMALL = mnist.Config(ratios=(0.5,), runs=3, epochs=2)


def trainer_in_layout(images, labels, config, stacked):
  """A trainer in the GPU's layout (stacked) or the CPU's (one chain per model), whatever the device."""
  layout = devices.layout(config, mnist.layer_sizes(config), stacked=stacked)
  return mnist.EnsembleTrainer(images, labels, config, layout=layout)


# --- Subsets and batches -------------------------------------------------------------------------

def test_subset_has_int_n_r_distinct_examples_of_the_data():
  for ratio in (0.1, 0.3, 0.7, 0.9):
    subset = mnist.training_subset(seed=4, n=60000, ratio=ratio)
    assert len(subset) == int(60000 * ratio) == len(np.unique(subset))
    assert subset.min() >= 0 and subset.max() < 60000


def test_subset_is_the_same_for_the_same_seed_and_differs_for_another():
  np.testing.assert_array_equal(mnist.training_subset(5, 1000, 0.3), mnist.training_subset(5, 1000, 0.3))
  assert not np.array_equal(mnist.training_subset(5, 1000, 0.3), mnist.training_subset(6, 1000, 0.3))


def test_subsets_are_the_authors_randomstate_choice():
  # The first indices of numpy.random.RandomState(seed).choice(n, int(n r), replace=False), the
  # authors' draw, written down once: the protocol's runs train on the authors' subsets.
  np.testing.assert_array_equal(mnist.training_subset(7, 1000, 0.3)[:6], [778, 334, 271, 802, 216, 408])
  np.testing.assert_array_equal(mnist.training_subset(0, 60000, 0.1)[:6], [3048, 19563, 58303, 8870, 40228, 31488])
  np.testing.assert_array_equal(mnist.training_subset(199, 60000, 0.9)[:4], [15808, 17247, 13801, 17740])


def test_the_first_epoch_is_the_authors_next_draw_a_permutation_of_the_subset():
  # RandomState(0): choice(60000, 6000), then permutation(6000) of that subset, written down once
  order = mnist.batch_order(seed=0, n=60000, ratio=0.1, epochs=1, batch_size=128)
  np.testing.assert_array_equal(order[0, 0, :4], [10054, 56642, 55396, 16043])


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


@pytest.mark.usefixtures('mnist_loaded_once')
def test_a_ratio_whose_subset_would_be_empty_is_one_line_before_training(mnist_data_dir, tmp_path, capsys):
  assert mnist.main(['--ratios', '0.00001', '--data-dir', str(mnist_data_dir), '--out-dir', str(tmp_path)]) == 1
  err = capsys.readouterr().err
  assert err.count('\n') == 1 and 'a subset of int(60000 x 1e-05) = 0 examples' in err


# --- Model ----------------------------------------------------------------------------------------

def test_init_is_glorot_normal_truncated_with_small_normal_biases():
  w1, b1, w2, *_ = mnist.init_mlp(0, (784, 512, 256, 10))
  assert w1.shape == (784, 512) and b1.shape == (1, 512)
  assert abs(w1.std() - np.sqrt(2 / (784 + 512))) < 0.02 * np.sqrt(2 / (784 + 512))
  assert abs(w1.mean()) < 1e-3
  # a standard normal cut at +-2 has variance 1 - 2 x 2 phi(2) / (Phi(2) - Phi(-2)); it is
  # scaled to the glorot std, so the cut lies at 2 x glorot std / that std
  cut_std = math.sqrt(1 - 4 * math.exp(-2) / math.sqrt(2 * math.pi) / math.erf(math.sqrt(2)))
  assert np.abs(w1).max() <= 2 * np.sqrt(2 / (784 + 512)) / cut_std + 1e-6
  assert abs(b1.std() - 0.01) < 0.002
  assert abs(w2.std() - np.sqrt(2 / (512 + 256))) < 0.03 * np.sqrt(2 / (512 + 256))


def test_init_is_seeded_by_the_run_seed():
  a, b, c = (mnist.init_mlp(s, (784, 16, 10)) for s in (5, 5, 6))
  np.testing.assert_array_equal(a[0], b[0])
  assert not np.array_equal(a[0], c[0])


def small_batch(rng, shape):
  x = rng.random((*shape, 784), dtype=np.float32)
  y = rng.integers(0, 10, shape).astype(np.int32)
  weight = np.r_[np.ones(11), np.zeros(5)].astype(np.float32)  # a padded last batch
  return x, y, weight


def test_gradients_equal_backpropagation_written_out_in_numpy():
  rng = np.random.default_rng(1)
  params = mnist.init_mlp(1, (784, 64, 32, 10))
  x, y, weight = small_batch(rng, (16,))
  got, _ = mnist.loss_gradients([tf.constant(p) for p in params], tf.constant(x), tf.constant(y), tf.constant(weight))
  for g, e in zip(got, numpy_gradients(params, x, y, weight)):
    np.testing.assert_allclose(g.numpy(), e, rtol=1e-4, atol=1e-6)


def test_stacked_models_each_get_their_own_gradient():
  rng = np.random.default_rng(2)
  models = [mnist.init_mlp(s, (784, 64, 32, 10)) for s in (1, 2)]
  x, y, weight = small_batch(rng, (2, 16))
  got, _ = mnist.loss_gradients([tf.constant(p) for p in mnist.stack_models(models)], tf.constant(x),
                                tf.constant(y), tf.constant(weight))
  for m, params in enumerate(models):
    for g, e in zip(got, numpy_gradients(params, x[m], y[m], weight)):
      np.testing.assert_allclose(g.numpy()[m], e, rtol=1e-4, atol=1e-6)


def test_bfloat16_gradients_are_close_to_float32_ones():
  rng = np.random.default_rng(3)
  params = [tf.constant(p) for p in mnist.init_mlp(1, (784, 64, 32, 10))]
  x = tf.constant(rng.random((64, 784), dtype=np.float32))
  y = tf.constant(rng.integers(0, 10, 64).astype(np.int32))
  weight = tf.ones(64)
  exact, _ = mnist.loss_gradients(params, x, y, weight)
  bf16, _ = mnist.loss_gradients(params, x, y, weight, tf.bfloat16)
  for g, e in zip(bf16, exact):
    assert g.dtype == tf.float32
    assert np.linalg.norm(g.numpy() - e.numpy()) <= 0.05 * np.linalg.norm(e.numpy())  # ~3% seen


def test_the_probabilities_are_the_forward_pass_softmax():
  rng = np.random.default_rng(4)
  params = mnist.init_mlp(2, (784, 32, 10))
  x, y, weight = small_batch(rng, (16,))
  _, probabilities = mnist.loss_gradients([tf.constant(p) for p in params], tf.constant(x), tf.constant(y), tf.constant(weight))
  expected = numpy_softmax(numpy_logits(params, x))
  np.testing.assert_allclose(probabilities.numpy(), expected, rtol=1e-4, atol=1e-6)


def test_padding_does_not_change_the_loss():
  params = [tf.constant(p) for p in mnist.init_mlp(0, (784, 32, 10))]
  rng = np.random.default_rng(2)
  x = rng.random((16, 784), dtype=np.float32)
  y = rng.integers(0, 10, 16).astype(np.int32)
  loss = lambda x, y, weight: mnist.mean_nll(mnist.mlp_logits(params, x), y, weight)
  padded = loss(x, y, np.r_[np.ones(11), np.zeros(5)].astype(np.float32))
  real = loss(x[:11], y[:11], np.ones(11, np.float32))
  np.testing.assert_allclose(padded.numpy(), real.numpy(), rtol=1e-6)


# --- Training --------------------------------------------------------------------------------------

@pytest.mark.parametrize('stacked', [True, False], ids=['stacked', 'per-model'])
def test_k_models_trained_together_equal_the_same_models_trained_one_by_one(synthetic_data, stacked):
  images, labels = synthetic_data
  trainer = trainer_in_layout(images, labels, SMALL, stacked)
  together = trainer.train(mnist.group_work(SMALL, 600, 0.5, [10, 11, 12]))  # 2 epochs of 3 steps each
  for k, seed in enumerate([10, 11, 12]):
    alone = trainer.train(mnist.group_work(SMALL, 600, 0.5, [seed]))
    for a, t in zip(alone, together):
      np.testing.assert_allclose(a.numpy()[0], t.numpy()[k], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize('stacked', [True, False], ids=['stacked', 'per-model'])
def test_training_follows_sgd_with_momentum_on_the_runs_batches(synthetic_data, stacked):
  images, labels = synthetic_data
  config = dataclasses.replace(SMALL, epochs=1, hidden=(8,), learning_rate=0.05, momentum=0.5)
  seed, ratio = 3, 0.5
  params = sgd_by_hand(images, labels, seed, ratio, config)
  trained = trainer_in_layout(images, labels, config, stacked).train(mnist.group_work(config, 600, ratio, [seed]))
  for t, p in zip(trained, params):
    np.testing.assert_allclose(t.numpy()[0], p, rtol=1e-4, atol=1e-6)


def test_trained_models_learn_and_report_correctness_on_every_example(synthetic_data):
  images, labels = synthetic_data
  held_out, correct, *_ = mnist.train_run_group(mnist.EnsembleTrainer(images, labels, SMALL), 0.5, [0, 1])
  assert held_out.shape == correct.shape == (2, 600) and correct.dtype == bool
  assert held_out.sum(1).tolist() == [300, 300]
  assert mnist.heldout_accuracy(held_out, correct) > 0.9


def test_training_that_diverges_is_one_line_and_stores_nothing_of_that_group(tmp_path, capsys):
  np.savez(tmp_path / 'data.npz', x=np.eye(40, 4) * 10, y=np.arange(40) % 2)
  out = tmp_path / 'out'
  code = mnist.main(['--data', str(tmp_path / 'data.npz'), '--out-dir', str(out), '--runs', '2', '--epochs', '3',
                     '--ratios', '0.5', '--hidden', '32', '--learning-rate', '1e30'])
  error_lines = [line for line in capsys.readouterr().err.splitlines() if 'error' in line]
  assert code == 1 and len(error_lines) == 1
  assert 'training diverged at ratio 0.50' in error_lines[0] and '--learning-rate (now 1e+30)' in error_lines[0]
  assert [f for f in (out / store.STORE_DIR).iterdir() if f.name.startswith('runs-')] == []


# --- Bit for bit, whatever the layout and K -------------------------------------------------------

def test_a_runs_record_does_not_depend_on_k(synthetic_data):
  images, labels = synthetic_data
  config = mnist.Config(epochs=2)
  # evaluation over several chunks of 128 examples, 2 models a call
  layout = devices.layout(config, mnist.layer_sizes(config), eval_rows=256, eval_chunk=128)
  trainer = mnist.EnsembleTrainer(images, labels, config, layout=layout)
  together = mnist.train_run_group(trainer, 0.5, [0, 1, 2, 3])
  apart = [mnist.train_run_group(trainer, 0.5, seeds) for seeds in ([0], [1, 2], [3])]
  for field, array in zip(together._fields, together):
    np.testing.assert_array_equal(array, np.concatenate([getattr(g, field) for g in apart]), err_msg=field)


def test_compiling_ahead_does_not_change_a_run(synthetic_data):
  images, labels = synthetic_data
  config = mnist.Config(epochs=2)
  cold = mnist.train_run_group(mnist.EnsembleTrainer(images, labels, config), 0.5, [0, 1])
  warm_trainer = mnist.EnsembleTrainer(images, labels, config)
  warm_trainer.warm_up(2)
  warm = mnist.train_run_group(warm_trainer, 0.5, [0, 1])
  for field, a, b in zip(cold._fields, cold, warm):
    np.testing.assert_array_equal(a, b, err_msg=field)


def test_the_stacked_layouts_evaluation_equals_the_per_model_one(synthetic_data):
  images, labels = synthetic_data
  config = mnist.Config(epochs=1)
  sizes = mnist.layer_sizes(config)
  # 5 chunks of 128 examples, 3 models a call
  per_model = mnist.EnsembleTrainer(images, labels, config,
                                    layout=devices.layout(config, sizes, stacked=False, eval_rows=384, eval_chunk=128))
  stacked = mnist.EnsembleTrainer(images, labels, config,
                                  layout=devices.layout(config, sizes, stacked=True, eval_rows=384, eval_chunk=128))
  params = per_model.train(mnist.group_work(config, len(labels), 0.5, [0, 1, 2]))
  np.testing.assert_array_equal(stacked.correct(params), per_model.correct(params))
