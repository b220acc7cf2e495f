#!/usr/bin/env node
/* test_browser.js - the dashboard (web/) in Debian's headless Chromium,
 * driven by playwright-core from web/node_modules, against a real daemon.
 *
 * Starts `distilld serve` on an ephemeral port with a fresh data directory,
 * opens the dashboard, enters the token, submits a tiny job from the form
 * (after a spec the API refuses, whose message must show inline), watches its
 * loss chart gain points over Server-Sent Events and its state reach
 * `succeeded`, zooms its charts, exports its CSV and checks the file, watches
 * a job without EventSource (polling), pauses, resumes and cancels it with
 * the buttons, sorts and filters the jobs table, compares a train job with a
 * job distilled from it, draws a job of 100,000 steps (its API answers
 * mocked in the browser) and times charts of 100,000 points per series, and
 * checks the page logged no error. Screenshots go to BUILD/test-output/.
 *
 * Usage: node tests/test_browser.js [BUILD]. Prints "ok   name" or
 * "FAIL name: why" per case and "N passed, N failed"; exits 1 on a failure.
 * The daemon and the browser are always stopped. */
'use strict';

const fs = require('fs');
const os = require('os');
const path = require('path');
const {spawn} = require('child_process');

const ROOT = path.resolve(__dirname, '..');
const BUILD = process.argv[2] || process.env.BUILD || 'build';
const BINARY = path.resolve(ROOT, BUILD, 'distilld');
const OUT_DIR = path.resolve(ROOT, BUILD, 'test-output');
const CHROMIUM = '/usr/bin/chromium';
const DEADLINE_MS = 110000;

/* Small, but a few seconds of work (about 3 s on one 2026 core): the page
 * must see the job run. At base width 8 and batch 16 it finished in 0.7 s,
 * before the job page had subscribed, and the chart went from 0 to 60. */
const TINY = {kind: 'train', dataset: {name: 'fashion-mnist', subset_size: 200, test_size: 200},
  model: {depth: [1], base_width: 16, gn_groups: 4, stem: 'small'}, batch_size: 64, steps: 60, warmup_steps: 2,
  eval_every: 20, checkpoint_every: 20, crop: 'none', mixup: false};
const LONG = Object.assign({}, TINY, {steps: 100000, eval_every: 1000, checkpoint_every: 1000});

let passed = 0, failed = 0;
function ok(name) { passed++; console.log('ok   ' + name); }
function fail(name, why) { failed++; console.log('FAIL ' + name + ': ' + why); }
async function check(name, fn) {
  try {
    await fn();
    ok(name);
  } catch (e) {
    fail(name, (e && e.message ? e.message : String(e)).split('\n').slice(0, 4).join(' | '));
  }
}
function assert(cond, why) { if (!cond) throw new Error(why); }
const sleep = ms => new Promise(r => setTimeout(r, ms));

/* What a page shows, for a wait that timed out: the view, and each job
 * view's live mode, state, ETA and charts (points, zoom range). */
function pageSnapshot() {
  const views = [...document.querySelectorAll('.job-view')].map(v => {
    const q = s => v.querySelector(s);
    const charts = [...v.querySelectorAll('[data-chart]')].map(c =>
      c.dataset.chart + '=' + (c.dataset.points || 0) + (c.dataset.range ? '[' + c.dataset.range + ']' : '') + (c.hidden ? '(hidden)' : ''));
    return 'job view: live ' + JSON.stringify(q('#live-mode') && q('#live-mode').textContent) +
      ', state ' + (q('.job-head [data-state]') ? q('.job-head [data-state]').dataset.state : '?') +
      ', ETA ' + JSON.stringify(q('#eta') && q('#eta').textContent) + ', charts ' + charts.join(' ');
  });
  const over = document.querySelector('[data-chart="loss"] .u-over');
  const r = over && over.getBoundingClientRect();
  return location.hash + ' ' + (views.length ? views.join('; ') : 'no job view') + '; scrollY ' + scrollY +
    (r ? ', loss chart area at ' + [r.x, r.y, r.width, r.height].map(Math.round).join(',') : '') +
    ', toasts ' + JSON.stringify(document.querySelector('#toasts') ? document.querySelector('#toasts').textContent : '');
}

/* Resolves after the page's next two animation frames: a chart's redraw,
 * scheduled for the next frame, has happened. */
const frames = page => page.evaluate(() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r))));

/* page.waitForFunction, whose timeout names the condition and what the page showed. A condition
 * that throws (an element the view has not rendered yet) is not met yet: waitForFunction alone
 * would fail at once, and the page would log the exception as an uncaught error. */
async function waitFor(page, fn, arg, opts) {
  try {
    return await page.waitForFunction(([source, a]) => {
      try {
        return (0, eval)('(' + source + ')')(a);
      } catch (e) {
        return false;
      }
    }, [fn.toString(), arg], opts);
  } catch (e) {
    const shown = await page.evaluate(pageSnapshot).catch(err => 'no snapshot: ' + err.message);
    throw new Error(e.message.split('\n')[0] + ' waiting for ' + fn.toString().replace(/\s+/g, ' ') + ' | the page: ' + shown);
  }
}

let playwright;
try {
  playwright = require(path.join(ROOT, 'web', 'node_modules', 'playwright-core'));
} catch (e) {
  fail('setup', 'playwright-core is not installed in web/node_modules (make web-deps runs npm ci there): ' + e.message);
  console.log(passed + ' passed, ' + failed + ' failed');
  process.exit(1);
}

// ---- the daemon ----

let daemon = null, dataDir = null, browser = null, base = null, token = null;
const daemonLog = [];

function startDaemon() {
  dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'distilld-browser-'));
  return new Promise((resolve, reject) => {
    daemon = spawn(BINARY, ['serve', '--listen', '127.0.0.1:0', '--data-dir', dataDir, '--workers', '1', '--threads', '1',
      '--web', path.join(ROOT, 'web')], {stdio: ['ignore', 'ignore', 'pipe']});
    const timer = setTimeout(() => reject(new Error('the daemon did not say where it listens:\n' + daemonLog.slice(-10).join('\n'))), 20000);
    let buffer = '';
    daemon.stderr.setEncoding('utf8');
    daemon.stderr.on('data', chunk => {
      buffer += chunk;
      let nl;
      while ((nl = buffer.indexOf('\n')) >= 0) {
        const line = buffer.slice(0, nl);
        buffer = buffer.slice(nl + 1);
        daemonLog.push(line);
        const m = /listening on http:\/\/127\.0\.0\.1:(\d+)/.exec(line);
        if (m && !base) {
          base = 'http://127.0.0.1:' + m[1];
          clearTimeout(timer);
          resolve();
        }
      }
    });
    daemon.on('error', e => { clearTimeout(timer); reject(e); });
    daemon.on('exit', code => { if (!base) { clearTimeout(timer); reject(new Error('the daemon exited with ' + code + ':\n' + daemonLog.slice(-10).join('\n'))); } });
  }).then(() => { token = fs.readFileSync(path.join(dataDir, 'token'), 'utf8').trim(); });
}

async function stopDaemon() {
  if (daemon && daemon.exitCode == null && daemon.signalCode == null) {
    const exited = new Promise(r => daemon.once('exit', r));
    daemon.kill('SIGTERM');
    const t = setTimeout(() => { try { daemon.kill('SIGKILL'); } catch (e) { /* gone */ } }, 15000);
    await exited;
    clearTimeout(t);
  }
  if (dataDir) fs.rmSync(dataDir, {recursive: true, force: true});
  dataDir = null;
}

async function api(method, p, body) {
  const res = await fetch(base + '/api/v1' + p, {method, headers: Object.assign({Authorization: 'Bearer ' + token},
    body ? {'Content-Type': 'application/json'} : {}), body: body ? JSON.stringify(body) : undefined});
  const text = await res.text();
  return {status: res.status, body: text ? JSON.parse(text) : null};
}

async function waitJob(id, states, ms) {
  const until = Date.now() + ms;
  for (;;) {
    const r = await api('GET', '/jobs/' + id);
    if (states.includes(r.body.state)) return r.body;
    if (Date.now() > until) throw new Error('job ' + id + ' is ' + r.body.state + ', not ' + states.join('/') + ' after ' + ms + ' ms');
    await sleep(100);
  }
}

// ---- the test ----

async function cleanup() {
  if (browser) {
    const b = browser;
    browser = null;
    await b.close().catch(() => {});
  }
  await stopDaemon();
}

async function main() {
  fs.mkdirSync(OUT_DIR, {recursive: true});
  await startDaemon();
  browser = await playwright.chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    /* the machine's closed network: no background connections. Playwright
     * gives every launch a new empty profile (--user-data-dir) of its own. */
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync'],
  });
  const context = await browser.newContext({viewport: {width: 1400, height: 1000}, acceptDownloads: true});
  const page = await context.newPage();
  page.setDefaultTimeout(20000);

  /* Every error the page logs fails the last case, but for the refusals a
   * case provokes on purpose (the browser logs a failed request itself). */
  const consoleErrors = [];
  let allowed = [];
  page.on('console', m => {
    if (m.type() !== 'error') return;
    const text = m.text();
    const i = allowed.findIndex(re => re.test(text));
    if (i >= 0) allowed.splice(i, 1);
    else consoleErrors.push(text);
  });
  page.on('pageerror', e => consoleErrors.push('uncaught: ' + e.message));

  const hash = () => page.evaluate(() => location.hash);
  const points = key => page.$eval('[data-chart="' + key + '"]', el => +el.dataset.points);
  const waitState = (state, ms) => waitFor(page, s => {
    const el = document.querySelector('.job-head [data-state]');
    return el && el.dataset.state === s;
  }, state, {timeout: ms || 20000});

  await check('the daemon serves the dashboard and uPlot from web/', async () => {
    for (const [p, type] of [['/', 'text/html'], ['/app.js', 'text/javascript'], ['/app.css', 'text/css'],
      ['/node_modules/uplot/dist/uPlot.iife.min.js', 'text/javascript'], ['/node_modules/uplot/dist/uPlot.min.css', 'text/css']]) {
      const res = await fetch(base + p);
      assert(res.status === 200, p + ': status ' + res.status);
      assert((res.headers.get('content-type') || '').startsWith(type), p + ': content type ' + res.headers.get('content-type'));
    }
    await page.goto(base + '/');
    await page.waitForSelector('#jobs-table tbody tr');
    assert(await page.evaluate(() => typeof uPlot === 'function'), 'uPlot did not load');
    assert(await page.evaluate(() => /No jobs yet/.test(document.querySelector('#jobs-table').textContent)), 'no empty-table message');
    await waitFor(page, () => document.querySelector('.chip[data-state=all] .count').textContent === '0');
  });

  await check('the token is asked for once and kept in localStorage', async () => {
    await page.click('#token-button');
    await page.waitForSelector('#token-dialog[open]');
    await page.fill('#token-input', token);
    await page.click('#token-save');
    await page.waitForSelector('#token-dialog:not([open])', {state: 'attached'});
    const kept = await page.evaluate(() => localStorage.getItem('distilld.token'));
    assert(kept === token, 'localStorage has ' + JSON.stringify(kept));
    assert(await page.$eval('#token-button', b => b.classList.contains('has-token')), 'the token button does not say it has one');
  });

  await check('the spec editor is prefilled from the built-in recipes', async () => {
    await page.goto(base + '/#/submit');
    await page.waitForSelector('#spec-editor');
    const demo = JSON.parse(await page.inputValue('#spec-editor'));
    assert(demo.kind === 'train' && demo.steps === 600, 'the demo recipe is not in the editor: ' + JSON.stringify(demo).slice(0, 80));
    await page.selectOption('#recipe', 'fmnist-fm-1k');
    const fm = JSON.parse(await page.inputValue('#spec-editor'));
    assert(fm.kind === 'distill' && fm.teacher, 'the distill recipe is not in the editor');
    assert(/valid JSON/.test(await page.textContent('#editor-status')), 'the status line does not say valid JSON');
    // every recipe in recipes/ is offered, and equals its file
    const canonical = v => Array.isArray(v) ? v.map(canonical) : v && typeof v === 'object'
      ? Object.fromEntries(Object.keys(v).sort().map(k => [k, canonical(v[k])])) : v;
    for (const file of fs.readdirSync(path.join(ROOT, 'recipes')).filter(f => f.endsWith('.json'))) {
      const name = file.slice(0, -5), want = JSON.parse(fs.readFileSync(path.join(ROOT, 'recipes', file), 'utf8'));
      await page.selectOption('#recipe', name);
      const got = JSON.parse(await page.inputValue('#spec-editor'));
      assert(JSON.stringify(canonical(got)) === JSON.stringify(canonical(want)),
        'the dashboard\'s ' + name + ' recipe differs from recipes/' + file + ': ' + JSON.stringify(got));
    }
  });

  await check('JSON that does not parse is shown inline and not sent', async () => {
    await page.fill('#spec-editor', '{\n  "kind": "train",\n  "steps": 10,,\n}');
    const status = await page.textContent('#editor-status');
    assert(/not valid JSON/.test(status) && /line 3/.test(status), 'status: ' + status);
    await page.click('#submit-job');
    await page.waitForSelector('#submit-error:not([hidden])');
    const jobs = await api('GET', '/jobs');
    assert(jobs.body.jobs.length === 0, 'a job was submitted');
  });

  await check('a spec the API refuses shows its message inline, on the key it names', async () => {
    const bad = Object.assign({}, TINY, {batch_size: 0});
    await page.fill('#spec-editor', JSON.stringify(bad, null, 2));
    allowed.push(/status of 400/);
    await page.click('#submit-job');
    await waitFor(page, () => /batch_size/.test(document.querySelector('#submit-error').textContent));
    const text = await page.textContent('#submit-error');
    assert(/invalid_spec/.test(text) && /batch_size: must be/.test(text), 'the message: ' + text);
    const sel = await page.$eval('#spec-editor', t => t.value.slice(t.selectionStart, t.selectionEnd));
    assert(sel === '"batch_size"', 'the editor selects ' + JSON.stringify(sel));
    assert(/#\/submit/.test(await hash()), 'the page left the form');
    await page.screenshot({path: path.join(OUT_DIR, 'submit.png')});
    await sleep(200);
    allowed = allowed.filter(re => !/400/.test(re.source)); /* Chromium may or may not log it */
  });

  let jobA = null;
  const seen = [];
  await check('a job submitted from the form opens its page', async () => {
    await page.selectOption('#recipe', 'smoke');
    await page.fill('#spec-editor', JSON.stringify(TINY, null, 2));
    /* every value the loss chart's point count takes, from before the page exists */
    await page.exposeFunction('__seenPoints', v => seen.push(v));
    await page.evaluate(() => {
      new MutationObserver(records => {
        for (const r of records) if (r.target.dataset && r.target.dataset.chart === 'loss') window.__seenPoints(+r.target.dataset.points);
      }).observe(document.body, {subtree: true, attributes: true, attributeFilter: ['data-points']});
    });
    await page.click('#submit-job');
    await waitFor(page, () => /^#\/job\/j/.test(location.hash));
    jobA = (await hash()).replace('#/job/', '');
    const r = await api('GET', '/jobs/' + jobA);
    assert(r.status === 200 && r.body.spec.steps === 60, 'the API does not have the job: ' + r.status);
  });
  if (!jobA) throw new Error('no job to watch');

  await check('its loss chart gains points live (SSE) and the job reaches succeeded', async () => {
    await waitState('succeeded', 30000);
    await waitFor(page, () => +document.querySelector('[data-chart="loss"]').dataset.points === 60);
    const between = seen.filter(v => v > 0 && v < 60);
    assert(between.length > 0, 'the chart went straight to ' + seen.join(',') + ' points');
    assert(seen.every((v, i) => i === 0 || v >= seen[i - 1]), 'the count went down: ' + seen.join(','));
    console.log('     loss chart point counts seen: ' + seen.join(' '));
  });

  await check('the job page shows progress, ETA, every chart and the log', async () => {
    await waitFor(page, () => document.querySelector('#live-mode').textContent === 'finished');
    assert(await page.$eval('#progress', p => p.dataset.step === '60' && p.dataset.total === '60'), 'progress is not 60/60');
    assert(await page.$eval('#progress .bar > span', s => parseFloat(s.style.width)) === 100, 'the bar is not full');
    assert(await page.textContent('#eta') === 'done', 'ETA says ' + await page.textContent('#eta'));
    for (const [key, n] of [['lr', 60], ['throughput', 60], ['accuracy', 3]]) {
      const got = await points(key);
      assert(got === n, key + ' chart has ' + got + ' points, not ' + n);
    }
    const acc = await page.textContent('[data-stat=test_top1] .v');
    assert(/%$/.test(acc), 'test accuracy stat: ' + acc);
    assert(/train job: 60 steps/.test(await page.textContent('#job-log')), 'the log panel has no job log');
    assert(await page.$eval('#weights', a => !a.hidden), 'no weights link on a succeeded job');
    /* the controls: smoothing, log scale, x axis */
    await page.fill('#smoothing', '0.9');
    await page.check('#log-scale');
    await page.selectOption('#x-axis', 'elapsed');
    await sleep(300);
    await page.selectOption('#x-axis', 'step');
    await page.uncheck('#log-scale');
    await frames(page); /* the charts redraw (a new scale makes new uPlot elements) before the drag below */
    assert(await points('loss') === 60, 'the controls lost points');
    /* drag to zoom: every chart of the page takes the range; double click zooms out */
    const box = await page.$eval('[data-chart="loss"] .u-over', el => { const r = el.getBoundingClientRect(); return {x: r.x, y: r.y, w: r.width, h: r.height}; });
    await page.mouse.move(box.x + box.w * 0.3, box.y + box.h / 2);
    await page.mouse.down();
    await page.mouse.move(box.x + box.w * 0.6, box.y + box.h / 2, {steps: 5});
    await page.mouse.up();
    await waitFor(page, () => [...document.querySelectorAll('.job-view .chart:not([hidden])')].every(c => c.dataset.range));
    const range = (await page.$eval('[data-chart="lr"]', c => c.dataset.range)).split(',').map(Number);
    assert(range[0] > 10 && range[1] < 50 && range[0] < range[1], 'zoomed to ' + range);
    await page.dblclick('[data-chart="loss"] .u-over');
    await waitFor(page, () => [...document.querySelectorAll('.job-view .chart')].every(c => !c.dataset.range));
  });

  await check('CSV export downloads every step at full resolution', async () => {
    const [dl] = await Promise.all([page.waitForEvent('download'), page.click('#export-csv')]);
    const file = path.join(OUT_DIR, 'metrics.csv');
    await dl.saveAs(file);
    const lines = fs.readFileSync(file, 'utf8').trim().split('\n');
    const header = lines[0].split(',');
    assert(header.join(',').startsWith('step,time,loss,lr,grad_norm,images_per_second,test_top1'), 'header: ' + lines[0]);
    assert(lines.length === 61, (lines.length - 1) + ' rows, not 60');
    const rows = lines.slice(1).map(l => l.split(','));
    assert(rows.every((r, i) => +r[0] === i + 1 && r.length === header.length), 'steps are not 1..60');
    const metrics = await api('GET', '/jobs/' + jobA + '/metrics?names=loss&limit=100');
    const loss = header.indexOf('loss');
    assert(metrics.body.points.every((p, i) => +rows[i][loss] === p.value), 'loss values differ from the API');
    const acc = header.indexOf('test_top1');
    assert(rows.filter(r => r[acc] !== '').length === 3, 'test_top1 is not on 3 rows');
    assert(dl.suggestedFilename() === 'distilld-' + jobA + '-metrics.csv', 'file name ' + dl.suggestedFilename());
  });

  /* a second small job, distilled from the first (compared below), and a long one (the buttons) */
  const submitted = await api('POST', '/jobs', Object.assign({}, TINY, {kind: 'distill', teacher: {job: jobA}, lr: 0.003}));
  const jobB = submitted.body && submitted.body.id;
  if (!jobB) throw new Error('the distill job was refused: ' + JSON.stringify(submitted.body));
  const jobL = (await api('POST', '/jobs', LONG)).body.id;

  await check('without EventSource the job page polls the metrics', async () => {
    /* the long job: queued behind the small one, then running for long */
    const page2 = await context.newPage();
    page2.on('console', m => { if (m.type() === 'error') consoleErrors.push('(polling page) ' + m.text()); });
    page2.on('pageerror', e => consoleErrors.push('(polling page) uncaught: ' + e.message));
    await page2.addInitScript(() => { delete window.EventSource; });
    try {
      await page2.goto(base + '/#/job/' + jobL);
      await waitFor(page2, () => document.querySelector('#live-mode').textContent === 'live (polling)');
      await waitFor(page2, () => +document.querySelector('[data-chart="loss"]').dataset.points > 5 &&
        document.querySelector('.job-head [data-state]').dataset.state === 'running', null, {timeout: 30000});
      const step = await page2.$eval('#progress', p => +p.dataset.step);
      assert(step > 5, 'progress at step ' + step);
    } finally {
      await page2.close();
    }
  });

  await check('pause, resume and cancel from the job page', async () => {
    await waitJob(jobB, ['succeeded'], 30000);
    await page.goto(base + '/#/job/' + jobL);
    await waitState('running', 20000);
    await waitFor(page, () => +document.querySelector('[data-chart="loss"]').dataset.points > 5);
    await page.screenshot({path: path.join(OUT_DIR, 'running.png'), fullPage: true});
    const eta = await page.textContent('#eta');
    assert(/\d+[smhd]|estimating/.test(eta), 'ETA of a running job: ' + eta);
    /* The answers to pause and resume are held back until the job has moved
     * on and the stream has had time to bring that (as over a slow network):
     * an answer older than the stream's news must not undo it. */
    const late = {pause: 'paused', resume: 'running'}, heldBack = u => /^\/api\/v1\/jobs\/[^/]+\/(pause|resume)$/.test(u.pathname);
    let delivered = null;
    await page.route(heldBack, async route => {
      const answer = await route.fetch();
      await waitJob(jobL, [late[new URL(route.request().url()).pathname.split('/').pop()]], 20000).catch(() => {});
      await sleep(1000);
      await route.fulfill({response: answer});
      delivered();
    });
    const click = async button => {
      const done = new Promise((resolve, reject) => {
        delivered = resolve;
        setTimeout(() => reject(new Error(button + ': no answer held back in 25 s')), 25000);
      });
      await page.click(button);
      await done;
      await sleep(500); /* the page has handled the answer */
    };
    await click('#pause-job');
    await waitState('paused', 1000);
    assert((await api('GET', '/jobs/' + jobL)).body.state === 'paused', 'the API does not say paused');
    assert(await page.$eval('#resume-job', b => !b.disabled), 'resume is disabled on a paused job');
    await click('#resume-job');
    await waitState('running', 1000);
    const before = await points('loss');
    await waitFor(page, n => +document.querySelector('[data-chart="loss"]').dataset.points > n + 5, before);
    await page.unroute(heldBack);
    await page.click('#cancel-job');
    await waitState('canceled');
    assert((await api('GET', '/jobs/' + jobL)).body.state === 'canceled', 'the API does not say canceled');
  });

  await check('the jobs table: filter chips with counts, sorting', async () => {
    await page.goto(base + '/#/');
    await waitFor(page, () => document.querySelectorAll('#jobs-table tbody tr[data-job]').length === 3);
    await waitFor(page, () => document.querySelector('.chip[data-state=succeeded] .count').textContent === '2' &&
      document.querySelector('.chip[data-state=canceled] .count').textContent === '1');
    await page.click('.chip[data-state=succeeded]');
    await waitFor(page, () => {
      const rows = [...document.querySelectorAll('#jobs-table tbody tr[data-job]')];
      return rows.length === 2 && rows.every(r => r.dataset.state === 'succeeded');
    });
    await page.click('.chip[data-state=all]');
    await waitFor(page, () => document.querySelectorAll('#jobs-table tbody tr[data-job]').length === 3);
    await page.screenshot({path: path.join(OUT_DIR, 'jobs.png')});
    await page.click('th[data-sort=state]');
    const order = await page.$$eval('#jobs-table tbody tr[data-job]', rows => rows.map(r => r.dataset.state));
    assert(order.join() === 'succeeded,succeeded,canceled', 'sorted by state: ' + order.join());
    const kinds = await page.$$eval('#jobs-table tbody tr[data-job] .badge.kind', b => b.map(x => x.textContent).sort());
    assert(kinds.join() === 'distill,train,train', 'kinds: ' + kinds.join());
    await page.click('th[data-sort=state]');
    const reversed = await page.$$eval('#jobs-table tbody tr[data-job]', rows => rows.map(r => r.dataset.state));
    assert(reversed.join() === 'canceled,succeeded,succeeded', 'sorted by state, descending: ' + reversed.join());
  });

  await check('compare overlays the loss and accuracy of two jobs', async () => {
    await page.check('tr[data-job="' + jobA + '"] input[type=checkbox]');
    await page.check('tr[data-job="' + jobB + '"] input[type=checkbox]');
    await page.click('#compare-selected');
    await waitFor(page, () => /^#\/compare\?ids=/.test(location.hash));
    const ids = decodeURIComponent((await hash()).split('ids=')[1]).split(',').sort();
    assert(ids.join() === [jobA, jobB].sort().join(), 'compare ids: ' + ids.join());
    await waitFor(page, () => +document.querySelector('[data-chart="compare-loss"]').dataset.points === 120 &&
      +document.querySelector('[data-chart="compare-accuracy"]').dataset.points === 6 &&
      +document.querySelector('[data-chart="compare-agreement"]').dataset.points === 3);
    const legend = await page.$$eval('[data-chart="compare-loss"] .u-legend .u-series .u-label', els => els.map(e => e.textContent));
    assert(legend.includes(jobA) && legend.includes(jobB), 'legend: ' + legend.join(', '));
    assert(await page.$$eval('#compare-summary tbody tr[data-job]', r => r.length) === 2, 'the summary does not list both');
    await page.selectOption('#x-axis', 'elapsed');
    await sleep(300);
    assert(await points('compare-loss') === 120, 'elapsed time lost points');
    await page.selectOption('#x-axis', 'step');
    await sleep(300);
    await page.screenshot({path: path.join(OUT_DIR, 'compare.png'), fullPage: true});
  });

  await check('charts of 100,000 points per series draw fast (min/max per pixel)', async () => {
    const r = await page.evaluate(() => window.distilld.benchmark(100000, 3));
    console.log('     3 x 100,000 points + EMA: first draw ' + r.renderMs.toFixed(1) + ' ms (' + r.drawn + ' x values drawn), zoomed redraw ' +
      r.zoomMs.toFixed(1) + ' ms (' + r.zoomDrawn + ')');
    assert(r.points === 300000, 'points: ' + r.points);
    assert(r.drawn < 8000 && r.zoomDrawn < 8000, 'too many points drawn: ' + r.drawn + ', ' + r.zoomDrawn);
    assert(r.renderMs < 500 && r.zoomMs < 500, 'too slow: ' + r.renderMs + ' ms, ' + r.zoomMs + ' ms');
  });

  await check('a job of 100,000 steps loads downsampled, draws and zooms fast (API answers mocked)', async () => {
    /* the page's requests for job "jbig" are answered here: 100,000 steps of
     * loss, lr, grad_norm and images/s, an evaluation every 1,000; ?buckets=
     * answered as the daemon does (per name and bucket the least and the
     * greatest value; tests/test_db.c and test_api.py check the daemon's) */
    const N = 100000, id = 'jbig0000000000000';
    const now = Date.now() / 1000 - N * 0.05;
    const job = {id, kind: 'train', state: 'succeeded', spec: TINY, step: N, total_steps: N, checkpoint_step: N, error: null,
      request: null, created_at: now, updated_at: now + N * 0.05};
    const all = [];
    for (let s = 1; s <= N; s++) {
      const t = now + s * 0.05, noise = Math.sin(s * 12.9898) * 43758.5453 % 1;
      all.push({name: 'grad_norm', step: s, value: 0.5 + 0.1 * noise, time: t},
        {name: 'images_per_second', step: s, value: 900 + 50 * noise, time: t},
        {name: 'loss', step: s, value: 0.3 + 2 * Math.exp(-s / 20000) + 0.1 * noise, time: t},
        {name: 'lr', step: s, value: 0.0015 * (1 + Math.cos(Math.PI * s / N)), time: t});
      if (s % 1000 === 0) all.push({name: 'test_top1', step: s, value: 0.9 - 0.5 * Math.exp(-s / 20000), time: t});
    }
    const requests = [], streams = [];
    await page.route(u => u.pathname.startsWith('/api/v1/jobs/' + id), route => {
      const u = new URL(route.request().url());
      if (u.pathname.endsWith('/metrics')) {
        const q = u.searchParams;
        requests.push(q.toString());
        const names = q.get('names') ? q.get('names').split(',') : null;
        const inRange = all.filter(p => (!names || names.includes(p.name)) && p.step >= +(q.get('from_step') || 0) &&
          p.step <= +(q.get('to_step') || Infinity));
        if (!q.get('buckets')) /* pages: not expected for a finished job's charts */
          return route.fulfill({status: 200, contentType: 'application/json', body: JSON.stringify({points: inRange.slice(0, 10000), next_after_step: null})});
        const lo = inRange.reduce((m, p) => Math.min(m, p.step), Infinity), hi = inRange.reduce((m, p) => Math.max(m, p.step), -Infinity);
        const width = Math.floor((hi - lo) / +q.get('buckets')) + 1, picked = new Map();
        for (const p of inRange) {
          const key = p.name + '/' + Math.floor((p.step - lo) / width), b = picked.get(key);
          if (!b) picked.set(key, {min: p, max: p});
          else {
            if (p.value < b.min.value) b.min = p;
            if (p.value > b.max.value) b.max = p;
          }
        }
        const points = [...new Set([...picked.values()].flatMap(b => [b.min, b.max]))]
          .sort((a, b) => a.step - b.step || (a.name < b.name ? -1 : 1));
        return route.fulfill({status: 200, contentType: 'application/json',
          body: JSON.stringify({points, bucket_steps: width, next_after_step: null})});
      }
      if (u.pathname === '/api/v1/jobs/' + id) return route.fulfill({status: 200, contentType: 'application/json', body: JSON.stringify(job)});
      if (u.pathname.endsWith('/events')) { /* the log and states only: the charts have every step */
        streams.push(u.searchParams.get('after_step'));
        return route.fulfill({status: 200, contentType: 'text/event-stream',
          body: 'id: 1\nevent: log\ndata: {"message":"mocked log line"}\n\nevent: end\ndata: {"state":"succeeded"}\n\n'});
      }
      return route.fulfill({status: 404, contentType: 'application/json', body: '{"error":{"code":"not_found","message":"mocked"}}'});
    });
    try {
      const t0 = Date.now();
      await page.goto(base + '/#/job/' + id);
      await waitFor(page, () => +document.querySelector('[data-chart="loss"]').dataset.points > 0 &&
        +document.querySelector('[data-chart="accuracy"]').dataset.points === 100, null, {timeout: 30000}).catch(async e => {
        const got = await page.$$eval('.chart', cs => cs.map(c => c.dataset.chart + '=' + c.dataset.points).join(' '));
        throw new Error(e.message.split('\n')[0] + ' (requests: ' + requests.join(' | ') + '; charts: ' + got + ')');
      });
      const loadMs = Date.now() - t0;
      await sleep(300);
      assert(requests.length === 1 && /buckets=/.test(requests[0]), 'the page asked for ' + requests.join(' | '));
      assert(streams.length === 1 && +streams[0] === N - 1, 'event streams asked for: after_step ' + streams.join(', '));
      await waitFor(page, () => /mocked log line/.test(document.querySelector('.job-view').textContent), null, {timeout: 5000});
      const held = await page.$eval('[data-chart="loss"]', c => +c.dataset.points);
      assert(held <= 4000 && held >= 2000, 'the loss chart holds ' + held + ' points');
      const r = await page.$$eval('.job-view .chart:not([hidden])', cs => cs.map(c => [c.dataset.chart, +c.dataset.drawn, +c.dataset.renderMs]));
      const worst = Math.max(...r.map(x => x[2]));
      console.log('     loaded downsampled (' + held + ' loss points of ' + N + ') and drawn in ' + loadMs + ' ms; per chart (x values drawn, ms): ' +
        r.map(x => x[0] + ' ' + x[1] + ' ' + x[2].toFixed(0)).join(', '));
      assert(r.every(x => x[1] < 4000), 'a chart draws too many points');
      assert(worst < 300, 'a chart took ' + worst + ' ms');
      /* zoom in by dragging: the range comes again from the server at full detail */
      const box = await page.$eval('[data-chart="loss"] .u-over', el => { const b = el.getBoundingClientRect(); return {x: b.x, y: b.y, w: b.width, h: b.height}; });
      await page.mouse.move(box.x + box.w * 0.50, box.y + box.h / 2);
      await page.mouse.down();
      await page.mouse.move(box.x + box.w * 0.52, box.y + box.h / 2, {steps: 4});
      await page.mouse.up();
      await waitFor(page, () => document.querySelector('[data-chart="loss"]').dataset.range);
      const [lo, hi] = (await page.$eval('[data-chart="loss"]', c => c.dataset.range)).split(',').map(Number);
      assert(hi - lo < 5000 && lo > 40000, 'zoomed to ' + lo + '..' + hi);
      await waitFor(page, n => +document.querySelector('[data-chart="loss"]').dataset.points > n, held);
      await sleep(300);
      const detail = requests.slice(1);
      assert(detail.length === 1 && /from_step=/.test(detail[0]), 'the zoom asked for ' + detail.join(' | '));
      const from = +new URLSearchParams(detail[0]).get('from_step'), to = +new URLSearchParams(detail[0]).get('to_step');
      assert(from <= lo + 1 && to >= hi - 1, 'asked for steps ' + from + '..' + to + ' of a zoom to ' + lo + '..' + hi);
      const zoomHeld = await page.$eval('[data-chart="loss"]', c => +c.dataset.points);
      assert(zoomHeld - held >= 0.9 * (to - from), 'the zoomed range is not at full detail: ' + held + ' -> ' + zoomHeld + ' points');
      const zoomMs = await page.$eval('[data-chart="loss"]', c => +c.dataset.renderMs);
      assert(zoomMs < 300, 'the zoomed redraw took ' + zoomMs + ' ms');
      console.log('     zoomed to steps ' + Math.round(lo) + '..' + Math.round(hi) + ': redrawn in ' + zoomMs.toFixed(1) + ' ms');
      /* the smoothing slider recomputes the EMA */
      await page.fill('#smoothing', '0.95');
      await sleep(300);
      const smoothMs = await page.$eval('[data-chart="loss"]', c => +c.dataset.renderMs);
      assert(smoothMs < 300, 'redrawing with new smoothing took ' + smoothMs + ' ms');
      await page.dblclick('[data-chart="loss"] .u-over');
      await page.fill('#smoothing', '0.6');
      await sleep(300);
      await page.screenshot({path: path.join(OUT_DIR, 'job-100k.png'), fullPage: true});
    } finally {
      await page.unroute(u => u.pathname.startsWith('/api/v1/jobs/' + id));
    }
  });

  await check('a distill job shows its teacher-student agreement', async () => {
    await page.goto(base + '/#/job/' + jobB);
    await waitState('succeeded');
    await waitFor(page, () => +document.querySelector('[data-chart="agreement"]').dataset.points === 3 &&
      !document.querySelector('[data-chart="agreement"]').hidden);
    const teacher = await page.$eval('[data-chart="accuracy"] .u-legend', l => l.textContent);
    assert(/teacher/.test(teacher), 'the accuracy chart has no teacher line: ' + teacher);
    assert(/%$/.test(await page.textContent('[data-stat=test_agreement] .v')), 'no agreement stat');
    assert(/%$/.test(await page.textContent('[data-stat=teacher_aug_top1] .v')), 'no teacher-on-augmented-images stat');
    await page.screenshot({path: path.join(OUT_DIR, 'distill.png'), fullPage: true});
  });

  await check('a screenshot of the job page', async () => {
    await page.goto(base + '/#/job/' + jobA);
    await waitState('succeeded');
    await waitFor(page, () => +document.querySelector('[data-chart="loss"]').dataset.points === 60 &&
      document.querySelector('#live-mode').textContent === 'finished');
    await sleep(400);
    const file = path.join(OUT_DIR, 'dashboard.png');
    await page.screenshot({path: file, fullPage: true});
    assert(fs.statSync(file).size > 10000, 'the screenshot is tiny');
    console.log('     screenshots: ' + file + ' (and jobs, submit, running, distill, compare, job-100k .png beside it)');
  });

  await check('no errors in the browser console', async () => {
    await page.goto(base + '/#/');
    await page.waitForSelector('#jobs-table tbody tr[data-job]');
    await sleep(300);
    assert(consoleErrors.length === 0, consoleErrors.length + ' error(s): ' + consoleErrors.slice(0, 3).join(' | '));
  });
}

const deadline = setTimeout(async () => {
  fail('deadline', 'the test took longer than ' + DEADLINE_MS / 1000 + ' s');
  await cleanup();
  console.log(passed + ' passed, ' + failed + ' failed');
  process.exit(1);
}, DEADLINE_MS);

process.on('unhandledRejection', e => fail('unhandled', e && e.message ? e.message : String(e)));

for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, async () => {
    await cleanup();
    process.exit(1);
  });
}

main()
  .catch(e => fail('setup', e && e.stack ? e.stack.split('\n').slice(0, 3).join(' | ') : String(e)))
  .finally(async () => {
    clearTimeout(deadline);
    await cleanup();
    if (failed) console.log('daemon log (last lines):\n  ' + daemonLog.slice(-8).join('\n  '));
    console.log(passed + ' passed, ' + failed + ' failed');
    process.exit(failed ? 1 : 0);
  });
