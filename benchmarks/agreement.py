"""How close a cscores.npy is to the authors' published MNIST C-scores, and how close it can be.

    python benchmarks/agreement.py OUT/cscores.npy [OUT2/cscores.npy ...] [--reference PATH]

The published scores are `mnist-cscores.npy` at the root of github.com/pluskid/structural-regularity
(commit 021c363, April 2023): float64 [60000] in tensorflow-datasets' train order, from 200 runs
x 9 ratios of the authors' JAX code. Without --reference they are downloaded once, pinned to that
commit and checked against their md5, into Keras' cache (~/.keras/datasets); offline, pass a copy
with --reference PATH.

It prints one block: Pearson's r; Spearman's rho (average ranks for ties) over all examples and
over the hard ones (published < 0.99, where the ranking matters: 87% of the examples score
0.99 or more, and there the order is mostly noise);
the overlap of the 1,000 lowest-scored examples (ties broken by example index); both means; how
many of ours are NaN (never held out: left out, counted).

And the ceiling that Monte Carlo noise allows: two noisy estimates of the same scores cannot
correlate better than sqrt(rel_ours x rel_ref), their reliabilities. rel_ours is the split-half
reliability in the cscores-details.npz beside the scores; rel_ref is the same runs' projection to
200 runs per ratio, the published estimate's size. A Pearson's r near the ceiling means that what
separates the two is noise; one well below it would be a real difference of method.
"""
import os
import pathlib
import sys
import zipfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from cscore import cli  # noqa: E402  (the one-line argument parser)
from cscore import errors  # noqa: E402  (the one-line errors)
from cscore import outputs  # noqa: E402  (the output files' names)

import numpy as np  # noqa: E402
import scipy.stats  # noqa: E402

REFERENCE_URL = ('https://raw.githubusercontent.com/pluskid/structural-regularity/'
                 '021c363637e4433ab28910376128a6764b9db362/mnist-cscores.npy')
REFERENCE_MD5 = 'ee2a5e57104681eb120c7660c38863e8'
HARD = 0.99      # published C-score below which an example counts as hard
LOWEST = 1000    # how many of the lowest-scored examples are compared
CACHE_DIR = None  # Keras' cache, ~/.keras


def download_reference():
  """The path of the published scores, downloaded once (md5-checked) into Keras' cache."""
  try:
    import keras  # its get_file: a cached, checksummed download
    return keras.utils.get_file('mnist-cscores-021c363.npy', REFERENCE_URL, file_hash=REFERENCE_MD5,
                                hash_algorithm='md5', cache_dir=CACHE_DIR)
  except Exception as e:  # offline, or a download that fails its checksum
    raise errors.CScoreError(f'cannot download the published scores ({errors.first_line(e)}); offline, pass '
                            '--reference PATH, a copy of mnist-cscores.npy from '
                            'github.com/pluskid/structural-regularity') from e


def load_scores(path, what):
  """A float [n] array from a .npy file, or a one-line error naming the file."""
  try:
    scores = np.load(path, allow_pickle=False)
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
    reason = 'no such file' if isinstance(e, FileNotFoundError) else errors.first_line(e)
    raise errors.CScoreError(f'{what} {path}: {reason}') from e
  if not isinstance(scores, np.ndarray):  # an .npz, such as cscores-details.npz
    scores.close()
    raise errors.CScoreError(f'{what} {path}: an .npz archive, not a .npy array of C-scores')
  if scores.ndim != 1 or scores.dtype.kind != 'f':
    raise errors.CScoreError(f'{what} {path}: expected a 1-D float array of C-scores, '
                            f'got {scores.dtype} {list(scores.shape)}')
  return scores.astype(np.float64)


def lowest(scores, count):
  """Indices of the `count` lowest scores; ties go to the lower example index (stable sort)."""
  return np.argsort(scores, kind='stable')[:count]


def agreement(ours, reference, hard=HARD, count=LOWEST):
  """The comparison over the examples that ours scores (not NaN), as a dict."""
  if ours.shape != reference.shape:
    raise errors.CScoreError(f'the scores have {len(ours)} examples and the published ones '
                            f'{len(reference)}: not the same data set')
  scored = ~np.isnan(ours) & ~np.isnan(reference)
  a, b = ours[scored], reference[scored]
  is_hard = b < hard
  count = min(count, len(a))
  return dict(
      examples=int(scored.sum()), total=len(ours), nan=int(np.isnan(ours).sum()),
      pearson=float(np.corrcoef(a, b)[0, 1]),
      spearman=float(scipy.stats.spearmanr(a, b).statistic),
      hard=int(is_hard.sum()),
      spearman_hard=float(scipy.stats.spearmanr(a[is_hard], b[is_hard]).statistic),
      lowest=count, lowest_overlap=len(np.intersect1d(lowest(a, count), lowest(b, count))),
      mean_ours=float(a.mean()), mean_reference=float(b.mean()))


def reliabilities(scores_path):
  """(rel_ours, rel_ref) from the cscores-details.npz beside the scores, or None with why not."""
  details = os.path.join(os.path.dirname(os.path.abspath(scores_path)), outputs.OUTPUTS['details'])
  if not os.path.exists(details):
    return None, f'no {outputs.OUTPUTS["details"]} beside the scores'
  try:
    with np.load(details, allow_pickle=False) as d:
      ours, ref = float(d['reliability']), float(d['reliability_200_runs'])
  except KeyError:
    return None, f'{details} predates split-half reliability; rerun mnist.py to rewrite it'
  except (OSError, ValueError, TypeError, EOFError, zipfile.BadZipFile) as e:
    raise errors.CScoreError(f'{details}: {errors.first_line(e)}') from e
  if np.isnan(ours):
    return None, 'split-half reliability needs at least 2 runs at every ratio'
  return (ours, ref), None


def report(path, m, rel):
  """The printed block."""
  values, why_not = rel
  overlap = f'{m["lowest"]:,} lowest overlap'
  ceiling = (f'{np.sqrt(values[0] * values[1]):.4f} = sqrt({values[0]:.4f} ours x {values[1]:.4f} published)'
             if values else f'not available ({why_not})')
  return '\n'.join([
      f'{path} against the published MNIST C-scores (200 runs x 9 ratios):',
      f'  examples compared      {m["examples"]:,} of {m["total"]:,} ({m["nan"]:,} of ours are NaN, left out)',
      f'  Pearson r              {m["pearson"]:.4f}',
      f'  ceiling from noise     {ceiling}',
      f'  Spearman rho, all      {m["spearman"]:.4f}',
      f'  Spearman rho, hard     {m["spearman_hard"]:.4f} (the {m["hard"]:,} with published < {HARD})',
      f'  {overlap:<22} {m["lowest_overlap"]:,} ({m["lowest_overlap"] / max(m["lowest"], 1):.1%})',
      f'  mean C-score           ours {m["mean_ours"]:.4f}, published {m["mean_reference"]:.4f}'])


def parse_args(argv=None):
  p = cli.OneLineErrorParser(prog='agreement.py', description=__doc__.splitlines()[0])
  p.add_argument('scores', nargs='+', help="a cscores.npy written by mnist.py (several: a block each)")
  p.add_argument('--reference', help='the published mnist-cscores.npy (default: download it, '
                 'pinned to commit 021c363 and md5-checked)')
  return p.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  try:
    ours = [load_scores(path, 'scores') for path in args.scores]  # a typo fails before a download
    reference = load_scores(args.reference or download_reference(), 'published scores')
    for path, scores in zip(args.scores, ours):
      print(report(path, agreement(scores, reference), reliabilities(path)))
  except errors.CScoreError as e:
    print(f'agreement.py: error: {e}', file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
