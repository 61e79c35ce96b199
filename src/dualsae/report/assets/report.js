/* dualsae report: a static page over data/*.js (no fetch, so it works from file://).
   Safety rule: every string from the data goes into the page through textContent / text nodes or a
   DOM property (img.src, a.href built from numbers); nothing from the data reaches innerHTML. */
(function () {
  'use strict';
  var D = window.DUALSAE || {};
  var S = D.summary, T = D.latents;
  var app = document.getElementById('app');
  var PAGE = 50;

  // DOM helpers (dom.js) and the views of labels, intervals and the evaluation table (views.js)
  var U = window.DUALSAE_UI, V = window.DUALSAE_VIEWS;
  var el = U.el, svg = U.svg, svgText = U.svgText, fmt = U.fmt, pct = U.pct, latentLink = U.latentLink, kv = U.kv, card = U.card;

  function setNav(which) {
    ['overview', 'table'].forEach(function (n) { document.getElementById('nav-' + n).className = n === which ? 'active' : ''; });
  }

  // ------------------------------------------------------------------ lazy data (script tags work on file://)
  var pending = {};
  function loadScript(src, ready, cb) {
    if (ready()) return cb(true);
    if (pending[src]) { pending[src].push(cb); return; }
    pending[src] = [cb];
    var s = document.createElement('script');
    s.src = src;
    s.onload = function () { var l = pending[src]; delete pending[src]; l.forEach(function (f) { f(ready()); }); };
    s.onerror = function () { var l = pending[src]; delete pending[src]; l.forEach(function (f) { f(false); }); };
    document.head.appendChild(s);
  }
  function withChunk(j, cb) {
    var c = Math.floor(j / S.chunk);
    var name = 'data/chunk-' + ('000' + c).slice(-4) + '.js';
    loadScript(name, function () { return !!(D.chunks && D.chunks[c]); }, function (ok) { cb(ok ? D.chunks[c] : null); });
  }

  // ------------------------------------------------------------------ charts (SVG, numbers only)
  function barChart(counts, labels, opts) {
    opts = opts || {};
    var w = opts.width || 420, h = opts.height || 140, pad = 24, n = counts.length;
    var max = Math.max.apply(null, counts.concat([1]));
    var g = svg('svg', { width: w, height: h + pad, viewBox: '0 0 ' + w + ' ' + (h + pad) });
    var bw = (w - 2 * pad) / n;
    g.appendChild(svg('line', { x1: pad, y1: h, x2: w - pad, y2: h, 'class': 'axis' }));
    counts.forEach(function (c, i) {
      var bh = (h - 14) * c / max;
      var r = svg('rect', { x: pad + i * bw + 1, y: h - bh, width: Math.max(bw - 2, 1), height: bh, 'class': 'bar' + (opts.alt ? ' alt' : '') });
      var tip = svg('title', {}); tip.textContent = labels[i] + ': ' + c; r.appendChild(tip);
      g.appendChild(r);
    });
    var step = Math.max(1, Math.ceil(n / 6));
    for (var i = 0; i <= n; i += step) if (labels.edges) g.appendChild(svgText(pad + i * bw, h + 13, String(Number(labels.edges[i].toPrecision(2))), 'middle'));
    g.appendChild(svgText(pad, 10, 'max ' + max));
    if (opts.xlabel) g.appendChild(svgText(w / 2, h + 23, opts.xlabel, 'middle'));
    return g;
  }
  function lineChart(xs, ys, title) {
    var w = 300, h = 130, pl = 44, pb = 18;
    var pts = [], lo = Infinity, hi = -Infinity;
    ys.forEach(function (y) { if (y !== null) { lo = Math.min(lo, y); hi = Math.max(hi, y); } });
    if (!isFinite(lo)) return null;
    if (hi === lo) { hi += 1e-9; }
    var x0 = xs[0], x1 = xs[xs.length - 1] || 1;
    var g = svg('svg', { width: w, height: h + pb + 14, viewBox: '0 0 ' + w + ' ' + (h + pb + 14) });
    g.appendChild(svgText(pl, 10, title));
    xs.forEach(function (x, i) {
      if (ys[i] === null) return;
      pts.push((pl + (w - pl - 6) * (x - x0) / Math.max(x1 - x0, 1)).toFixed(1) + ',' + (14 + h - h * (ys[i] - lo) / (hi - lo)).toFixed(1));
    });
    g.appendChild(svg('polyline', { points: pts.join(' '), 'class': 'line' }));
    g.appendChild(svg('line', { x1: pl, y1: 14 + h, x2: w - 6, y2: 14 + h, 'class': 'axis' }));
    g.appendChild(svgText(pl - 3, 20, fmt(hi, 4), 'end'));
    g.appendChild(svgText(pl - 3, 14 + h, fmt(lo, 4), 'end'));
    g.appendChild(svgText(w - 6, h + pb + 10, 'step ' + fmt(x1, 0), 'end'));
    return g;
  }

  // ------------------------------------------------------------------ overview
  function renderOverview() {
    setNav('overview');
    document.title = 'dualsae report: ' + S.title;
    var out = [el('h1', { text: S.title + ' (' + S.kind + (S.method && S.method !== S.kind ? ', ' + S.method : '') + ')' })];
    S.warnings.forEach(function (w) { out.push(el('div', { cls: 'warn', text: w })); });
    var cards = el('div', { cls: 'cards', id: 'overview-cards' });
    cards.appendChild(card('latents m', fmt(S.m)));
    cards.appendChild(card('rows (' + S.split + ')', fmt(S.n_rows)));
    ['image', 'text'].forEach(function (mod) {
      cards.appendChild(card('live / dead ' + mod, fmt(S.live[mod]) + ' / ' + fmt(S.dead[mod])));
      if (S.explained_variance && S.explained_variance[mod]) cards.appendChild(card('explained variance ' + mod + ' (test)', fmt(S.explained_variance[mod].explained_variance, 3)));
    });
    if (S.collapse && S.collapse.collapse_rate !== undefined) cards.appendChild(card('collapse rate (App. F.2)', pct(S.collapse.collapse_rate)));
    out.push(cards);
    if (S.live_source) out.push(el('p', { cls: 'muted', text: 'Live / dead latents ' + S.live_source + (S.live_on_rows ? '; firing on the report\'s ' + fmt(S.n_rows) + ' rows: image ' + fmt(S.live_on_rows.image) + ', text ' + fmt(S.live_on_rows.text) : '') + '.' }));
    if (!S.explained_variance) out.push(el('p', { cls: 'muted', text: 'Explained variance: no test split given.' }));

    var g = el('div', { cls: 'grid2' });
    var left = el('div', { cls: 'panel' }, [el('h3', { text: 'Configuration' })]);
    var rows = [['model', S.model], ['data', S.data], ['kind', S.kind], ['k (image / text)', S.k.image + ' / ' + S.k.text]];
    var MAIN = ['method', 'latents', 'k', 'activation', 'preset', 'lr', 'batch_size', 'epochs', 'seed', 'split'];
    var rest = [];
    if (S.config) Object.keys(S.config).forEach(function (k) {
      var v = S.config[k];
      if (v !== null && typeof v === 'object') return;
      (MAIN.indexOf(k) >= 0 ? rows : rest).push([k, v === null ? '–' : String(v)]);
    });
    left.appendChild(kv(rows));
    if (rest.length) left.appendChild(el('details', null, [el('summary', { text: 'all training settings (' + rest.length + ' more)' }), kv(rest)]));
    g.appendChild(left);
    var right = el('div', { cls: 'panel' });
    if (S.alignment_card) {
      right.appendChild(el('h3', { text: S.kind === 'shared' ? 'Collapse report (dualsae align)' : 'Alignment (dualsae align)' }));
      right.appendChild(V.alignmentCard(S.alignment_card));
    }
    if (S.reconstruction_splits) {
      right.appendChild(el('h3', { text: 'Reconstruction: train vs test split' }));
      right.appendChild(V.reconSplits(S.reconstruction_splits));
    }
    if (S.explained_variance && !S.reconstruction_splits) {
      right.appendChild(el('h3', { text: 'Reconstruction on the test split' }));
      var t = el('table');
      t.appendChild(el('tr', null, ['modality', 'explained variance', 'MSE', 'L0', 'live latents', 'rows'].map(function (h) { return el('th', { text: h }); })));
      Object.keys(S.explained_variance).forEach(function (mod) {
        var e = S.explained_variance[mod];
        t.appendChild(el('tr', null, [el('td', { text: mod })].concat([e.explained_variance, e.mse, e.mean_l0, e.live_latents, e.n_rows].map(function (v) { return el('td', { cls: 'n', text: fmt(v, 4) }); }))));
      });
      right.appendChild(t);
    }
    if (S.collapse) {
      right.appendChild(el('h3', { text: 'Collapse (shared SAE, App. F.2)' }));
      right.appendChild(kv([['collapse rate (of live)', pct(S.collapse.collapse_rate)], ['collapse rate (of matched)', pct(S.collapse.collapse_rate_of_matched)],
        ['collapsed / matched', fmt(S.collapse.collapsed) + ' / ' + fmt(S.collapse.matched)], ['mean matched correlation', S.collapse.mean_matched_correlation], ['source', S.collapse.source]]));
    }
    g.appendChild(right);
    out.push(g);
    if (S.eval && S.eval.rows) out = out.concat(V.evalSection(S.eval));
    else out.push(el('p', { cls: 'muted', text: 'No metrics.json of dualsae eval beside the model (run dualsae eval MODEL --out MODEL/eval, or pass --eval).' }));

    var h = S.corr_hist, total = h.counts.reduce(function (a, b) { return a + b; }, 0);
    out.push(el('h2', { text: 'Matched correlation' }));
    if (total) {
      var labels = h.counts.map(function (_, i) { return '[' + h.edges[i] + ', ' + h.edges[i + 1] + ')'; });
      labels.edges = h.edges;
      out.push(el('div', { cls: 'panel', id: 'corr-hist' }, [barChart(h.counts, labels, { width: 560, xlabel: 'correlation c of ' + h.what + ' (' + total + ')' }), el('p', { cls: 'muted', text: S.corr_source })]));
    } else out.push(el('p', { cls: 'muted', text: S.kind === 'specific' ? 'Not aligned yet: run dualsae align to match latents.' : 'No matched pairs.' }));

    if (S.modality_only) {
      out.push(el('h2', { text: 'Modality-only latents' }));
      ['image', 'text'].forEach(function (mod) {
        var l = S.modality_only[mod];
        var p = el('div', { cls: 'chips' }, [el('strong', { text: mod + '-only: ' + l.length + ' ' })]);
        l.slice(0, 120).forEach(function (j) { p.appendChild(latentLink(j)); });
        if (l.length > 120) p.appendChild(el('span', { cls: 'muted', text: ' and ' + (l.length - 120) + ' more (filter the table by status)' }));
        out.push(p);
      });
    }

    out.push(el('h2', { text: 'Heterogeneity of matched feature directions (Fig. 2)' }));
    if (S.heterogeneity_png) {
      var hp = el('div', { cls: 'grid2' }, [el('div', { cls: 'panel' }, [el('img', { src: S.heterogeneity_png, alt: 'heterogeneity plot', style: 'max-width:100%' })])]);
      var bt = el('table');
      bt.appendChild(el('tr', null, ['c bin', 'pairs', 'mean', 'median'].map(function (x) { return el('th', { text: x }); })));
      S.heterogeneity.bins.forEach(function (b) { bt.appendChild(el('tr', null, [el('td', { text: b.bin }), el('td', { cls: 'n', text: fmt(b.count) }), el('td', { cls: 'n', text: fmt(b.mean, 4) }), el('td', { cls: 'n', text: fmt(b.median, 4) })])); });
      hp.appendChild(el('div', { cls: 'panel' }, [bt, el('p', { cls: 'muted', text: 'cosine distance 1 - cos of decoder directions; ' + S.heterogeneity.source })]));
      out.push(hp);
    } else out.push(el('p', { cls: 'muted', text: S.heterogeneity_note || 'not available' }));

    out.push(el('h2', { text: 'Training curve' }));
    if (S.curve) {
      var sm = el('div', { cls: 'small-multiples', id: 'curve' });
      Object.keys(S.curve.series).filter(function (k) { return ['epoch', 'time_s', 'lr'].indexOf(k) < 0; }).slice(0, 8).forEach(function (k) { var c = lineChart(S.curve.step, S.curve.series[k], k); if (c) sm.appendChild(el('div', { cls: 'panel' }, [c])); });
      out.push(sm);
    } else out.push(el('p', { cls: 'muted', text: 'No metrics.jsonl found beside the model.' }));

    if (S.probes.length) {
      out.push(el('h2', { text: 'Translation and steering' }));
      var pp = el('p', { cls: 'chips' }, [el('span', { text: 'Shown on the pages of latents ' })]);
      S.probes.forEach(function (j) { pp.appendChild(latentLink(j)); });
      out.push(pp);
    }
    app.replaceChildren.apply(app, out);
    document.body.dataset.view = 'overview';
  }

  // ------------------------------------------------------------------ latent table
  // optional: drawn only when data/latents.js holds the column (a column constant over the run is left out)
  var COLS = [
    { key: 'id', label: 'latent', num: true },
    { key: 'status', label: 'status' },
    { key: 'score', label: 'score', num: true, optional: true, title: 'support-aware score: lower 95% bound of the correlation with the co-firing rows as sample size' },
    { key: 'corr', label: S && S.kind === 'aligned' ? 'matched corr' : 'corr (same index)', num: true },
    { key: 'null_threshold', label: 'null thr.', num: true, optional: true },
    { key: 'support', label: 'support', num: true },
    { key: 'flags', label: 'flags', optional: true, cls: 'flag' },
    { key: 'freq_image', label: 'freq image', num: true, pct: true },
    { key: 'freq_text', label: 'freq text', num: true, pct: true },
    { key: 'cos', label: 'cos(dec I, dec T)', num: true, optional: true },
    { key: 'agreement', label: 'agreement', num: true, optional: true, digits: 3, title: 'concept agreement: cosine of the two sides\' distinctive caption words' },
    { key: 'label_image', label: 'label (image side)', optional: true, cls: 'cap label-words' },
    { key: 'label_text', label: 'label (text side)', optional: true, cls: 'cap label-words' },
    { key: 'counterpart_cos', label: 'counterpart in B (cos)', num: true, optional: true },
    { key: 'label', label: 'top caption', cls: 'cap', unless: 'label_text' }
  ];
  var FILTERS = [
    { key: 'score', label: 'min score' }, { key: 'corr', label: 'min corr' }, { key: 'support', label: 'min support' }, { key: 'agreement', label: 'min agreement' },
    { key: 'freq_image', label: 'min freq image' }, { key: 'freq_text', label: 'min freq text' }, { key: 'cos', label: 'min cos' }
  ].filter(function (f) { return T && T[f.key]; });
  // --compare: latent j's decoder-matched latent in SAE B and their cosine (dualsae compare).
  function counterpartText(j) { var b = T.counterpart[j]; return b < 0 ? 'none' : 'B ' + b + ' (' + fmt(T.counterpart_cos[j], 3) + ')'; }
  function colValue(key, j) { return key === 'id' ? j : (T[key] ? T[key][j] : null); }

  function renderTable(params) {
    setNav('table');
    var t0 = performance.now();
    var sort = params.get('sort') || (S.kind === 'specific' ? 'freq_image' : T.score ? 'score' : 'corr');
    var dir = params.get('dir') || 'desc';
    var page = Math.max(0, parseInt(params.get('page') || '0', 10) || 0);
    var status = params.get('status') || '';
    var q = (params.get('q') || '').toLowerCase();
    var idx = [];
    for (var j = 0; j < T.m; j++) {
      var ok = true;
      for (var f = 0; f < FILTERS.length && ok; f++) {
        var lim = params.get(FILTERS[f].key);
        if (lim !== null && lim !== '') { var v = colValue(FILTERS[f].key, j); ok = v !== null && v >= parseFloat(lim); }
      }
      if (ok && status && T.status[j] !== status) ok = false;
      if (ok && q && (String(T.label[j]) + ' ' + (T.label_image ? T.label_image[j] + ' ' + T.label_text[j] : '')).toLowerCase().indexOf(q) < 0) ok = false;
      if (ok) idx.push(j);
    }
    var sign = dir === 'asc' ? 1 : -1;
    idx.sort(function (a, b) {
      var va = colValue(sort, a), vb = colValue(sort, b);
      if (va === null && vb === null) return a - b;
      if (va === null) return 1;
      if (vb === null) return -1;
      if (va < vb) return -sign;
      if (va > vb) return sign;
      return a - b;
    });
    var pages = Math.max(1, Math.ceil(idx.length / PAGE));
    page = Math.min(page, pages - 1);

    function go(changes) {
      var p = new URLSearchParams(params.toString());
      for (var k in changes) { if (changes[k] === '' || changes[k] === null) p.delete(k); else p.set(k, changes[k]); }
      location.hash = 'table?' + p.toString();
    }
    var form = el('form', { cls: 'filters', id: 'filters' });
    FILTERS.forEach(function (fl) {
      form.appendChild(el('label', null, [fl.label, el('input', { name: fl.key, type: 'number', step: 'any', value: params.get(fl.key) || '' })]));
    });
    var sel = el('select', { name: 'status' });
    ['', 'matched', 'image only', 'text only', 'unmatched', 'both', 'dead'].forEach(function (s) { sel.appendChild(el('option', { value: s, text: s || 'any', selected: s === status })); });
    form.appendChild(el('label', null, ['status', sel]));
    form.appendChild(el('label', null, ['caption contains', el('input', { name: 'q', cls: 'wide', value: params.get('q') || '' })]));
    form.appendChild(el('button', { type: 'submit', text: 'Apply' }));
    form.onsubmit = function (ev) {
      ev.preventDefault();
      var ch = { page: 0 };
      Array.prototype.forEach.call(form.elements, function (e) { if (e.name) ch[e.name] = e.value; });
      go(ch);
    };

    var table = el('table', { cls: 'latents', id: 'latent-table' });
    var head = el('tr');
    // the top caption goes into the label cells' tooltip when labels are shown (keeps the table within the page)
    var cols = COLS.filter(function (c) { return (!c.optional || T[c.key]) && !(c.unless && T[c.unless]); });
    cols.forEach(function (c) {
      var arrow = c.key === sort ? (dir === 'asc' ? ' ▲' : ' ▼') : '';
      var th = el('th', { cls: 'sortable' + (c.num ? ' n' : ''), text: c.label + arrow, title: (c.title ? c.title + '; ' : '') + 'sort by ' + c.label });
      th.onclick = function () { go({ sort: c.key, dir: c.key === sort && dir === 'desc' ? 'asc' : 'desc', page: 0 }); };
      head.appendChild(th);
    });
    table.appendChild(el('thead', null, [head]));
    var body = el('tbody');
    idx.slice(page * PAGE, (page + 1) * PAGE).forEach(function (j) {
      var tr = el('tr');
      cols.forEach(function (c) {
        var v = colValue(c.key, j);
        if (c.key === 'id') tr.appendChild(el('td', { cls: 'n' }, [latentLink(j)]));
        else if (c.key === 'counterpart_cos') tr.appendChild(el('td', { cls: 'n', text: counterpartText(j), title: 'decoder-matched latent of ' + T.counterpart_of }));
        else if (c.cls) tr.appendChild(el('td', { cls: c.cls, text: v || '', title: (v || '') + (c.key !== 'label' && T.label[j] ? ' (top caption: ' + T.label[j] + ')' : '') }));
        else tr.appendChild(el('td', { cls: c.num ? 'n' : '', text: c.pct ? pct(v) : c.digits && v !== null ? v.toFixed(c.digits) : fmt(v) }));
      });
      body.appendChild(tr);
    });
    table.appendChild(body);
    var prev = el('button', { text: '◀ prev', disabled: page === 0 }); prev.onclick = function () { go({ page: page - 1 }); };
    var next = el('button', { text: 'next ▶', disabled: page >= pages - 1 }); next.onclick = function () { go({ page: page + 1 }); };
    var pager = el('div', { cls: 'pager' }, [prev, el('span', { id: 'page-info', text: 'page ' + (page + 1) + ' of ' + pages + ' · ' + idx.length.toLocaleString('en') + ' of ' + T.m.toLocaleString('en') + ' latents' }), next]);
    document.title = 'dualsae report: latents';
    var notes = 'corr: ' + S.corr_source + '; support: ' + S.support_source + '. Click a header to sort.';
    if (T.score) notes += ' Default order: score (the correlation\'s lower 95% bound with the co-firing rows as sample size), so a match seen on a few rows sorts low; "low support": fewer than ' + T.low_support + ' co-firing rows.';
    var hidden = Object.keys(T.constant || {});
    if (hidden.length) notes += ' Not shown (constant on this run): ' + hidden.map(function (k) { return k + ' = ' + fmt(T.constant[k]); }).join(', ') + '.';
    app.replaceChildren(el('h1', { text: 'Latents' }), el('p', { cls: 'muted', text: notes }), form, pager, table);
    document.body.dataset.view = 'table';
    document.body.dataset.tableMs = (performance.now() - t0).toFixed(1);
    document.body.dataset.sinceStartMs = performance.now().toFixed(1);
    document.body.dataset.tableRows = String(body.children.length);
  }

  // ------------------------------------------------------------------ latent page
  function figure(rowsById, r, sub) {
    var info = rowsById[r] || [null, null, null];
    var cap = info[0] || (info[1] ? 'id ' + info[1] : 'row ' + r);
    var pic = info[2] ? el('img', { src: info[2], alt: cap, loading: 'lazy' }) : el('div', { cls: 'noimg', text: 'no image' });
    return el('figure', { title: cap + (info[1] ? ' (id ' + info[1] + ', row ' + r + ')' : ' (row ' + r + ')') },
      [pic, el('figcaption', null, [cap, sub !== undefined ? el('span', { cls: 'act', text: sub }) : null])]);
  }
  function thumbGrid(rowsById, list, id) {
    var g = el('div', { cls: 'thumbs' });
    if (id) g.id = id;
    list.forEach(function (t) { g.appendChild(Array.isArray(t) ? figure(rowsById, t[0], fmt(t[1], 3)) : figure(rowsById, t)); });
    return g;
  }
  function side(j, mod, e, rowsById) {
    var head = mod === 'image'
      ? (S.kind === 'shared' ? 'latent ' + j + ' on images' : 'image latent ' + j)
      : (S.kind === 'shared' ? 'latent ' + j + ' on captions' : S.kind === 'aligned' ? 'text latent ' + j + ' (matched, shared index)' : 'text latent ' + j + ' (unrelated: not aligned)');
    var freq = T['freq_' + mod][j];
    var p = el('div', { cls: 'panel side', id: 'side-' + mod }, [el('h2', { text: head }),
      el('p', { cls: 'muted', text: 'fires on ' + fmt(e.fired) + ' of ' + fmt(S.n_rows) + ' rows (' + pct(freq) + '), mean activation ' + fmt(T['mean_' + mod][j]) + ', max ' + fmt(e.max) })]);
    if (e.fired) {
      var labels = e.hist.map(function (_, i) { return 'activation ' + (e.max * i / e.hist.length).toFixed(3) + '–' + (e.max * (i + 1) / e.hist.length).toFixed(3); });
      labels.edges = e.hist.map(function (_, i) { return e.max * i / e.hist.length; }).concat([e.max]);
      p.appendChild(barChart(e.hist, labels, { width: 360, height: 80, alt: mod === 'text', xlabel: 'activation when active' }));
      p.appendChild(el('h3', { text: 'Top-activating rows (' + (mod === 'image' ? 'images' : 'captions; their paired images') + ')' }));
      p.appendChild(thumbGrid(rowsById, e.top, 'thumbs-' + mod));
      if (e.intervals && e.intervals.length) {
        p.appendChild(el('h3', { text: 'Samples from activation intervals (quantile bins of the ' + fmt(e.fired) + ' nonzero activations, lowest first)' }));
        p.appendChild(V.intervals(e.intervals, rowsById, thumbGrid, 'intervals-' + mod));
      }
      p.appendChild(el('h3', { text: 'Top captions (identical ones collapsed)' }));
      var ul = el('ul', { cls: 'caps', id: 'caps-' + mod });
      var more = el('ul', { cls: 'caps' });
      e.captions.forEach(function (c, i) { (i < 12 ? ul : more).appendChild(el('li', null, [el('span', { cls: 'count', text: '×' + c[1] }), c[0] || '(no caption)', el('span', { cls: 'act', text: fmt(c[2]) })])); });
      p.appendChild(ul);
      if (more.children.length) p.appendChild(el('details', null, [el('summary', { text: more.children.length + ' more captions' }), more]));
    } else p.appendChild(el('p', { text: 'Never fires on these rows (dead here).' }));
    p.appendChild(el('h3', { text: 'Nearest latents by ' + mod + ' decoder cosine' }));
    var near = el('div', { cls: 'chips' });
    e.near.forEach(function (n) { near.appendChild(V.labelChip(T, n[0], mod, n[1])); });
    p.appendChild(near);
    return p;
  }
  function probeSection(pr, rowsById) {
    var out = [el('h2', { text: 'Translation and steering' })];
    if (pr.translate) {
      var tr = pr.translate, cap = (rowsById[tr.query] || [])[0] || ('row ' + tr.query);
      out.push(el('h3', { text: 'Translate the top caption text → image: ' }, [el('q', { text: cap })]));
      out.push(el('p', { cls: 'muted', text: 'Nearest images of the raw caption embedding vs. of its text-SAE code decoded by the image SAE. Share of neighbours on which image latent fires: raw ' + pct(tr.raw_hit) + ', translated ' + pct(tr.translated_hit) + ' (gallery ' + fmt(pr.gallery) + ' images).' }));
      out.push(el('div', { cls: 'grid2', id: 'translate' }, [el('div', null, [el('strong', { text: 'raw caption embedding' }), thumbGrid(rowsById, tr.raw)]),
        el('div', null, [el('strong', { text: 'translated (encode text, decode image)' }), thumbGrid(rowsById, tr.translated)])]));
    }
    if (pr.steer) {
      var st = pr.steer;
      out.push(el('h3', { text: 'Steer images along the image decoder direction (alpha ' + pr.alpha + ')' }));
      out.push(el('p', { cls: 'muted', text: 'Over ' + st.sources + ' source images where the latent is inactive, the share of their nearest images on which it fires goes from ' + pct(st.hit_before) + ' to ' + pct(st.hit_after) + '.' }));
      var box = el('div', { id: 'steer' });
      st.examples.forEach(function (ex) {
        box.appendChild(el('div', { cls: 'steer-row' }, [el('div', null, [el('strong', { text: 'source' }), thumbGrid(rowsById, [ex.source])]),
          el('div', null, [el('strong', { text: 'neighbours before' }), thumbGrid(rowsById, ex.before)]),
          el('div', null, [el('strong', { text: 'after steering' }), thumbGrid(rowsById, ex.after)])]));
      });
      out.push(box);
    }
    if (pr.sweep) {  // the alpha sweep of dualsae steer --sweep (dualsae.use.steering_sweep)
      var sw = pr.sweep;
      out.push(el('h3', { text: 'Steering strength: alpha sweep' }));
      if (sw.warning) out.push(el('p', { cls: 'warn', text: 'Warning: ' + sw.warning }));
      if (sw.rows) {
        var stb = el('table', { cls: 'stats', id: 'alpha-sweep' });
        stb.appendChild(el('tr', null, ['alpha', 'concept share of neighbours', 'cosine to source', 'SAE fires the latent'].map(function (h) { return el('th', { text: h }); })));
        sw.rows.forEach(function (r) {
          stb.appendChild(el('tr', null, [el('td', { text: (+r.alpha).toPrecision(3) + (r.alpha === sw.auto_alpha ? ' (auto)' : '') }),
            el('td', { text: pct(r.share) }), el('td', { text: (+r.cosine).toFixed(3) }), el('td', { text: pct(r.fires) })]));
        });
        out.push(stb);
        out.push(el('p', { cls: 'muted', text: sw.note }));
      } else if (sw.error) out.push(el('p', { cls: 'muted', text: sw.error }));
    }
    return out;
  }
  function renderLatent(j) {
    setNav('');
    if (!(j >= 0 && j < T.m)) { app.replaceChildren(el('p', { text: 'No latent ' + j + ' (the model has ' + T.m + ').' })); return; }
    document.title = 'dualsae report: latent ' + j;
    app.replaceChildren(el('p', { cls: 'muted', text: 'Loading latent ' + j + '...' }));
    withChunk(j, function (chunk) {
      if (!chunk) { app.replaceChildren(el('p', { cls: 'warn', text: 'Could not load the data of latent ' + j + ' (data/ folder incomplete?).' })); return; }
      var e = chunk.latents[String(j)], rowsById = chunk.rows;
      e.image.near = e.near_image; e.text.near = e.near_text;
      var nav = el('div', { cls: 'pager' }, [j > 0 ? latentLink(j - 1, '◀ ' + (j - 1)) : null, el('a', { href: '#table', text: 'table' }), j < T.m - 1 ? latentLink(j + 1, (j + 1) + ' ▶') : null]);
      var out = [nav, el('h1', { id: 'latent-title', text: 'Latent ' + j + ' — ' + T.status[j] })];
      S.warnings.forEach(function (w) { out.push(el('div', { cls: 'warn', text: w })); });
      var stats = [
        [S.kind === 'aligned' ? 'matched correlation (alignment)' : 'correlation image j ~ text j', T.corr[j]],
        S.kind === 'aligned' ? ['same-index correlation on these rows', e.same_corr] : null,
        T.null_threshold ? ['null threshold (shuffled pairs, same support)', T.null_threshold[j]] : null,
        ['co-firing support (rows)', T.support[j]],
        ['frequency image / text', pct(T.freq_image[j]) + ' / ' + pct(T.freq_text[j])],
        T.flags && T.flags[j] ? ['flags', el('span', { cls: 'flag', text: T.flags[j] })] : null,
        T.score ? ['support-aware score (lower 95% bound)', T.score[j]] : null,
        ['cos(image decoder, text decoder)', T.cos ? T.cos[j] : (T.constant && T.constant.cos !== undefined ? T.constant.cos + ' (every latent)' : null)],
        T.label_image ? ['label: image side / text side', (T.label_image[j] || '–') + '  |  ' + (T.label_text[j] || '–')] : null,
        T.agreement ? ['concept agreement of the two sides', T.agreement[j]] : null,
        T.counterpart ? ['counterpart in ' + T.counterpart_of + ' (decoder cosine)', counterpartText(j)] : null
      ];
      out.push(el('div', { cls: 'panel' }, [kv(stats)]));
      out.push(el('div', { cls: 'grid2', id: 'sides' }, [side(j, 'image', e.image, rowsById), side(j, 'text', e.text, rowsById)]));
      if (e.probe) out = out.concat(probeSection(e.probe, rowsById));
      app.replaceChildren.apply(app, out);
      document.body.dataset.view = 'latent';
      document.body.dataset.latent = String(j);
    });
  }

  // ------------------------------------------------------------------ search
  function words(s) { return (s.toLowerCase().match(/[\p{L}\p{N}_]+/gu) || []).filter(function (w, i, a) { return a.indexOf(w) === i; }); }
  function renderSearch(query) {
    setNav('');
    document.getElementById('search-input').value = query;
    document.title = 'dualsae report: search';
    app.replaceChildren(el('p', { cls: 'muted', text: 'Searching...' }));
    loadScript('data/search.js', function () { return !!D.search; }, function (ok) {
      if (!ok) { app.replaceChildren(el('p', { cls: 'warn', text: 'Could not load data/search.js.' })); return; }
      var ws = words(query), found = ws.filter(function (w) { return D.search[w]; }), missing = ws.filter(function (w) { return !D.search[w]; });
      var score = {}, hits = {};
      found.forEach(function (w) {
        D.search[w].forEach(function (e) {
          var j = e[0];
          if (!score[j]) { score[j] = [0, 0]; hits[j] = 0; }
          score[j][0] += e[1]; score[j][1] += e[2]; hits[j] += 1;
        });
      });
      // Latents among the top of every word first, then those of fewer words; by summed score within.
      var all = Object.keys(score).map(Number);
      all.sort(function (a, b) { return hits[b] - hits[a] || (score[b][0] + score[b][1]) - (score[a][0] + score[a][1]) || a - b; });
      var note = found.length > 1 && all.length && hits[all[0]] < found.length ? 'No latent is among the top latents of every word; the first ones match the most words.' : '';
      var out = [el('h1', { text: 'Latents for “' + query + '”' })];
      out.push(el('p', { cls: 'muted', text: 'Score: mean activation on rows whose caption holds the word minus the mean over all rows, per modality (summed over the words).' }));
      if (missing.length) out.push(el('p', { cls: 'warn', text: 'Not in any caption: ' + missing.join(', ') }));
      if (note) out.push(el('p', { cls: 'warn', text: note }));
      var t = el('table', { cls: 'latents', id: 'search-results' });
      t.appendChild(el('tr', null, ['latent', 'words', 'status', 'image score', 'text score', 'corr', 'labels (image | text side)', 'top caption'].map(function (h) { return el('th', { text: h }); })));
      all.slice(0, 50).forEach(function (j) {
        t.appendChild(el('tr', null, [el('td', { cls: 'n' }, [latentLink(j)]), el('td', { cls: 'n', text: hits[j] + ' of ' + found.length }), el('td', { text: T.status[j] }), el('td', { cls: 'n', text: fmt(score[j][0]) }),
          el('td', { cls: 'n', text: fmt(score[j][1]) }), el('td', { cls: 'n', text: fmt(T.corr[j]) }),
          el('td', { cls: 'cap label-words', text: T.label_image ? (T.label_image[j] || '–') + ' | ' + (T.label_text[j] || '–') : '' }), el('td', { cls: 'cap', text: T.label[j] || '' })]));
      });
      out.push(all.length ? t : el('p', { text: 'No latents found.' }));
      app.replaceChildren.apply(app, out);
      document.body.dataset.view = 'search';
      document.body.dataset.results = String(Math.min(all.length, 50));
    });
  }

  // ------------------------------------------------------------------ routing
  function route() {
    if (!S || !T) { app.replaceChildren(el('p', { cls: 'warn', text: 'data/summary.js or data/latents.js is missing: rebuild the report with dualsae report.' })); return; }
    var h = location.hash.replace(/^#/, '');
    var qpos = h.indexOf('?');
    var path = qpos < 0 ? h : h.slice(0, qpos), params = new URLSearchParams(qpos < 0 ? '' : h.slice(qpos + 1));
    window.scrollTo(0, 0);
    if (path.indexOf('latent/') === 0) renderLatent(parseInt(path.slice(7), 10));
    else if (path === 'table') renderTable(params);
    else if (path.indexOf('search/') === 0) renderSearch(decodeURIComponent(path.slice(7)));
    else renderOverview();
  }
  document.getElementById('search-form').onsubmit = function (ev) {
    ev.preventDefault();
    var q = document.getElementById('search-input').value.trim();
    if (q) location.hash = 'search/' + encodeURIComponent(q);
  };
  window.addEventListener('hashchange', route);
  route();
})();
