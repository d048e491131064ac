'use strict';
const D = JSON.parse(document.getElementById('data').textContent);
const $ = id => document.getElementById(id);

function decode(text, Type) {
  const s = atob(text), bytes = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) bytes[i] = s.charCodeAt(i);
  return new Type(bytes.buffer);
}
const COUNTS = {uint8: Uint8Array, uint16: Uint16Array, uint32: Uint32Array};
const index = decode(D.index, Uint32Array), label = decode(D.label, Uint16Array);
const m = index.length;
const hits = decode(D.hits, COUNTS[D.count_type]), counts = decode(D.counts, COUNTS[D.count_type]);
const col = {};
for (const name in D.columns) col[name] = decode(D.columns[name], Float32Array);
function difference(a, b) {
  const out = new Float32Array(m);
  for (let p = 0; p < m; p++) out[p] = col[a][p] - col[b][p];
  return out;
}
// The sort keys, and what each means.
const KEYS = [
  {key: 'cscore', name: 'C-score', values: col.cscore,
   rule: 'C-score: the accuracy on the example of the models that did not train on it, averaged over the ratios. Low: unlike the rest of its class.'},
  {key: 'standard_error', name: 'standard error', values: col.standard_error,
   rule: 'Standard error of the C-score, from the runs that held the example out at each ratio.'},
  {key: 'memorization', name: 'memorization', values: col.memorization,
   rule: 'Memorization (Feldman & Zhang, 2020): how much more often a model gets the example right when it trained on it than when it did not.'},
  {key: 'learning_speed', name: 'learning speed', values: col.learning_speed,
   rule: 'Learning speed: the fraction of epochs in which the models that trained on the example classified it correctly. A cheap proxy of the C-score.'},
  {key: 'learning_confidence', name: 'learning confidence', values: col.learning_confidence,
   rule: 'Learning confidence: the mean probability of the label over the epochs, in the models that trained on the example. A cheap proxy of the C-score.'},
  {key: 'combined_score', name: 'combined score', values: col.combined_score,
   rule: 'Combined score: the C-score, shrunk toward the C-score that examples of its learning confidence have, by how noisy it is (more with few runs, less with many). The sharper ranking of the hard examples at a small budget.'},
  {key: 'speed_minus_cscore', name: 'learning speed \u2212 C-score', values: difference('learning_speed', 'cscore'),
   rule: 'Learning speed \u2212 C-score: high where the proxy finds the example easy and the C-score hard; low the other way round.'},
  {key: 'confidence_minus_cscore', name: 'learning confidence \u2212 C-score', values: difference('learning_confidence', 'cscore'),
   rule: 'Learning confidence \u2212 C-score: high where the proxy finds the example easy and the C-score hard; low the other way round.'},
  {key: 'memorization_minus_cscore', name: 'memorization \u2212 C-score (likely mislabeled)', values: difference('memorization', 'cscore'),
   rule: 'Likely mislabeled, highest first: memorization \u2212 C-score. A mislabeled example is learned only by heart: models get it right when they train on it (high memorization) and wrong when they do not (low C-score). The difference is highest, near 1, for those.'},
  {key: 'index', name: 'example #', values: Float64Array.from(index),
   rule: "Example #: the example's index in the data, from 0, as in cscores.npy."},
];
const KEY = Object.fromEntries(KEYS.map(k => [k.key, k]));
const state = {cls: -1, key: 'cscore', dir: 1, page: 0, rows: 100};
let view = new Uint32Array(0), unscoredInView = 0;

function esc(text) {
  return String(text).replace(/[&<>"']/g, c => ({'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;'}[c]));
}
function fmt(v, digits = 3) { return Number.isNaN(v) ? '<span class="none">no score</span>' : v.toFixed(digits); }
function picture(p, size) {
  if (!D.shape) return '';
  const [h, w] = D.shape, z = Math.max(1, Math.floor(size / Math.max(h, w))), slot = p % D.per_sheet;
  const r = Math.floor(slot / D.cols), c = slot % D.cols;
  return `<span class="pic s${Math.floor(p / D.per_sheet)}" style="width:${w * z}px;height:${h * z}px;` +
         `background-size:${D.cols * w * z}px auto;background-position:-${c * w * z}px -${r * h * z}px"></span>`;
}
function className(p) { return D.class_names[label[p]]; }

// The view: the chosen class, sorted by the chosen key; examples without a value last, in index order.
function computeView() {
  const values = KEY[state.key].values, dir = state.dir, scored = [], unscored = [];
  for (let p = 0; p < m; p++) {
    if (state.cls >= 0 && label[p] !== state.cls) continue;
    (Number.isNaN(values[p]) ? unscored : scored).push(p);
  }
  scored.sort((a, b) => dir * (values[a] - values[b]) || a - b);
  view = Uint32Array.from(scored.concat(unscored));
  unscoredInView = unscored.length;
}
const COLUMNS = [
  ['index', 'example #'], ['class', 'class'], ['cscore', 'C-score \u00b1 s.e.'], ['memorization', 'memorization'],
  ['learning_speed', 'learning speed'], ['learning_confidence', 'learning confidence'], ['combined_score', 'combined score']];
function renderHead() {
  $('table-head').innerHTML = (D.shape ? '<th></th>' : '') + COLUMNS.map(([key, name]) => {
    const sortable = key in KEY, arrow = key === state.key ? (state.dir > 0 ? ' \u25b2' : ' \u25bc') : '';
    return `<th${sortable ? ` data-key="${key}" title="sort by ${esc(name)}"` : ''}>${esc(name)}${arrow}</th>`;
  }).join('');
}
function row(p) {
  const cs = col.cscore[p];
  return `<tr class="ex" data-p="${p}" data-index="${index[p]}">` + (D.shape ? `<td>${picture(p, 56)}</td>` : '') +
    `<td>${index[p]}</td><td>${esc(className(p))}</td>` +
    `<td>${Number.isNaN(cs) ? fmt(cs) : `${cs.toFixed(3)} \u00b1 ${col.standard_error[p].toFixed(3)}`}</td>` +
    ['memorization', 'learning_speed', 'learning_confidence', 'combined_score'].map(k => `<td>${fmt(col[k][p])}</td>`).join('') + '</tr>';
}
function pages() { return Math.max(1, Math.ceil(view.length / state.rows)); }
function render() {
  state.page = Math.min(state.page, pages() - 1);
  const start = state.page * state.rows;
  $('table-body').innerHTML = Array.from(view.subarray(start, start + state.rows), row).join('');
  $('count').textContent = `${view.length.toLocaleString('en')} examples (ties by example #)` +
    (unscoredInView ? `, ${unscoredInView.toLocaleString('en')} without a ${KEY[state.key].name.split(' (')[0]} (last)` : '');
  $('page').textContent = `page ${state.page + 1} of ${pages()}`;
  $('direction').textContent = state.dir > 0 ? 'sorted lowest first \u21c5' : 'sorted highest first \u21c5';
  $('direction').title = 'reverse the order; equal values stay in order of example #';
  $('key').value = state.key;
  $('rule').textContent = KEY[state.key].rule;
  renderHead();
}
function update(changes) {
  Object.assign(state, changes);
  computeView();
  render();
  histogram();
}

// CSV of the whole view, in its order.
const CSV_HEAD = ['index', 'label', 'class', 'cscore', 'standard_error', 'memorization', 'learning_speed', 'learning_confidence', 'combined_score'];
function csvField(text) {
  text = String(text);
  if (/^[=+\-@]/.test(text) && Number.isNaN(Number(text))) text = "'" + text;  // not a spreadsheet formula
  return /[",\n\r]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
}
function csvText() {
  const extra = CSV_HEAD.includes(state.key) ? null : state.key;  // a difference: its own column too
  const lines = [CSV_HEAD.concat(extra ? [extra] : []).join(',')];
  const number = x => Number.isNaN(x) ? 'nan' : x.toPrecision(7);
  for (const p of view) {
    const v = k => number(col[k][p]);
    lines.push([index[p], csvField(D.label_values[label[p]]), csvField(className(p)),
                v('cscore'), v('standard_error'), v('memorization'), v('learning_speed'), v('learning_confidence'), v('combined_score')]
               .concat(extra ? [number(KEY[extra].values[p])] : []).join(','));
  }
  return lines.join('\n') + '\n';
}
function downloadCsv() {
  const a = document.createElement('a');
  a.href = URL.createObjectURL(new Blob([csvText()], {type: 'text/csv'}));
  const which = state.cls >= 0 ? `-class-${String(D.class_names[state.cls]).replace(/[^\w.-]+/g, '_')}` : '';
  a.download = `${D.name}-cscores${which}-by-${state.key}-${state.dir > 0 ? 'ascending' : 'descending'}.csv`;
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
}

// Charts, as SVG.
const SVG = 'http://www.w3.org/2000/svg';
function svg(parent, tag, attrs, text) {
  const e = document.createElementNS(SVG, tag);
  for (const a in attrs) e.setAttribute(a, attrs[a]);
  if (text !== undefined) e.textContent = text;
  parent.appendChild(e);
  return e;
}
function axes(el, xs, ys, xlabel, ylabel, x0, x1, y0, y1) {
  el.innerHTML = '';
  const W = +el.getAttribute('width'), H = +el.getAttribute('height'), l = 58, r = 10, t = 10, b = 34;
  const X = v => l + (v - x0) / (x1 - x0) * (W - l - r), Y = v => H - b - (v - y0) / (y1 - y0) * (H - t - b);
  svg(el, 'line', {x1: l, y1: H - b, x2: W - r, y2: H - b, stroke: '#888'});
  svg(el, 'line', {x1: l, y1: t, x2: l, y2: H - b, stroke: '#888'});
  for (const v of xs) svg(el, 'text', {x: X(v), y: H - b + 14, 'text-anchor': 'middle'}, v);
  for (const v of ys) svg(el, 'text', {x: l - 5, y: Y(v) + 4, 'text-anchor': 'end'}, v);
  svg(el, 'text', {x: (l + W - r) / 2, y: H - 4, 'text-anchor': 'middle'}, xlabel);
  svg(el, 'text', {x: 12, y: (t + H - b) / 2, 'text-anchor': 'middle', transform: `rotate(-90 12 ${(t + H - b) / 2})`}, ylabel);
  return [X, Y];
}
function histogram() {
  const bins = new Array(20).fill(0);
  let scored = 0;
  for (let p = 0; p < m; p++) {
    const v = col.cscore[p];
    if ((state.cls >= 0 && label[p] !== state.cls) || Number.isNaN(v)) continue;
    bins[Math.min(19, Math.floor(v * 20))]++;
    scored++;
  }
  const top = Math.max(1, ...bins), el = $('histogram');
  const [X, Y] = axes(el, [0, 0.25, 0.5, 0.75, 1], [], 'C-score', 'examples (log)', 0, 1, 0, Math.log10(top) + 1);
  bins.forEach((count, i) => {
    if (!count) return;
    const y = Y(Math.log10(count) + 1);
    svg(el, 'rect', {x: X(i / 20) + 0.5, y, width: X(0.05) - X(0) - 1, height: Y(0) - y, fill: '#4a78b5'},
        undefined).appendChild(document.createElementNS(SVG, 'title')).textContent = `${(i / 20).toFixed(2)}\u2013${((i + 1) / 20).toFixed(2)}: ${count.toLocaleString('en')}`;
  });
  for (let e = 0; 10 ** e <= top; e++) svg(el, 'text', {x: 53, y: Y(e + 1) + 4, 'text-anchor': 'end'}, (10 ** e).toLocaleString('en'));
  $('histogram-caption').textContent = `Distribution of the C-scores of ${scored.toLocaleString('en')} examples` +
    (state.cls >= 0 ? ` of class ${D.class_names[state.cls]}` : '') + ' (log scale)';
}
function curve(el, xs, ys, ylabel, y0) {
  const points = xs.map((x, i) => [x, ys[i]]).filter(([, y]) => y !== null && !Number.isNaN(y));
  const low = Math.min(y0 ?? 1, ...points.map(([, y]) => y));
  const bottom = Math.min(0.9, Math.floor(low * 10) / 10);
  const ticks = [];
  for (let v = bottom; v <= 1.0001; v += (1 - bottom > 0.5 ? 0.25 : 0.1)) ticks.push(+v.toFixed(2));
  const [X, Y] = axes(el, [0.1, 0.3, 0.5, 0.7, 0.9], ticks, 'subset ratio', ylabel, 0.05, 0.95, bottom, 1);
  svg(el, 'polyline', {points: points.map(([x, y]) => `${X(x)},${Y(y)}`).join(' '), fill: 'none', stroke: '#4a78b5', 'stroke-width': 2});
  for (const [x, y] of points) svg(el, 'circle', {cx: X(x), cy: Y(y), r: 3, fill: '#4a78b5'}).appendChild(
      document.createElementNS(SVG, 'title')).textContent = `ratio ${x}: ${y.toFixed(4)}`;
}

// One example, large.
function showDetail(p) {
  const rows = D.ratios.map((r, j) => {
    const k = counts[j * m + p], h = hits[j * m + p];
    return `<tr><td>${r}</td><td>${k ? (h / k).toFixed(3) : '<span class="none">no score</span>'}</td>` +
           `<td>${k ? `${h} of ${k}` : 'none held it out'}</td></tr>`;
  }).join('');
  const v = k => fmt(col[k][p]);
  $('detail-body').innerHTML =
    `<h2>Example #${index[p]}: class ${esc(className(p))}` +
    (D.label_values[label[p]] !== className(p) ? ` (label ${esc(D.label_values[label[p]])})` : '') + '</h2>' +
    `<div class="row"><div>${picture(p, 256)}</div><div><table>` +
    `<tr><th>C-score</th><td>${v('cscore')}</td></tr><tr><th>standard error</th><td>${v('standard_error')}</td></tr>` +
    `<tr><th>memorization</th><td>${v('memorization')}</td></tr><tr><th>learning speed</th><td>${v('learning_speed')}</td></tr>` +
    `<tr><th>learning confidence</th><td>${v('learning_confidence')}</td></tr><tr><th>combined score</th><td>${v('combined_score')}</td></tr></table></div>` +
    `<div><table><tr><th>ratio</th><th>C<sub>r</sub></th><th>right, of the runs that held it out</th></tr>${rows}</table></div>` +
    `<div><svg id="detail-curve" width="320" height="180"></svg></div></div>` +
    '<p><button id="close" type="button">close</button> (or Esc, or click outside)</p>';
  curve($('detail-curve'), D.ratios, D.ratios.map((r, j) => counts[j * m + p] ? hits[j * m + p] / counts[j * m + p] : null), 'held-out accuracy', 0);
  $('detail').classList.add('open');
  $('close').onclick = closeDetail;
}
function closeDetail() { $('detail').classList.remove('open'); }
function find(text) {
  $('message').textContent = '';
  if (text === '') return;
  const i = Number(text);
  let lo = 0, hi = m;  // index is ascending
  while (lo < hi) { const mid = (lo + hi) >> 1; if (index[mid] < i) lo = mid + 1; else hi = mid; }
  if (lo < m && index[lo] === i) return showDetail(lo);
  $('message').textContent = Number.isInteger(i) && i >= 0 && i < D.n
    ? `#${i} is not in this page; its score is in cscores.npy` : `no example #${text}: the data hold 0 to ${D.n - 1}`;
}

// The page.
function setUp() {
  document.title = `C-scores of ${D.name}`;
  $('title').textContent = `C-scores of ${D.name}: ${D.n.toLocaleString('en')} examples, ${D.class_names.length} classes`;
  $('subtitle').textContent = D.left_out
    ? `This page shows ${m.toLocaleString('en')} of them, the lowest- and highest-scored of each class: all of them would make it too large. ` +
      `The scores of the other ${D.left_out.toLocaleString('en')} are in cscores.npy and cscores-details.npz.`
    : 'Every example is here. Sort, filter by class, click one to see it large, and download the view as CSV.';
  const unscored = D.unscored;
  $('facts').innerHTML = D.facts.concat(unscored ? [`${unscored.toLocaleString('en')} examples have no C-score: at every ratio, no run held them out (too few runs).` +
    (D.left_out ? ' They are among those left out of this page.' : ' They show "no score" and sort last.')] : [])
    .map(f => `<li>${esc(f)}</li>`).join('');
  curve($('curve'), D.ratios, D.heldout_accuracy, 'held-out accuracy');
  $('class').innerHTML = '<option value="-1">all</option>' + D.class_names.map((c, i) => `<option value="${i}">${esc(c)}</option>`).join('');
  $('key').innerHTML = KEYS.map(k => `<option value="${k.key}">${esc(k.name)}</option>`).join('');
  $('class').onchange = e => update({cls: +e.target.value, page: 0});
  $('key').onchange = e => update({key: e.target.value, page: 0});
  $('direction').onclick = () => update({dir: -state.dir, page: 0});
  $('mislabeled').onclick = () => update({key: 'memorization_minus_cscore', dir: -1, page: 0});
  $('rows').onchange = e => update({rows: +e.target.value, page: 0});
  $('first').onclick = () => { state.page = 0; render(); };
  $('prev').onclick = () => { state.page = Math.max(0, state.page - 1); render(); };
  $('next').onclick = () => { state.page = Math.min(pages() - 1, state.page + 1); render(); };
  $('last').onclick = () => { state.page = pages() - 1; render(); };
  $('csv').onclick = downloadCsv;
  $('find').onchange = e => find(e.target.value.trim());
  $('table-head').onclick = e => {
    const key = e.target.closest('th')?.dataset.key;
    if (key) update(key === state.key ? {dir: -state.dir, page: 0} : {key, page: 0});
  };
  $('table-body').onclick = e => { const tr = e.target.closest('tr.ex'); if (tr) showDetail(+tr.dataset.p); };
  $('detail').onclick = e => { if (e.target === $('detail')) closeDetail(); };
  document.addEventListener('keydown', e => { if (e.key === 'Escape') closeDetail(); });
  update({});
  window.cscoreReport = {firstRowsMs: performance.now(), view: () => view, csvText, update, state};
}
setUp();
