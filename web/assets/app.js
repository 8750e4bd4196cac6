// tailscope web UI: draws the screens of dashboards/*.toml (served by GET /api/v1/dashboards) with figures from
// the same API the terminal dashboard reads (/api/v1/query, /api/v1/live, /api/v1/alerts). Plain JavaScript, no
// build step. Every value from the server is put on the page as text (textContent, SVG attributes set to numbers):
// span names and attributes are written by whoever sends telemetry, so nothing of them is ever parsed as markup.
'use strict';
(() => {
  const KEY_STORE = 'tailscope.key';
  const REFRESH_MS = 5000;

  // What the page shows; the URL holds screen, window, filter and session so that a link reopens the same view.
  const S = {
    meta: null,        // the answer of /api/v1/dashboards
    screen: null,      // the screen's name
    window: '1h',
    filter: '',
    session: null,     // the session picked for the waterfall
    picked: {},        // the values picked in a table with `pick` (service, version_a, version_b)
    selected: null,    // index of the selected row in the screen's first table (histogram of that row)
    epoch: 0,          // bumped on every view change: answers for an older view are dropped
    panels: [],        // the current screen's panels and their state
    timer: null,
    streams: [],       // the open live streams of the current screen
  };

  const $ = (id) => document.getElementById(id);

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  // ---- Figures, as core/src/display.rs and the terminal's cells write them -------------------------------------

  function significantDecimals(a, digits) { return Math.max(0, digits - 1 - Math.floor(Math.log10(a))); }
  function trimZeros(text, keep) {
    const dot = text.indexOf('.');
    if (dot < 0) return text;
    let end = text.length;
    while (end > dot + 1 + keep && text[end - 1] === '0') end--;
    if (end === dot + 1) end = dot;
    return text.slice(0, end);
  }
  function groupThousands(digits) { return digits.replace(/\B(?=(\d{3})+(?!\d))/g, ','); }

  function usd(v) {
    if (!Number.isFinite(v)) return '-';
    const sign = v < 0 ? '-' : '';
    const a = Math.abs(v);
    if (a === 0) return '$0.00';
    if (a < 0.0995) {
      const decimals = Math.min(12, Math.max(2, significantDecimals(a, 2)));
      const t = trimZeros(a.toFixed(decimals), 2);
      return t.replace(/^[0.]+/, '') === '' ? '$0.00' : sign + '$' + t;
    }
    const cents = Math.round(a * 100);
    const whole = Math.trunc(cents / 100);
    const frac = cents - whole * 100;
    return sign + '$' + groupThousands(String(whole)) + '.' + String(frac).padStart(2, '0');
  }
  function percent(f) {
    if (!Number.isFinite(f)) return '-';
    const p = f * 100, a = Math.abs(p), sign = p < 0 ? '-' : '';
    let body;
    if (a === 0) body = '0';
    else if (a >= 99.95) body = groupThousands(a.toFixed(0));
    else if (a >= 0.995) body = trimZeros(a.toFixed(1), 0);
    else {
      body = trimZeros(a.toFixed(Math.min(12, Math.max(1, significantDecimals(a, 2)))), 0);
      if (body === '0') return '0%';
    }
    return sign + body + '%';
  }
  function durationMs(ms) {
    if (!Number.isFinite(ms)) return '-';
    const a = Math.abs(ms);
    if (a === 0) return '0 ms';
    if (a < 9.995) return ms.toFixed(2) + ' ms';
    if (a < 99.95) return ms.toFixed(1) + ' ms';
    if (a < 999.5) return ms.toFixed(0) + ' ms';
    if (a < 9995) return (ms / 1000).toFixed(2) + ' s';
    if (a < 99950) return (ms / 1000).toFixed(1) + ' s';
    return (ms / 1000).toFixed(0) + ' s';
  }
  const isRatio = (c) => c.endsWith('_rate') || c.endsWith('_share') || c === 'share' || c.endsWith('utilization');
  const isMoney = (c) => c.endsWith('_usd') || c.startsWith('usd_per_');
  function formatNumber(c, x) {
    if (c.endsWith('_ms')) return durationMs(x);
    if (isMoney(c)) return usd(x);
    if (isRatio(c)) return percent(x);
    if (c === 'rate') return x.toFixed(1) + '/s';
    if (c.endsWith('_pct')) return percent(x / 100);
    if (Number.isInteger(x) && Math.abs(x) < 1e15) return String(x);
    return x.toFixed(2);
  }
  function formatCell(c, v) {
    if (v === null || v === undefined) return '-';
    if (typeof v === 'boolean') return v ? 'yes' : 'no';
    if (typeof v === 'number') return formatNumber(c, v);
    if (typeof v === 'object') return JSON.stringify(v);
    const s = String(v);
    if (s.length >= 19 && s[10] === 'T' && s[4] === '-') return s.slice(5, 10) + ' ' + s.slice(11, 19);
    if ((isMoney(c) || c.endsWith('_ms')) && s.trim() !== '' && Number.isFinite(Number(s))) {
      return formatNumber(c, Number(s));
    }
    return s;
  }
  function header(c) {
    if (c === 'error_rate') return 'err%';
    if (c === 'p99_series_ms') return 'p99 trend';
    if (c === 'usd_per_1m_tokens') return 'per 1M tok';
    return c.replace(/_ms$/, '').replace('_usd', ' $').replace(/_/g, ' ');
  }
  function num(v) {
    if (typeof v === 'number') return v;
    if (typeof v === 'boolean') return v ? 1 : 0;
    if (typeof v === 'string' && v.trim() !== '' && Number.isFinite(Number(v))) return Number(v);
    return null;
  }

  // ---- The API -------------------------------------------------------------------------------------------------

  class Unauthorized extends Error {}
  class Unreachable extends Error {}

  async function errorText(r) {
    try {
      const j = await r.json();
      return String(j.error || j.message || r.statusText);
    } catch (_) {
      return r.status + ' ' + r.statusText;
    }
  }

  async function call(path, init) {
    const headers = new Headers((init && init.headers) || {});
    const key = sessionStorage.getItem(KEY_STORE);
    if (key) headers.set('Authorization', 'Bearer ' + key);
    let r;
    try {
      r = await fetch(path, Object.assign({}, init || {}, { headers, cache: 'no-store', credentials: 'omit' }));
    } catch (e) {
      throw new Unreachable('the server cannot be reached (' + e.message + '); retrying');
    }
    if (r.status === 401) throw new Unauthorized(await errorText(r));
    if (r.status === 403) throw new Unauthorized(await errorText(r));
    if (!r.ok) throw new Error(await errorText(r));
    return r.json();
  }

  function sqlRows(sql) {
    return call('/api/v1/query', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
      body: JSON.stringify({ sql }),
    });
  }

  // Server-Sent Events read with fetch (EventSource cannot send the Authorization header): calls `onEvent` with
  // each event's parsed data until `signal` aborts or the server ends the stream. An event is at most 4 MiB.
  async function stream(path, signal, onEvent) {
    const headers = new Headers({ Accept: 'text/event-stream' });
    const key = sessionStorage.getItem(KEY_STORE);
    if (key) headers.set('Authorization', 'Bearer ' + key);
    const r = await fetch(path, { headers, signal, cache: 'no-store', credentials: 'omit' });
    if (r.status === 401 || r.status === 403) throw new Unauthorized(await errorText(r));
    if (!r.ok || !r.body) throw new Error(await errorText(r));
    const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      if (buffer.length > 4 * 1024 * 1024) throw new Error('a live event larger than 4 MiB');
      let end;
      while ((end = buffer.indexOf('\n\n')) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = block.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5).replace(/^ /, '')).join('\n');
        if (data) onEvent(JSON.parse(data));
      }
    }
  }

  // A JSON pointer into an answer, as the terminal reads `pointer`: absent in an array answer = the whole answer.
  function at(doc, pointer) {
    if (!pointer || pointer === '/') return doc;
    let node = doc;
    for (const part of pointer.replace(/^\//, '').split('/')) {
      if (node === null || typeof node !== 'object' || !(part in node)) return Array.isArray(doc) ? doc : undefined;
      node = node[part];
    }
    return node;
  }

  function toTable(rows) {
    if (!Array.isArray(rows)) rows = rows === undefined || rows === null ? [] : [rows];
    const columns = [];
    for (const r of rows) {
      if (r === null || typeof r !== 'object') continue;
      for (const k of Object.keys(r)) if (!columns.includes(k)) columns.push(k);
    }
    const objects = rows.map((r) => (r !== null && typeof r === 'object' ? r : { value: r }));
    if (!columns.length && objects.length) columns.push('value');
    return { columns, rows: objects, slo: null };
  }

  // ---- The view: URL <-> state ----------------------------------------------------------------------------------

  function windowInfo() {
    return S.meta.windows.find((w) => w.label === S.window) || S.meta.windows[1] || S.meta.windows[0];
  }
  function currentScreen() {
    return S.meta.screens.find((s) => s.name === S.screen) || S.meta.screens[0];
  }

  function readUrl() {
    const q = new URLSearchParams(location.search);
    S.screen = q.get('screen') || (S.meta && S.meta.screens[0] ? S.meta.screens[0].name : null);
    S.window = q.get('window') || '1h';
    S.filter = q.get('filter') || '';
    S.session = q.get('session') || null;
    S.picked = {};
    for (const name of pickedNames()) if (q.get(name)) S.picked[name] = q.get(name);
  }
  function pickedNames() { return (S.meta && S.meta.picked) || []; }
  function urlOf(over) {
    const v = Object.assign({ screen: S.screen, window: S.window, filter: S.filter, session: S.session, picked: S.picked }, over || {});
    const q = new URLSearchParams();
    if (v.screen) q.set('screen', v.screen);
    if (v.window) q.set('window', v.window);
    if (v.filter) q.set('filter', v.filter);
    if (v.session) q.set('session', v.session);
    for (const name of pickedNames()) if (v.picked && v.picked[name]) q.set(name, v.picked[name]);
    return '?' + q.toString();
  }
  function go(over, replace) {
    const url = urlOf(over);
    if (replace) history.replaceState(null, '', url); else history.pushState(null, '', url);
    readUrl();
    draw();
  }

  // ---- Placeholders, from the server's table for the window (core's `dashboard::fill`) --------------------------

  function sqlLiteral(s) { return s === null || s === undefined ? 'NULL' : "'" + String(s).replace(/'/g, "''") + "'"; }
  function fill(sql) {
    let out = sql;
    const subs = windowInfo().substitutions;
    for (const name of Object.keys(subs)) out = out.split('{' + name + '}').join(subs[name]);
    for (const name of pickedNames()) out = out.split('{' + name + '}').join(sqlLiteral(S.picked[name]));
    return out.split('{session_id}').join(sqlLiteral(S.session));
  }
  const needsPick = (sql) => pickedNames().some((name) => sql.includes('{' + name + '}'));

  // Where a panel's rows come from now, as the terminal's `request_for` decides it.
  function requestFor(p) {
    const w = windowInfo();
    if (p.live && w.live) {
      return { kind: 'live', path: '/api/v1/live?window=' + encodeURIComponent(w.live) + '&group=' + encodeURIComponent(p.live) };
    }
    if (p.api) return { kind: 'api', path: p.api, pointer: p.pointer };
    if (p.sql) {
      if (p.sql.includes('{session_id}') && !S.session) return { idle: 'pick a session: click a session row (here or on Cost)' };
      if (needsPick(p.sql) && !Object.keys(S.picked).length) return { idle: 'pick what to compare: click a row of the table above' };
      return { kind: 'sql', sql: fill(p.sql) };
    }
    if (p.selected) return { idle: '' };
    return { idle: 'no data source' };
  }

  async function fetchPanel(req) {
    if (req.kind === 'sql') return toTable(await sqlRows(req.sql));
    const doc = await call(req.path, { headers: { Accept: 'application/json' } });
    if (req.kind === 'live') {
      const t = toTable(doc.rows || []);
      t.slo = num(doc.slo_p99_ms);
      return t;
    }
    const rows = at(doc, req.pointer);
    if (rows === undefined) throw new Error('the answer has no ' + req.pointer);
    return toTable(rows);
  }

  // ---- Drawing --------------------------------------------------------------------------------------------------

  function visibleRows(t) {
    if (!S.filter) return t.rows;
    const needle = S.filter.toLowerCase();
    return t.rows.filter((r) => Object.values(r).some((v) => typeof v === 'string' && v.toLowerCase().includes(needle)));
  }

  function sparkline(values, cls) {
    const NS = 'http://www.w3.org/2000/svg';
    const svg = document.createElementNS(NS, 'svg');
    svg.setAttribute('class', cls || 'spark');
    svg.setAttribute('viewBox', '0 0 100 20');
    svg.setAttribute('preserveAspectRatio', 'none');
    const nums = values.map(num);
    const finite = nums.filter((v) => v !== null);
    if (finite.length) {
      const max = Math.max(...finite) || 1;
      const step = nums.length > 1 ? 100 / (nums.length - 1) : 0;
      const pts = [];
      nums.forEach((v, i) => { if (v !== null) pts.push((i * step).toFixed(2) + ',' + (19 - (v / max) * 18).toFixed(2)); });
      const line = document.createElementNS(NS, 'polyline');
      line.setAttribute('points', pts.join(' '));
      svg.appendChild(line);
    }
    return svg;
  }

  function drawTable(ctx, t) {
    const p = ctx.panel;
    const columns = p.columns || t.columns.filter((c) => t.rows.every((r) => r[c] === null || typeof r[c] !== 'object' || Array.isArray(r[c])));
    const rows = visibleRows(t);
    const table = el('table');
    const head = el('tr');
    for (const c of columns) head.appendChild(el('th', null, header(c)));
    table.appendChild(el('thead')).appendChild(head);
    const body = table.appendChild(el('tbody'));
    const slo = t.slo !== null && t.slo !== undefined ? t.slo : p.slo;
    rows.forEach((r, i) => {
      const tr = el('tr');
      if (p.slo_column && slo !== null && slo !== undefined && num(r[p.slo_column]) !== null && num(r[p.slo_column]) > slo) {
        tr.classList.add('breach');
      }
      for (const c of columns) {
        const v = r[c];
        const td = el('td', typeof v === 'number' || num(v) !== null && (isMoney(c) || c.endsWith('_ms')) ? 'num' : null);
        if (Array.isArray(v)) td.appendChild(sparkline(v)); else td.textContent = formatCell(c, v);
        tr.appendChild(td);
      }
      if (p.mark && r[p.mark] === true) tr.classList.add('marked');
      const picks = String(p.pick || '').split(',').map((c) => c.trim()).filter(Boolean);
      if (picks.length && picks.every((c) => r[c] !== null && r[c] !== undefined)) {
        tr.classList.add('clickable');
        const values = Object.fromEntries(picks.map((c) => [c, String(r[c])]));
        if (picks.every((c) => S.picked[c] === values[c])) tr.classList.add('selected');
        tr.title = 'compare these';
        tr.addEventListener('click', () => go({ picked: values }));
      } else if (p.drill && r[p.drill] !== null && r[p.drill] !== undefined) {
        tr.classList.add('clickable');
        tr.title = 'open this session\'s waterfall';
        tr.addEventListener('click', () => drill(String(r[p.drill])));
      } else {
        tr.classList.add('clickable');
        if (ctx.isFirstTable && S.selected === i) tr.classList.add('selected');
        tr.addEventListener('click', () => { S.selected = i; redrawLocal(); });
      }
      body.appendChild(tr);
    });
    ctx.body.replaceChildren(table);
    ctx.visible = rows;
    return rows.length === t.rows.length ? rows.length + ' rows' : rows.length + ' of ' + t.rows.length + ' rows (filter: ' + S.filter + ')';
  }

  function drawBars(ctx, t) {
    const p = ctx.panel;
    const rows = visibleRows(t);
    const values = rows.map((r) => num(r[p.value]) || 0);
    const max = Math.max(0, ...values) || 1;
    const out = rows.map((r, i) => {
      const line = el('div', 'barrow');
      line.appendChild(el('span', 'label', formatCell(p.label || '', r[p.label])));
      const track = line.appendChild(el('div', 'track'));
      track.appendChild(el('div', 'bar-fill')).style.width = Math.max(0, (values[i] / max) * 100) + '%';
      line.appendChild(el('span', 'value', formatCell(p.value, r[p.value])));
      return line;
    });
    ctx.body.replaceChildren(...out);
    return rows.length + ' rows';
  }

  function drawGauges(ctx, t) {
    const p = ctx.panel;
    const out = visibleRows(t).map((r) => {
      const used = num(r[p.value]);
      const cap = p.max ? num(r[p.max]) : null;
      const ratio = p.ratio ? num(r[p.ratio]) : used !== null && cap ? used / cap : null;
      const state = p.state ? String(r[p.state] || '') : ratio !== null && ratio >= 1 ? 'over' : ratio !== null && ratio >= 0.8 ? 'warning' : 'ok';
      const line = el('div', 'gauge ' + state.replace(/[^a-z]/gi, ''));
      line.appendChild(el('span', 'label', formatCell(p.label || '', r[p.label])));
      const track = line.appendChild(el('div', 'track'));
      track.appendChild(el('div', 'bar-fill')).style.width = Math.min(100, Math.max(0, (ratio || 0) * 100)) + '%';
      const text = formatCell(p.value, r[p.value]) + (p.max ? ' / ' + formatCell(p.max, r[p.max]) : '') + (ratio !== null ? ' (' + percent(ratio) + ')' : '');
      line.appendChild(el('span', 'value', text));
      return line;
    });
    ctx.body.replaceChildren(...out);
    return out.length ? '' : 'nothing to show';
  }

  function drawSparkline(ctx, t) {
    const rows = visibleRows(t);
    const values = rows.map((r) => r[ctx.panel.value]);
    const last = values.length ? formatCell(ctx.panel.value, values[values.length - 1]) : '-';
    ctx.body.replaceChildren(sparkline(values, 'spark spark-big'), el('div', 'value', 'latest ' + last));
    return rows.length + ' points';
  }

  // With `series`, one line per value of that column (at most 8), as the terminal draws them: points from the
  // rows of that value, or from an array cell (the live windows' p99_series_ms, one point per time bucket); uPlot
  // wants one shared x axis, so each line is null where it has no point.
  function seriesLines(p, rows, xOf, y) {
    const lines = new Map();
    rows.forEach((r, i) => {
      const name = r[p.series] === null || r[p.series] === undefined ? '-' : String(r[p.series]);
      if (!lines.has(name)) { if (lines.size >= 8) return; lines.set(name, new Map()); }
      const points = lines.get(name);
      if (Array.isArray(r[y])) r[y].forEach((v, k) => points.set(k, num(v)));
      else points.set(xOf(r, points.size), num(r[y]));
    });
    const xs = [...new Set([...lines.values()].flatMap((m) => [...m.keys()]))].sort((a, b) => a - b);
    const names = [...lines.keys()];
    return { xs, names, series: names.map((n) => xs.map((x) => (lines.get(n).has(x) ? lines.get(n).get(x) : null))) };
  }

  // A line panel's reference lines (`caps`, core's dashboard::Caps): one per row of the panel of this screen whose
  // `id` it names, at the row's `value` and named by its `label`; a row whose value is not a number (a budget capped
  // at a share of inference spend) draws none, nor one `except` leaves out (a cap on each session's cost). The rows
  // are not filtered: a cap is not a row of the chart.
  function capLines(p) {
    if (!p.caps) return [];
    const source = S.panels.find((c) => c.panel.id === p.caps.panel);
    if (!source || !source.data) return [];
    const except = p.caps.except || {};
    const leftOut = (r) => Object.keys(except).some((c) => typeof r[c] === 'string' && except[c].includes(r[c]));
    return source.data.rows
      .filter((r) => !leftOut(r))
      .map((r) => ({ name: formatCell(p.caps.label, r[p.caps.label]), value: num(r[p.caps.value]) }))
      .filter((c) => c.value !== null && Number.isFinite(c.value));
  }

  function drawLine(ctx, t) {
    const p = ctx.panel;
    let ys = String(p.value || '').split(',').map((s) => s.trim()).filter(Boolean);
    const rows = visibleRows(t);
    const xOf = (r, i) => {
      const v = r[p.label];
      const n = num(v);
      if (n !== null) return n;
      const d = Date.parse(String(v));
      return Number.isFinite(d) ? d / 1000 : i;
    };
    let xs = rows.map(xOf);
    let series = ys.map((c) => rows.map((r) => num(r[c])));
    let labels = ys.map(header);
    if (p.series && ys.length) {
      const y = ys[0];
      const lines = seriesLines(p, rows, xOf, y);
      xs = lines.xs;
      series = lines.series;
      labels = lines.names;
      ys = lines.names.map(() => y);
    }
    if (typeof uPlot !== 'function') {
      ctx.body.replaceChildren(...series.map((s) => sparkline(s, 'spark spark-big')));
      return rows.length + ' points';
    }
    const width = Math.max(200, ctx.body.clientWidth - 10);
    // Red is the caps' (as in the terminal), so no line of data is drawn in it.
    const colours = ['#5fb3d9', '#f1c40f', '#4caf50', '#c792ea', '#ff9f43', '#8a96a8', '#1abc9c', '#ffffff'];
    const caps = capLines(p);
    // With one x (one bucket of spend so far) a cap would be a dot: the x range gets a second point one bucket (a
    // sixtieth of the window, as the SQL buckets) later, where the lines of data have none, as the terminal
    // widens a one-point range.
    if (caps.length && xs.length === 1) {
      xs = [xs[0], xs[0] + (xs[0] > 1e9 ? windowInfo().seconds / 60 : 1)];
      series = series.map((s) => [s[0], null]);
    }
    // Each cap a flat dashed line across the x range, named by its budget in the legend; uPlot's y scale takes it
    // in, so a cap far above the spend is still on the chart.
    const capSeries = caps.map((c) => ({ label: c.name, stroke: '#ff5c5c', dash: [8, 4], width: 1.5, value: (u, v) => formatCell(p.caps.value, v) }));
    ctx.root.dataset.caps = caps.map((c) => c.name + '=' + c.value).join(';');
    const opts = {
      width, height: 180,
      series: [{}].concat(ys.map((c, i) => ({ label: labels[i], stroke: colours[i % colours.length], value: (u, v) => formatCell(c, v) })), capSeries),
      axes: [{ stroke: '#8a96a8', grid: { stroke: '#2a3441' } }, { stroke: '#8a96a8', grid: { stroke: '#2a3441' } }],
      // Seconds since the epoch (a time axis) when the label column holds times; bucket numbers otherwise.
      scales: { x: { time: p.label !== undefined && p.label !== null && xs.some((x) => x > 1e9) } },
    };
    const holder = el('div');
    ctx.body.replaceChildren(holder);
    // uPlot builds its own DOM from numbers and labels (set as text).
    new uPlot(opts, [xs].concat(series, caps.map((c) => xs.map(() => c.value))), holder);
    return rows.length + ' points';
  }

  function drawHistogram(ctx, t, buckets) {
    const p = ctx.panel;
    const rows = buckets || visibleRows(t).map((r) => ({ le_ms: num(r[p.label]), count: num(r[p.value]) }));
    if (!rows.length) { ctx.body.replaceChildren(); return buckets ? 'no spans in the selected row' : 'no rows'; }
    const max = Math.max(...rows.map((b) => b.count || 0)) || 1;
    const box = el('div', 'hist');
    for (const b of rows) {
      const col = el('div', 'col');
      col.title = '≤ ' + durationMs(b.le_ms) + ': ' + b.count;
      col.appendChild(el('span', 'tick', String(b.count)));
      col.appendChild(el('div', 'bar')).style.height = ((b.count || 0) / max) * 80 + '%';
      col.appendChild(el('span', 'tick', '≤' + durationMs(b.le_ms)));
      box.appendChild(col);
    }
    ctx.body.replaceChildren(box);
    return '';
  }

  function drawWaterfall(ctx, t) {
    const rows = visibleRows(t);
    const end = Math.max(0, ...rows.map((r) => (num(r.offset_ms) || 0) + (num(r.duration_ms) || 0))) || 1;
    const cost = rows.reduce((a, r) => a + (num(r.cost_usd) || 0), 0);
    const head = el('div', 'wf-head', 'session ' + S.session + ': ' + rows.length + ' steps, wall ' + durationMs(end) + ', ' + usd(cost));
    const grid = el('div', 'wf');
    for (const r of rows) {
      const kind = ['llm', 'tool', 'memory', 'agent'].includes(r.kind) ? r.kind : 'other';
      const name = grid.appendChild(el('span', 'label', r.name));
      name.title = [r.name, r.provider, r.tokens ? r.tokens + ' tokens' : null].filter(Boolean).join(' · ');
      grid.appendChild(el('span', 'muted', r.kind));
      const track = grid.appendChild(el('div', 'track'));
      const bar = track.appendChild(el('div', 'step kind-' + kind));
      bar.style.left = ((num(r.offset_ms) || 0) / end) * 100 + '%';
      bar.style.width = ((num(r.duration_ms) || 0) / end) * 100 + '%';
      grid.appendChild(el('span', 'value' + (r.status_code === 'error' ? ' error' : ''), durationMs(num(r.duration_ms))));
    }
    ctx.body.replaceChildren(head, grid);
    return '';
  }

  // Every draw of a panel is a User Timing measure, `render WIDGET: TITLE` (one per panel: the older one is cleared,
  // so a page left open keeps a bounded timeline), for the render-time figures (docs/benchmarks.md, "Web").
  function render(ctx) {
    const t = ctx.data;
    if (!t) return;
    const started = performance.now();
    let note = '';
    switch (ctx.panel.widget) {
      case 'table': note = drawTable(ctx, t); break;
      case 'bar': note = drawBars(ctx, t); break;
      case 'gauge': note = drawGauges(ctx, t); break;
      case 'sparkline': note = drawSparkline(ctx, t); break;
      case 'line': note = drawLine(ctx, t); break;
      case 'histogram': note = drawHistogram(ctx, t); break;
      case 'waterfall': note = drawWaterfall(ctx, t); break;
      default: note = 'unknown widget ' + ctx.panel.widget;
    }
    ctx.note.textContent = note + (ctx.source ? (note ? ' · ' : '') + ctx.source : '');
    const name = 'render ' + ctx.panel.widget + ': ' + ctx.panel.title;
    performance.clearMeasures(name);
    performance.measure(name, { start: started, detail: { rows: t.rows.length } });
    // The charts that draw this panel's rows as caps follow its new rows (a panel with caps is never one of them,
    // core checks, so this goes one step deep).
    if (ctx.panel.id) {
      for (const other of S.panels) if (other.panel.caps && other.panel.caps.panel === ctx.panel.id && other.data) render(other);
    }
  }

  // The histogram of the row selected in the screen's first table (`selected = true`).
  function renderSelected(ctx) {
    const table = S.panels.find((c) => c.isFirstTable && c.data);
    const rows = table ? table.visible || table.data.rows : [];
    const row = rows[Math.min(S.selected || 0, rows.length - 1)];
    if (!row) { ctx.body.replaceChildren(); ctx.note.textContent = 'select a row above'; ctx.root.dataset.state = 'idle'; return; }
    const label = ['provider', 'region', 'model', 'operation'].filter((k) => row[k] && row[k] !== '*').map((k) => row[k]).join(' / ');
    const buckets = Array.isArray(row.buckets) ? row.buckets.map((b) => ({ le_ms: num(b.le_ms), count: num(b.count) })) : null;
    if (!buckets) { ctx.body.replaceChildren(); ctx.note.textContent = 'histograms come from the live windows (5m, 1h)'; ctx.root.dataset.state = 'idle'; return; }
    drawHistogram(ctx, null, buckets);
    ctx.note.textContent = label;
    ctx.root.dataset.state = 'ok';
  }

  function redrawLocal() {
    for (const ctx of S.panels) {
      if (ctx.panel.selected && ctx.panel.widget === 'histogram') renderSelected(ctx); else if (ctx.data) render(ctx);
    }
  }

  async function load(ctx, epoch) {
    if (ctx.panel.selected && !ctx.panel.sql && !ctx.panel.live && !ctx.panel.api) { renderSelected(ctx); return; }
    const req = requestFor(ctx.panel);
    if (req.idle !== undefined) {
      ctx.body.replaceChildren();
      ctx.note.textContent = req.idle;
      ctx.root.dataset.state = 'idle';
      return;
    }
    if (req.kind === 'live') { subscribe(ctx, req, epoch); return; }
    if (ctx.inFlight) return;
    ctx.inFlight = true;
    if (!ctx.data) ctx.root.dataset.state = 'loading';
    try {
      const t = await fetchPanel(req);
      if (epoch !== S.epoch) return;
      ctx.data = t;
      ctx.source = req.kind === 'live' ? 'live ' + windowInfo().live : req.kind === 'api' ? req.path : 'SQL ' + S.window;
      render(ctx);
      ctx.root.dataset.state = 'ok';
      banner(null);
      if (ctx.isFirstTable) redrawLocal();
    } catch (e) {
      if (epoch !== S.epoch) return;
      if (e instanceof Unauthorized) { signIn(e.message); return; }
      if (e instanceof Unreachable) { banner(e.message); return; }
      ctx.root.dataset.state = 'error';
      ctx.note.textContent = e.message;
    } finally {
      ctx.inFlight = false;
    }
  }

  // Live panels are pushed by /api/v1/live/stream (one report a second) rather than polled; a dropped stream is
  // opened again by the next refresh tick.
  function subscribe(ctx, req, epoch) {
    if (ctx.stream) return;
    const abort = new AbortController();
    ctx.stream = abort;
    S.streams.push(abort);
    if (!ctx.data) ctx.root.dataset.state = 'loading';
    const path = req.path.replace('/api/v1/live?', '/api/v1/live/stream?');
    stream(path, abort.signal, (doc) => {
      if (epoch !== S.epoch) { abort.abort(); return; }
      const t = toTable(doc.rows || []);
      t.slo = num(doc.slo_p99_ms);
      ctx.data = t;
      ctx.pushes = (ctx.pushes || 0) + 1;
      ctx.source = 'live ' + windowInfo().live + ' · pushed';
      render(ctx);
      ctx.root.dataset.state = 'ok';
      ctx.root.dataset.pushes = String(ctx.pushes);
      banner(null);
      if (ctx.isFirstTable) redrawLocal();
    }).catch((e) => {
      if (abort.signal.aborted || epoch !== S.epoch) return;
      if (e instanceof Unauthorized) { signIn(e.message); return; }
      ctx.root.dataset.state = 'error';
      ctx.note.textContent = e.message;
    }).finally(() => { if (ctx.stream === abort) ctx.stream = null; });
  }

  function closeStreams() {
    for (const abort of S.streams) abort.abort();
    S.streams = [];
  }

  function banner(message) {
    const b = $('banner');
    b.hidden = !message;
    b.textContent = message || '';
  }

  function sizeClass(size) {
    return size === 'fill' || size === undefined || size === null ? 'fill' : '';
  }

  function drill(session) {
    const target = S.meta.screens.find((s) => s.rows.some((r) => r.panels.some((p) => p.widget === 'waterfall')));
    go({ session, screen: target ? target.name : S.screen, filter: '' });
  }

  function drawTabs() {
    const nav = $('tabs');
    nav.replaceChildren(...S.meta.screens.map((s, i) => {
      const a = el('a', null, (i + 1) + ' ' + s.title);
      a.href = urlOf({ screen: s.name });
      a.title = s.description;
      if (s.name === currentScreen().name) a.setAttribute('aria-current', 'page');
      a.addEventListener('click', (ev) => { ev.preventDefault(); go({ screen: s.name }); });
      return a;
    }));
  }

  function draw() {
    closeStreams();
    S.epoch++;
    S.selected = null;
    const screen = currentScreen();
    if (!screen) return;
    S.screen = screen.name;
    document.title = screen.title + ' · tailscope';
    drawTabs();
    $('window').value = windowInfo().label;
    $('filter').value = S.filter;
    const main = $('screen');
    S.panels = [];
    const rows = screen.rows.map((row) => {
      const div = el('div', 'row ' + sizeClass(row.height));
      if (typeof row.height === 'number') div.style.minHeight = (row.height * 1.45) + 'em';
      for (const p of row.panels) {
        const root = el('section', 'panel');
        root.dataset.widget = p.widget;
        if (typeof p.width === 'number') root.style.flex = '0 0 ' + p.width + 'ch';
        else if (typeof p.width === 'string' && p.width.endsWith('%')) root.style.flex = '0 0 ' + p.width;
        root.appendChild(el('h2', null, p.title));
        const body = root.appendChild(el('div', 'body'));
        const note = root.appendChild(el('div', 'note'));
        const ctx = { panel: p, root, body, note, data: null, inFlight: false, isFirstTable: false };
        if (p.widget === 'table' && !S.panels.some((c) => c.isFirstTable)) ctx.isFirstTable = true;
        S.panels.push(ctx);
        div.appendChild(root);
      }
      return div;
    });
    main.replaceChildren(...rows);
    refresh();
  }

  function refresh() {
    const epoch = S.epoch;
    for (const ctx of S.panels) load(ctx, epoch);
    $('status').textContent = 'updated ' + new Date().toLocaleTimeString() + ' · window ' + S.window +
      (S.session ? ' · session ' + S.session : '') +
      (S.picked.service ? ' · ' + S.picked.service + ': ' + S.picked.version_b + ' against ' + S.picked.version_a : '') + ' · refresh every ' + REFRESH_MS / 1000 + ' s';
  }

  // ---- Sign-in --------------------------------------------------------------------------------------------------

  function signIn(message) {
    closeStreams();
    clearInterval(S.timer);
    S.timer = null;
    S.epoch++;
    $('screen').hidden = true;
    $('controls').hidden = true;
    $('tabs').replaceChildren();
    $('signin').hidden = false;
    $('signin-error').textContent = sessionStorage.getItem(KEY_STORE) ? 'the server refused this key: ' + message : '';
    $('key').focus();
  }

  async function start() {
    try {
      S.meta = await call('/api/v1/dashboards', { headers: { Accept: 'application/json' } });
    } catch (e) {
      if (e instanceof Unauthorized) { signIn(e.message); return; }
      banner(e.message);
      setTimeout(start, REFRESH_MS);
      return;
    }
    banner(null);
    $('signin').hidden = true;
    $('screen').hidden = false;
    $('controls').hidden = false;
    $('signout').hidden = !sessionStorage.getItem(KEY_STORE);
    $('window').replaceChildren(...S.meta.windows.map((w) => { const o = el('option', null, w.label); o.value = w.label; return o; }));
    readUrl();
    draw();
    clearInterval(S.timer);
    S.timer = setInterval(refresh, REFRESH_MS);
  }

  function wire() {
    $('signin-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const key = $('key').value.trim();
      if (!key) return;
      sessionStorage.setItem(KEY_STORE, key);
      $('key').value = '';
      start();
    });
    $('signout').addEventListener('click', () => { sessionStorage.removeItem(KEY_STORE); location.reload(); });
    $('window').addEventListener('change', () => go({ window: $('window').value }));
    $('filter').addEventListener('change', () => go({ filter: $('filter').value.trim() }, true));
    window.addEventListener('popstate', () => { if (S.meta) { readUrl(); draw(); } });
    document.addEventListener('keydown', (ev) => {
      if (!S.meta || ev.target instanceof HTMLInputElement || ev.target instanceof HTMLSelectElement) return;
      if (ev.key === '/') { ev.preventDefault(); $('filter').focus(); }
      else if (ev.key === 't') {
        const i = S.meta.windows.findIndex((w) => w.label === S.window);
        go({ window: S.meta.windows[(i + 1) % S.meta.windows.length].label });
      } else if (/^[1-9]$/.test(ev.key) && S.meta.screens[Number(ev.key) - 1]) go({ screen: S.meta.screens[Number(ev.key) - 1].name });
      else if (ev.key === 'Escape' && S.filter) go({ filter: '' }, true);
    });
  }

  // For tests and the curious: the formatting functions, to compare with the terminal's.
  window.tailscope = Object.freeze({ usd, percent, durationMs, formatCell });

  wire();
  start();
})();
