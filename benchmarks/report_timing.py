"""How fast a report opens and re-sorts in a real browser: headless Chromium, the page opened from
file:// with the network off, as tests/test_report_browser.py drives it.

    python benchmarks/report_timing.py OUT/mnist-report.html [--repeats 5]

It prints the file's size; the time from navigation to the first rows drawn (the page records it
as performance.now() when its first rows are in), per fresh opening; and the time to re-sort the
whole view by each key, both ways, with its first page drawn, measured in the page around the
same function the controls call. Medians over --repeats. Needs Chromium, chromedriver and
Selenium (apt-get install chromium chromium-driver; pip install selenium).
"""
import argparse
import pathlib
import shutil
import statistics
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from cscore import devices  # noqa: E402


def find_browser():
  """(selenium's webdriver module, Chromium's path, chromedriver's path), or the reason there
  are none."""
  try:
    from selenium import webdriver
  except ImportError:
    return 'Selenium is not installed (pip install selenium)'
  browser = next(filter(None, map(shutil.which, ('chromium', 'chromium-browser', 'google-chrome'))), None)
  driver = shutil.which('chromedriver')
  if not (browser and driver):
    return 'no Chromium and chromedriver on PATH (apt-get install chromium chromium-driver)'
  return webdriver, browser, driver


def headless_chromium(found, downloads=None):
  """A headless Chromium (from find_browser()) with the network off, its console logged, and
  downloads going to `downloads`."""
  webdriver, binary, driver_path = found
  from selenium.webdriver.chrome.service import Service
  options = webdriver.ChromeOptions()
  options.binary_location = binary
  for flag in ('--headless=new', '--no-sandbox', '--disable-dev-shm-usage', '--window-size=1400,1000'):
    options.add_argument(flag)
  options.set_capability('goog:loggingPrefs', {'browser': 'ALL'})
  if downloads:
    options.add_experimental_option('prefs', {'download.default_directory': str(downloads),
                                              'download.prompt_for_download': False})
  driver = webdriver.Chrome(service=Service(driver_path), options=options)
  driver.execute_cdp_cmd('Network.enable', {})
  driver.execute_cdp_cmd('Network.emulateNetworkConditions', dict(
      offline=True, latency=0, downloadThroughput=0, uploadThroughput=0))
  return driver


RESORT = '''
  const report = window.cscoreReport, times = [];
  for (const key of arguments[0]) for (const dir of [1, -1]) {
    report.update({key: 'index', dir: 1, cls: -1, page: 0});  // from another order each time
    const start = performance.now();
    report.update({key, dir, page: 0});
    times.push([key, dir, performance.now() - start, report.view().length]);
  }
  return times;'''


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('report', type=pathlib.Path)
  parser.add_argument('--repeats', type=int, default=5)
  args = parser.parse_args()
  found = find_browser()
  if isinstance(found, str):
    sys.exit(f'report_timing.py: {found}')
  version = subprocess.run([found[1], '--version'], capture_output=True, text=True).stdout.strip()
  print(f'CPU: {devices.cpu_name()}, {devices.cpu_cores()} cores; {version}')
  print(f'{args.report}: {args.report.stat().st_size:,} bytes')
  driver = headless_chromium(found)
  try:
    first, resort = [], {}
    for _ in range(args.repeats):
      driver.get(args.report.resolve().as_uri())
      first.append(driver.execute_script('return window.cscoreReport.firstRowsMs'))
      keys = driver.execute_script("return Array.from(document.querySelectorAll('#key option'), o => o.value)")
      for key, direction, ms, count in driver.execute_script(RESORT, keys):
        resort.setdefault((key, direction), []).append(ms)
    errors = [e for e in driver.get_log('browser') if e['level'] == 'SEVERE']
  finally:
    driver.quit()
  print(f'first rows drawn after opening: median {statistics.median(first):.0f} ms '
        f'(of {args.repeats} openings: {", ".join(f"{t:.0f}" for t in first)})')
  print(f're-sort of all {count:,} examples and the first page drawn, median of {args.repeats} (ms):')
  for (key, direction), times in resort.items():
    print(f'  {key:28s} {"ascending " if direction > 0 else "descending"} {statistics.median(times):7.1f}')
  slowest = max(statistics.median(t) for t in resort.values())
  print(f'slowest re-sort: {slowest:.0f} ms; console errors: {len(errors)}')


if __name__ == '__main__':
  main()
