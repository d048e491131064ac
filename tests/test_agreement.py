"""Agreement with the published scores (benchmarks/agreement.py), on synthetic scores whose
relation is known. (The split-half reliability that sets its ceiling is in test_analysis.py.)"""
import math
import pathlib
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / 'benchmarks'))
import agreement  # noqa: E402


def published(n=5000, seed=0):
  """Scores shaped like the published ones: most near 1, a tail of hard examples."""
  rng = np.random.default_rng(seed)
  return np.where(rng.random(n) < 0.85, 1 - rng.random(n) * 0.01, rng.random(n))


# --- The metrics ------------------------------------------------------------------------------

def test_identical_scores_agree_perfectly():
  ref = published()
  m = agreement.agreement(ref.copy(), ref)
  assert m['pearson'] == pytest.approx(1) and m['spearman'] == pytest.approx(1)
  assert m['spearman_hard'] == pytest.approx(1) and m['lowest_overlap'] == 1000
  assert m['mean_ours'] == m['mean_reference'] and m['nan'] == 0 and m['examples'] == 5000


def test_shuffled_scores_agree_no_better_than_chance():
  ref = published()
  m = agreement.agreement(np.random.default_rng(1).permutation(ref), ref)
  assert abs(m['pearson']) < 0.05 and abs(m['spearman']) < 0.05 and abs(m['spearman_hard']) < 0.1
  assert m['lowest_overlap'] < 300  # chance: 1000 x 1000 / 5000 = 200


def test_nan_scores_are_left_out_and_counted():
  ref = published()
  ours = ref.copy()
  ours[:7] = np.nan
  m = agreement.agreement(ours, ref)
  assert m['nan'] == 7 and m['examples'] == 4993
  assert m['pearson'] == pytest.approx(1) and m['mean_reference'] == pytest.approx(ref[7:].mean())


def test_ties_get_average_ranks():
  # ours ranks 1.5, 1.5, 3, 4 against 1, 2, 3, 4: rho = 4.5 / sqrt(4.5 x 5) = 3 / sqrt(10). Ranks
  # without averaging (1, 2, 3, 4) would give 1.
  ours, ref = np.array([0.5, 0.5, 0.6, 0.7]), np.array([0.1, 0.2, 0.3, 0.4])
  m = agreement.agreement(ours, ref)
  assert m['spearman'] == pytest.approx(3 / np.sqrt(10)) and m['spearman_hard'] == pytest.approx(3 / np.sqrt(10))


def test_the_lowest_go_by_score_then_by_example_index():
  scores = np.array([0.5, 0.0, 0.2, 0.0, 0.0, 0.9])
  np.testing.assert_array_equal(agreement.lowest(scores, 4), [1, 3, 4, 2])


def test_a_hard_example_is_one_published_below_0_99():
  ref = np.array([0.5, 0.98, 0.99, 1.0, 0.2])
  assert agreement.agreement(ref.copy(), ref)['hard'] == 3


# --- The command --------------------------------------------------------------------------------

def write_scores(folder, scores, reliability=None):
  folder.mkdir(exist_ok=True)
  np.save(folder / 'cscores.npy', scores.astype(np.float32))
  if reliability is not None:
    np.savez(folder / 'cscores-details.npz', reliability=reliability[0], reliability_200_runs=reliability[1])
  return folder / 'cscores.npy'


def test_prints_the_metrics_and_the_ceiling_from_the_details_beside_the_scores(tmp_path, capsys):
  ref = published()
  np.save(tmp_path / 'published.npy', ref)
  scores = write_scores(tmp_path / 'out', ref + 0.01, reliability=(0.81, 0.99))
  assert agreement.main([str(scores), '--reference', str(tmp_path / 'published.npy')]) == 0
  out = capsys.readouterr().out
  assert 'Pearson r              1.0000' in out
  assert f'{math.sqrt(0.81 * 0.99):.4f} = sqrt(0.8100 ours x 0.9900 published)' in out
  assert '1,000 lowest overlap   1,000 (100.0%)' in out


def test_without_reliability_the_ceiling_says_why_it_is_not_available(tmp_path, capsys):
  ref = published()
  np.save(tmp_path / 'published.npy', ref)
  scores = write_scores(tmp_path / 'out', ref, reliability=(np.nan, np.nan))
  assert agreement.main([str(scores), '--reference', str(tmp_path / 'published.npy')]) == 0
  assert 'not available (split-half reliability needs at least 2 runs' in capsys.readouterr().out


def test_offline_without_reference_is_one_line_naming_reference(tmp_path, capsys, monkeypatch):
  monkeypatch.setattr(agreement, 'REFERENCE_URL', 'http://127.0.0.1:9/mnist-cscores.npy')  # refused
  monkeypatch.setattr(agreement, 'CACHE_DIR', str(tmp_path / 'cache'))  # no copy cached from before
  scores = write_scores(tmp_path / 'out', published())
  assert agreement.main([str(scores)]) == 1
  err = capsys.readouterr().err
  assert err.count('\n') == 1 and '--reference' in err and err.startswith('agreement.py: error:')


@pytest.mark.parametrize('content, says', [
    (None, 'no such file'),
    (np.zeros((2, 3)), 'expected a 1-D float array'),
    (np.arange(5), 'expected a 1-D float array'),
    (np.zeros(7), 'not the same data set'),
    (b'', 'No data left in file'),
    (b'PK\x03\x04 not a zip', 'File is not a zip file'),
    ({'cscores': np.zeros(5000)}, 'an .npz archive'),
])
def test_a_missing_or_malformed_file_is_one_line_and_exit_1(tmp_path, capsys, content, says):
  np.save(tmp_path / 'published.npy', published())
  if isinstance(content, bytes):
    (tmp_path / 'cscores.npy').write_bytes(content)
  elif isinstance(content, dict):
    with open(tmp_path / 'cscores.npy', 'wb') as f:
      np.savez(f, **content)
  elif content is not None:
    np.save(tmp_path / 'cscores.npy', content)
  assert agreement.main([str(tmp_path / 'cscores.npy'), '--reference', str(tmp_path / 'published.npy')]) == 1
  err = capsys.readouterr().err
  assert err.count('\n') == 1 and says in err


def test_bad_arguments_exit_2(capsys):
  with pytest.raises(SystemExit) as e:
    agreement.parse_args([])
  assert e.value.code == 2 and capsys.readouterr().err.count('\n') == 1
