"""Outputs: the files a command writes from the stored runs (the scores, the details, the report
and the figures), and every line it prints about them: the summary, the reliability and the
combined score's weight, the hardware and training time, the missing runs, the files written
and which to open first."""

import collections
import dataclasses
import datetime
import os

import numpy as np

from cscore import analysis
from cscore import datasets
from cscore import errors
from cscore import figures
from cscore import files
from cscore import report
from cscore import shards
from cscore import store


def output_files(name='mnist', pictures=True):
  """The files written, the figures named after the data; without pictures (features), not
  the figures that are made of examples."""
  names = dict(scores='cscores.npy', details='cscores-details.npz', report=f'{name}-report.html',
               examples=f'{name}-examples.pdf', overview=f'{name}-cscores.pdf',
               memorized=f'{name}-memorized.pdf', proxies=f'{name}-proxies.pdf')
  return names if pictures else {k: v for k, v in names.items() if k not in ('examples', 'memorized')}


OUTPUTS = output_files()  # MNIST's
OUTPUT_NOTES = dict(
    scores="the C-score of each training example, float32, in the data's order (MNIST's: tfds train order)",
    details='per-ratio scores, standard errors, split-half reliability, memorization, learning proxies, combined score',
    report='every example, to sort, filter and take away as CSV: open it in a browser',
    examples="per class, the 10 highest- and 10 lowest-scored examples",
    overview='C-score histogram, learning curve, C-score per class, hard examples by ratio',
    memorized='the 30 most memorized examples',
    proxies='the learning proxies and the combined score against the C-score')


def have_runs(store_dir, runs, config, interrupted=False):
  """Whether any run the command names is stored. None is an error, unless Ctrl-C stopped the
  very first group (interrupted): then there is nothing to write, and no error to add."""
  if any(store.finished_runs(runs, config, r) for r in config.ratios):
    return True
  if interrupted:
    return False
  raise errors.CScoreError(f'{store_dir} holds none of the runs this command names ({len(config.ratios)} '
                           f'ratios x seeds {shards.seed_ranges(store.run_seeds(config))}); '
                           'train them first, or check --runs, --ratios and --seed')


def write_outputs(out_dir, data, est, runs, config, examples_figure, tag=''):
  """Writes the Estimates `est` of the stored runs as the output files. The details also hold
  each example's class as trained (labels), the classes' names and each class's label in the
  user's data (label_values: an npz's own labels; else 0 .. C-1). examples_figure(data,
  scores, path) draws the paper's figure (mnist.py's)."""
  path = {k: os.path.join(out_dir, name) for k, name in output_files(data.name, data.shape is not None).items()}
  classes = dict(class_names=np.array(data.class_names, dtype=str),
                 label_values=np.array(data.label_values or range(len(data.class_names))),
                 labels=np.asarray(data.y))  # class_names[labels[i]] names example i's class
  files.write_atomically(path['scores'], lambda f: np.save(f, est.cscores.astype(np.float32)), tag)
  files.write_atomically(path['details'], lambda f: np.savez_compressed(f, **dataclasses.asdict(est), **classes), tag)
  page = report.report(est, data, report_facts(est, runs, config))
  files.write_atomically(path['report'], lambda f: f.write(page.encode()), tag)
  if not np.isnan(est.cscores).all():
    if data.shape is not None:
      examples_figure(data, est.cscores, path['examples'])
      figures.memorization_figure(est, data, path['memorized'])
    figures.cscores_figure(est, data, path['overview'])
    figures.proxies_figure(est, data, path['proxies'])


def summary(store_dir, out_dir, est, data, runs, config, trained, seconds):
  """What a command that wrote the outputs prints: the summary, the missing runs (by shard too),
  the files written."""
  return (summary_lines(est, runs, config, trained, seconds) + shards.missing_lines(store_dir, runs, config)
          + written_lines(out_dir, est, data))


def reliability_line(est):
  """The C-score's split-half reliability, in one line."""
  if np.isnan(est.reliability):
    return 'split-half reliability: not available (it needs at least 2 runs at every ratio)'
  return (f'split-half reliability: r = {est.split_half_r:.3f} between the even and the odd runs; '
          f'the whole estimate {est.reliability:.3f}; 200 runs per ratio would reach '
          f'{est.reliability_200_runs:.3f}')


def combined_lines(est):
  """Learning confidence's reliability, and how the combined score weighs the C-score."""
  has_c, has_l = ~np.isnan(est.cscores), ~np.isnan(est.learning_confidence)
  both, only_c, only_l = (int(x.sum()) for x in (has_c & has_l, has_c & ~has_l, has_l & ~has_c))
  lines = ['learning confidence\'s split-half reliability: ' + (
      'not available (it needs at least 2 runs at every ratio)' if np.isnan(est.confidence_reliability)
      else f'r = {est.confidence_split_half_r:.3f}; the whole estimate {est.confidence_reliability:.3f}')]
  if not both:
    lines.append('combined score: the C-score alone; no example has both a C-score and learning confidence'
                 + (f', so the {only_l:,} with learning confidence only have none (see learning_confidence)' if only_l else ''))
    return lines
  signal = (f'{est.combined_signal:.2f} (the share of its spread about that prediction that is signal, not noise)'
            if not np.isnan(est.combined_signal) else
            '0 (its noise is not measurable: no ratio has 2 runs)' if not (est.runs >= 2).any() else
            '0 (its noise is not measurable: too few examples are scored by both halves of the runs)')
  lines.append('combined score: each C-score shrunk toward the one its learning confidence predicts, by its '
               f'own noise; the C-score weighs {signal} over the {both:,} examples with both'
               + (f'; {only_c:,} have the C-score only, which it is' if only_c else '')
               + (f'; {only_l:,} have learning confidence only: the C-score it predicts' if only_l else ''))
  return lines


def hardware_line(runs, config):
  """Which devices and matmul precisions trained the runs in the estimate."""
  kinds = collections.Counter(r.hardware for ratio in config.ratios
                              for r in store.finished_runs(runs, config, ratio))
  listed = ', '.join(f'{count} on {device} ({matmul})' for (device, matmul), count in kinds.most_common())
  twice = sum(r.alternates > 0 for ratio in config.ratios for r in store.finished_runs(runs, config, ratio))
  return (f'runs in the estimate trained {"on mixed hardware: " if len(kinds) > 1 else ""}{listed}'
          + (f'; {twice} of them stored twice, by different hardware: one record of each is used, '
             "the CPU's (between GPUs, the first by name)" if twice else ''))


def training_time_line(runs, config):
  """The training time of the runs in the estimate, summed from the store's records."""
  found = [r for ratio in config.ratios for r in store.finished_runs(runs, config, ratio)]
  timed = [r.seconds for r in found if not np.isnan(r.seconds)]
  def runs(count):
    return f'{count:,} run{"s" if count != 1 else ""}'
  if not timed:
    return f'training time: not recorded for the {runs(len(found))} in the estimate (stored by an older mnist.py)'
  return (f'training time: {datetime.timedelta(seconds=round(sum(timed)))}, the store\'s record for '
          f'{runs(len(timed))}, evaluation included (summed: processes that ran at once each count)'
          + (f'; {runs(len(found) - len(timed))} stored by an older mnist.py have no time recorded'
             if len(timed) < len(found) else ''))


def report_facts(est, runs, config):
  """The report's summary of what was run, on what, for how long, and how reliable it is."""
  done = sorted(set(est.runs.tolist()))
  per_ratio = f'{done[0]}' if len(done) == 1 else f'{done[0]} to {done[-1]}'
  se = (f'standard error of a C-score: median {np.nanmedian(est.standard_error):.4f}'
        if not np.isnan(est.standard_error).all() else 'standard error: none (no example scored)')
  return [f'{per_ratio} runs per ratio at {len(est.ratios)} ratios ('
          + ', '.join(f'{r:g}' for r in est.ratios) + f'): {int(est.runs.sum()):,} models; '
          f'{config.epochs} epoch{"s" if config.epochs > 1 else ""} each, batch {config.batch_size}, '
          f'{config.precision}',
          hardware_line(runs, config), training_time_line(runs, config), reliability_line(est),
          *combined_lines(est), se]


def summary_lines(est, runs, config, trained, seconds):
  """The summary of an estimate: accuracy per ratio, scores, errors, reliability, plan."""
  lines = ['held-out accuracy per ratio (runs done):']
  lines += [f'  {r:.2f}: {acc:.4f} ({k})' for r, k, acc in zip(est.ratios, est.runs, est.heldout_accuracy)]
  scores, se = est.cscores, est.standard_error
  valid = scores[~np.isnan(scores)]
  lines.append(f'C-scores: {len(valid)} examples scored, {int(np.isnan(scores).sum())} never held out; '
               f'{(valid < 0.5).sum()} below 0.5, {(valid < 0.1).sum()} below 0.1')
  if len(valid):
    runs_done = int(est.runs.max())
    more = analysis.runs_to_halve_standard_error(est)
    lines.append(f'standard error: median {np.nanmedian(se):.4f}, 95th percentile '
                 f'{np.nanpercentile(se, 95):.4f}; --runs {more} would halve the median '
                 f'({more - runs_done} more per ratio)')
    lines.append(reliability_line(est))
    lines += combined_lines(est)
    lines.append(hardware_line(runs, config))
  rate = f' ({trained / seconds:.3f} models/s)' if trained and seconds > 0 else ''
  lines.append(f'models trained now: {trained} in {datetime.timedelta(seconds=round(seconds))}'
               f'{rate}; models in the estimate: {est.runs.sum()}')
  if len(valid) and (plan := analysis.plan_line(est, config, trained, seconds)):
    lines.append(plan)
  return lines


def written_lines(out_dir, est, data):
  """The files written, each with its full path, and which to open first."""
  drawn, pictures = not np.isnan(est.cscores).all(), data.shape is not None
  paths = {k: os.path.abspath(os.path.join(out_dir, file))
           for k, file in output_files(data.name, pictures).items() if drawn or not file.endswith('.pdf')}
  width = max(map(len, paths.values()))
  lines = ['wrote:'] + [f'  {path:<{width}}  {OUTPUT_NOTES[k]}'
                        + (f' ({datasets.size_text(os.path.getsize(path))})' if k == 'report' else '')
                        for k, path in paths.items()]
  if drawn and pictures:
    lines.append(f'open first: {paths["examples"]}, the most typical and the most unusual examples')
  elif drawn:
    lines.append(f'not written: the figures of examples ({data.name}-examples.pdf, '
                 f'{data.name}-memorized.pdf): x holds features, not images')
  return lines

