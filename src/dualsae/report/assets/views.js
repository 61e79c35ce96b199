/* dualsae report: the evaluation table, train/test reconstruction, the Alignment card, activation-interval
   samples and label chips (window.DUALSAE_VIEWS), drawn with dom.js's helpers. Same safety rule: data
   strings reach the page as text only. */
(function () {
  'use strict';
  var U = window.DUALSAE_UI;
  var el = U.el, fmt = U.fmt, latentLink = U.latentLink, kv = U.kv;

  // dualsae eval's metrics.json as a Table 1 style table (report/eval_section.py)
  function evalSection(ev) {
    var out = [el('h2', { text: 'Evaluation (dualsae eval, ' + (ev.split || '?') + ' split, ' + fmt(ev.n_rows) + ' rows)' })];
    var t = el('table', { id: 'eval-table', cls: 'eval' });
    t.appendChild(el('tr', null, ['task', 'metric', 'this model', 'raw embeddings', 'baseline', ''].map(function (h, i) { return el('th', { text: h, cls: i >= 2 && i < 5 ? 'n' : '' }); })));
    var last = '';
    ev.rows.forEach(function (r) {
      var better = r.model !== null && r.raw !== null ? (r.higher_is_better ? r.model > r.raw : r.model < r.raw) : null;
      var tr = el('tr', { cls: r.task !== last ? 'first' : '' }, [el('td', { text: r.task !== last ? r.task : '' }), el('td', { text: r.metric + (r.higher_is_better ? ' ↑' : ' ↓') }),
        el('td', { cls: 'n strong' + (better === true ? ' good' : better === false ? ' bad' : ''), text: fmt(r.model, 4) }),
        el('td', { cls: 'n', text: fmt(r.raw, 4) }), el('td', { cls: 'n muted', text: fmt(r.baseline, 4) }), el('td', { cls: 'muted small', text: r.note })]);
      last = r.task;
      t.appendChild(tr);
    });
    out.push(t);
    var sk = Object.keys(ev.skipped || {});
    if (sk.length) out.push(el('p', { cls: 'muted', text: 'Skipped: ' + sk.map(function (k) { return k + ' (' + ev.skipped[k] + ')'; }).join('; ') }));
    out.push(el('p', { cls: 'muted', text: 'green / red: this model above / below the raw embeddings on that metric (↑ higher is better, ↓ lower).' }));
    return out;
  }

  // The report's own reconstruction on the train and the test split, with the over-fitting flag
  function reconSplits(rs) {
    var t = el('table', { id: 'recon-splits' });
    t.appendChild(el('tr', null, ['modality', 'MSE train', 'MSE test', 'test / train', 'explained var. train', 'explained var. test', ''].map(function (h, i) { return el('th', { text: h, cls: i && i < 6 ? 'n' : '' }); })));
    Object.keys(rs.modalities).forEach(function (mod) {
      var r = rs.modalities[mod], a = r.train || {}, b = r.test || {};
      t.appendChild(el('tr', null, [el('td', { text: mod }), el('td', { cls: 'n', text: fmt(a.mse, 4) }), el('td', { cls: 'n', text: fmt(b.mse, 4) }),
        el('td', { cls: 'n', text: r.ratio === null ? '–' : '×' + fmt(r.ratio, 2) }), el('td', { cls: 'n', text: fmt(a.explained_variance, 3) }),
        el('td', { cls: 'n', text: fmt(b.explained_variance, 3) }),
        el('td', { cls: r.overfit ? 'flag' : 'muted', text: r.overfit ? 'over-fitting?' : 'ok', title: 'flagged when test MSE > ' + rs.overfit_ratio + ' × train MSE' })]));
    });
    var wrap = el('div', null, [t, el('p', { cls: 'muted small', text: '"over-fitting?": test MSE above ' + rs.overfit_ratio + ' × train MSE.' })]);
    return wrap;
  }

  function alignmentCard(rows) { return kv(rows.map(function (r) { return [r[0], r[1]]; })); }

  // Rows from each quantile bin of the activations (evaluation/interval_samples.py)
  function intervals(bins, rowsById, thumbGrid, id) {
    var box = el('div', { cls: 'intervals', id: id });
    var nb = bins.length;
    bins.forEach(function (b, i) {
      var q = Math.round(100 * i / nb) + '–' + Math.round(100 * (i + 1) / nb) + '%';
      box.appendChild(el('div', { cls: 'interval' }, [el('div', { cls: 'iv-head' }, [el('strong', { text: 'q ' + q }), el('span', { cls: 'muted', text: ' activation ' + fmt(b[0], 3) + '–' + fmt(b[1], 3) })]), thumbGrid(rowsById, b[2])]));
    });
    return box;
  }

  // A latent chip with its label ("123 · cat face (0.83)")
  function labelChip(T, j, mod, cos) {
    var lab = (T['label_' + mod] && T['label_' + mod][j]) || T.label[j] || '';
    var a = latentLink(j, j + (lab ? ' ' + lab : '') + (cos !== undefined ? ' (' + fmt(cos, 2) + ')' : ''));
    a.title = 'latent ' + j + (lab ? ': ' + lab : '');
    return a;
  }

  window.DUALSAE_VIEWS = { evalSection: evalSection, reconSplits: reconSplits, alignmentCard: alignmentCard, intervals: intervals, labelChip: labelChip };
})();
