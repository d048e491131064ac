"""The README and docs/: a first screen for a newcomer, links that lead somewhere, and tests
named in the reliability table that exist."""
import os
import re

from conftest import ROOT

README = (ROOT / 'README.md').read_text()
DOCS = {path.name: path.read_text() for path in (ROOT / 'docs').glob('*.md')}


def suite_tests():
  """{file name: [test names]} of the suite."""
  return {path.name: re.findall(r'^def (test_\w+)', path.read_text(), re.M)
          for path in (ROOT / 'tests').glob('test_*.py')}


def test_the_first_screen_holds_the_venv_the_install_a_first_look_and_the_full_command_with_its_cost():
  first = README.splitlines()[:40]
  text = '\n'.join(first)
  assert '](docs/mnist-examples.png)' in text
  commands = [line.strip() for line in first if line.startswith('    ')]
  venv = next(i for i, c in enumerate(commands) if '-m venv' in c and 'activate' in c)
  install = commands.index('pip install -r requirements.txt')
  first_look = commands.index('python mnist.py --runs 4')
  full = commands.index('python mnist.py')
  assert venv < install < first_look < full
  assert any('--manual-dir' in c for c in commands[first_look:full])  # the offline flag beside it
  assert re.search(r'GB', text)  # the install's size
  before_full = '\n'.join(first[:next(i for i, line in enumerate(first) if line == '    python mnist.py')])
  assert re.search(r'1,800 models: about [\d.]+ hours', before_full)  # the full protocol's cost
  assert 'not yet measured' in before_full  # on a GPU, said plainly
  assert 'docs/measurements.md' in text  # which CPU, where from


def test_the_readme_is_at_most_250_lines():
  assert len(README.splitlines()) <= 250


def test_the_readme_links_every_page_of_docs():
  linked = set(re.findall(r'\]\(docs/([\w-]+\.md)', README))
  assert linked == set(DOCS)


def test_the_readmes_outputs_tables_name_every_file_and_every_details_member_as_a_run_writes_them(first_run):
  import numpy as np
  out = first_run[0]
  files = {m.group(1) for m in re.finditer(r'^\| `([\w.-]+/?)` \|', README, re.M)}
  written = {p.name + ('/' if p.is_dir() else '') for p in out.iterdir()}
  assert written <= files, written - files
  rows = {}
  for line in README.splitlines():
    found = re.match(r'\| ((?:`\w+`(?:, )?)+) \| `\[([^]]*)\]` (\w+) \|', line)
    if found:
      for name in re.findall(r'`(\w+)`', found.group(1)):
        rows[name] = (found.group(2), found.group(3))
  details = np.load(out / 'cscores-details.npz')
  assert set(rows) - {'cscores'} >= set(details.files) - {'cscores'} and set(rows) <= set(details.files) | {'cscores'}
  sizes = {'L': len(details['ratios']), 'n': 60000, 'C': 10}
  for name in details.files:
    shape, dtype = rows[name]
    assert details[name].shape == tuple(int(s) if s.strip().isdigit() else sizes[s.strip()] for s in shape.split(',') if s.strip()), name
    kind = 'str' if details[name].dtype.kind == 'U' else str(details[name].dtype)
    assert kind == dtype, (name, kind, dtype)


def test_every_test_the_docs_name_exists():
  defined = suite_tests()
  everything = [name for names in defined.values() for name in names]
  named = 0
  for text in [README, *DOCS.values()]:
    for file, name in re.findall(r'(test_\w+\.py)::(test_\w+)', text):
      assert name in defined.get(file, []), f'{file}::{name}'
      named += 1
    for fragment in re.findall(r'`…(\w+?)…?`', text):  # `…end_of_a_name`, `…middle…`
      assert any(fragment in name for name in everything), fragment
  assert named > 20


def test_every_local_link_leads_to_a_file():
  for where, text in [('README.md', README), *(('docs/' + k, v) for k, v in DOCS.items())]:
    folder = ROOT if where == 'README.md' else ROOT / 'docs'
    for target in re.findall(r'\]\(([^)#:]+)(?:#[^)]*)?\)', text):
      assert (folder / target).exists(), f'{where}: {target}'


def anchors(text):
  """GitHub's anchors of a Markdown file's headings (lower case, punctuation dropped, spaces to
  hyphens) and its named anchors."""
  headings = re.findall(r'^#+ (.+)$', text, re.M)
  ids = re.findall(r'<a id="([\w-]+)"></a>', text)  # named anchors in a table
  return {re.sub(r'[^\w\- ]', '', h.strip().lower()).replace(' ', '-') for h in headings} | set(ids)


def test_every_link_to_a_section_leads_to_a_heading():
  texts = {ROOT / 'README.md': README, **{ROOT / 'docs' / k: v for k, v in DOCS.items()}}
  checked = 0
  for where, text in texts.items():
    for target, anchor in re.findall(r'\]\(([^)#:]*)#([^)]+)\)', text):
      file = (where.parent / target).resolve() if target else where
      assert anchor in anchors(texts.get(file) or file.read_text()), f'{where.name}: {target}#{anchor}'
      checked += 1
  assert checked > 5


# --- Every `python mnist.py ...` in the README and docs/ works as pasted --------------------------

PATH_FLAGS = ('--data', '--manual-dir', '--merge')  # inputs that must exist
# A placeholder stands for the reader's own value: in capitals (FILE.npz, DIR, $OUT) or a shell
# variable. For the flags whose values are parsed, a placeholder is given a valid value.
SAMPLE = {'--shard': '0/2', '--runs': '4', '--seed': '0', '--models-at-once': '0'}


def is_placeholder(word):
  return '$' in word or '…' in word or re.fullmatch(r'[A-Z][A-Z0-9_]*(\.[a-z]+)?', word) is not None


def pasted_commands(text):
  """(line number, [argv]) of each `python mnist.py` command in a text, as a shell would split
  it: from code blocks and inline code, without environment prefixes, comments and `&`."""
  commands = []
  for number, line in enumerate(text.splitlines(), 1):
    for found in re.finditer(r'python mnist\.py([^`|\n]*)', line):
      words = found.group(1).split('#')[0].replace('&', ' ').split()
      commands.append((number, [w.strip('"\'') for w in words]))
  return commands


def test_the_pasted_commands_are_found_in_code_and_inline_and_lose_their_comments():
  text = ('    CUDA_VISIBLE_DEVICES=$i python mnist.py --shard $i/$N &\n'
          '| `python mnist.py --runs 4` | 36 |\n    python mnist.py --data x.npz   # your own\n')
  assert pasted_commands(text) == [(1, ['--shard', '$i/$N']), (2, ['--runs', '4']), (3, ['--data', 'x.npz'])]


def test_placeholders_are_capitals_or_shell_variables():
  assert all(is_placeholder(w) for w in ('FILE.npz', 'DIR', '$OUT', '"$OUT"', '$i/$N', '…'))
  assert not any(is_placeholder(w) for w in ('digits.npz', 'tests/data/digits.npz', 'results', '../shared/mnist'))


def test_every_command_in_the_readme_and_docs_parses_and_names_inputs_that_exist():
  from cscore import cli
  import mnist
  problems = []
  for name, text in [('README.md', README), *sorted(DOCS.items())]:
    written = set()  # folders an earlier command on the page writes (--out-dir)
    for number, argv in pasted_commands(text):
      argv = [w for w in argv if w != '$PROTOCOL']  # the page's protocol flags, spelled out above it
      for i, word in enumerate(argv):
        if is_placeholder(word) and i and argv[i - 1] in SAMPLE:
          argv[i] = SAMPLE[argv[i - 1]]
      try:
        _, args = cli.parse_args(argv, mnist.Config())
      except SystemExit as e:
        if e.code:  # (--help exits 0)
          problems.append(f'{name}:{number}: does not parse: {" ".join(argv)}')
        continue
      for path in [args.data, args.manual_dir, *(args.merge or [])]:  # from the checkout's folder
        if path and not is_placeholder(path) and path not in written and not (ROOT / path).exists():
          problems.append(f'{name}:{number}: {path} does not exist')
      written.add(args.out_dir)
  assert not problems, '\n'.join(problems)


def test_the_own_data_pages_npz_commands_run_as_pasted_at_a_tiny_size(tmp_path, monkeypatch):
  import mnist
  commands = [argv for _, argv in pasted_commands(DOCS['own-data.md']) if '--data' in argv]
  assert len(commands) >= 2
  monkeypatch.chdir(ROOT)  # as pasted in the checkout, each into its own --out-dir, here under tmp_path
  for argv in commands:
    out = argv[argv.index('--out-dir') + 1]
    argv = [w if w != out else str(tmp_path / out) for w in argv]
    tiny = ['--runs', '2', '--epochs', '1', '--ratios', '0.5', '--hidden', '8', '--models-at-once', '2']
    assert mnist.main(argv + tiny) == 0, argv  # later flags override the page's own
    assert (tmp_path / out / 'cscores.npy').exists()


def test_the_readmes_snippet_runs_as_pasted_after_a_run_and_shows_the_lowest_scored_examples(first_run, tmp_path):
  import shutil
  import subprocess
  import sys
  out, data_dir, _ = first_run
  snippet = re.search(r'```python\n(.*?)```', README, re.S).group(1)
  for name in ('cscores.npy', 'cscores-details.npz'):  # the run's folder, as the README says
    shutil.copy(out / name, tmp_path / name)
  env = dict(os.environ, TFDS_DATA_DIR=str(data_dir), MPLBACKEND='Agg')  # the data dir the run prepared
  result = subprocess.run([sys.executable, '-c', snippet], cwd=tmp_path, env=env, capture_output=True, text=True)
  assert result.returncode == 0, result.stderr[-2000:]
  assert (tmp_path / 'lowest.png').stat().st_size > 10000


def test_the_snippets_order_puts_ties_in_index_order_and_nan_last():
  import numpy as np
  scores = np.array([0.5, 0.0, np.nan, 0.0, 0.25, 0.0])
  rule = re.search(r'lowest = (np\.argsort\([^)]*\))', README).group(1)
  assert list(eval(rule, {'np': np, 'scores': scores})) == [1, 3, 5, 4, 0, 2]


def slurm_benchmark():
  """benchmarks/slurm.py, which runs the page's blocks: its reading of them is the tests' too."""
  import sys
  sys.path.insert(0, str(ROOT / 'benchmarks'))
  try:
    import slurm
  finally:
    sys.path.remove(str(ROOT / 'benchmarks'))
  return slurm


def scale_block(name):
  return slurm_benchmark().documented(name)


def test_the_slurm_script_asks_for_cores_and_memory_and_reads_the_data_prepared_once():
  script, page = scale_block('cscores.sbatch'), DOCS['scale.md']
  assert '#SBATCH --cpus-per-task=' in script and '#SBATCH --mem=' in script
  assert '--gres' not in script  # the CPU-only variant; the GPU one adds it
  assert '    #SBATCH --gres=gpu:1' in page
  assert script.count('--data-dir "$DATA"') == 2  # shards and estimate
  assert page.index('python mnist.py --prepare-only --data-dir') < page.index('<!-- cscores.sbatch')


def test_the_slurm_submission_names_the_script_by_its_path_so_any_folder_will_do():
  lines = scale_block('submit')
  assert '$PWD' not in lines and '"$script"' in lines and '--wrap "bash \'$script\' estimate"' in lines
  assert re.match(r'script=~?/', lines)  # an absolute path, however the reader's folder


def test_the_slurm_benchmark_sets_every_edit_line_of_the_documented_script(tmp_path):
  import subprocess
  slurm = slurm_benchmark()
  script = slurm.edited(slurm.documented('cscores.sbatch'), tmp_path / 'out', tmp_path / 'tfds')
  assert f'DATA={tmp_path / "tfds"}' in script and f'OUT={tmp_path / "out"}' in script and 'N=4' in script
  assert subprocess.run(['bash', '-n'], input=script, text=True).returncode == 0
