"""The report in a real browser: headless Chromium opens the tiny run's mnist-report.html (all
60,000 real MNIST examples) from file://, with the network off, and is driven as a user would.

Needs Chromium, its driver and Selenium: `apt-get install chromium chromium-driver` (Debian;
or any Chrome with a matching chromedriver) and `pip install selenium`. Without them these tests
skip with that reason; .ci/run installs them and sets CSCORE_BROWSER_TESTS=required, which makes
a missing browser a failure."""
import csv
import io
import os
import pathlib
import re
import sys
import time

import numpy as np
import pytest

import mnist

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / 'benchmarks'))
from report_timing import find_browser, headless_chromium  # noqa: E402


@pytest.fixture(scope='module')
def browser(tmp_path_factory):
  """A headless Chromium with the network off and downloads going to a folder of its own."""
  found = find_browser()
  if isinstance(found, str):
    if os.environ.get('CSCORE_BROWSER_TESTS') == 'required':
      pytest.fail(f'CSCORE_BROWSER_TESTS=required but {found}')
    pytest.skip(found)
  downloads = tmp_path_factory.mktemp('downloads')
  driver = headless_chromium(found, downloads)
  driver.downloads = downloads
  yield driver
  driver.quit()


@pytest.fixture
def report(browser, tiny_run):
  """The browser on the tiny run's report, freshly opened; and the run's details."""
  out, _ = tiny_run
  browser.get((out / 'mnist-report.html').as_uri())
  browser.get_log('browser')  # (only this page's messages from here on)
  return browser, np.load(out / 'cscores-details.npz')


def by_id(driver, name):
  from selenium.webdriver.common.by import By
  return driver.find_element(By.ID, name)


def choose(driver, select_id, value):
  from selenium.webdriver.support.ui import Select
  Select(by_id(driver, select_id)).select_by_value(str(value))


def shown_indices(driver):
  return driver.execute_script("return Array.from(document.querySelectorAll('#table-body tr.ex'), tr => +tr.dataset.index)")


def view_indices(driver):
  """The example indices of the whole view, in its order (the page's positions are indices here:
  every example is shown)."""
  return np.array(driver.execute_script('return Array.from(window.cscoreReport.view())'))


@pytest.fixture(scope='module')
def labels(mnist_data_dir):
  """The real MNIST's labels, read through tfds, not from the report."""
  return mnist.load_mnist(mnist_data_dir).y


def errors(driver):
  return [entry for entry in driver.get_log('browser') if entry['level'] == 'SEVERE']


def test_it_opens_from_a_file_offline_without_console_errors(report):
  driver, _ = report
  assert driver.execute_script('return navigator.onLine') is False
  assert len(shown_indices(driver)) == 100
  by_id(driver, 'mislabeled').click()
  driver.find_element('css selector', '#table-body tr.ex').click()
  assert errors(driver) == []
  fetched = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
  assert [u for u in fetched if not u.startswith(('data:', 'blob:'))] == []


def test_all_60000_examples_are_reached_page_by_page(report):
  driver, _ = report
  assert by_id(driver, 'count').text.startswith('60,000 examples')
  choose(driver, 'rows', 1000)
  assert by_id(driver, 'page').text == 'page 1 of 60'
  pages, seen = driver.execute_script('''  // the user's clicks on "next", page after page
    const pages = [], seen = [];
    for (let i = 0; i < 60; i++) {
      pages.push(document.getElementById('page').textContent);
      document.querySelectorAll('#table-body tr.ex').forEach(tr => seen.push(+tr.dataset.index));
      document.getElementById('next').click();
    }
    return [pages, seen];''')
  assert pages == [f'page {i} of 60' for i in range(1, 61)]
  assert sorted(seen) == list(range(60000))


# Each key's values, from cscores-details.npz (not from the page) as float32, as the page holds
# them: a difference of two is taken in float32 too.
KEYS = {
    'cscore': lambda d: d['cscores'], 'standard_error': lambda d: d['standard_error'],
    'memorization': lambda d: d['memorization'], 'learning_speed': lambda d: d['learning_speed'],
    'learning_confidence': lambda d: d['learning_confidence'],
    'combined_score': lambda d: d['combined_score'],
    'speed_minus_cscore': lambda d: d['learning_speed'] - d['cscores'],
    'confidence_minus_cscore': lambda d: d['learning_confidence'] - d['cscores'],
    'memorization_minus_cscore': lambda d: d['memorization'] - d['cscores'],
    'index': lambda d: np.arange(len(d['cscores']), dtype=np.float32)}


@pytest.mark.parametrize('key', KEYS)
def test_sorting_by_each_key_orders_the_examples_both_ways_with_no_value_last(report, key):
  driver, details = report
  options = driver.execute_script("return Array.from(document.querySelectorAll('#key option'), o => o.value)")
  assert sorted(options) == sorted(KEYS)
  values = KEYS[key]({k: details[k].astype(np.float32) for k in details if details[k].dtype == float})
  for direction in ('ascending', 'descending'):
    choose(driver, 'key', key)
    if direction == 'descending':
      by_id(driver, 'direction').click()
    order = values[view_indices(driver)]
    valued = ~np.isnan(order)
    assert len(order) == 60000 and valued[:valued.sum()].all(), 'examples without a value come last'
    steps = np.diff(order[valued])
    assert (steps >= 0).all() if direction == 'ascending' else (steps <= 0).all()


def test_the_order_button_says_how_the_view_is_sorted_and_ties_keep_the_order_of_example_number(report):
  driver, details = report
  choose(driver, 'key', 'cscore')
  button = by_id(driver, 'direction')
  before = button.text
  button.click()
  assert {before, button.text} == {'sorted lowest first \u21c5', 'sorted highest first \u21c5'}
  order = view_indices(driver)
  scores = details['cscores'].astype(np.float32)[order]
  tied = scores[:-1] == scores[1:]
  assert tied.sum() > 1000 and (np.diff(order)[tied] > 0).all()


def test_the_class_filter_shows_that_class_only(report, labels):
  driver, _ = report
  choose(driver, 'class', 7)
  assert by_id(driver, 'count').text.startswith(f'{(labels == 7).sum():,} examples')
  assert set(labels[view_indices(driver)]) == {7}
  cells = driver.execute_script("return Array.from(document.querySelectorAll('#table-body tr.ex td:nth-child(3)'), td => td.textContent)")
  assert set(cells) == {'7'}


def test_the_csv_download_holds_the_view(report, labels):
  driver, details = report
  choose(driver, 'class', 3)
  choose(driver, 'key', 'memorization')
  by_id(driver, 'direction').click()  # highest first
  by_id(driver, 'csv').click()
  path = driver.downloads / 'mnist-cscores-class-3-by-memorization-descending.csv'
  deadline = time.time() + 30
  while not path.exists() and time.time() < deadline:
    time.sleep(0.1)
  rows = list(csv.DictReader(io.StringIO(path.read_text())))
  indices = [int(r['index']) for r in rows]
  assert indices == view_indices(driver).tolist() and len(rows) == (labels == 3).sum()
  assert {r['label'] for r in rows} == {r['class'] for r in rows} == {'3'}
  for name, key in (('cscore', 'cscores'), ('memorization', 'memorization'), ('learning_speed', 'learning_speed')):
    got = np.array([float(r[name]) for r in rows])
    np.testing.assert_allclose(got, details[key][indices], rtol=1e-6, atol=1e-7)  # NaN as nan
  memorization = np.array([float(r['memorization']) for r in rows])
  valued = memorization[~np.isnan(memorization)]
  assert (np.diff(valued) <= 0).all()


def test_an_example_without_a_score_shows_no_score_and_they_are_counted(report):
  driver, details = report
  unscored = int(np.isnan(details['cscores']).sum())
  assert unscored > 0, 'the tiny run leaves some examples never held out'
  assert by_id(driver, 'count').text == f'60,000 examples (ties by example #), {unscored:,} without a C-score (last)'
  by_id(driver, 'last').click()
  cells = driver.execute_script("return Array.from(document.querySelectorAll('#table-body tr.ex td:nth-child(4)'), td => td.textContent)")
  assert cells and set(cells) == {'no score'}
  assert f'{unscored:,} examples have no C-score' in by_id(driver, 'facts').text


def test_a_click_shows_the_example_large_with_its_score_at_each_ratio(report, labels):
  driver, details = report
  first = labels[0]
  choose(driver, 'key', 'index')
  driver.find_element('css selector', '#table-body tr.ex[data-index="0"]').click()
  body = by_id(driver, 'detail-body')
  assert body.is_displayed() and body.text.startswith(f'Example #0: class {first}\n')
  rows = driver.execute_script("return Array.from(document.querySelectorAll('#detail-body tr'), tr => tr.textContent)")
  per_ratio = [r for r in rows if r.startswith(('0.5', '0.9'))]
  for ratio, text in zip((0.5, 0.9), per_ratio):
    j = list(details['ratios']).index(ratio)
    count, score = details['held_out_counts'][j, 0], details['per_ratio'][j, 0]
    if not count:
      assert text == f'{ratio}no scorenone held it out'
      continue
    shown = re.fullmatch(rf'{ratio}(\d\.\d{{3}})(\d+) of (\d+)', text)
    assert shown and abs(float(shown[1]) - score) <= 0.0005 + 1e-9
    assert (int(shown[2]), int(shown[3])) == (round(score * count), count)
  size = driver.execute_script("const s = document.querySelector('#detail-body .pic'); return [s.offsetWidth, s.offsetHeight]")
  assert size[0] == size[1] >= 224
