"""Figures, drawn with Matplotlib into PDFs written atomically: the helpers every figure uses
(pyplot without a display, a row of example pictures, saving) and the figures besides the
paper's examples figure (which mnist.py draws with these helpers): the overview (histogram,
learning curve, per class, hard examples by ratio), the most memorized examples, and the
learning proxies and the combined score against the C-score."""

import numpy as np

from cscore import files


def pyplot():
  """matplotlib.pyplot, on the Agg backend: files only, no display needed."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  return plt


def save_figure(fig, path, **options):
  """Saves a figure as a PDF atomically (processes may write the outputs at once), closes it."""
  files.write_atomically(path, lambda f: fig.savefig(f, format='pdf', **options))
  pyplot().close(fig)


def show_examples(ax, data, cells, titles=None, colors=None, gap=0.1):
  """A row of examples, `cells` (indices; None leaves a cell blank), side by side as one picture
  on ax, each with its title above: grayscale (as the authors' figures) or colour, in their own
  shape; features (no shape) get the titles alone. One image a row, not an axes a picture: a
  figure of 200 axes took seconds to lay out and write."""
  ax.set_axis_off()
  h, w = data.shape[:2] if data.shape is not None else (1, 1)
  step = w + max(1, round(gap * w))  # a cell and the white gap after it, in pixels
  if data.shape is not None:
    row = np.full((h, step * len(cells) - (step - w), *data.shape[2:]), 255, np.uint8)
    for k, i in enumerate(cells):
      if i is not None:
        row[:, k * step:k * step + w] = data.x[i].reshape(data.shape)
    ax.imshow(row, cmap='gray', vmin=0, vmax=255, interpolation='nearest')
  else:
    ax.set(xlim=(0, step * len(cells)), ylim=(h, 0))
  for k, (i, title) in enumerate(zip(cells, titles or [None] * len(cells))):
    if i is not None and title:
      ax.text(k * step + w / 2, -0.04 * h, title, ha='center', va='bottom', fontsize=7,
              color=colors[k] if colors else 'black')


def hard_examples(scores, count, top=0.5):
  """`count` examples with C-scores spread evenly over [0, top], the lowest first: with few
  runs the very hardest all sit at 0 and their curves coincide."""
  idx = np.flatnonzero(~np.isnan(scores))
  chosen = []
  for target in np.linspace(0, top, min(count, len(idx))):
    free = idx[~np.isin(idx, chosen)]
    chosen.append(free[np.argmin(np.abs(scores[free] - target))])
  return np.array(chosen)


def cscores_figure(est, data, path, hard=6):
  """The distribution of C-scores, the learning curve, C-score per class, and C_r against the
  subset ratio for hard examples (spread over C in [0, 0.5], not only the very hardest, which
  with few runs all sit at 0 on top of each other)."""
  plt = pyplot()
  fig = plt.figure(figsize=(13, 8.5), layout='constrained')
  grid = fig.add_gridspec(2, 3)
  valid = est.cscores[~np.isnan(est.cscores)]

  ax = fig.add_subplot(grid[0, 0])
  ax.hist(valid, bins=50, range=(0, 1), log=True, color='tab:blue')
  ax.set(xlabel='C-score', ylabel='examples (log scale)',
         title=f'{len(valid)} examples, {(valid < 0.5).sum()} below 0.5')

  ax = fig.add_subplot(grid[0, 1])
  has = est.runs > 0
  ax.plot(est.ratios[has], est.heldout_accuracy[has], 'o-')
  ax.set(xlabel='subset ratio (part of the training set trained on)', ylabel='mean held-out accuracy',
         title='learning curve')
  ax.grid(alpha=0.3)

  ax = fig.add_subplot(grid[0, 2])
  scored, classes = ~np.isnan(est.cscores), range(len(data.class_names))
  per_class = [est.cscores[scored & (data.y == c)].mean() if (scored & (data.y == c)).any() else 0
               for c in classes]
  ax.bar(classes, per_class, color='tab:green')
  ax.set(xlabel='class', ylabel='mean C-score', xticks=classes,
         ylim=(max(0, min(per_class) - 0.02), 1), title='C-score per class')
  ax.set_xticklabels(data.class_names)

  ax = fig.add_subplot(grid[1, :2])
  chosen = hard_examples(est.cscores, hard)
  for k, i in enumerate(chosen):
    ax.plot(est.ratios, est.per_ratio[:, i], 'o-', color=f'C{k}',
            label=f'#{i}: label {data.class_names[data.y[i]]}, C = {est.cscores[i]:.2f}')
  ax.set(xlabel='subset ratio', ylabel='C_r: held-out accuracy on the example', ylim=(-0.03, 1.03),
         title='hard examples (C from 0 to 0.5): held-out accuracy on them by subset ratio\n'
               '(a curve skips a ratio at which no run held the example out)')
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  per_row = (hard + 1) // 2
  cells = grid[1, 2].subgridspec(2, 1)
  for r in range(2):
    row = list(chosen[r * per_row:(r + 1) * per_row])
    show_examples(fig.add_subplot(cells[r]), data, row + [None] * (per_row - len(row)),
                  [f'#{i}, label {data.class_names[data.y[i]]}' for i in row],
                  [f'C{k}' for k in range(r * per_row, r * per_row + len(row))])
  save_figure(fig, path)


def memorization_figure(est, data, path, rows=3, cols=10):
  """The most memorized examples: right when trained on, wrong when held out."""
  plt = pyplot()
  mem = np.where(np.isnan(est.memorization), -np.inf, est.memorization)
  chosen = list(np.lexsort((est.cscores, -mem))[:rows * cols])  # ties: the lower C-score first
  fig, axes = plt.subplots(rows, 1, figsize=(1.1 * cols, 1.35 * rows), squeeze=False)
  for r, ax in enumerate(axes[:, 0]):
    row = chosen[r * cols:(r + 1) * cols]
    show_examples(ax, data, row + [None] * (cols - len(row)),
                  [f'#{i} label {data.class_names[data.y[i]]}\nmem {est.memorization[i]:.2f}' for i in row])
  fig.suptitle('most memorized: P(correct | trained on it) - P(correct | held out)', fontsize=9)
  save_figure(fig, path, bbox_inches='tight')


PROXIES = (('learning_speed', 'learning speed: epochs classified right / epochs'),
           ('learning_confidence', 'learning confidence: mean p(label) while trained on'))


def proxy_agreement(proxy, cscores, hardest=0.1):
  """(Spearman's rho over the examples both score, over the hardest 10% of them by C-score,
  mask of the examples both score)."""
  import scipy.stats
  both = ~np.isnan(proxy) & ~np.isnan(cscores)
  if both.sum() < 3:
    return np.nan, np.nan, both
  hard = both & (cscores <= np.quantile(cscores[both], hardest))
  def rho(where):  # NaN where either is constant, as scipy says with a warning
    a, b = proxy[where], cscores[where]
    return float(scipy.stats.spearmanr(a, b).statistic) if np.ptp(a) and np.ptp(b) else np.nan
  return rho(both), rho(hard) if hard.sum() > 2 else np.nan, both


def proxies_figure(est, data, path, per_row=10):
  """Each learning proxy against the C-score (hexbin, log colour: most mass sits at 1), with
  Spearman's rho, and the examples on which they disagree most, both ways; and the combined score
  against the C-score."""
  plt = pyplot()
  fig = plt.figure(figsize=(16, 13), layout='constrained')
  top, *rows = fig.subfigures(5, 1, height_ratios=(5, 2, 2, 2, 2))
  plots = top.subplots(1, 3)
  both = ~np.isnan(est.cscores) & ~np.isnan(est.learning_confidence)
  weight = 'n/a' if not both.any() else f'{0 if np.isnan(est.combined_signal) else est.combined_signal:.2f}'
  combined = f'combined score: the C-score shrunk toward the one its\nlearning confidence predicts (the C-score weighs {weight})'
  for ax, (key, title) in zip(plots, PROXIES + (('combined_score', combined),)):
    proxy = getattr(est, key)
    rho_all, rho_hard, both = proxy_agreement(proxy, est.cscores)
    if both.any():
      art = ax.hexbin(proxy[both], est.cscores[both], gridsize=40, bins='log', cmap='viridis',
                      extent=(0, 1, 0, 1), mincnt=1)
      top.colorbar(art, ax=ax, label='examples (log scale)')
    else:  # one run: the examples it held out (C-score) are not those it trained on (proxies)
      ax.text(0.5, 0.5, 'too few runs: no example was both held out\n(a C-score) and trained on (a proxy)',
              ha='center', va='center', transform=ax.transAxes)
    ax.set(xlabel=title, ylabel='C-score', xlim=(0, 1), ylim=(0, 1))
    ax.set_title(f"Spearman's rho {rho_all:.2f} over {both.sum():,} examples,\n"
                 f"{rho_hard:.2f} over the hardest 10% by C-score", fontsize=10)
  for col, (key, title) in enumerate(PROXIES):
    proxy = getattr(est, key)
    both = ~np.isnan(proxy) & ~np.isnan(est.cscores)
    gap = np.where(both, proxy - est.cscores, 0)  # > 0: the proxy finds it easier than C does
    for row, (sign, what) in zip(rows[2 * col:], ((1, 'learned easily, yet a low C-score'),
                                                   (-1, 'learned with difficulty, yet a high C-score'))):
      row.suptitle(f'{key.replace("_", " ")}: {what}', fontsize=10, x=0.01, ha='left')
      chosen = [i for i in np.argsort(-sign * gap, kind='stable')[:per_row] if both[i]]
      show_examples(row.subplots(), data, chosen + [None] * (per_row - len(chosen)),
                    [f'#{i} label {data.class_names[data.y[i]]}\nC {est.cscores[i]:.2f}, '
                     f'{key.split("_")[1]} {proxy[i]:.2f}' for i in chosen])
  fig.suptitle('Learning proxies, and the combined score, against the C-score, from the same runs', fontsize=11)
  save_figure(fig, path)

