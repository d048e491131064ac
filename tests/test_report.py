"""The report, <name>-report.html: one self-contained page of every example (or, for data too
large, the extremes of each class), written with the other outputs. What a browser does with it
is in test_report_browser.py."""
import base64
import json
import re

import numpy as np
import pytest

from cscore import analysis, datasets, report
from conftest import ROOT

DIGITS_NPZ = ROOT / 'tests' / 'data' / 'digits.npz'


def page_data(html):
  """The JSON the page carries, and its arrays decoded."""
  text = re.search(r'<script type="application/json" id="data">(.*?)</script>', html, re.S).group(1)
  page = json.loads(text.replace('<\\/', '</'))
  def array(b64, dtype):
    return np.frombuffer(base64.b64decode(b64), dtype)
  return page, array


def synthetic_estimates(cscores, runs=4):
  """Estimates whose C-scores are `cscores` (the rest of no matter here)."""
  n = len(cscores)
  est = analysis.Estimates(*([None] * len(dataclasses_fields())))
  ones = np.ones(n)
  for name, value in dict(ratios=np.array([0.5]), runs=np.array([runs]), heldout_accuracy=np.array([0.9]),
                          per_ratio=np.array([cscores]), held_out_counts=np.full((1, n), 2),
                          cscores=np.asarray(cscores, float), standard_error=0.1 * ones,
                          memorization=0.2 * ones, learning_speed=0.3 * ones,
                          learning_confidence=0.4 * ones, combined_score=0.5 * ones).items():
    setattr(est, name, value)
  return est


def dataclasses_fields():
  import dataclasses
  return dataclasses.fields(analysis.Estimates)


# --- What a run writes -------------------------------------------------------------------------

def test_a_run_writes_its_report_at_or_under_20_mb(tiny_run):
  out, result = tiny_run
  size = (out / 'mnist-report.html').stat().st_size
  assert 1_000_000 < size <= 20_000_000


def test_the_mnist_report_holds_every_example_with_the_scores_written(tiny_run):
  out, _ = tiny_run
  page, array = page_data((out / 'mnist-report.html').read_text())
  assert page['n'] == 60000 and page['left_out'] == 0
  np.testing.assert_array_equal(array(page['index'], '<u4'), np.arange(60000))
  np.testing.assert_array_equal(array(page['columns']['cscore'], '<f4'), np.load(out / 'cscores.npy'))
  details = np.load(out / 'cscores-details.npz')
  for name, key in (('memorization', 'memorization'), ('combined_score', 'combined_score')):
    np.testing.assert_array_equal(array(page['columns'][name], '<f4'), details[key].astype(np.float32))
  assert page['shape'] == [28, 28] and len(page['class_names']) == 10


def test_the_report_loads_nothing_from_outside_itself(tiny_run):
  out, _ = tiny_run
  html = (out / 'mnist-report.html').read_text()
  scripts = ' '.join(re.findall(r'<script.*?</script>', html, re.S))
  markup = re.sub(r'<script.*?</script>', '', html, flags=re.S)
  loaded = re.findall(r'''(?:src|href)\s*=\s*["']?([^"'\s>]+)''', markup) + re.findall(r'url\(([^)]*)\)', markup)
  assert loaded, 'the pictures are CSS url(data:...) sprite sheets'
  assert all(u.startswith('data:') for u in loaded), [u[:40] for u in loaded if not u.startswith('data:')]
  assert '<link' not in markup and '@import' not in markup
  # the code names no address but SVG's namespace, which is a name, never fetched
  assert set(re.findall(r'''(?:https?:)?//[\w.-]+\.[a-z]{2,}[^\s'"`]*''', scripts)) == {'http://www.w3.org/2000/svg'}


# --- Data too large to show every picture, and data without pictures ---------------------------

def test_data_too_large_keep_the_lowest_and_highest_scored_of_each_class(tmp_path):
  data = datasets.npz_data(str(DIGITS_NPZ))
  n = len(data.y)
  scores = np.random.default_rng(0).random(n)
  scores[:5] = np.nan  # left out too: no score to rank
  html = report.report(synthetic_estimates(scores), data, ['facts'], limit=80_000)
  page, array = page_data(html)
  shown = array(page['index'], '<u4')
  assert 0.9 * 80_000 < len(html.encode()) <= 80_000 and 0 < len(shown) < n  # as many as fit
  assert page['left_out'] == n - len(shown)
  per_side = len(shown) // 20  # as many from each end of each of the 10 classes
  expected = set()
  for c in range(10):
    ranked = sorted((s, i) for i, s in enumerate(scores) if data.y[i] == c and not np.isnan(s))
    expected |= {i for _, i in ranked[:per_side] + ranked[-per_side:]}
  assert set(shown.tolist()) == expected


def test_a_limit_below_two_examples_a_class_gives_a_page_of_none():
  data = datasets.npz_data(str(DIGITS_NPZ))
  est = synthetic_estimates(np.random.default_rng(0).random(len(data.y)))
  empty = len(report.report(est, data, [], limit=0).encode())  # no example fits: the bare page
  page, array = page_data(report.report(est, data, [], limit=empty + 500))  # about 10 examples' worth
  assert len(array(page['index'], '<u4')) == 0 and page['left_out'] == 1797


def test_data_that_fit_are_all_shown(tmp_path):
  data = datasets.npz_data(str(DIGITS_NPZ))
  page, array = page_data(report.report(synthetic_estimates(np.linspace(0, 1, len(data.y))), data, []))
  assert page['left_out'] == 0 and len(array(page['index'], '<u4')) == 1797


def test_features_get_the_table_without_pictures(tmp_path):
  path = tmp_path / 'features.npz'
  np.savez(path, x=np.random.default_rng(0).normal(size=(40, 3)), y=np.arange(40) % 2)
  data = datasets.npz_data(str(path))
  html = report.report(synthetic_estimates(np.linspace(0, 1, 40)), data, [])
  page, _ = page_data(html)
  assert page['shape'] is None and 'base64,' not in html.split('<script type="application/json"')[0]


def test_names_that_close_a_script_tag_stay_inert(tmp_path):
  path = tmp_path / 'odd.npz'
  names = ['</script><b>x', '<!--<script>']  # the second would hide the data's closing tag
  np.savez(path, x=np.zeros((4, 2)), y=[0, 1, 0, 1], class_names=names)
  html = report.report(synthetic_estimates(np.linspace(0, 1, 4)), datasets.npz_data(str(path)), [])
  data = re.search(r'<script type="application/json" id="data">(.*?)</script>', html, re.S).group(1)
  assert '<' not in data
  assert html.count('</script>') == 2  # the data's and the code's own
  assert page_data(html)[0]['class_names'] == names


@pytest.mark.parametrize('most, dtype', [(250, '<u1'), (300, '<u2'), (70_000, '<u4')])
def test_per_ratio_hits_and_counts_are_exact(most, dtype):
  counts = np.array([[3, most, 0]])
  est = synthetic_estimates(np.array([1 / 3, 0.5, np.nan]))
  est.held_out_counts, est.per_ratio = counts, np.array([[1 / 3, 0.5, np.nan]])
  data = datasets.Data('x', np.zeros((3, 2), np.float32), np.array([0, 1, 0]), ('a', 'b'), None)
  page, array = page_data(report.report(est, data, []))
  assert array(page['hits'], dtype).tolist() == [1, counts[0, 1] // 2, 0]
  assert array(page['counts'], dtype).tolist() == counts[0].tolist()
