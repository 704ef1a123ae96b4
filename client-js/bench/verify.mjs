// node bench/verify.mjs CHROMIUM FIXTURE [ROUNDS]: the console's integrity work in
// headless Chromium, on a fixture the gateway's console bench wrote (one access-log
// checkpoint note and 100 records with inclusion proofs): verify the note, rebuild each
// record's leaf and check its proof. Prints the mean time a round beside the Rust
// verifier's time for the same work, from the fixture. The page is served from
// http://localhost (a secure context) by a server in this process.
import { createServer } from 'node:http';
import { readFileSync } from 'node:fs';

import puppeteer from '../../tests/peers/node_modules/puppeteer-core/lib/esm/puppeteer/puppeteer-core.js';

const [chromium, fixturePath, rounds = '20'] = process.argv.slice(2);
const fixture = JSON.parse(readFileSync(fixturePath, 'utf8'));
const files = {
  '/': ['text/html', '<!doctype html><title>bench</title>'],
  '/sdk.js': ['text/javascript', readFileSync(new URL('../dist/browser/icbt-client.min.js', import.meta.url))],
};
const server = createServer((req, res) => {
  const file = files[req.url];
  res.writeHead(file ? 200 : 404, { 'content-type': file?.[0] ?? 'text/plain' });
  res.end(file?.[1] ?? '');
}).listen(0, '127.0.0.1');
await new Promise((r) => server.once('listening', r));
const browser = await puppeteer.launch({ executablePath: chromium, headless: true, args: ['--no-sandbox', '--disable-gpu'] });
const page = await browser.newPage();
await page.goto(`http://localhost:${server.address().port}/`);
const result = await page.evaluate(
  async (fixture, rounds) => {
    const sdk = await import('/sdk.js');
    const key = sdk.unb64(fixture.public_key);
    const round = async () => {
      const head = await sdk.verifyCheckpointNote(fixture.note, [key], sdk.ACCESS_LOG_ORIGIN);
      for (const r of fixture.records) {
        const leaf = await sdk.leafHash(await sdk.accessRecordLeaf(r));
        const why = await sdk.verifyInclusion(leaf, BigInt(r.index), head.size, r.proof.map(sdk.unb64), head.root);
        if (why) throw new Error(`record ${r.index}: ${why}`);
      }
    };
    await round(); // warm up
    const started = performance.now();
    for (let i = 0; i < rounds; i++) await round();
    return { ms: (performance.now() - started) / rounds };
  },
  fixture,
  Number(rounds),
);
const version = await browser.version();
await browser.close();
server.close();
process.stdout.write(`${JSON.stringify({ runtime: version, browser_ms: result.ms, rust_ms: fixture.rust_ms, ratio: result.ms / fixture.rust_ms })}\n`);
