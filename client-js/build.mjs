// After tsc: one minified ES module of the browser entry for pages that load the SDK
// without a bundler (the dev gateway's reference web client), and its size.
import { build } from 'esbuild';
import { readFileSync } from 'node:fs';
import { gzipSync } from 'node:zlib';

await build({
  entryPoints: ['dist/index.js'],
  bundle: true,
  minify: true,
  format: 'esm',
  platform: 'browser',
  target: ['es2022'],
  outfile: 'dist/browser/icbt-client.min.js',
  legalComments: 'none',
  logLevel: 'warning',
});
const bytes = readFileSync('dist/browser/icbt-client.min.js');
console.log(`dist/browser/icbt-client.min.js: ${bytes.length} bytes, ${gzipSync(bytes, { level: 9 }).length} gzipped`);
