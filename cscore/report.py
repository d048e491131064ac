"""The report: every example in one self-contained HTML page, to sort, filter, look at and take
away as CSV. The page is report.html, report.css and report.js beside this module: plain
JavaScript, no framework and nothing fetched. They are inlined into one file, the data at
/*DATA*/ as JSON and the pictures at /*SHEETS*/ as CSS sprite sheets (data URIs), so the page
opens offline from disk in any current browser. Past REPORT_LIMIT bytes it keeps the lowest- and
highest-scored examples of each class, as many as fit."""

import base64
import io
import functools
import json
import os

import numpy as np


REPORT_LIMIT = 20_000_000  # bytes: a page any browser opens at once, and one can mail or copy
REPORT_COLUMNS = (('cscore', 'cscores'), ('standard_error', 'standard_error'),
                  ('memorization', 'memorization'), ('learning_speed', 'learning_speed'),
                  ('learning_confidence', 'learning_confidence'), ('combined_score', 'combined_score'))


def extremes_per_class(scores, labels, classes, keep):
  """Indices, in example order, of the `keep` // 2 lowest- and highest-scored examples of each
  class (of every scored one where a class has fewer); NaN scores are left out."""
  chosen = []
  for c in range(classes):
    idx = np.flatnonzero((labels == c) & ~np.isnan(scores))
    ranked = idx[np.argsort(scores[idx], kind='stable')]
    half = keep // (2 * classes)  # (0 when fewer than two a class fit: none)
    chosen.append(ranked if len(ranked) <= 2 * half else np.concatenate([ranked[:half], ranked[len(ranked) - half:]]))
  return np.sort(np.concatenate(chosen)).astype(np.int64)


def sprite_sheets(pictures, shape):
  """PNG sprite sheets of pictures [m, H * W (* 3)] as base64 text, and (per sheet, columns):
  up to 1,000 pictures a sheet, row by row, a sheet at most about 4,096 pixels a side."""
  from PIL import Image  # Pillow: matplotlib's own dependency
  h, w = shape[:2]
  cols = max(1, min(40, 4096 // w))
  per_sheet = cols * max(1, min(25, 4096 // h))
  sheets = []
  for start in range(0, len(pictures), per_sheet):
    chunk = pictures[start:start + per_sheet].reshape(-1, *shape)
    rows = -(-len(chunk) // cols)
    tiles = np.zeros((rows * cols, *shape), np.uint8)
    tiles[:len(chunk)] = chunk
    sheet = tiles.reshape(rows, cols, *shape).swapaxes(1, 2).reshape(rows * h, cols * w, *shape[2:])
    png = io.BytesIO()
    Image.fromarray(sheet).save(png, format='png')
    sheets.append(base64.b64encode(png.getvalue()).decode())
  return sheets, (per_sheet, cols)


def encoded(values, dtype):
  """An array as base64 text of its bytes in `dtype`, little-endian (as JavaScript's typed arrays
  read them on any current machine)."""
  return base64.b64encode(np.ascontiguousarray(values, dtype=np.dtype(dtype).newbyteorder('<')).tobytes()).decode()


def report_data(est, data, facts, shown):
  """What the page shows of the examples `shown` (indices), as JSON-ready values: numbers as
  base64 little-endian arrays, pictures as sprite sheets."""
  counts = est.held_out_counts[:, shown]
  count_type = next(t for t in (np.uint8, np.uint16, np.uint32) if counts.max(initial=0) <= np.iinfo(t).max)
  hits = np.rint(np.nan_to_num(est.per_ratio[:, shown]) * counts)  # C_r = hits / count, exactly
  page = dict(name=data.name, n=len(data.y), facts=facts, class_names=list(data.class_names),
              label_values=[str(v) for v in (data.label_values or range(len(data.class_names)))],
              ratios=est.ratios.tolist(), runs=est.runs.tolist(),
              heldout_accuracy=[None if np.isnan(a) else float(a) for a in est.heldout_accuracy],
              index=encoded(shown, '<u4'), label=encoded(data.y[shown], '<u2'),
              columns={name: encoded(getattr(est, field)[shown], '<f4') for name, field in REPORT_COLUMNS},
              count_type=np.dtype(count_type).name, hits=encoded(hits, count_type),
              counts=encoded(counts, count_type), shape=None,
              unscored=int(np.isnan(est.cscores).sum()))  # of all the examples, shown or not
  if data.shape is not None:
    sheets, (per_sheet, cols) = sprite_sheets(data.x[shown], tuple(data.shape))
    page.update(shape=list(data.shape[:2]), per_sheet=per_sheet, cols=cols)
    return page, sheets
  return page, []


@functools.cache
def template():
  """The page's HTML with its CSS and JavaScript inlined, ready for the data and the sheets."""
  def read(name):
    with open(os.path.join(os.path.dirname(__file__), name), encoding='utf-8') as f:
      return f.read()
  return read('report.html').replace('/*STYLE*/', read('report.css')).replace('/*SCRIPT*/', read('report.js'))


def report_html(page, sheets):
  """The page: the template with the data and the sheets in it."""
  css = '\n'.join(f'.s{i}{{background-image:url(data:image/png;base64,{s})}}' for i, s in enumerate(sheets))
  data = json.dumps(page, separators=(',', ':')).replace('<', '\\u003c')  # no tag inside <script>
  return template().replace('/*SHEETS*/', css).replace('/*DATA*/', data)


def report(est, data, facts, limit=REPORT_LIMIT):
  """The report page (text) of every example, or, when their pictures would pass `limit` bytes,
  of the lowest- and highest-scored of each class, as many as fit: sized from a first 2,000,
  then checked."""
  def page(shown):
    content, sheets = report_data(est, data, facts, shown)
    return report_html(dict(content, left_out=len(data.y) - len(shown)), sheets)
  n = len(data.y)
  empty = len(page(np.arange(0)).encode())  # the code, the facts, the names
  sample = np.arange(min(n, 2000))
  per_example = (len(page(sample).encode()) - empty) / max(len(sample), 1)
  shown = np.arange(n)
  while True:
    if empty + per_example * len(shown) > limit:  # the extremes of each class, as many as fit
      keep = max(0, min(len(shown) - 1, int(0.98 * (limit - empty) / per_example)))
      shown = extremes_per_class(est.cscores, data.y, len(data.class_names), keep)
    html = page(shown)
    size = len(html.encode())
    if size <= limit or not len(shown):
      return html
    per_example = (size - empty) / len(shown)
