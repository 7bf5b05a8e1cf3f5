#!/usr/bin/env node
// Headless-Chromium test of the civicline wallboard and cases pages.
//
//   node wallboard.mjs <base_url> <token> <screenshot_path> [timeout_ms]
//
// Protocol on stdout (one line each, flushed as they happen):
//   READY initial=<n>          first snapshot rendered; start placing calls now
//   CHANGED from=<a> to=<b>    total waiting count changed
//   SCREENSHOT <path>          wallboard full-page screenshot written
//   SCREENSHOT <path>          cases page screenshot written (<screenshot minus .png>-cases.png)
//   OK
// On failure: `FAIL <reason>` on stdout and stderr, exit code 1 (2 for bad usage). A
// screenshot of the failing page is attempted at <screenshot minus .png>-failure.png.
// Any console error, uncaught page error, failed request or HTTP status >= 400 on either
// page is a failure. timeout_ms (default 60000) bounds the wait for the first snapshot plus
// the wait for the change; the cases page has its own 20 s budget.
//
// Uses the system Chromium (CHROMIUM env var, default /usr/bin/chromium); playwright-core
// never downloads browsers.
import { chromium } from 'playwright-core';
import fs from 'node:fs';
import path from 'node:path';

const CASES_TIMEOUT_MS = 20000;

function usage(msg) {
  process.stderr.write(`${msg}\nusage: node wallboard.mjs <base_url> <token> <screenshot_path> [timeout_ms]\n`);
  process.exit(2);
}

const [baseArg, token, shotPath, timeoutArg] = process.argv.slice(2);
if (!baseArg || !token || !shotPath) usage('missing arguments');
const timeoutMs = timeoutArg === undefined ? 60000 : Number(timeoutArg);
if (!Number.isFinite(timeoutMs) || timeoutMs <= 0) usage(`bad timeout_ms: ${timeoutArg}`);
const base = baseArg.replace(/\/+$/, '');
const stem = shotPath.replace(/\.png$/i, '');
const casesShot = `${stem}-cases.png`;
const failShot = `${stem}-failure.png`;
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';

const say = (line) => process.stdout.write(line + '\n');

class Failure extends Error {}

// Last-resort guard so the Rust test can never hang on us.
const hardStop = setTimeout(() => {
  say('FAIL hard deadline exceeded');
  process.stderr.write('FAIL hard deadline exceeded\n');
  process.exit(1);
}, timeoutMs + CASES_TIMEOUT_MS + 30000);
hardStop.unref();

let browser;
let current = null; // the page being checked, for the failure screenshot

// Watches a page for errors; `failed` rejects on the first one. `stop()` before closing,
// since closing aborts the event stream request.
function watch(page, label) {
  let reject;
  let active = true;
  const failed = new Promise((_, rej) => { reject = rej; });
  failed.catch(() => {});
  const fail = (msg) => { if (active) { active = false; reject(new Failure(`${label}: ${msg}`)); } };
  page.on('console', (m) => { if (m.type() === 'error') fail(`console error: ${m.text()}`); });
  page.on('pageerror', (e) => fail(`page error: ${e.message}`));
  page.on('requestfailed', (r) => fail(`request failed: ${r.method()} ${redact(r.url())} ${r.failure()?.errorText ?? ''}`));
  page.on('response', (r) => { if (r.status() >= 400) fail(`HTTP ${r.status()} for ${redact(r.url())}`); });
  page.on('crash', () => fail('page crashed'));
  return { failed, stop: () => { active = false; } };
}

function redact(url) {
  return url.replace(/([?&]token=)[^&]*/g, '$1***');
}

// Races a Playwright wait against the page's error watcher; turns timeouts into a clear message.
async function step(watcher, what, promise) {
  try {
    return await Promise.race([promise, watcher.failed]);
  } catch (e) {
    if (e instanceof Failure) throw e;
    if (e && e.name === 'TimeoutError') throw new Failure(`timed out: ${what}`);
    throw new Failure(`${what}: ${e && e.message ? e.message.split('\n')[0] : e}`);
  }
}

function remaining(deadline) {
  return Math.max(1, deadline - Date.now());
}

async function readTotal(page) {
  const text = (await page.textContent('[data-testid="total-waiting"]')) ?? '';
  const n = Number(text.trim());
  if (!Number.isInteger(n)) throw new Failure(`total-waiting is not a number: ${JSON.stringify(text)}`);
  return n;
}

async function main() {
  fs.mkdirSync(path.dirname(path.resolve(shotPath)), { recursive: true });
  try {
    browser = await chromium.launch({
      executablePath,
      headless: true,
      args: ['--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu'],
    });
  } catch (e) {
    throw new Failure(`cannot launch Chromium at ${executablePath}: ${e.message.split('\n')[0]}`);
  }
  const context = await browser.newContext({ viewport: { width: 1920, height: 1080 }, deviceScaleFactor: 1 });

  // --- wallboard -----------------------------------------------------------------------
  const deadline = Date.now() + timeoutMs;
  const wall = await context.newPage();
  current = wall;
  const ww = watch(wall, 'wallboard');
  const wallUrl = `${base}/wallboard?token=${encodeURIComponent(token)}`;
  await step(ww, `open ${redact(wallUrl)}`, wall.goto(wallUrl, { waitUntil: 'load', timeout: remaining(deadline) }));
  await step(ww, 'first snapshot rendered', wall.waitForFunction(
    () => !!document.body.getAttribute('data-snapshot-at'), null, { timeout: remaining(deadline), polling: 100 }));
  const initial = await readTotal(wall);
  say(`READY initial=${initial}`);

  const handle = await step(ww, `waiting count to change from ${initial}`, wall.waitForFunction(
    (init) => {
      const t = document.querySelector('[data-testid="total-waiting"]');
      const n = t ? Number(t.textContent.trim()) : NaN;
      return Number.isInteger(n) && n !== init ? String(n) : false; // "0" is truthy
    }, initial, { timeout: remaining(deadline), polling: 100 }));
  const changed = Number(await handle.jsonValue());
  say(`CHANGED from=${initial} to=${changed}`);
  await wall.waitForTimeout(300); // let the row ticks settle for a clean picture
  await step(ww, 'wallboard screenshot', wall.screenshot({ path: shotPath, fullPage: true }));
  say(`SCREENSHOT ${shotPath}`);
  ww.stop();
  await wall.close();

  // --- cases ---------------------------------------------------------------------------
  const cdeadline = Date.now() + CASES_TIMEOUT_MS;
  const cases = await context.newPage();
  current = cases;
  const cw = watch(cases, 'cases');
  const casesUrl = `${base}/wallboard/cases?token=${encodeURIComponent(token)}`;
  await step(cw, `open ${redact(casesUrl)}`, cases.goto(casesUrl, { waitUntil: 'load', timeout: remaining(cdeadline) }));
  await step(cw, 'cases loaded', cases.waitForFunction(
    () => document.body.getAttribute('data-cases-state'), null, { timeout: remaining(cdeadline), polling: 100 }));
  const state = await cases.getAttribute('body', 'data-cases-state');
  if (state !== 'loaded') throw new Failure(`cases page state: ${state}`);
  // Open the history of the first (oldest) case, if any, so the screenshot shows it.
  const first = await cases.$('button.case-link');
  if (first) {
    await first.click();
    await step(cw, 'case history loaded', cases.waitForSelector(
      '[data-testid="history"][data-state="loaded"]', { timeout: remaining(cdeadline) }));
  }
  await step(cw, 'cases screenshot', cases.screenshot({ path: casesShot, fullPage: true }));
  say(`SCREENSHOT ${casesShot}`);
  cw.stop();
  await cases.close();
  current = null;
}

let code = 0;
try {
  await main();
  say('OK');
} catch (e) {
  const msg = e instanceof Failure ? e.message : `unexpected error: ${e && e.stack ? e.stack : e}`;
  say(`FAIL ${msg}`);
  process.stderr.write(`FAIL ${msg}\n`);
  code = 1;
  if (current && !current.isClosed()) {
    try {
      await current.screenshot({ path: failShot, fullPage: true, timeout: 5000 });
      process.stderr.write(`failure screenshot: ${failShot}\n`);
    } catch { /* best effort */ }
  }
} finally {
  if (browser) await browser.close().catch(() => {});
}
process.exit(code);
