/* app.js - the distilld dashboard: plain JavaScript, no build step.
 *
 * Views (hash routes): #/ jobs table, #/submit the spec editor, #/job/ID one
 * job live, #/compare?ids=A,B several jobs overlaid. Talks to /api/v1 only:
 * the jobs list and /health for counts, /jobs/ID/metrics?buckets=N for a
 * job's history as charts draw it (downsampled on the server: per bucket of
 * steps the least and the greatest value; a zoomed range is fetched again at
 * finer detail), /jobs/ID/metrics (keyset-paged, every point) for new points
 * when polling and for the CSV export, /jobs/ID/events (Server-Sent Events)
 * for live updates.
 *
 * Charts are uPlot. Series live in typed arrays (Series); what a chart draws
 * is picked from them per render, at most the point with the least and the
 * one with the greatest value in each pixel column of the visible x range
 * (and a few coarse buckets outside it, so zooming out is immediate). A job
 * of 100,000 steps arrives as a few thousand points per series and draws in
 * milliseconds; the smoothed loss is the moving average of what arrived.

 * The token is asked for once (a dialog) when something needs it and kept in
 * localStorage; it goes as "Authorization: Bearer" on every request. */
(function () {
  'use strict';

  const API = '/api/v1';
  const STATES = ['queued', 'running', 'paused', 'succeeded', 'failed', 'canceled'];
  const TERMINAL = new Set(['succeeded', 'failed', 'canceled']);
  const PALETTE = ['#2563eb', '#dc2626', '#16a34a', '#9333ea', '#ea580c', '#0891b2', '#ca8a04', '#db2777'];
  const TOKEN_KEY = 'distilld.token';
  const PREFS_KEY = 'distilld.prefs';
  const METRICS_PAGE = 10000;     // the API's largest page
  const DISPLAY_BUCKETS = 2000;   // a chart's series comes from the server cut into this many min/max buckets
  const POLL_MS = 2000;
  const JOBS_REFRESH_MS = 3000;
  const OUTSIDE_BUCKETS = 48;     // coarse buckets kept on each side of a zoomed range
  const MAX_COMPARE = PALETTE.length;

  // ---- built-in recipes: copies of the repository's recipes/*.json, and a smoke test ----
  const RECIPES = [
    {
      name: 'demo', title: 'demo — small ResNetV2 on Fashion-MNIST, 600 steps (a few minutes)',
      spec: {
        kind: 'train', dataset: {name: 'fashion-mnist', val_size: 5000},
        model: {depth: [1, 1], base_width: 16, width: 1, gn_groups: 8, stem: 'small'},
        batch_size: 128, steps: 600, lr: 0.003, weight_decay: 0.0003, warmup_steps: 30,
        crop: 'inception', crop_area: [0.25, 1.0], mixup: false, eval_every: 200, checkpoint_every: 200, seed: 0,
      },
    },
    {
      name: 'smoke', title: 'smoke test — a tiny model, 60 steps on 200 images (seconds)',
      spec: {
        kind: 'train', dataset: {name: 'fashion-mnist', subset_size: 200, test_size: 200},
        model: {depth: [1], base_width: 8, gn_groups: 4, stem: 'small'},
        batch_size: 16, steps: 60, warmup_steps: 2, eval_every: 20, checkpoint_every: 20, crop: 'none', mixup: false,
      },
    },
    {
      name: 'fmnist-teacher', title: 'fmnist-teacher — the teacher, 8 epochs on all of Fashion-MNIST',
      spec: {
        kind: 'train', dataset: {name: 'fashion-mnist'},
        model: {depth: [2, 2, 2, 2], base_width: 16, width: 1, gn_groups: 8, stem: 'small'},
        batch_size: 128, epochs: 8, lr: 0.003, weight_decay: 0.0003, crop: 'inception', crop_area: [0.25, 1.0],
        flip: true, mixup: false, eval_every: 500, checkpoint_every: 250, seed: 0,
      },
    },
    {
      name: 'fmnist-labels-1k', title: 'fmnist-labels-1k — a student on 1,020 labelled images (baseline)',
      spec: {
        kind: 'train', dataset: {name: 'fashion-mnist', val_size: 5000, subset_size: 1020, subset_seed: 0},
        model: {depth: [1, 1, 1, 1], base_width: 16, width: 1, gn_groups: 8, stem: 'small', block: 'basic'},
        batch_size: 128, steps: 2400, lr: 0.003, weight_decay: 0.0003, crop: 'inception', crop_area: [0.25, 1.0],
        flip: true, mixup: true, eval_every: 200, checkpoint_every: 200, seed: 0,
      },
    },
    {
      name: 'fmnist-fm-1k', title: 'fmnist-fm-1k — the same student distilled (function matching) from the teacher',
      spec: {
        kind: 'distill', teacher: 'runs/fmnist-teacher/weights.safetensors',
        dataset: {name: 'fashion-mnist', val_size: 5000, subset_size: 1020, subset_seed: 0},
        model: {depth: [1, 1, 1, 1], base_width: 16, width: 1, gn_groups: 8, stem: 'small', block: 'basic'},
        batch_size: 128, steps: 2400, lr: 0.003, weight_decay: 0.0003, temperature: 1.0, crop: 'inception',
        crop_area: [0.25, 1.0], flip: true, mixup: true, eval_every: 200, checkpoint_every: 200, seed: 0,
      },
    },
    {
      name: 'flowers102-fm', title: 'flowers102-fm — BiT-R50x1 from a BiT-M R152x2 teacher on Flowers102 (the paper\'s setting; days)',
      spec: {
        kind: 'distill', teacher: 'teachers/bit-m-r152x2-flowers128.npz',
        dataset: {format: 'flowers102', path: 'datasets/flowers102', resize_small: 160},
        model: {depth: [3, 4, 6, 3], base_width: 64, width: 1, gn_groups: 32, stem: 'bit', image_size: 128},
        batch_size: 512, epochs: 10000, warmup_steps: 1500, lr: 0.003, weight_decay: 0.0003, clip_norm: 1.0,
        temperature: 10.0, crop: 'inception', crop_area: [0.05, 1.0], flip: true, mixup: true, eval_resize: 160,
        eval_crop: 128, eval_every: 2000, checkpoint_every: 500, seed: 0,
      },
    },
  ];

  // ---- small helpers ----

  function h(tag, props, ...children) {
    const el = document.createElement(tag);
    if (props) {
      for (const [k, v] of Object.entries(props)) {
        if (v == null || v === false) continue;
        if (k === 'class') el.className = v;
        else if (k === 'text') el.textContent = v;
        else if (k === 'dataset') Object.assign(el.dataset, v);
        else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
        else if (k === 'value' || k === 'checked' || k === 'disabled' || k === 'selected') el[k] = v;
        else el.setAttribute(k, v === true ? '' : String(v));
      }
    }
    for (const c of children.flat(Infinity)) {
      if (c == null || c === false) continue;
      el.append(c instanceof Node ? c : String(c));
    }
    return el;
  }

  /* el's children become kids, without the null and false ones */
  function put(el, ...kids) {
    el.replaceChildren(...kids.flat(Infinity).filter(k => k != null && k !== false));
  }

  const enc = encodeURIComponent;
  const $ = (sel, root) => (root || document).querySelector(sel);

  function loadPrefs() {
    try { return Object.assign({smoothing: 0.6, xMode: 'step', yLog: false}, JSON.parse(localStorage.getItem(PREFS_KEY) || '{}')); }
    catch (e) { return {smoothing: 0.6, xMode: 'step', yLog: false}; }
  }
  const prefs = loadPrefs();
  function savePrefs() {
    try { localStorage.setItem(PREFS_KEY, JSON.stringify(prefs)); } catch (e) { /* private mode */ }
  }

  function fmtNum(v) {
    if (v == null || !isFinite(v)) return '–';
    const a = Math.abs(v);
    if (a === 0) return '0';
    if (a >= 1e5) return Math.round(v).toLocaleString('en-US');
    if (a >= 100) return v.toFixed(0);
    if (a < 1e-3) return v.toExponential(2);
    return String(+v.toPrecision(4));
  }
  function fmtAxis(v) {
    if (v == null) return '';
    const a = Math.abs(v);
    if (a !== 0 && (a < 1e-3 || a >= 1e6)) return v.toExponential(1);
    return String(+v.toPrecision(6));
  }
  const fmtPct = v => (v == null || !isFinite(v) ? '–' : (v * 100).toFixed(1) + '%');
  const fmtPctAxis = v => (v == null ? '' : +(v * 100).toFixed(2) + '%');
  function fmtDuration(s) {
    if (s == null || !isFinite(s) || s < 0) return '–';
    s = Math.round(s);
    if (s < 60) return s + 's';
    const m = Math.floor(s / 60), sec = s % 60;
    if (m < 60) return m + 'm ' + String(sec).padStart(2, '0') + 's';
    const hr = Math.floor(m / 60);
    if (hr < 48) return hr + 'h ' + String(m % 60).padStart(2, '0') + 'm';
    return Math.floor(hr / 24) + 'd ' + (hr % 24) + 'h';
  }
  function fmtClock(s) { /* elapsed seconds as h:mm:ss or m:ss */
    if (s == null || !isFinite(s)) return '';
    const neg = s < 0;
    s = Math.abs(s);
    const hr = Math.floor(s / 3600), m = Math.floor(s / 60) % 60, sec = s % 60;
    const secText = (Number.isInteger(sec) || s >= 60 ? String(Math.floor(sec)) : sec.toFixed(1)).padStart(2, '0');
    return (neg ? '-' : '') + (hr ? hr + ':' + String(m).padStart(2, '0') : String(m)) + ':' + secText;
  }
  function fmtAgo(t) {
    if (!t) return '–';
    const d = Date.now() / 1000 - t;
    if (d < 45) return 'just now';
    if (d < 3600) return Math.round(d / 60) + ' min ago';
    if (d < 86400) return Math.round(d / 3600) + ' h ago';
    return new Date(t * 1000).toLocaleDateString();
  }
  const fmtTime = t => (t ? new Date(t * 1000).toLocaleString() : '–');

  function toast(message, kind) {
    const el = h('div', {class: 'toast' + (kind ? ' ' + kind : '')}, message);
    $('#toasts').append(el);
    setTimeout(() => el.remove(), kind === 'error' ? 7000 : 3500);
  }

  // ---- the token ----

  const Token = {
    get() { try { return localStorage.getItem(TOKEN_KEY) || ''; } catch (e) { return ''; } },
    set(t) { try { localStorage.setItem(TOKEN_KEY, t); } catch (e) { /* kept for this page only */ } memoryToken = t; updateTokenButton(); },
    clear() { try { localStorage.removeItem(TOKEN_KEY); } catch (e) { /* nothing kept */ } memoryToken = ''; updateTokenButton(); },
  };
  let memoryToken = '';
  const token = () => Token.get() || memoryToken;
  let readsNeedToken = false; /* the daemon listens off loopback: reads need the token too */

  function updateTokenButton() {
    const b = $('#token-button');
    if (!b) return;
    b.classList.toggle('has-token', !!token());
    b.title = token() ? 'the API token is kept in this browser' : 'enter the API token';
  }

  let tokenWaiters = [];
  /* Opens the token dialog; resolves with the token, or '' when dismissed. */
  function askToken(reason) {
    const dialog = $('#token-dialog');
    $('#token-reason').textContent = reason || 'Submitting, cancelling, pausing and resuming jobs need the daemon\'s API token.';
    $('#token-error').hidden = true;
    const input = $('#token-input');
    input.value = token();
    if (!dialog.open) dialog.showModal();
    input.focus();
    return new Promise(resolve => tokenWaiters.push(resolve));
  }
  function closeTokenDialog(value) {
    const dialog = $('#token-dialog');
    if (dialog.open) dialog.close();
    const waiters = tokenWaiters;
    tokenWaiters = [];
    waiters.forEach(w => w(value));
  }
  function setupTokenDialog() {
    $('#token-form').addEventListener('submit', e => {
      e.preventDefault();
      const value = $('#token-input').value.trim();
      if (!value) {
        $('#token-error').textContent = 'The token is empty.';
        $('#token-error').hidden = false;
        return;
      }
      Token.set(value);
      closeTokenDialog(value);
      toast('Token saved in this browser.');
    });
    $('#token-cancel').addEventListener('click', () => closeTokenDialog(''));
    $('#token-forget').addEventListener('click', () => { Token.clear(); closeTokenDialog(''); toast('Token forgotten.'); });
    $('#token-dialog').addEventListener('cancel', () => closeTokenDialog(''));
    $('#token-button').addEventListener('click', () => askToken('The daemon\'s API token, kept in this browser.'));
    updateTokenButton();
  }

  // ---- the API ----

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  function setConn(up, text) {
    const el = $('#conn');
    if (!el) return;
    el.className = 'conn ' + (up ? 'up' : 'down');
    if (text) el.textContent = text;
    else if (!up) el.textContent = 'daemon unreachable';
  }

  /* method, path under /api/v1, body (object or JSON text). Resolves with the
   * parsed reply; rejects with ApiError (status 0 when there was no answer). */
  async function api(method, path, body) {
    const mutating = method !== 'GET' && method !== 'HEAD';
    let t = token();
    if (mutating && !t) {
      t = await askToken('This needs the daemon\'s API token.');
      if (!t) throw new ApiError(0, 'no_token', 'no token given: the request was not sent');
    }
    for (let attempt = 0; ; attempt++) {
      const headers = {};
      if (t) headers.Authorization = 'Bearer ' + t;
      let payload;
      if (body !== undefined) {
        headers['Content-Type'] = 'application/json';
        payload = typeof body === 'string' ? body : JSON.stringify(body);
      }
      let res;
      try {
        res = await fetch(API + path, {method, headers, body: payload, cache: 'no-store'});
      } catch (e) {
        setConn(false);
        throw new ApiError(0, 'network', 'the daemon does not answer (' + e.message + ')');
      }
      setConn(true, connText);
      const text = await res.text();
      let data = null;
      if (text) {
        try { data = JSON.parse(text); } catch (e) { data = text; }
      }
      if (res.status === 401 && attempt === 0) {
        if (!mutating) readsNeedToken = true;
        const refused = !!t;
        if (refused) Token.clear();
        t = await askToken(refused ? 'The daemon refused the token: enter the current one.'
          : 'This daemon needs its API token for every request.');
        if (!t) throw new ApiError(401, 'unauthorized', 'the daemon needs the API token');
        continue;
      }
      if (!res.ok) {
        const err = (data && data.error) || {};
        throw new ApiError(res.status, err.code || 'http_' + res.status, err.message || res.statusText || 'HTTP ' + res.status);
      }
      return data;
    }
  }
  let connText = 'connected';

  /* Every job, newest first (the list is keyset-paged; at most `max`). */
  async function listJobs(state, max) {
    const jobs = [];
    let cursor = '';
    while (jobs.length < max) {
      const q = 'limit=' + Math.min(500, max - jobs.length) + (state ? '&state=' + state : '') + (cursor ? '&cursor=' + enc(cursor) : '');
      const page = await api('GET', '/jobs?' + q);
      jobs.push(...page.jobs);
      if (!page.next_cursor) break;
      cursor = page.next_cursor;
    }
    return jobs;
  }

  /* Pages a job's metrics after `after` into data (a JobData); returns the
   * number of points read. stop() true abandons it (the view went away). */
  async function loadMetrics(id, data, after, names, stop) {
    let count = 0;
    for (;;) {
      const q = 'limit=' + METRICS_PAGE + '&after_step=' + after + (names ? '&names=' + names.join(',') : '');
      const page = await api('GET', '/jobs/' + enc(id) + '/metrics?' + q);
      if (stop && stop()) return count;
      for (const p of page.points) data.add(p.name, p.step, p.value, p.time);
      count += page.points.length;
      if (page.next_after_step == null) return count;
      after = page.next_after_step;
    }
  }

  /* A job's metrics downsampled by the server for display (per name and
   * bucket the least and the greatest value: spikes survive; the whole series
   * when it is short) into data: all of it, or the steps [from, to] at finer
   * detail in place of what data had there. Returns the bucket width in steps
   * (1 or 2: every point). CSV export reads the full series instead. */
  async function loadBuckets(id, data, names, from, to) {
    let q = 'buckets=' + DISPLAY_BUCKETS + (names ? '&names=' + names.join(',') : '');
    if (from != null) q += '&from_step=' + Math.max(0, Math.floor(from)) + '&to_step=' + Math.max(0, Math.ceil(to));
    const page = await api('GET', '/jobs/' + enc(id) + '/metrics?' + q);
    if (from == null) for (const p of page.points) data.add(p.name, p.step, p.value, p.time);
    else data.replaceRange(Math.floor(from), Math.ceil(to), page.points, names);
    return page.bucket_steps;
  }

  // ---- series ----

  function lowerBound(a, n, v) { /* first i with a[i] >= v */
    let lo = 0, hi = n;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (a[mid] < v) lo = mid + 1; else hi = mid;
    }
    return lo;
  }
  function upperBound(a, n, v) { /* first i with a[i] > v */
    let lo = 0, hi = n;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (a[mid] <= v) lo = mid + 1; else hi = mid;
    }
    return lo;
  }

  /* One metric of one job: (step, value, time), steps increasing. A step that
   * is not after the last one replaces the points from it on (a job resumed
   * from a checkpoint computes those steps again). A null value is NaN. */
  class Series {
    constructor(name) {
      this.name = name;
      this.n = 0;
      this.step = new Float64Array(256);
      this.value = new Float64Array(256);
      this.time = new Float64Array(256);
      this.version = 0;
    }
    push(step, value, time) {
      let n = this.n;
      const v = value == null ? NaN : value;
      if (n > 0 && step <= this.step[n - 1]) {
        if (step === this.step[n - 1]) {
          this.value[n - 1] = v;
          this.time[n - 1] = time;
          this.version++;
          return;
        }
        n = this.n = lowerBound(this.step, n, step);
      }
      if (n === this.step.length) {
        const grow = a => { const b = new Float64Array(a.length * 2); b.set(a); return b; };
        this.step = grow(this.step);
        this.value = grow(this.value);
        this.time = grow(this.time);
      }
      this.step[n] = step;
      this.value[n] = v;
      this.time[n] = time;
      this.n = n + 1;
      this.version++;
    }
    /* The points with a <= step <= b become `points` (sorted by step, inside). */
    replaceRange(a, b, points) {
      const i = lowerBound(this.step, this.n, a), j = upperBound(this.step, this.n, b), n = this.n - (j - i) + points.length;
      const size = Math.max(256, n), step = new Float64Array(size), value = new Float64Array(size), time = new Float64Array(size);
      step.set(this.step.subarray(0, i));
      value.set(this.value.subarray(0, i));
      time.set(this.time.subarray(0, i));
      points.forEach((p, k) => { step[i + k] = p.step; value[i + k] = p.value == null ? NaN : p.value; time[i + k] = p.time; });
      step.set(this.step.subarray(j, this.n), i + points.length);
      value.set(this.value.subarray(j, this.n), i + points.length);
      time.set(this.time.subarray(j, this.n), i + points.length);
      Object.assign(this, {step, value, time, n});
      this.version++;
    }
    last() { return this.n ? this.value[this.n - 1] : NaN; }
    lastStep() { return this.n ? this.step[this.n - 1] : -1; }
    max() {
      let m = NaN;
      for (let i = 0; i < this.n; i++) if (!(this.value[i] <= m)) m = isNaN(this.value[i]) ? m : this.value[i];
      return m;
    }
  }

  /* A job's series by metric name. */
  class JobData {
    constructor() {
      this.series = new Map();
      this.maxStep = -1;
      this.t0 = NaN;
      this.version = 0;
    }
    get(name) {
      let s = this.series.get(name);
      if (!s) {
        s = new Series(name);
        this.series.set(name, s);
      }
      return s;
    }
    has(name) { const s = this.series.get(name); return !!s && s.n > 0; }
    /* The server's finer points of steps [a, b] replace the ones held there
     * (of the given names, or of every series). */
    replaceRange(a, b, points, names) {
      const byName = new Map();
      for (const p of points) {
        if (!byName.has(p.name)) byName.set(p.name, []);
        byName.get(p.name).push(p);
      }
      for (const name of new Set([...(names || this.series.keys()), ...byName.keys()])) this.get(name).replaceRange(a, b, byName.get(name) || []);
      this.version++;
    }
    add(name, step, value, time) {
      this.get(name).push(step, value, time);
      if (step > this.maxStep) this.maxStep = step;
      if (!(time >= this.t0)) this.t0 = time;
      this.version++;
    }
  }

  /* TensorBoard's smoothing: an exponential moving average whose start is
   * debiased (divided by 1 - w^k), so the first points are not pulled to 0.
   * Non-finite values are skipped (NaN out). Cached on the series' version. */
  function ema(series, w) {
    const c = series._ema;
    if (c && c.version === series.version && c.w === w && c.n === series.n) return c.y;
    const n = series.n, y = new Float64Array(Math.max(1, n)), v = series.value;
    let acc = 0, k = 0;
    for (let i = 0; i < n; i++) {
      const x = v[i];
      if (!isFinite(x)) { y[i] = NaN; continue; }
      acc = acc * w + (1 - w) * x;
      k++;
      y[i] = w >= 1 ? x : acc / (1 - Math.pow(w, k));
    }
    series._ema = {version: series.version, w, n, y};
    return y;
  }

  // ---- downsampling for display ----

  /* Appends to out the indices of [a, b) to draw with `buckets` buckets: all
   * of them when they are few, else per bucket the index of the least and of
   * the greatest y (in index order), so spikes survive. */
  function pickRange(y, a, b, buckets, out) {
    const n = b - a;
    if (n <= 0) return;
    if (n <= buckets * 2) {
      for (let i = a; i < b; i++) out.push(i);
      return;
    }
    for (let k = 0; k < buckets; k++) {
      const s = a + Math.floor(k * n / buckets), e = a + Math.floor((k + 1) * n / buckets);
      let lo = -1, hi = -1, vlo = Infinity, vhi = -Infinity;
      for (let i = s; i < e; i++) {
        const v = y[i];
        if (v < vlo) { vlo = v; lo = i; }
        if (v > vhi) { vhi = v; hi = i; }
      }
      if (lo < 0) out.push(s); /* all NaN: one point keeps the gap */
      else if (lo === hi) out.push(lo);
      else if (lo < hi) out.push(lo, hi);
      else out.push(hi, lo);
    }
  }

  /* The indices of a track to draw: pixel resolution inside [lo, hi] (display
   * x), coarse outside; everything at pixel resolution when range is null. */
  function pickIndices(track, range, pixels) {
    const {x, y, n} = track, off = track.off || 0, out = [];
    if (!range) {
      pickRange(y, 0, n, pixels, out);
      return out;
    }
    const a = Math.max(0, lowerBound(x, n, range[0] + off) - 1);
    const b = Math.min(n, upperBound(x, n, range[1] + off) + 1);
    pickRange(y, 0, a, OUTSIDE_BUCKETS, out);
    pickRange(y, a, b, pixels, out);
    pickRange(y, b, n, OUTSIDE_BUCKETS, out);
    return out;
  }

  /* uPlot's aligned data from tracks ({x, y, n, off}): each downsampled on
   * its own (but a track with `follow` takes the previous track's points: a
   * smoothed line drawn where its raw line is), then joined on their x
   * values (null where a track has none). */
  function buildData(tracks, range, pixels, yLog) {
    let prev = null;
    const cols = tracks.map(t => {
      const idx = t.follow && prev && prev.x === t.x && prev.n === t.n ? prev.idx : pickIndices(t, range, pixels), m = idx.length;
      prev = {x: t.x, n: t.n, idx};
      const xs = new Float64Array(m), ys = new Array(m), off = t.off || 0;
      for (let j = 0; j < m; j++) {
        const i = idx[j], v = t.y[i];
        xs[j] = t.x[i] - off;
        ys[j] = !isFinite(v) || (yLog && v <= 0) ? null : v;
      }
      return {xs, ys};
    });
    if (cols.length === 1) return [Array.from(cols[0].xs), cols[0].ys];
    let total = 0;
    for (const c of cols) total += c.xs.length;
    const all = new Float64Array(total);
    let p = 0;
    for (const c of cols) { all.set(c.xs, p); p += c.xs.length; }
    all.sort();
    const X = [];
    for (let i = 0; i < total; i++) if (i === 0 || all[i] !== all[i - 1]) X.push(all[i]);
    const out = [X];
    for (const c of cols) {
      const ys = new Array(X.length).fill(null);
      let k = 0;
      for (let j = 0; j < c.xs.length; j++) {
        while (X[k] < c.xs[j]) k++;
        if (c.ys[j] != null) ys[k] = c.ys[j];
      }
      out.push(ys);
    }
    return out;
  }

  // ---- a chart ----

  const X_LABELS = {step: 'step', elapsed: 'elapsed', wall: 'time'};

  /* A uPlot chart of tracks: {label, color, width, dash, points, counted, x,
   * y, n, off}. Drag to zoom (the x range is redrawn at full detail), double
   * click to zoom out. data-points on the element: the points of the counted
   * tracks held (all of them, or the server's downsampled ones). */
  class Chart {
    constructor(parent, opts) {
      this.opts = Object.assign({height: 210, fmt: fmtNum, axis: fmtAxis}, opts);
      this.el = h('section', {class: 'chart', dataset: {chart: opts.key, points: '0', drawn: '0'}},
        h('header', null, h('h3', null, opts.title), this.subEl = h('span', {class: 'sub'}, opts.sub || '')),
        this.body = h('div', {class: 'chart-body'}),
        this.emptyEl = h('div', {class: 'chart-empty'}, opts.empty || 'no data yet'));
      parent.append(this.el);
      this.tracks = [];
      this.xMode = 'step';
      this.yLog = false;
      this.range = null;
      this.u = null;
      this.signature = '';
      this.frame = 0;
      this.width = 0;
      this.onZoom = null;
      this.renderMs = 0;
      this.ro = new ResizeObserver(() => {
        if (this.body.clientWidth && this.body.clientWidth !== this.width) this.schedule();
      });
      this.ro.observe(this.body);
    }
    set(tracks, xMode, yLog) {
      this.tracks = tracks;
      if (xMode !== this.xMode && this.range) this.zoom(null);
      this.xMode = xMode;
      this.yLog = !!yLog;
      this.schedule();
    }
    setEmpty(text) { this.emptyEl.textContent = text; }
    setSub(text) { this.subEl.textContent = text; }
    zoom(range) {
      this.range = range;
      this.el.dataset.range = range ? range[0].toPrecision(6) + ',' + range[1].toPrecision(6) : '';
      this.schedule();
    }
    schedule() {
      if (this.frame) return;
      this.frame = requestAnimationFrame(() => {
        this.frame = 0;
        this.render();
      });
    }
    uplotOptions(width) {
      const xMode = this.xMode, o = this.opts;
      const fmtX = v => (v == null ? '–' : xMode === 'step' ? String(Math.round(v))
        : xMode === 'elapsed' ? fmtClock(v) : new Date(v * 1000).toLocaleTimeString());
      return {
        width, height: o.height,
        padding: [8, 22, 0, 0],
        scales: {
          x: {time: xMode === 'wall'},
          y: this.yLog ? {distr: 3, log: 10} : (o.yRange ? {range: o.yRange} : {}),
        },
        series: [
          {label: X_LABELS[xMode], value: (u, v) => fmtX(v)},
          ...this.tracks.map(t => ({
            label: t.label, stroke: t.color, width: t.width || 1.5, dash: t.dash, spanGaps: true,
            points: t.points ? {show: true, size: 6, fill: t.color} : {show: false},
            value: (u, v) => (v == null ? '–' : o.fmt(v)),
          })),
        ],
        axes: [
          {
            stroke: '#667085', grid: {stroke: '#eef0f3', width: 1}, ticks: {stroke: '#e3e6ea', width: 1},
            values: xMode === 'wall' ? undefined : (u, splits) => splits.map(v => (xMode === 'step' ? fmtAxis(v) : fmtClock(v))),
          },
          {
            stroke: '#667085', grid: {stroke: '#eef0f3', width: 1}, ticks: {stroke: '#e3e6ea', width: 1}, size: 58,
            values: (u, splits) => splits.map(v => o.axis(v)),
          },
        ],
        cursor: {
          drag: {x: true, y: false, setScale: false},
          bind: {dblclick: () => () => { this.userZoom(null); return null; }},
        },
        legend: {live: true},
        hooks: {
          setSelect: [u => {
            if (u.select.width < 3) return;
            const a = u.posToVal(u.select.left, 'x'), b = u.posToVal(u.select.left + u.select.width, 'x');
            u.setSelect({left: 0, top: 0, width: 0, height: 0}, false);
            this.userZoom([a, b]);
          }],
        },
      };
    }
    userZoom(range) {
      if (this.onZoom) this.onZoom(range);
      else this.zoom(range);
    }
    render() {
      if (typeof uPlot === 'undefined') return;
      const t0 = performance.now();
      const width = Math.max(240, this.body.clientWidth || 480);
      const signature = [this.xMode, this.yLog, ...this.tracks.map(t => t.label + t.color + (t.dash || '') + (t.points ? 'p' : ''))].join('|');
      const pixels = Math.max(64, Math.round(width - 70));
      const data = buildData(this.tracks, this.range, pixels, this.yLog);
      let points = 0;
      for (const t of this.tracks) if (t.counted) points += t.n;
      this.el.dataset.points = String(points);
      this.el.dataset.drawn = String(data[0].length);
      this.emptyEl.hidden = this.tracks.some(t => t.n > 0);
      if (!this.u || signature !== this.signature) {
        if (this.u) this.u.destroy();
        this.signature = signature;
        this.u = new uPlot(this.uplotOptions(width), data, this.body);
      } else {
        this.u.setData(data);
        if (width !== this.width) this.u.setSize({width, height: this.opts.height});
      }
      this.width = width;
      if (this.range && data[0].length > 1) this.u.setScale('x', {min: this.range[0], max: this.range[1]});
      this.renderMs = performance.now() - t0;
      this.el.dataset.renderMs = this.renderMs.toFixed(1);
    }
    destroy() {
      if (this.frame) cancelAnimationFrame(this.frame);
      this.ro.disconnect();
      if (this.u) this.u.destroy();
      this.u = null;
    }
  }

  /* Charts that zoom together (same x); onRange(range) after each zoom. */
  function zoomGroup(charts, onRange) {
    for (const c of charts) c.onZoom = range => { charts.forEach(d => d.zoom(range)); if (onRange) onRange(range); };
  }

  /* The steps a zoomed x range covers: the range itself on the step axis,
   * else looked up in a series' times. */
  function stepsOf(data, range, xMode) {
    if (xMode === 'step') return range;
    let s = null;
    for (const t of data.series.values()) if (!s || t.n > s.n) s = t;
    if (!s || !s.n) return null;
    const off = xMode === 'elapsed' ? data.t0 : 0;
    const i = Math.max(0, lowerBound(s.time, s.n, range[0] + off) - 1), j = Math.min(s.n - 1, upperBound(s.time, s.n, range[1] + off));
    return [s.step[i], s.step[j]];
  }

  /* The chart controls shared by the job and compare pages: smoothing,
   * x axis, log scale. onChange() after each change (prefs saved). */
  function chartControls(onChange, withWall) {
    const out = h('output', null, prefs.smoothing.toFixed(3));
    const slider = h('input', {type: 'range', min: '0', max: '0.999', step: '0.001', value: String(prefs.smoothing), id: 'smoothing',
      oninput: () => { prefs.smoothing = +slider.value; out.textContent = prefs.smoothing.toFixed(3); savePrefs(); onChange(); }});
    const xSelect = h('select', {id: 'x-axis', onchange: () => { prefs.xMode = xSelect.value; savePrefs(); onChange(); }},
      h('option', {value: 'step'}, 'step'), h('option', {value: 'elapsed'}, 'elapsed time'),
      withWall ? h('option', {value: 'wall'}, 'wall clock') : null);
    if (!withWall && prefs.xMode === 'wall') prefs.xMode = 'elapsed';
    xSelect.value = prefs.xMode;
    const log = h('input', {type: 'checkbox', id: 'log-scale', checked: prefs.yLog,
      onchange: () => { prefs.yLog = log.checked; savePrefs(); onChange(); }});
    return h('div', {class: 'chart-controls'},
      h('label', {class: 'inline', title: 'exponential moving average of the loss, debiased at the start'}, 'Smoothing', slider, out),
      h('label', {class: 'inline'}, 'x axis', xSelect),
      h('label', {class: 'inline', title: 'logarithmic y axis for the loss and learning rate'}, log, 'log scale'),
      h('span', {class: 'muted', style: 'font-size:12px'}, 'drag on a chart to zoom, double-click to zoom out'));
  }

  // ---- CSV export ----

  const CSV_ORDER = ['loss', 'lr', 'grad_norm', 'images_per_second', 'test_top1', 'val_top1', 'teacher_test_top1',
    'teacher_aug_top1', 'test_agreement', 'teacher_val_top1', 'val_distill_loss'];

  /* Every metric point of a job, paged from the API: one row per step,
   * "step,time,<metric>..." (time: Unix seconds of the step's first point). */
  async function metricsCsv(id) {
    const rows = new Map(), names = new Set();
    let after = -1;
    for (;;) {
      const page = await api('GET', '/jobs/' + enc(id) + '/metrics?limit=' + METRICS_PAGE + '&after_step=' + after);
      for (const p of page.points) {
        let row = rows.get(p.step);
        if (!row) rows.set(p.step, row = {time: p.time, values: {}});
        if (p.time < row.time) row.time = p.time;
        row.values[p.name] = p.value;
        names.add(p.name);
      }
      if (page.next_after_step == null) break;
      after = page.next_after_step;
    }
    const cols = CSV_ORDER.filter(n => names.has(n)).concat([...names].filter(n => !CSV_ORDER.includes(n)).sort());
    const lines = [['step', 'time', ...cols].join(',')];
    for (const step of [...rows.keys()].sort((a, b) => a - b)) {
      const row = rows.get(step);
      lines.push([step, row.time.toFixed(6), ...cols.map(c => (row.values[c] == null ? '' : String(row.values[c])))].join(','));
    }
    return {text: lines.join('\n') + '\n', rows: rows.size};
  }

  function download(filename, text, type) {
    const url = URL.createObjectURL(new Blob([text], {type}));
    const a = h('a', {href: url, download: filename});
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  }

  // ---- views ----

  const view = {current: null};

  function stateBadge(state) { return h('span', {class: 'badge ' + state, dataset: {state}}, state); }
  function progressOf(job) { return job.total_steps > 0 ? Math.min(1, job.step / job.total_steps) : 0; }

  /* ---- #/ the jobs table ---- */

  const jobsUi = {sort: 'created', desc: true, selected: new Set(), autoRefresh: true};

  function JobsView(params) {
    const filter = STATES.includes(params.get('state')) ? params.get('state') : '';
    let destroyed = false, timer = 0, jobs = [], counts = null;
    const chips = h('div', {class: 'chips', id: 'state-chips'});
    const compareButton = h('button', {id: 'compare-selected', type: 'button',
      onclick: () => { location.hash = '#/compare?ids=' + [...jobsUi.selected].join(','); }});
    const auto = h('input', {type: 'checkbox', id: 'auto-refresh', checked: jobsUi.autoRefresh,
      onchange: () => { jobsUi.autoRefresh = auto.checked; if (auto.checked) refresh(); }});
    const tbody = h('tbody');
    const columns = [
      {key: 'select', label: ''},
      {key: 'id', label: 'Job', sort: j => j.id},
      {key: 'kind', label: 'Kind', sort: j => j.kind},
      {key: 'state', label: 'State', sort: j => STATES.indexOf(j.state)},
      {key: 'progress', label: 'Progress', sort: j => progressOf(j)},
      {key: 'created', label: 'Submitted', sort: j => j.created_at},
      {key: 'updated', label: 'Updated', sort: j => j.updated_at},
      {key: 'error', label: ''},
    ];
    const headRow = h('tr');
    const thead = h('thead', null, headRow);
    function drawHead() {
      headRow.replaceChildren(...columns.map(c => {
        if (!c.sort) return h('th');
        const active = jobsUi.sort === c.key;
        return h('th', {class: 'sortable', dataset: {sort: c.key}, title: 'sort by ' + c.label.toLowerCase(),
          onclick: () => {
            if (jobsUi.sort === c.key) jobsUi.desc = !jobsUi.desc;
            else { jobsUi.sort = c.key; jobsUi.desc = c.key === 'created' || c.key === 'updated' || c.key === 'progress'; }
            drawHead();
            drawRows();
          }}, c.label, active ? h('span', {class: 'arrow'}, jobsUi.desc ? '▼' : '▲') : null);
      }));
    }
    function drawChips() {
      const total = counts ? STATES.reduce((s, k) => s + (counts[k] || 0), 0) : null;
      const chip = (state, label, n) => h('a', {class: 'chip' + (filter === state ? ' active' : ''), href: state ? '#/?state=' + state : '#/',
        dataset: {state: state || 'all'}}, label, h('span', {class: 'count'}, n == null ? '…' : String(n)));
      chips.replaceChildren(chip('', 'all', total), ...STATES.map(s => chip(s, s, counts ? counts[s] || 0 : null)));
    }
    function drawCompareButton() {
      const n = jobsUi.selected.size;
      compareButton.textContent = 'Compare selected (' + n + ')';
      compareButton.disabled = n < 1;
    }
    function drawRows() {
      const col = columns.find(c => c.key === jobsUi.sort) || columns[5];
      const sorted = jobs.slice().sort((a, b) => {
        const x = col.sort(a), y = col.sort(b);
        const r = x < y ? -1 : x > y ? 1 : b.created_at - a.created_at;
        return jobsUi.desc ? -r : r;
      });
      if (!sorted.length) {
        tbody.replaceChildren(h('tr', {class: 'empty'}, h('td', {colspan: columns.length},
          filter ? 'No ' + filter + ' jobs.' : 'No jobs yet. ', filter ? null : h('a', {href: '#/submit'}, 'Submit one.'))));
        return;
      }
      tbody.replaceChildren(...sorted.map(j => {
        const p = progressOf(j);
        const box = h('input', {type: 'checkbox', checked: jobsUi.selected.has(j.id), title: 'select for comparison',
          onchange: () => {
            if (box.checked) {
              if (jobsUi.selected.size >= MAX_COMPARE) { box.checked = false; toast('At most ' + MAX_COMPARE + ' jobs compare at once.', 'error'); return; }
              jobsUi.selected.add(j.id);
            } else jobsUi.selected.delete(j.id);
            drawCompareButton();
          }});
        return h('tr', {dataset: {job: j.id, state: j.state}},
          h('td', null, box),
          h('td', {class: 'id'}, h('a', {href: '#/job/' + j.id}, j.id)),
          h('td', null, h('span', {class: 'badge kind'}, j.kind)),
          h('td', null, stateBadge(j.state), j.request ? h('span', {class: 'muted', style: 'font-size:12px'}, ' ' + j.request + ' requested') : null),
          h('td', null, h('span', {class: 'mini-bar ' + j.state}, h('span', {style: 'width:' + (p * 100).toFixed(1) + '%'})),
            h('span', {class: 'muted'}, j.step + ' / ' + (j.total_steps || '?'))),
          h('td', {title: fmtTime(j.created_at)}, fmtAgo(j.created_at)),
          h('td', {title: fmtTime(j.updated_at)}, fmtAgo(j.updated_at)),
          h('td', {class: 'err', title: j.error || ''}, j.error ? j.error.slice(0, 120) : ''));
      }));
    }
    async function refresh() {
      clearTimeout(timer);
      try {
        const [health, list] = await Promise.all([api('GET', '/health'), listJobs(filter, 2000)]);
        if (destroyed) return;
        counts = health.jobs;
        jobs = list;
        drawChips();
        drawRows();
        // forget selections of jobs that are gone
        if (!filter) for (const id of jobsUi.selected) if (!jobs.some(j => j.id === id)) jobsUi.selected.delete(id);
        drawCompareButton();
      } catch (e) {
        if (destroyed) return;
        if (!jobs.length) tbody.replaceChildren(h('tr', {class: 'empty'}, h('td', {colspan: columns.length, class: 'error'}, e.message)));
      }
      if (!destroyed && jobsUi.autoRefresh) timer = setTimeout(refresh, JOBS_REFRESH_MS);
    }
    drawHead();
    drawChips();
    drawCompareButton();
    tbody.append(h('tr', {class: 'empty'}, h('td', {colspan: columns.length}, 'Loading…')));
    const el = h('div', {class: 'jobs-view'},
      h('div', {class: 'view-title'}, h('h1', null, 'Jobs'), h('span', {class: 'spacer'}),
        h('a', {class: 'button', href: '#/submit'}, '+ New job')),
      h('div', {class: 'toolbar'}, chips, h('span', {class: 'spacer'}),
        h('label', {class: 'inline', title: 'refresh every ' + JOBS_REFRESH_MS / 1000 + ' s'}, auto, 'auto-refresh'),
        h('button', {type: 'button', onclick: () => refresh()}, 'Refresh'), compareButton),
      h('table', {class: 'jobs', id: 'jobs-table'}, thead, tbody));
    refresh();
    return {el, destroy() { destroyed = true; clearTimeout(timer); }};
  }

  /* ---- #/submit the spec editor ---- */

  let draft = null; /* the editor's text survives a trip to another view */

  function jsonErrorPosition(text, message) {
    let m = /line (\d+) column (\d+)/i.exec(message);
    if (m) {
      const lines = text.split('\n');
      let pos = 0;
      for (let i = 0; i < +m[1] - 1 && i < lines.length; i++) pos += lines[i].length + 1;
      return pos + +m[2] - 1;
    }
    m = /position (\d+)/i.exec(message);
    return m ? +m[1] : -1;
  }
  function lineCol(text, pos) {
    const before = text.slice(0, pos).split('\n');
    return {line: before.length, column: before[before.length - 1].length + 1};
  }

  /* Where the key a message names ("model.depth: ...") is in the editor:
   * [start, end] of its last segment's name, found after its parents. */
  function keyRange(text, path) {
    let from = 0, found = null;
    for (const seg of path.split('.')) {
      const re = new RegExp('"' + seg.replace(/[.*+?^${}()|[\]\\]/g, '\\$&') + '"\\s*:', 'g');
      re.lastIndex = from;
      const m = re.exec(text);
      if (!m) return found;
      found = [m.index, m.index + seg.length + 2];
      from = m.index + m[0].length;
    }
    return found;
  }

  function SubmitView(params) {
    const recipeName = params.get('recipe') || 'demo';
    const select = h('select', {id: 'recipe', onchange: () => {
      const r = RECIPES.find(x => x.name === select.value);
      if (r) { editor.value = JSON.stringify(r.spec, null, 2); validate(); clearError(); }
    }}, RECIPES.map(r => h('option', {value: r.name}, r.title)));
    const editor = h('textarea', {class: 'editor', id: 'spec-editor', spellcheck: 'false', autocomplete: 'off', 'aria-label': 'job spec (JSON)',
      oninput: () => { draft = editor.value; validate(); },
      onkeydown: e => {
        if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) { e.preventDefault(); submit(); }
        else if (e.key === 'Tab' && !e.shiftKey) {
          e.preventDefault();
          editor.setRangeText('  ', editor.selectionStart, editor.selectionEnd, 'end');
          draft = editor.value;
        }
      }});
    const status = h('p', {class: 'editor-status', id: 'editor-status'});
    const errorBox = h('div', {class: 'form-error', id: 'submit-error', role: 'alert', hidden: true});
    const submitButton = h('button', {type: 'button', class: 'primary', id: 'submit-job', onclick: () => submit()}, 'Submit job');
    const initial = RECIPES.find(r => r.name === recipeName) || RECIPES[0];
    select.value = initial.name;
    editor.value = draft != null && !params.get('recipe') ? draft : JSON.stringify(initial.spec, null, 2);

    function validate() {
      try {
        const spec = JSON.parse(editor.value);
        if (!spec || typeof spec !== 'object' || Array.isArray(spec)) throw new Error('the spec must be a JSON object');
        status.className = 'editor-status ok';
        status.textContent = 'valid JSON — ' + (spec.kind || '?') + ' job, ' +
          (spec.steps != null ? spec.steps + ' steps' : spec.epochs != null ? spec.epochs + ' epochs' : 'no length');
        editor.removeAttribute('aria-invalid');
        return spec;
      } catch (e) {
        const pos = jsonErrorPosition(editor.value, e.message);
        const where = pos >= 0 ? ' (line ' + lineCol(editor.value, pos).line + ', column ' + lineCol(editor.value, pos).column + ')' : '';
        status.className = 'editor-status error';
        status.textContent = 'not valid JSON: ' + e.message.replace(/ in JSON at position \d+.*$/, '') + where;
        editor.setAttribute('aria-invalid', 'true');
        return null;
      }
    }
    function clearError() { errorBox.hidden = true; errorBox.replaceChildren(); }
    function showError(code, message) {
      errorBox.replaceChildren(h('span', {class: 'code'}, code), message);
      errorBox.hidden = false;
      editor.setAttribute('aria-invalid', 'true');
      // put the cursor on what the message names
      const m = /^([A-Za-z_][\w]*(?:\.[A-Za-z_]\w*)*)(?: and \w+)?:/.exec(message);
      const r = m && m[1] !== 'spec' ? keyRange(editor.value, m[1]) : null;
      const lc = /\(line (\d+), column (\d+)\)/.exec(message);
      if (r) {
        editor.focus();
        editor.setSelectionRange(r[0], r[1]);
        errorBox.dataset.key = m[1];
      } else if (lc) {
        const pos = jsonErrorPosition(editor.value, 'line ' + lc[1] + ' column ' + lc[2]);
        editor.focus();
        editor.setSelectionRange(pos, pos + 1);
      }
    }
    async function submit() {
      clearError();
      const spec = validate();
      if (!spec) { showError('bad_json', status.textContent); return; }
      submitButton.disabled = true;
      try {
        const job = await api('POST', '/jobs', editor.value);
        draft = null;
        toast('Submitted job ' + job.id + '.');
        location.hash = '#/job/' + job.id;
      } catch (e) {
        showError(e.code, e.message);
      } finally {
        submitButton.disabled = false;
      }
    }
    validate();
    const help = h('dl', {class: 'help'},
      h('dt', null, 'kind'), h('dd', null, '"train" (on labels) or "distill" (from a teacher)'),
      h('dt', null, 'dataset'), h('dd', null, 'a built-in name ("fashion-mnist") or {"name", "subset_size", "val_size", "test_size", …}'),
      h('dt', null, 'model'), h('dd', null, '{"depth": [blocks per stage], "base_width", "width", "gn_groups", "stem": "small" | "bit", "block": "bottleneck" | "basic"}'),
      h('dt', null, 'teacher'), h('dd', null, 'distill only: a weights file in the data directory, or {"job": "<id of a finished train job>"}'),
      h('dt', null, 'teacher_precision'), h('dd', null, '"float32" or "bfloat16": the teacher\'s forward in bfloat16, faster on a CPU with AVX512-BF16'),
      h('dt', null, 'precision'), h('dd', null, '"float32" or "bfloat16": the trained model\'s convolutions in bfloat16, weights and optimizer in float (mixed precision), faster on a CPU with AVX512-BF16'),
      h('dt', null, 'steps | epochs'), h('dd', null, 'the schedule\'s length; with "warmup_steps", "lr", "weight_decay", "batch_size"'),
      h('dt', null, 'eval_every, checkpoint_every'), h('dd', null, 'in steps'),
      h('dt', null, 'crop, crop_area, flip, mixup, temperature, seed'), h('dd', null, 'augmentation and distillation'));
    const el = h('div', {class: 'submit-view'},
      h('div', {class: 'view-title'}, h('h1', null, 'Submit a job')),
      h('div', {class: 'submit-grid'},
        h('div', null,
          h('div', {class: 'toolbar'}, h('label', {class: 'inline'}, 'Start from', select),
            h('button', {type: 'button', onclick: () => { const s = validate(); if (s) { editor.value = JSON.stringify(s, null, 2); draft = editor.value; } }}, 'Format')),
          editor, status, errorBox,
          h('div', {class: 'toolbar', style: 'margin-top:12px'}, submitButton, h('span', {class: 'muted'}, 'Ctrl+Enter submits'))),
        h('aside', {class: 'panel'}, h('h2', null, 'The spec'),
          h('p', {class: 'muted', style: 'margin-top:0'}, 'The daemon checks every key and names the one it refuses. The full format is in docs/jobspec.md.'),
          help)));
    return {el, destroy() {}};
  }

  /* ---- #/job/ID one job, live ---- */

  const ACC_SERIES = [
    {name: 'test_top1', label: 'test', color: '#2563eb'},
    {name: 'val_top1', label: 'validation', color: '#16a34a'},
    {name: 'teacher_test_top1', label: 'teacher (test)', color: '#9ca3af', dash: [5, 4]},
  ];

  function JobView(id) {
    let destroyed = false, job = null, es = null, polling = false, pollTimer = 0, dirtyTimer = 0, drawn = '';
    let live = 'loading', loadedMax = -1, caughtUp = false, liveFrom = null, eta = null, etaAt = 0;
    let stateEvents = 0; /* state changes the stream brought */
    const data = new JobData();
    const logLines = [];
    const stop = () => destroyed;

    const title = h('div', {class: 'view-title job-head'}, h('h1', null, 'Job ', h('span', {class: 'id'}, id)));
    const buttons = {
      pause: h('button', {type: 'button', id: 'pause-job', onclick: () => act('pause')}, 'Pause'),
      resume: h('button', {type: 'button', id: 'resume-job', onclick: () => act('resume')}, 'Resume'),
      cancel: h('button', {type: 'button', id: 'cancel-job', class: 'danger', onclick: () => act('cancel')}, 'Cancel'),
      csv: h('button', {type: 'button', id: 'export-csv', onclick: () => exportCsv()}, 'Export CSV'),
      weights: h('a', {class: 'button', id: 'weights', href: API + '/jobs/' + enc(id) + '/weights', download: id + '.safetensors'}, 'Weights'),
      onnx: h('a', {class: 'button', id: 'weights-onnx', href: API + '/jobs/' + enc(id) + '/weights?format=onnx', download: id + '.onnx',
        title: 'the student as ONNX, for deployment'}, 'ONNX'),
    };
    const badge = h('span');
    const kindBadge = h('span');
    const liveEl = h('span', {class: 'live loading', id: 'live-mode'}, 'loading');
    title.append(kindBadge, badge, liveEl, h('span', {class: 'spacer'}), buttons.pause, buttons.resume, buttons.cancel, buttons.csv, buttons.weights, buttons.onnx);
    const bar = h('span', {style: 'width:0%'});
    const progressLine = h('div', {class: 'line'});
    const progress = h('div', {class: 'progress', id: 'progress'}, h('div', {class: 'bar'}, bar), progressLine);
    const errorEl = h('div', {class: 'form-error job-error', hidden: true});
    const stats = h('div', {class: 'stats'});
    const grid = h('div', {class: 'charts'});
    const charts = {
      loss: new Chart(grid, {key: 'loss', title: 'Training loss', sub: 'faint: every step; bold: smoothed', empty: 'waiting for the first step'}),
      lr: new Chart(grid, {key: 'lr', title: 'Learning rate', empty: 'waiting for the first step'}),
      accuracy: new Chart(grid, {key: 'accuracy', title: 'Accuracy (top-1)', fmt: fmtPct, axis: fmtPctAxis, empty: 'no evaluation yet'}),
      agreement: new Chart(grid, {key: 'agreement', title: 'Teacher–student agreement (test)', fmt: fmtPct, axis: fmtPctAxis, empty: 'no evaluation yet'}),
      throughput: new Chart(grid, {key: 'throughput', title: 'Throughput', sub: 'images per second', empty: 'waiting for the first step'}),
    };
    let coarse = false, detailTimer = 0;
    /* zoomed in on a downsampled job: the server's finer detail of the range */
    zoomGroup(Object.values(charts), range => {
      clearTimeout(detailTimer);
      if (!coarse || !range) return;
      detailTimer = setTimeout(async () => {
        const steps = stepsOf(data, range, prefs.xMode);
        if (!steps || destroyed) return;
        try {
          await loadBuckets(id, data, null, steps[0], steps[1]);
        } catch (e) { toast('metrics: ' + e.message, 'error'); }
        markDirty();
      }, 150);
    });
    const controls = chartControls(() => redraw(), true);
    const logBox = h('div', {class: 'log-lines', id: 'job-log'});
    const specPre = h('pre');
    const el = h('div', {class: 'job-view'}, title, progress, errorEl, stats, controls, grid,
      h('details', {class: 'log', open: true}, h('summary', null, 'Log'), logBox),
      h('details', {class: 'spec'}, h('summary', null, 'Spec'), specPre));

    function tracksFor(name, opts) {
      const s = data.series.get(name);
      if (!s || !s.n) return [];
      const x = prefs.xMode === 'step' ? s.step : s.time;
      const off = prefs.xMode === 'elapsed' ? data.t0 : 0;
      return [Object.assign({x, y: s.value, n: s.n, off, counted: true}, opts)];
    }
    function redraw() {
      const xm = prefs.xMode, log = prefs.yLog;
      const key = [data.version, xm, log, prefs.smoothing, job && job.kind].join();
      if (key === drawn) return; /* nothing new */
      drawn = key;
      const loss = data.series.get('loss');
      const lossTracks = tracksFor('loss', {label: 'loss', color: 'rgba(59, 130, 246, 0.3)', width: 1});
      if (loss && loss.n) {
        lossTracks.push({label: 'smoothed', color: '#1e3a8a', width: 2, x: lossTracks[0].x, off: lossTracks[0].off,
          y: ema(loss, prefs.smoothing), n: loss.n, counted: false, follow: true});
      }
      charts.loss.set(lossTracks, xm, log);
      charts.lr.set(tracksFor('lr', {label: 'lr', color: '#7c3aed', width: 1.5}), xm, log);
      charts.accuracy.set(ACC_SERIES.flatMap(a => tracksFor(a.name, {label: a.label, color: a.color, dash: a.dash, points: true, width: 1.5})), xm, false);
      charts.agreement.set(tracksFor('test_agreement', {label: 'agreement', color: '#0891b2', points: true, width: 1.5}), xm, false);
      charts.agreement.el.hidden = !!job && job.kind !== 'distill'; /* a train job has no teacher */
      charts.throughput.set(tracksFor('images_per_second', {label: 'images/s', color: '#ea580c', width: 1}), xm, false);
    }

    function stat(k, v, key) { return h('div', {class: 'stat', dataset: {stat: key}}, h('div', {class: 'k'}, k), h('div', {class: 'v'}, v)); }
    function update() {
      dirtyTimer = 0;
      if (destroyed || !job) return;
      badge.replaceChildren(stateBadge(job.state));
      kindBadge.replaceChildren(h('span', {class: 'badge kind'}, job.kind));
      liveEl.className = 'live ' + live;
      liveEl.textContent = {sse: 'live', polling: 'live (polling)', finished: 'finished', loading: 'loading'}[live] || live;
      liveEl.title = {sse: 'updates over Server-Sent Events', polling: 'updates by polling the metrics every ' + POLL_MS / 1000 + ' s'}[live] || '';
      const running = job.state === 'running';
      buttons.pause.disabled = !running || !!job.request;
      buttons.resume.disabled = job.state !== 'paused';
      buttons.cancel.disabled = !(running || job.state === 'queued') || job.request === 'cancel';
      buttons.weights.hidden = buttons.onnx.hidden = job.state !== 'succeeded';
      if (readsNeedToken && token()) {
        buttons.weights.href = API + '/jobs/' + enc(id) + '/weights?access_token=' + enc(token());
        buttons.onnx.href = API + '/jobs/' + enc(id) + '/weights?format=onnx&access_token=' + enc(token());
      }

      const p = progressOf(job);
      bar.style.width = (p * 100).toFixed(2) + '%';
      progress.className = 'progress ' + job.state;
      progress.dataset.step = String(job.step);
      progress.dataset.total = String(job.total_steps);
      const loss = data.series.get('loss');
      const t0 = data.t0, tLast = loss && loss.n ? loss.time[loss.n - 1] : NaN;
      let etaText = '–';
      if (running) {
        let remaining = null;
        if (eta != null && live === 'sse') remaining = Math.max(0, eta - (Date.now() / 1000 - etaAt));
        else if (loss && loss.n > 2 && job.total_steps > 0) { /* from the recent pace */
          const k = Math.max(0, loss.n - 50), dt = loss.time[loss.n - 1] - loss.time[k], ds = loss.step[loss.n - 1] - loss.step[k];
          if (dt > 0 && ds > 0) remaining = (job.total_steps - job.step) * dt / ds;
        }
        etaText = remaining == null ? 'estimating…' : fmtDuration(remaining);
      } else if (job.state === 'succeeded') etaText = 'done';
      put(progressLine,
        h('span', null, 'step ', h('b', {id: 'step-text'}, String(job.step)), ' / ', String(job.total_steps || '?'), ' (' + (p * 100).toFixed(1) + '%)'),
        h('span', null, 'ETA ', h('b', {id: 'eta'}, etaText)),
        h('span', null, 'training time ', h('b', null, isFinite(tLast - t0) ? fmtDuration(tLast - t0) : '–')),
        h('span', null, 'submitted ', h('b', {title: fmtTime(job.created_at)}, fmtAgo(job.created_at))),
        job.request ? h('span', null, h('b', null, job.request), ' requested') : null,
        job.checkpoint_step != null ? h('span', null, 'checkpoint at step ', h('b', null, String(job.checkpoint_step))) : null);
      errorEl.hidden = !job.error;
      errorEl.textContent = job.error ? 'Error: ' + job.error : '';

      const get = n => data.series.get(n);
      const last = n => (get(n) ? get(n).last() : NaN);
      const lossEma = loss && loss.n ? ema(loss, prefs.smoothing)[loss.n - 1] : NaN;
      const acc = get('test_top1');
      put(stats,
        stat('loss (smoothed)', fmtNum(lossEma), 'loss'),
        stat('learning rate', fmtNum(last('lr')), 'lr'),
        stat('images / s', fmtNum(last('images_per_second')), 'throughput'),
        stat('test accuracy', fmtPct(last('test_top1')), 'test_top1'),
        stat('best test accuracy', acc && acc.n ? fmtPct(acc.max()) : '–', 'best_test_top1'),
        data.has('val_top1') ? stat('validation accuracy', fmtPct(last('val_top1')), 'val_top1') : null,
        data.has('test_agreement') ? stat('agreement', fmtPct(last('test_agreement')), 'test_agreement') : null,
        data.has('teacher_test_top1') ? stat('teacher accuracy', fmtPct(last('teacher_test_top1')), 'teacher_test_top1') : null,
        data.has('teacher_aug_top1') ? stat('teacher on augmented images', fmtPct(last('teacher_aug_top1')), 'teacher_aug_top1') : null);
      redraw();
    }
    function markDirty() {
      if (!dirtyTimer) dirtyTimer = setTimeout(update, 150);
    }
    function addLog(message) {
      logLines.push(message);
      if (logLines.length > 300) logLines.shift();
      const stick = logBox.scrollTop + logBox.clientHeight >= logBox.scrollHeight - 4;
      logBox.append(h('div', null, message));
      while (logBox.childNodes.length > 300) logBox.firstChild.remove();
      if (stick) logBox.scrollTop = logBox.scrollHeight;
    }

    async function act(action) {
      const labels = {pause: 'Pause requested: the job stops at its next step and keeps its checkpoint.',
        resume: 'Resumed: the job is queued and continues from its checkpoint.', cancel: 'Cancel requested.'};
      try {
        const seen = stateEvents;
        const answer = await api('POST', '/jobs/' + enc(id) + '/' + action);
        /* the job as the daemon answered; unless the stream brought a state
         * meanwhile: that one is as new or newer (the job may have moved on
         * before this answer arrived), and the stream brings every later one */
        if (stateEvents === seen) job = answer;
        toast(labels[action]);
        markDirty();
        if (!es && !polling && !TERMINAL.has(job.state)) startPolling();
      } catch (e) {
        toast(e.message, 'error');
      }
    }
    async function exportCsv() {
      buttons.csv.disabled = true;
      try {
        const csv = await metricsCsv(id);
        download('distilld-' + id + '-metrics.csv', csv.text, 'text/csv');
        toast('Exported ' + csv.rows + ' steps.');
      } catch (e) {
        toast('CSV export: ' + e.message, 'error');
      } finally {
        buttons.csv.disabled = false;
      }
    }

    function parse(ev) {
      try { return JSON.parse(ev.data); } catch (e) { return null; }
    }
    function openStream() {
      live = 'sse';
      /* the metrics pages had the steps before loadedMax: the stream brings
       * every state and log event, and the metrics from there on */
      let url = API + '/jobs/' + enc(id) + '/events?after_step=' + Math.max(-1, loadedMax - 1);
      if (readsNeedToken && token()) url += '&access_token=' + enc(token());
      es = new EventSource(url);
      let failures = 0;
      es.addEventListener('open', () => { failures = 0; });
      es.addEventListener('metric', ev => {
        const d = parse(ev);
        /* a reconnecting stream may bring steps the metrics pages had */
        if (!d || (!caughtUp && d.step < loadedMax)) return;
        caughtUp = true;
        const t = Date.now() / 1000;
        if (liveFrom == null) liveFrom = d.step;
        for (const k of ['loss', 'lr', 'grad_norm', 'images_per_second']) if (k in d) data.add(k, d.step, d[k], t);
        if (job) {
          job.step = d.step;
          if (d.total_steps) job.total_steps = d.total_steps;
        }
        eta = d.eta_seconds;
        etaAt = t;
        markDirty();
      });
      es.addEventListener('eval', ev => {
        const d = parse(ev);
        if (!d || (!caughtUp && d.step < loadedMax)) return;
        const t = Date.now() / 1000;
        for (const [k, v] of Object.entries(d)) if (k !== 'step' && typeof v === 'number') data.add(k, d.step, v, t);
        markDirty();
      });
      es.addEventListener('state', ev => {
        const d = parse(ev);
        if (!d || !job) return;
        stateEvents++;
        job.state = d.state;
        if (d.error) job.error = d.error;
        if (d.state !== 'running') { eta = null; job.request = null; }
        markDirty();
      });
      es.addEventListener('log', ev => {
        const d = parse(ev);
        if (d && d.message) addLog(d.message);
      });
      es.addEventListener('end', async () => {
        es.close();
        es = null;
        live = 'finished';
        markDirty(); /* at once: finish() waits for the daemon */
        await finish();
      });
      es.addEventListener('error', () => {
        if (destroyed || !es) return;
        failures++;
        if (es.readyState === EventSource.CLOSED || failures >= 3) { /* not coming back: poll */
          es.close();
          es = null;
          startPolling();
        }
      });
    }
    /* The job ended: its final state, and the server's times for the points
     * the stream brought (a stream's points carry the time they arrived). */
    async function finish() {
      try {
        job = await api('GET', '/jobs/' + enc(id));
        if (liveFrom != null) await loadMetrics(id, data, liveFrom - 1, null, stop);
      } catch (e) { /* the next view refresh shows it */ }
      markDirty();
    }
    function startPolling() {
      if (polling) return;
      polling = true;
      live = 'polling';
      markDirty();
      const tick = async () => {
        pollTimer = 0;
        if (destroyed) return;
        try {
          job = await api('GET', '/jobs/' + enc(id));
          /* from the last step again: its evaluation may have come after its loss */
          await loadMetrics(id, data, Math.max(-1, data.maxStep - 1), null, stop);
          if (destroyed) return;
          /* the daemon stores a job's step every few dozen steps; its metrics
           * are newer, as over SSE, where each metric moves the step */
          if (job.state === 'running' && data.maxStep > job.step) job.step = data.maxStep;
          markDirty();
          if (TERMINAL.has(job.state)) {
            live = 'finished';
            polling = false;
            markDirty();
            return;
          }
        } catch (e) { /* keep trying; the header shows the connection */ }
        if (!destroyed) pollTimer = setTimeout(tick, POLL_MS);
      };
      tick();
    }

    async function start() {
      try {
        job = await api('GET', '/jobs/' + enc(id));
      } catch (e) {
        if (destroyed) return;
        el.replaceChildren(h('div', {class: 'view-title'}, h('h1', null, 'Job ', h('span', {class: 'id'}, id))),
          h('div', {class: 'form-error', id: 'job-missing'}, e.status === 404 ? 'There is no job ' + id + '.' : e.message),
          h('p', null, h('a', {href: '#/'}, '← all jobs')));
        return;
      }
      if (destroyed) return;
      specPre.textContent = JSON.stringify(job.spec, null, 2);
      update();
      try {
        coarse = await loadBuckets(id, data) > 2;
      } catch (e) {
        toast('metrics: ' + e.message, 'error');
      }
      if (destroyed) return;
      loadedMax = data.maxStep;
      live = TERMINAL.has(job.state) ? 'finished' : 'loading';
      if (typeof EventSource !== 'undefined') {
        openStream();
        if (TERMINAL.has(job.state)) live = 'finished';
      } else if (!TERMINAL.has(job.state)) {
        startPolling();
      }
      update();
    }
    start();
    const ticker = setInterval(() => { if (job && job.state === 'running') markDirty(); }, 1000); /* the ETA counts down */
    return {
      el,
      destroy() {
        destroyed = true;
        if (es) es.close();
        clearTimeout(pollTimer);
        clearTimeout(dirtyTimer);
        clearTimeout(detailTimer);
        clearInterval(ticker);
        Object.values(charts).forEach(c => c.destroy());
      },
    };
  }

  /* ---- #/compare?ids=A,B several jobs overlaid ---- */

  const COMPARE_NAMES = ['loss', 'test_top1', 'val_top1', 'test_agreement'];

  function CompareView(params) {
    let destroyed = false, timer = 0, jobs = [];
    const selected = (params.get('ids') || '').split(',').filter(Boolean).slice(0, MAX_COMPARE);
    const loaded = new Map(); /* id -> {data, job} */
    const stop = () => destroyed;
    const picker = h('div', {class: 'picker panel', id: 'compare-picker'}, h('p', {class: 'muted', style: 'padding:0 14px'}, 'Loading jobs…'));
    const grid = h('div', {class: 'charts'});
    const charts = {
      loss: new Chart(grid, {key: 'compare-loss', title: 'Training loss', sub: 'smoothed', empty: 'select jobs on the left'}),
      accuracy: new Chart(grid, {key: 'compare-accuracy', title: 'Test accuracy (top-1)', sub: 'dashed: validation', fmt: fmtPct, axis: fmtPctAxis, empty: 'no evaluation yet'}),
      agreement: new Chart(grid, {key: 'compare-agreement', title: 'Teacher–student agreement (test)', fmt: fmtPct, axis: fmtPctAxis, empty: 'distill jobs only'}),
    };
    zoomGroup(Object.values(charts));
    const controls = chartControls(() => redraw(), false);
    const summary = h('table', {class: 'jobs', id: 'compare-summary'});

    const colorOf = id => PALETTE[selected.indexOf(id) % PALETTE.length];
    function setHash() {
      history.replaceState(null, '', '#/compare' + (selected.length ? '?ids=' + selected.join(',') : ''));
    }
    function drawPicker() {
      if (!jobs.length) { picker.replaceChildren(h('p', {class: 'muted', style: 'padding:0 14px'}, 'No jobs yet.')); return; }
      picker.replaceChildren(...jobs.map(j => {
        const box = h('input', {type: 'checkbox', checked: selected.includes(j.id), dataset: {job: j.id}, onchange: () => {
          if (box.checked) {
            if (selected.length >= MAX_COMPARE) { box.checked = false; toast('At most ' + MAX_COMPARE + ' jobs compare at once.', 'error'); return; }
            selected.push(j.id);
          } else selected.splice(selected.indexOf(j.id), 1);
          setHash();
          drawPicker();
          load();
        }});
        return h('label', null, box,
          h('span', {class: 'swatch', style: 'background:' + (selected.includes(j.id) ? colorOf(j.id) : 'transparent')}),
          h('span', {class: 'mono'}, j.id), h('span', {class: 'badge kind'}, j.kind), stateBadge(j.state));
      }));
    }
    function tracks(name, opts) {
      const out = [];
      for (const id of selected) {
        const e = loaded.get(id);
        const s = e && e.data.series.get(name);
        if (!s || !s.n) continue;
        const x = prefs.xMode === 'step' ? s.step : s.time, off = prefs.xMode === 'elapsed' ? e.data.t0 : 0;
        const y = opts.smooth ? ema(s, prefs.smoothing) : s.value;
        out.push(Object.assign({label: id + (opts.suffix || ''), color: colorOf(id), x, y, n: s.n, off, counted: true}, opts.track));
      }
      return out;
    }
    function redraw() {
      const xm = prefs.xMode;
      charts.loss.set(tracks('loss', {smooth: true, track: {width: 1.75}}), xm, prefs.yLog);
      charts.accuracy.set(tracks('test_top1', {track: {points: true}}).concat(tracks('val_top1', {suffix: ' val', track: {dash: [5, 4]}})), xm, false);
      const agreement = tracks('test_agreement', {track: {points: true}});
      charts.agreement.set(agreement, xm, false);
      charts.agreement.el.hidden = !agreement.length; /* distill jobs only */
      charts.loss.setEmpty(selected.length ? 'no steps yet' : 'select jobs on the left');
      summary.replaceChildren(h('thead', null, h('tr', null, ['', 'Job', 'Kind', 'State', 'Step', 'Loss (smoothed)', 'Best test acc.', 'Last test acc.'].map(t => h('th', null, t)))),
        h('tbody', null, selected.map(id => {
          const e = loaded.get(id);
          if (!e) return h('tr', null, h('td', {colspan: 8, class: 'muted'}, id + ': loading…'));
          const loss = e.data.series.get('loss'), acc = e.data.series.get('test_top1');
          return h('tr', {dataset: {job: id}},
            h('td', null, h('span', {class: 'swatch', style: 'display:inline-block;width:10px;height:10px;border-radius:2px;background:' + colorOf(id)})),
            h('td', {class: 'id'}, h('a', {href: '#/job/' + id}, id)), h('td', null, e.job.kind), h('td', null, stateBadge(e.job.state)),
            h('td', null, e.job.step + ' / ' + e.job.total_steps),
            h('td', null, loss && loss.n ? fmtNum(ema(loss, prefs.smoothing)[loss.n - 1]) : '–'),
            h('td', null, acc && acc.n ? fmtPct(acc.max()) : '–'), h('td', null, acc && acc.n ? fmtPct(acc.last()) : '–'));
        })));
    }
    async function load() {
      clearTimeout(timer);
      redraw();
      const ids = selected.slice();
      await Promise.all(ids.map(async id => {
        let e = loaded.get(id);
        try {
          const job = await api('GET', '/jobs/' + enc(id));
          if (!e) { e = {data: new JobData(), job}; loaded.set(id, e); }
          e.job = job;
          if (!e.complete) {
            if (e.data.maxStep < 0) await loadBuckets(id, e.data, COMPARE_NAMES);
            else await loadMetrics(id, e.data, Math.max(-1, e.data.maxStep - 1), COMPARE_NAMES, stop);
            e.complete = TERMINAL.has(job.state);
          }
        } catch (err) {
          if (!destroyed) toast(id + ': ' + err.message, 'error');
        }
      }));
      if (destroyed) return;
      redraw();
      if (selected.some(id => loaded.get(id) && !loaded.get(id).complete)) timer = setTimeout(load, 5000);
    }
    (async () => {
      try {
        jobs = await listJobs('', 200);
        if (destroyed) return;
        for (const id of selected) if (!jobs.some(j => j.id === id)) jobs.unshift({id, kind: '?', state: '?'});
        drawPicker();
      } catch (e) {
        picker.replaceChildren(h('p', {class: 'error', style: 'padding:0 14px'}, e.message));
      }
    })();
    load();
    const el = h('div', {class: 'compare-view'},
      h('div', {class: 'view-title'}, h('h1', null, 'Compare jobs')),
      h('div', {class: 'compare-grid'}, picker, h('div', null, controls, grid, h('div', {style: 'margin-top:12px'}, summary))));
    return {el, destroy() { destroyed = true; clearTimeout(timer); Object.values(charts).forEach(c => c.destroy()); }};
  }

  // ---- routing ----

  function route() {
    const hash = location.hash.replace(/^#/, '') || '/';
    const q = hash.indexOf('?');
    const path = q >= 0 ? hash.slice(0, q) : hash;
    const params = new URLSearchParams(q >= 0 ? hash.slice(q + 1) : '');
    if (view.current) view.current.destroy();
    let v, nav;
    const m = /^\/job\/([A-Za-z0-9_-]+)$/.exec(path);
    if (m) { v = JobView(m[1]); nav = 'jobs'; document.title = 'distilld — ' + m[1]; }
    else if (path === '/submit') { v = SubmitView(params); nav = 'submit'; document.title = 'distilld — submit'; }
    else if (path === '/compare') { v = CompareView(params); nav = 'compare'; document.title = 'distilld — compare'; }
    else { v = JobsView(params); nav = 'jobs'; document.title = 'distilld — jobs'; }
    view.current = v;
    const main = $('#view');
    main.replaceChildren(v.el);
    if (typeof uPlot === 'undefined') {
      main.prepend(h('div', {class: 'banner'}, 'The chart library is missing: run ', h('code', null, 'npm ci'), ' in web/ (',
        h('code', null, 'make run'), ' does it).'));
    }
    document.querySelectorAll('header.top nav a').forEach(a => a.classList.toggle('active', a.dataset.nav === nav));
  }

  async function start() {
    setupTokenDialog();
    window.addEventListener('hashchange', route);
    route();
    try {
      const v = await api('GET', '/version');
      connText = 'distilld ' + v.version;
      setConn(true, connText);
    } catch (e) { /* setConn said so */ }
  }

  /* For tests and the console: the pieces, and a way to time a chart. */
  window.distilld = {
    Series, JobData, Chart, ema, buildData, pickIndices, metricsCsv,
    /* Draws `series` charts of n synthetic points each in a scratch element
     * and returns {renderMs, zoomMs, drawn}. */
    benchmark(n, series) {
      const host = h('div', {style: 'position:absolute;left:-10000px;top:0;width:900px'});
      document.body.append(host);
      const all = [];
      for (let k = 0; k < (series || 3); k++) {
        const s = new Series('bench' + k);
        let v = 2.3;
        for (let i = 1; i <= n; i++) {
          v = Math.max(0.05, v * 0.99995 + (Math.sin(i * 12.9898 + k) * 43758.5453 % 1) * 0.02);
          s.push(i, v, 1.7e9 + i * 0.05);
        }
        all.push(s);
      }
      const chart = new Chart(host, {key: 'bench', title: 'bench'});
      const tracks = all.map((s, k) => ({label: 's' + k, color: PALETTE[k], x: s.step, y: s.value, n: s.n, counted: true}));
      tracks.push({label: 'ema', color: '#000', x: all[0].step, y: ema(all[0], 0.9), n: all[0].n});
      chart.set(tracks, 'step', false);
      let t = performance.now();
      chart.render();
      const renderMs = performance.now() - t;
      const drawn = +chart.el.dataset.drawn;
      t = performance.now();
      chart.zoom([n * 0.4, n * 0.45]);
      chart.render();
      const zoomMs = performance.now() - t;
      const zoomDrawn = +chart.el.dataset.drawn;
      const points = +chart.el.dataset.points;
      chart.destroy();
      host.remove();
      return {renderMs, zoomMs, drawn, zoomDrawn, points};
    },
  };

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();
