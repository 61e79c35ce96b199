/* dualsae report: DOM helpers shared by views.js and report.js (window.DUALSAE_UI).
   Safety rule: every string from the data goes into the page through textContent / text nodes or a
   DOM property (img.src, a.href built from numbers); nothing from the data reaches innerHTML. */
(function () {
  'use strict';
  var SVGNS = 'http://www.w3.org/2000/svg';
  function el(tag, props, kids) {
    var e = document.createElement(tag);
    if (props) for (var k in props) {
      if (k === 'text') e.textContent = props[k];
      else if (k === 'cls') e.className = props[k];
      else if (k === 'data') for (var d in props.data) e.dataset[d] = props.data[d];
      else e[k] = props[k];
    }
    (kids || []).forEach(function (c) { if (c != null) e.appendChild(typeof c === 'string' ? document.createTextNode(c) : c); });
    return e;
  }
  function svg(tag, attrs) {
    var e = document.createElementNS(SVGNS, tag);
    for (var k in attrs) e.setAttribute(k, attrs[k]);
    return e;
  }
  function svgText(x, y, s, anchor) {
    var t = svg('text', { x: x, y: y, 'text-anchor': anchor || 'start' });
    t.textContent = s;
    return t;
  }
  function fmt(x, d) {
    if (x === null || x === undefined || (typeof x === 'number' && !isFinite(x))) return '–';
    if (typeof x !== 'number') return String(x);
    if (d === undefined) d = 3;
    if (Math.abs(x) >= 1000 && Number.isInteger(x)) return x.toLocaleString('en');
    return Number.isInteger(x) ? String(x) : x.toFixed(d);
  }
  function pct(x) { return x === null || x === undefined ? '–' : (100 * x).toFixed(x < 0.001 && x > 0 ? 3 : 2) + '%'; }
  function latentLink(j, text) { return el('a', { href: '#latent/' + Number(j), text: text === undefined ? String(Number(j)) : text }); }
  function kv(rows) {
    var t = el('table', { cls: 'stats' });
    rows.forEach(function (r) { if (r) t.appendChild(el('tr', null, [el('td', { text: r[0] }), el('td', { cls: 'n' }, [typeof r[1] === 'object' && r[1] !== null ? r[1] : fmt(r[1])])])); });
    return t;
  }
  function card(label, value) { return el('div', { cls: 'card' }, [el('div', { cls: 'muted', text: label }), el('div', { cls: 'v', text: value })]); }
  window.DUALSAE_UI = { el: el, svg: svg, svgText: svgText, fmt: fmt, pct: pct, latentLink: latentLink, kv: kv, card: card };
})();
