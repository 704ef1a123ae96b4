// node bench/browser.mjs CHROMIUM [N]: the same rates in headless Chromium. The page is
// served from http://localhost (a secure context, so Web Crypto is there) by a server in
// this process; puppeteer-core comes from tests/peers.
import { createServer } from 'node:http';
import { readFileSync } from 'node:fs';

import puppeteer from '../../tests/peers/node_modules/puppeteer-core/lib/esm/puppeteer/puppeteer-core.js';

const [chromium, n = '1000'] = process.argv.slice(2);
const files = {
  '/': ['text/html', '<!doctype html><title>bench</title>'],
  '/sdk.js': ['text/javascript', readFileSync(new URL('../dist/browser/icbt-client.min.js', import.meta.url))],
  '/core.js': ['text/javascript', readFileSync(new URL('./core.js', import.meta.url))],
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
const result = await page.evaluate(async (count) => {
  const sdk = await import('/sdk.js');
  const { sealOpen } = await import('/core.js');
  return sealOpen(sdk, count);
}, Number(n));
const version = await browser.version();
await browser.close();
server.close();
process.stdout.write(`${JSON.stringify({ runtime: version, ...result })}\n`);
