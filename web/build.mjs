// Builds web/app into web/dist/app: the page, its style, and one script bundling the app
// with the SDK (client-js, built first). No CDN: everything the page loads comes from here.
import { build } from 'esbuild';
import { copyFileSync, mkdirSync } from 'node:fs';

const out = 'dist/app';
mkdirSync(out, { recursive: true });
await build({
  entryPoints: ['app/main.js'],
  bundle: true,
  minify: true,
  format: 'esm',
  platform: 'browser',
  target: ['es2022'],
  outfile: `${out}/app.js`,
  legalComments: 'none',
  logLevel: 'warning',
});
for (const file of ['index.html', 'app.css']) copyFileSync(`app/${file}`, `${out}/${file}`);
console.log(`built ${out}/`);
