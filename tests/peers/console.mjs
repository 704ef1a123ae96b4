// The security team's console in Debian's Chromium (puppeteer-core), against a dev
// gateway: a therapist, a patient and a substitute who open /console/ are refused (the
// substitute five times, a burst); the auditor logs in through the dev HelseID, searches,
// opens the patient's timeline with every record proven in the browser, saves it as PDF
// and downloads it as FHIR, runs the refusal-burst report and follows it to the records,
// and sees the panel turn red, naming the record, once a row is changed in the database.
// axe-core must find no serious or critical violation on any page.
//
// Talks to the Rust test on stdin/stdout, one line each way:
//   TAMPER <index>  -> change that access record in the database, then "TAMPERED"
// and prints a JSON summary as its last line.

import { readFileSync, statSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';
import puppeteer from 'puppeteer-core';

const { values: o } = parseArgs({
  options: {
    origin: { type: 'string' },
    chromium: { type: 'string' },
    shots: { type: 'string' },
    patient: { type: 'string' },
  },
});

const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
async function ask(line) {
  process.stdout.write(`${line}\n`);
  const answer = await lines.next();
  return answer.value;
}

const failures = [];
function check(ok, what) {
  if (!ok) throw new Error(`expected: ${what}`);
}

const browser = await puppeteer.launch({
  executablePath: o.chromium,
  headless: true,
  args: ['--no-sandbox', '--ignore-certificate-errors', '--disable-gpu', '--disable-dev-shm-usage'],
});
const axeSource = readFileSync(new URL('./node_modules/axe-core/axe.min.js', import.meta.url), 'utf8');
const violations = {};

async function accessibility(page, name) {
  await page.evaluate(axeSource);
  const found = await page.evaluate(async () => {
    const result = await globalThis.axe.run(document, { resultTypes: ['violations'] });
    return result.violations
      .filter((v) => v.impact === 'serious' || v.impact === 'critical')
      .map((v) => `${v.id}: ${v.nodes.map((n) => n.target.join(' ')).join(', ')}`);
  });
  violations[name] = found;
}

async function newPage(who) {
  const context = await browser.createBrowserContext();
  const page = await context.newPage();
  page.setDefaultTimeout(30_000);
  page.on('pageerror', (e) => failures.push(`${who}: page error ${e.message}`));
  await page.setViewport({ width: 1280, height: 900 });
  current = page;
  return page;
}

/** Logs `person` in at the dev provider behind `start` and comes back to the console. */
async function login(page, start, person) {
  await Promise.all([page.waitForNavigation(), page.goto(`${o.origin}${start}`)]);
  await Promise.all([page.waitForNavigation(), page.click(`button[name="person"][value="${person}"]`)]);
}

async function waitForProofs(page) {
  await page.waitForFunction(() => {
    const cells = [...document.querySelectorAll('td[data-index]')];
    return cells.length > 0 && cells.every((c) => !c.textContent.includes('kontrollerer'));
  });
  return page.evaluate(() => [...document.querySelectorAll('td[data-index]')].map((c) => [Number(c.dataset.index), c.textContent.trim()]));
}

let current; // the page a failure is shown on

/** Follows an in-page link to `hash`, as a click would (a fresh navigation from outside
 * the site would not carry the SameSite=Strict session cookie). */
async function go(page, hash) {
  await page.evaluate((h) => {
    location.hash = h;
  }, hash);
}
const panelState = (page) => page.$eval('#integrity', (p) => ({ state: p.dataset.state, text: p.textContent }));

async function auditor() {
  const page = await newPage('siri');
  await page.goto(`${o.origin}/console/`);
  await page.waitForSelector('#login');
  await accessibility(page, 'login');
  await page.screenshot({ path: `${o.shots}/login.png` });
  await Promise.all([page.waitForNavigation(), page.click('#login')]);
  await Promise.all([page.waitForNavigation(), page.click('button[name="person"][value="siri"]')]);
  check(new URL(page.url()).pathname === '/console/', `the auditor is back at /console/, not ${page.url()}`);
  await page.waitForSelector('#integrity[data-state="ok"]');
  return page;
}

try {
  // Anyone else who opens the console is refused, and the refusal is recorded.
  for (const [start, person, times] of [
    ['/console/login', 'terje', 1],
    ['/auth/login/dev-idporten?return_to=/console/', 'kari', 1],
    ['/console/login', 'vera', 5],
  ]) {
    const page = await newPage(person);
    await login(page, start, person);
    for (let i = 0; i < times; i++) {
      const response = i === 0 ? null : await page.reload();
      check(!response || response.status() === 403, `${person} is refused on reload`);
      check((await page.$eval('h1', (h) => h.textContent)) === 'Ingen tilgang', `${person} sees "Ingen tilgang"`);
    }
    if (person === 'terje') {
      await accessibility(page, 'refused');
      await page.screenshot({ path: `${o.shots}/refused.png` });
    }
    const direct = await page.evaluate(async () => (await fetch('/v1/audit/records')).status);
    check(direct === 403, `${person}'s session cannot read the access log either (${direct})`);
    await page.browserContext().close();
  }

  const page = await auditor();
  await accessibility(page, 'start');

  // Search by patient: every record shown is proven against the signed root here.
  await go(page, `#/sok?patient=${o.patient}`);
  const searched = await waitForProofs(page);
  check(searched.length >= 3, `the search found the patient's records (${searched.length})`);
  check(searched.every(([, t]) => t.includes('✓')), `every record is proven: ${JSON.stringify(searched)}`);
  await accessibility(page, 'search');
  await page.screenshot({ path: `${o.shots}/search.png`, fullPage: true });

  // The patient's timeline, as the patient sees it and in full; printed to PDF and
  // downloaded as FHIR.
  await go(page, `#/pasient?nin=${o.patient}`);
  await page.waitForSelector('#timeline tbody tr');
  const proven = await waitForProofs(page);
  check(proven.every(([, t]) => t.includes('✓')), `every timeline record is proven: ${JSON.stringify(proven)}`);
  const words = await page.$$eval('#timeline tbody tr td:nth-child(2)', (cells) => cells.map((c) => c.textContent));
  check(words.some((w) => w.includes('Treatment platform') && w.includes('registered your treatment')), `the patient's words are shown: ${words.join(' | ')}`);
  await accessibility(page, 'timeline');
  await page.screenshot({ path: `${o.shots}/timeline.png`, fullPage: true });
  await page.pdf({ path: `${o.shots}/timeline.pdf`, format: 'A4' });
  check(statSync(`${o.shots}/timeline.pdf`).size > 2000, 'the timeline printed to a PDF');
  const fhir = await page.$eval('a[download^="tilgangslogg-"]', async (a) => {
    const response = await fetch(a.href);
    return { type: response.headers.get('content-type'), body: await response.json() };
  });
  check(fhir.type.startsWith('application/fhir+json') && fhir.body.resourceType === 'Bundle' && fhir.body.entry.length >= 3, 'the FHIR export is a Bundle of the records');

  // The refusal-burst report points at the substitute, and its row leads to the records.
  const now = Date.now();
  await go(page, `#/rapporter?kind=refusal-bursts&from_ms=${now - 86_400_000}&to_ms=${now + 86_400_000}`);
  await page.waitForSelector('#report tbody tr');
  const rows = await page.$$eval('#report tbody tr', (trs) => trs.map((t) => t.textContent));
  check(rows.length === 1 && rows[0].includes('9144901'), `one burst, by the substitute (HPR 9144901): ${rows.join(' | ')}`);
  await accessibility(page, 'reports');
  await page.screenshot({ path: `${o.shots}/reports.png`, fullPage: true });
  const csv = await page.$eval('a[download$=".csv"]', async (a) => (await fetch(a.href)).text());
  check(csv.startsWith('kind,principal,') && csv.includes('refusal-bursts,9144901'), `the CSV has the row: ${csv}`);
  await Promise.all([page.waitForFunction(() => location.hash.startsWith('#/sok')), page.click('#report tbody tr a')]);
  const behind = await waitForProofs(page);
  check(behind.length >= 5, `the row's link shows the refusals behind it (${behind.length})`);

  // A person's activity.
  await go(page, '#/personell?id=9144901');
  await page.waitForSelector('dl.facts');
  const facts = await page.$eval('dl.facts', (d) => d.textContent);
  check(/Avvist\s*[5-9]/.test(facts), `the substitute's refusals are counted: ${facts}`);

  // Someone changes a record of the patient's in the database.
  const target = proven[proven.length - 1][0];
  check((await ask(`TAMPER ${target}`)) === 'TAMPERED', 'the row was changed');
  await go(page, '#/sok');
  await go(page, `#/pasient?nin=${o.patient}`);
  await page.waitForSelector('#integrity[data-state="failed"]');
  const red = await panelState(page);
  check(red.text.includes(`Post ${target} `), `the panel names record ${target}: ${red.text}`);
  await page.screenshot({ path: `${o.shots}/tampered.png`, fullPage: true });
} catch (e) {
  failures.push(e.message);
  await current?.screenshot({ path: `${o.shots}/failure.png`, fullPage: true }).catch(() => {});
}

await browser.close();
process.stdout.write(`${JSON.stringify({ done: true, failures, violations })}\n`);
process.exit(failures.length === 0 ? 0 : 1);
