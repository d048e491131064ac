"""The README and docs/: a first screen for a newcomer, links that lead somewhere, and tests
named in the reliability table that exist."""
import re

from conftest import ROOT

README = (ROOT / 'README.md').read_text()
DOCS = {path.name: path.read_text() for path in (ROOT / 'docs').glob('*.md')}


def suite_tests():
  """{file name: [test names]} of the suite."""
  return {path.name: re.findall(r'^def (test_\w+)', path.read_text(), re.M)
          for path in (ROOT / 'tests').glob('test_*.py')}


def test_the_first_screen_holds_the_two_commands_the_figure_and_a_table_of_agreement():
  first = README.splitlines()[:40]
  text = '\n'.join(first)
  assert '    pip install -r requirements.txt' in first and '    python mnist.py' in first
  assert '](docs/mnist-examples.png)' in text
  rows = [line for line in first if line.startswith('| `python mnist.py')]
  assert len(rows) >= 3 and 'Pearson' in text
  assert any(row.startswith('| `python mnist.py` |') for row in rows)  # the README's own command


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
  """GitHub's anchors of a Markdown file's headings: lower case, punctuation dropped, spaces to
  hyphens."""
  headings = re.findall(r'^#+ (.+)$', text, re.M)
  return {re.sub(r'[^\w\- ]', '', h.strip().lower()).replace(' ', '-') for h in headings}


def test_every_link_to_a_section_leads_to_a_heading():
  texts = {ROOT / 'README.md': README, **{ROOT / 'docs' / k: v for k, v in DOCS.items()}}
  checked = 0
  for where, text in texts.items():
    for target, anchor in re.findall(r'\]\(([^)#:]*)#([^)]+)\)', text):
      file = (where.parent / target).resolve() if target else where
      assert anchor in anchors(texts.get(file) or file.read_text()), f'{where.name}: {target}#{anchor}'
      checked += 1
  assert checked > 5
