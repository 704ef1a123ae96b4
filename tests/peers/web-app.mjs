// The reference web client in a real browser (Debian's Chromium, driven by
// puppeteer-core): a patient and a therapist in two browser contexts, logged in through
// the dev identity providers, writing to each other live, the patient answering PHQ-9,
// the gateway restarted mid-session (the pages stay open), and a tampered envelope shown
// as such. The Rust test (tests/tests/web_app.rs) starts the gateway and answers the
// lines this script prints:
//
//   RESTART            -> restart the gateway on the same port, then write "RESTARTED"
//   TAMPER <message>   -> change that message's ciphertext in the database, then "TAMPERED"
//   REVOKE <device>    -> revoke the patient's device with the patient's token, then "REVOKED"
//   FORK <device>      -> rewrite and re-sign the key log around that device, then "FORKED"
//
// Arguments: --origin URL --chromium PATH --shots DIR --episode ID (an active episode of
// kari and terje, as `icbt-gateway dev episode` makes). With --latency N (the benchmark,
// scripts/bench/client-js) it logs both in, times N sends from the therapist's page to
// their display on the patient's, prints the figures and stops.
import { readFileSync, mkdirSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';

import puppeteer from 'puppeteer-core';

const { values: o } = parseArgs({
  options: {
    origin: { type: 'string' },
    chromium: { type: 'string' },
    shots: { type: 'string' },
    episode: { type: 'string' },
    latency: { type: 'string' },
  },
});
mkdirSync(o.shots, { recursive: true });
const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
async function ask(line) {
  process.stdout.write(`${line}\n`);
  const { value } = await lines.next();
  return value;
}
const step = (what) => process.stderr.write(`web-app: ${what}\n`);
function check(ok, what) {
  if (!ok) throw new Error(`expected: ${what}`);
}

const episode = o.episode;

const browser = await puppeteer.launch({
  executablePath: o.chromium,
  headless: true,
  args: ['--no-sandbox', '--ignore-certificate-errors', '--disable-gpu', '--disable-dev-shm-usage'],
});
const axeSource = readFileSync(new URL('./node_modules/axe-core/axe.min.js', import.meta.url), 'utf8');
const failures = [];

async function login(provider, person) {
  const context = await browser.createBrowserContext();
  const page = await context.newPage();
  page.setDefaultTimeout(30_000);
  page.on('pageerror', (e) => failures.push(`${person}: page error ${e.message}`));
  await page.setViewport({ width: 1100, height: 900 });
  await page.goto(`${o.origin}/app/`);
  await page.waitForSelector(`a[href^="/auth/login/${provider}"]`);
  await page.screenshot({ path: `${o.shots}/login.png` });
  await Promise.all([page.waitForNavigation(), page.click(`a[href^="/auth/login/${provider}"]`)]);
  await Promise.all([page.waitForNavigation(), page.click(`button[name="person"][value="${person}"]`)]);
  check(new URL(page.url()).pathname === '/app/', `${person} is back at /app/ after login, not ${page.url()}`);
  return page;
}

async function accessibility(page, name) {
  await page.evaluate(axeSource);
  const result = await page.evaluate(async () => await window.axe.run(document, { resultTypes: ['violations'] }));
  const serious = result.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
  for (const v of serious) failures.push(`${name}: axe ${v.impact} ${v.id}: ${v.help} (${v.nodes.length} nodes)`);
  return result.violations.map((v) => `${v.impact}:${v.id}`);
}

const messageText = (page, text) =>
  page.waitForFunction((t) => [...document.querySelectorAll('#thread li .body')].some((b) => b.textContent.includes(t)), { timeout: 30_000 }, text);

async function send(page, text, kind) {
  await page.type('#compose-text', text);
  if (kind) await page.select('#compose-kind', kind);
  await page.click('#compose button[type=submit]');
  await page.waitForFunction(() => document.querySelector('#compose-status')?.textContent.startsWith('Sendt'));
}

async function thread(page) {
  return page.$$eval('#thread li', (items) => items.map((li) => ({ id: li.dataset.id, seq: Number(li.dataset.seq), kind: li.dataset.kind, state: li.dataset.state, text: li.querySelector('.body')?.textContent ?? '' })));
}

// --- logged in, both sides ---------------------------------------------------------------
const patient = await login('dev-idporten', 'kari');
await patient.waitForSelector('#compose');
step('patient logged in');
const therapist = await login('dev-helseid', 'terje');
await therapist.waitForSelector(`tr[data-episode="${episode}"] a`);
step('therapist sees the caseload');

if (o.latency) {
  await therapist.click(`tr[data-episode="${episode}"] a`);
  await therapist.waitForSelector('#compose');
  // The patient's page notes when each message appears, by its text.
  await patient.evaluate(() => {
    window.seenAt = {};
    new MutationObserver(() => {
      for (const body of document.querySelectorAll('#thread li .body')) window.seenAt[body.textContent] ??= Date.now();
    }).observe(document.getElementById('thread'), { childList: true, subtree: true });
  });
  const samples = [];
  for (let i = 0; i < Number(o.latency); i++) {
    const text = `Måling ${i}: ${'x'.repeat(200)}`;
    await therapist.$eval('#compose-text', (t, v) => (t.value = v), text);
    const sent = Date.now();
    await therapist.click('#compose button[type=submit]');
    const shown = await patient.waitForFunction((t) => window.seenAt[t], { polling: 5, timeout: 10_000 }, text).catch(async (e) => {
      throw new Error(`message ${i} not shown; the therapist's page says: ${await therapist.$eval('#compose-status', (s) => s.textContent)} (${e.message})`);
    });
    samples.push((await shown.jsonValue()) - sent);
    await therapist.waitForFunction(() => !document.querySelector('#compose button').disabled);
  }
  samples.sort((a, b) => a - b);
  const at = (q) => samples[Math.min(samples.length - 1, Math.floor(q * samples.length))];
  await browser.close();
  process.stdout.write(`${JSON.stringify({ messages: samples.length, p50_ms: at(0.5), p99_ms: at(0.99), max_ms: samples.at(-1) })}\n`);
  process.exit(0);
}

// The patient writes; the therapist's caseload counts it live, and the thread shows it.
await send(patient, 'Hei! Jeg har sovet litt bedre denne uka, men grubler mye om kvelden.');
await therapist.waitForFunction((id) => document.querySelector(`[data-unread="${id}"]`)?.textContent === '1', {}, episode);
await therapist.screenshot({ path: `${o.shots}/therapist-caseload.png` });
const caseloadViolations = await accessibility(therapist, 'therapist caseload');
await therapist.click(`tr[data-episode="${episode}"] a`);
await messageText(therapist, 'grubler mye om kvelden');
step('the therapist received the message');

// The therapist answers with feedback; it arrives live at the patient.
await send(therapist, 'Uke 1: Fint at du la merke til grublingen. Prøv å sette av 15 minutter til bekymringstid før kl. 19.', 'feedback');
await messageText(patient, 'bekymringstid');
step('the patient received the feedback live');

// PHQ-9, item 9 above 0: the care team gets a risk alert.
for (let i = 0; i < 9; i++) await patient.click(`input[name="phq9-${i}"][value="${i === 8 ? 1 : i % 3}"]`);
await patient.click('#phq9 button[type=submit]');
await patient.waitForFunction(() => document.querySelector('#phq9-status')?.textContent.includes('113'));
await messageText(therapist, 'PHQ-9 besvart');
await therapist.waitForSelector('#thread li.alert', { timeout: 30_000 });
step('questionnaire and risk alert arrived');

// One safety number on both sides.
await patient.click('#show-safety');
await therapist.click('#show-safety');
await patient.waitForFunction(() => /^(\d{5} ){11}\d{5}$/.test(document.querySelector('#safety-number').textContent));
await therapist.waitForFunction(() => /^(\d{5} ){11}\d{5}$/.test(document.querySelector('#safety-number').textContent));
const numbers = [await patient.$eval('#safety-number', (e) => e.textContent), await therapist.$eval('#safety-number', (e) => e.textContent)];
check(numbers[0] === numbers[1], `equal safety numbers, got ${numbers.join(' / ')}`);

await patient.screenshot({ path: `${o.shots}/patient.png`, fullPage: true });
await therapist.screenshot({ path: `${o.shots}/therapist.png`, fullPage: true });
const patientViolations = await accessibility(patient, 'patient');
const therapistViolations = await accessibility(therapist, 'therapist');

// --- the gateway restarts under open pages -------------------------------------------------
const before = { patient: await thread(patient), therapist: await thread(therapist) };
check((await ask('RESTART')) === 'RESTARTED', 'the gateway restarted');
await send(therapist, 'Uke 2: Husk søvndagboken hver morgen.', 'feedback');
await messageText(patient, 'søvndagboken');
await send(patient, 'Skal gjøre det. Takk!');
await messageText(therapist, 'Skal gjøre det');
// A page shows its own message when its stream brings it back, which may be a moment
// after the other side's stream did.
await messageText(patient, 'Skal gjøre det');
await messageText(therapist, 'søvndagboken');
const after = { patient: await thread(patient), therapist: await thread(therapist) };
for (const side of ['patient', 'therapist']) {
  const ids = after[side].map((m) => m.id);
  check(new Set(ids).size === ids.length, `${side}: nothing twice after the restart (${ids.length} items)`);
  check(after[side].length === before[side].length + 2, `${side}: the two messages sent after the restart, and nothing else new (${before[side].length} -> ${after[side].length})`);
  const seqs = after[side].map((m) => m.seq);
  check(seqs.every((s, i) => i === 0 || s > seqs[i - 1]), `${side}: in sequence order`);
}
step('resumed after the restart with nothing missed and nothing twice');

// --- a tampered envelope is shown as such, never as valid --------------------------------
const target = after.patient.find((m) => m.text.includes('søvndagboken'));
check((await ask(`TAMPER ${target.id}`)) === 'TAMPERED', 'the row was changed');
await patient.reload();
await patient.waitForSelector(`#thread li[data-id="${target.id}"]`);
const shown = await patient.$eval(`#thread li[data-id="${target.id}"]`, (li) => ({ state: li.dataset.state, text: li.textContent }));
check(shown.state === 'invalid' && shown.text.includes('Vises ikke') && !shown.text.includes('søvndagboken'), `the tampered message is refused: ${JSON.stringify(shown)}`);
const others = (await thread(patient)).filter((m) => m.id !== target.id);
check(others.every((m) => m.state === 'ok'), 'the other messages still open');
await patient.screenshot({ path: `${o.shots}/patient-tampered.png`, fullPage: true });

// --- this browser's device revoked elsewhere: said, and registered again --------------
const revokedDevice = await patient.evaluate(() => document.body.dataset.device);
check((await ask(`REVOKE ${revokedDevice}`)) === 'REVOKED', 'the device was revoked');
await patient.reload();
await patient.waitForSelector('#alarm:not([hidden])');
const revokedText = await patient.$eval('#alarm', (a) => a.textContent);
check(revokedText.includes('trukket tilbake'), `the patient is told the device was revoked: ${revokedText}`);
check((await patient.evaluate(() => document.body.dataset.device)) !== revokedDevice, 'a new device');

// --- the key log rewritten and re-signed: the browser that saw the old head says so ----
const therapistDevice = await therapist.evaluate(() => document.body.dataset.device);
check((await ask(`FORK ${therapistDevice}`)) === 'FORKED', 'the key log was rewritten');
await therapist.reload();
await therapist.waitForSelector('#alarm:not([hidden])');
const forkText = await therapist.$eval('#alarm', (a) => a.textContent);
check(forkText.includes('Nøkkelkatalogen stemmer ikke'), `the therapist is warned: ${forkText}`);
check((await therapist.$$('#compose button:not([disabled])')).length === 0, 'nothing can be sent');
await therapist.screenshot({ path: `${o.shots}/therapist-forked.png`, fullPage: true });

await browser.close();
process.stdout.write(`${JSON.stringify({ done: true, failures, numbers, violations: { caseload: caseloadViolations, patient: patientViolations, therapist: therapistViolations } })}\n`);
process.exit(failures.length === 0 ? 0 : 1);
