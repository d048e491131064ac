"""The code's layout, as a specification: mnist.py is the method and fits in one sitting; the
machinery is the package cscore/ beside it, one module per concern, its imports one way."""
import ast
import io
import pathlib
import subprocess
import sys
import tokenize

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
MNIST = ROOT / 'mnist.py'
PACKAGE = ROOT / 'cscore'
MODULES = sorted(PACKAGE.glob('*.py'))


def code_lines(source):
  """Lines holding code: not blank, not only a comment, not part of a docstring."""
  docstrings = set()
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
      first = node.body[0]
      if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        docstrings.update(range(first.lineno, first.end_lineno + 1))
  lines = set()
  skip = (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER)
  for token in tokenize.generate_tokens(io.StringIO(source).readline):
    if token.type not in skip:
      lines.update(line for line in range(token.start[0], token.end[0] + 1) if line not in docstrings)
  return len(lines)


def imports(path):
  """The modules a file imports, as written: 'cscore.store' for `from cscore import store`."""
  found = []
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      found += [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module:
      found += [f'{node.module}.{alias.name}' for alias in node.names]
  return found


def test_code_lines_count_code_and_not_comments_or_docstrings():
  source = '"""A docstring\nof two lines."""\n\n# a comment\nx = 1  # code\n\n\ndef f():\n  """Its doc."""\n  return (x +\n          1)\n'
  assert code_lines(source) == 4  # x = 1; def f(); return (x +; 1)


def test_mnist_py_fits_in_one_sitting():
  source = MNIST.read_text()
  assert len(source.splitlines()) <= 800
  assert code_lines(source) <= 500


def test_the_estimator_starts_in_the_first_550_lines():
  line = next(i for i, text in enumerate(MNIST.read_text().splitlines(), 1) if text.startswith('def estimate('))
  assert line < 550


@pytest.mark.parametrize('name', ['draw_subset', 'loss_gradients', 'EnsembleTrainer', 'fraction_correct',
                                  'mean_over_ratios', 'estimate', 'examples_figure', 'main'])
def test_the_method_is_defined_in_mnist_py(name):
  tree = ast.parse(MNIST.read_text())
  assert name in {node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))}


def test_the_subset_is_drawn_by_randomstate_choice_in_mnist_py():
  assert 'np.random.RandomState(seed)' in MNIST.read_text() and 'rs.choice(n' in MNIST.read_text()


@pytest.mark.parametrize('module', MODULES, ids=lambda p: p.name)
def test_no_module_of_the_package_imports_mnist(module):
  assert not [name for name in imports(module) if name.split('.')[0] == 'mnist']


@pytest.mark.parametrize('module', [MNIST, *MODULES], ids=lambda p: p.name)
def test_the_package_is_imported_as_modules_not_names(module):
  own = [name for name in imports(module) if name.split('.')[0] == 'cscore']
  assert all(name.count('.') == 1 and (PACKAGE / f'{name.split(".")[1]}.py').exists() for name in own), own


def test_imports_tell_a_module_from_a_name_imported_out_of_it(tmp_path):
  (tmp_path / 'a.py').write_text('from cscore import store\nfrom cscore.store import Run\nimport cscore.files\n')
  assert imports(tmp_path / 'a.py') == ['cscore.store', 'cscore.store.Run', 'cscore.files']


def test_the_package_has_no_import_cycle():
  graph = {p.stem: {name.split('.')[1] for name in imports(p) if name.startswith('cscore.')} for p in MODULES}
  done, visiting = set(), []

  def visit(module):
    assert module not in visiting, ' -> '.join(visiting + [module])
    if module not in done:
      visiting.append(module)
      for other in graph[module]:
        visit(other)
      visiting.pop()
      done.add(module)

  for module in graph:
    visit(module)


@pytest.mark.parametrize('module', [p for p in MODULES if p.name != '__init__.py'], ids=lambda p: p.name)
def test_each_module_opens_with_a_docstring_and_stays_short(module):
  source = module.read_text()
  assert ast.get_docstring(ast.parse(source))
  assert len(source.splitlines()) <= 650


def test_the_package_init_is_empty():
  assert (PACKAGE / '__init__.py').read_text() == ''


def test_the_reports_html_css_and_javascript_are_files_of_the_package():
  html = (PACKAGE / 'report.html').read_text()
  assert html.startswith('<!DOCTYPE html>') and '/*STYLE*/' in html and '/*SCRIPT*/' in html
  assert (PACKAGE / 'report.css').stat().st_size and (PACKAGE / 'report.js').stat().st_size
  assert '<html' not in (PACKAGE / 'report.py').read_text()


def test_help_answers_without_importing_tensorflow():
  code = ('import sys\nsys.argv = ["mnist.py", "--help"]\nsys.path.insert(0, %r)\nimport runpy\n'
          'try:\n  runpy.run_path(%r, run_name="__main__")\nexcept SystemExit:\n  pass\n'
          'print("tensorflow" in sys.modules, "matplotlib" in sys.modules)\n') % (str(ROOT), str(MNIST))
  done = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=60)
  assert done.returncode == 0, done.stderr
  assert done.stdout.splitlines()[-1] == 'False False'
