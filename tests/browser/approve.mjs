// Browser end-to-end test of keyveil's local approval page, in headless Debian Chromium driven
// by playwright-core (no browser download: executablePath is the distribution's chromium).
//
// A throwaway home is made with the CLI; an "agent" run waits for approval in the background;
// the human opens the one-time link, sees the request (argv, one element per line), starts
// typing the passphrase, a second request arrives live (server-sent events) without losing what
// was typed, the human approves the first and denies the second. The first run must print the
// redacted value and exit 0; the second must exit 3 (denied). Then TOTP is enrolled and a third
// request is approved in the page with a code. Screenshots go to
// $CARGO_TARGET_DIR (or target/): approve-page.png (two pending requests) and
// approve-page-done.png (after approving).
//
// Run: KEYVEIL_BIN=/path/to/keyveil node tests/browser/approve.mjs

import { spawn, spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, '..', '..');
const targetDir = process.env.CARGO_TARGET_DIR || path.join(repo, 'target');
const bin = process.env.KEYVEIL_BIN || path.join(targetDir, 'debug', 'keyveil');
const chromiumPath = process.env.CHROMIUM || '/usr/bin/chromium';
const PASS = 'correct horse battery staple';
const VALUE = 'tok_browser_e2e_Zq8vN3kLp2XwR7';

const deadline = setTimeout(() => {
  console.error('browser: timed out after 180 s');
  process.exit(1);
}, 180_000);

let failures = 0;
let failedChecks = 0;
let checks = 0;
function check(cond, what) {
  checks += 1;
  if (cond) {
    console.log(`  ok  ${what}`);
  } else {
    failures += 1;
    failedChecks += 1;
    console.log(`  FAIL ${what}`);
  }
}

if (!fs.existsSync(bin)) {
  console.error(`browser: no keyveil binary at ${bin} (set KEYVEIL_BIN or build first)`);
  process.exit(1);
}
if (!fs.existsSync(chromiumPath)) {
  console.error(`browser: no Chromium at ${chromiumPath} (apt-get install -y chromium)`);
  process.exit(1);
}

const home = fs.mkdtempSync(path.join('/tmp', 'kvb'));
const env = {
  PATH: process.env.PATH,
  HOME: home,
  KEYVEIL_HOME: home,
  LANG: 'C.UTF-8',
};

function kv(args, input) {
  // setsid: a session of its own, no controlling terminal, so nothing can prompt on the
  // developer's terminal.
  const r = spawnSync('setsid', ['-w', bin, ...args], { env, input: input ?? '', encoding: 'utf8', timeout: 60_000 });
  if (r.status !== 0) {
    throw new Error(`keyveil ${args.join(' ')} exited ${r.status}: ${r.stderr}`);
  }
  return r.stdout;
}

function background(args) {
  const child = spawn(bin, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
  const out = { stdout: '', stderr: '', code: null };
  child.stdout.on('data', (d) => { out.stdout += d; });
  child.stderr.on('data', (d) => { out.stderr += d; });
  out.done = new Promise((resolve) => child.on('close', (code) => { out.code = code; resolve(out); }));
  return out;
}

async function waitFor(what, fn, ms = 20_000) {
  const t0 = Date.now();
  for (;;) {
    const v = fn();
    if (v) return v;
    if (Date.now() - t0 > ms) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

// RFC 6238 (SHA-1, 30 s, 6 digits), written here so the test shares no code with keyveil.
function totp(secretB32, stepOffset = 0) {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
  let bits = '';
  for (const ch of secretB32.replace(/=+$/, '').toUpperCase()) {
    bits += alphabet.indexOf(ch).toString(2).padStart(5, '0');
  }
  const key = Buffer.from(bits.match(/.{8}/g).map((b) => parseInt(b, 2)));
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(Math.floor(Date.now() / 1000 / 30) + stepOffset));
  const h = crypto.createHmac('sha1', key).update(counter).digest();
  const o = h[h.length - 1] & 15;
  return String((h.readUInt32BE(o) & 0x7fffffff) % 1_000_000).padStart(6, '0');
}

function pending() {
  return JSON.parse(kv(['requests', '--json']));
}

let context;
let userDataDir;
try {
  console.log(`browser: home ${home}`);
  kv(['init', '--passphrase-stdin', '--kdf-memory-kib', '19456'], `${PASS}\n`);
  kv(['env', 'create', 'demo', '--description', 'browser test']);
  kv(['set', 'demo', 'API_TOKEN', '--from-stdin'], VALUE);

  // The agent's run, waiting for approval.
  const first = background(['run', '--env', 'demo', '--wait', '120', '--', 'sh', '-c', 'echo ok-$API_TOKEN']);
  const req1 = await waitFor('the first request', () => pending().find((r) => r.id));
  const url = kv(['approve', '--web', '--print']).trim();
  check(/^http:\/\/127\.0\.0\.1:\d+\/login\?token=[0-9a-f]{64}$/.test(url), 'approve --web --print gives a one-time link');

  userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'kvb-chromium-'));
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: chromiumPath,
    headless: true,
    viewport: { width: 1100, height: 1000 },
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
  });
  const page = context.pages()[0] || (await context.newPage());
  const problems = [];
  page.on('console', (m) => {
    if (m.type() === 'error' && !/favicon/.test(m.text())) problems.push(m.text());
  });
  page.on('pageerror', (e) => problems.push(String(e)));

  await page.goto(url);
  check(new URL(page.url()).pathname === '/', 'the link logs in and lands on /');
  const card1 = page.locator(`article[data-request-id="${req1.id}"]`);
  await card1.waitFor();
  const args = await card1.locator('.argv code.arg').allTextContents();
  check(JSON.stringify(args) === JSON.stringify(['"sh"', '"-c"', '"echo ok-$API_TOKEN"']),
    `argv shown one element per line, quoted: ${JSON.stringify(args)}`);
  check((await card1.textContent()).includes('API_TOKEN'), 'the variable name is shown');
  await page.locator('#live.on').waitFor({ timeout: 10_000 });
  check(true, 'live updates connected (server-sent events)');

  // Half-typed factor; then a second request arrives live.
  const factor1 = card1.locator('input[name=factor]');
  await factor1.fill(PASS.slice(0, 7));
  const tricky = ['printf', '%s\\n', '<b>bold</b>', 'safe\u202etxt.exe', '\u001b[2Jclean'];
  const second = background(['run', '--env', 'demo', '--wait', '120', '--', ...tricky]);
  const req2 = await waitFor('the second request', () => pending().find((r) => r.id !== req1.id));
  const card2 = page.locator(`article[data-request-id="${req2.id}"]`);
  await card2.waitFor({ timeout: 10_000 });
  check(true, 'a new request appears without a reload');
  check((await factor1.inputValue()) === PASS.slice(0, 7), 'the half-typed factor survives the update');
  const text2 = await card2.locator('.argv').textContent();
  check(text2.includes('\\u{202e}') && !text2.includes('\u202e'), 'a bidi override is shown as \\u{202e}');
  check(text2.includes('\\u{1b}[2J') && !text2.includes('\u001b'), 'an ANSI escape is shown as \\u{1b}');
  check(text2.includes('<b>bold</b>') && (await card2.locator('b').count()) === 0, 'markup from the agent stays text');

  fs.mkdirSync(targetDir, { recursive: true });
  const shot = path.join(targetDir, 'approve-page.png');
  await page.screenshot({ path: shot, fullPage: true });
  console.log(`browser: screenshot ${shot}`);

  // Approve the first with the passphrase, once.
  await factor1.fill(PASS);
  await card1.locator('input[name=duration][value=once]').check();
  await Promise.all([
    page.waitForURL((u) => new URL(u).pathname === '/', { waitUntil: 'load' }),
    card1.locator('button.btn-approve').click(),
  ]);
  const flash = await page.locator('.flash').textContent();
  check(flash.includes(`Approved request #${req1.id}`), `approval confirmed on the page: ${flash.trim()}`);
  check(!(await page.content()).includes(PASS), 'the factor is not echoed into the page');
  const r1 = await first.done;
  check(r1.code === 0, `the agent's run exits 0 (got ${r1.code}; stderr ${r1.stderr.trim()})`);
  check(r1.stdout.trim() === 'ok-[REDACTED:API_TOKEN]', `it printed ${JSON.stringify(r1.stdout.trim())}`);
  check(!r1.stdout.includes(VALUE) && !r1.stderr.includes(VALUE), 'the value never reached the requester');
  await page.screenshot({ path: path.join(targetDir, 'approve-page-done.png'), fullPage: true });

  // Deny the second.
  await Promise.all([
    page.waitForURL((u) => new URL(u).pathname === '/', { waitUntil: 'load' }),
    page.locator(`article[data-request-id="${req2.id}"] button.btn-deny`).click(),
  ]);
  const r2 = await second.done;
  check(r2.code === 3, `the denied run exits 3 (got ${r2.code})`);
  check((await page.locator('.flash').textContent()).includes(`Denied request #${req2.id}`), 'denial confirmed on the page');
  check(await page.locator('#empty').isVisible(), 'no pending requests left');

  // TOTP: enrol, let the environment's policy accept a code, approve a third request with one.
  const enrolled = kv(['factor', 'enroll', 'totp', '--passphrase-stdin', '--no-confirm'], `${PASS}\n`);
  const secret = /secret=([A-Z2-7]+)/.exec(enrolled)[1];
  kv(['factor', 'confirm', totp(secret, 0)]);
  kv(['policy', 'set', 'demo', 'factor', 'totp', '--passphrase-stdin'], `${PASS}\n`);
  const third = background(['run', '--env', 'demo', '--wait', '120', '--', 'sh', '-c', 'echo totp-$API_TOKEN']);
  const req3 = await waitFor('the third request', () => pending().find((r) => r.id > req2.id));
  const card3 = page.locator(`article[data-request-id="${req3.id}"]`);
  await card3.waitFor({ timeout: 10_000 });
  await card3.locator('input[name=factor]').fill(totp(secret, 1));
  await Promise.all([
    page.waitForURL((u) => new URL(u).pathname === '/', { waitUntil: 'load' }),
    card3.locator('button.btn-approve').click(),
  ]);
  check((await page.locator('.flash').textContent()).includes(`Approved request #${req3.id}`), 'a TOTP code typed in the page approves');
  const r3 = await third.done;
  check(r3.code === 0 && r3.stdout.trim() === 'totp-[REDACTED:API_TOKEN]', `the TOTP-approved run completes: ${JSON.stringify(r3.stdout.trim())}`);
  check(problems.length === 0, `no console errors or CSP violations ${JSON.stringify(problems)}`);
} catch (e) {
  failures += 1;
  console.log(`  FAIL ${e && e.stack ? e.stack : e}`);
} finally {
  if (context) await context.close().catch(() => {});
  spawnSync(bin, ['daemon', 'stop'], { env, timeout: 20_000 });
  fs.rmSync(home, { recursive: true, force: true });
  if (userDataDir) fs.rmSync(userDataDir, { recursive: true, force: true });
  clearTimeout(deadline);
}

console.log(`browser: ${checks - failedChecks} passed, ${failures} failed`);
process.exit(failures === 0 ? 0 : 1);
